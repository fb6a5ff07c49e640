"""The delivery planner's whole decision table.

Every combination of consent state x provider report x registered device x template
sensitivity is checked against ``reference``, an independent restatement of the rules written
here from the issue's text, not by calling the planner. Named cases then pin individual rows
by hand, so a misreading shared by the planner and the reference cannot hide.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from consentgate.delivery.planner import (
    CONSENT_REFUSALS,
    CapabilityReport,
    ConsentInForce,
    ConsentRefused,
    DeliveryMode,
    DeviceKey,
    RegisteredDevice,
    SendAction,
    SendDecision,
    consent_check,
    plan,
)
from consentgate.domain.consent import EffectiveStatus, StateView
from consentgate.domain.reasons import ReasonCode

NOW = datetime(2026, 11, 27, 13, 0, 0, tzinfo=UTC)
SEQ = 42
KID = "dev-key-1"
SUITE = "X25519-HKDF-SHA256/ChaCha20Poly1305"

# --- the dimensions ---------------------------------------------------------------------------

CONSENTS = ["granted", "no_consent", "withdrawn", "expired", "store_unavailable", "ambiguous"]
TRISTATE = [True, False, None]
# (rcs, native_e2ee) as the provider reports them, or the check failing altogether.
PROVIDERS: list[tuple[bool | None, bool | None] | str] = [
    *itertools.product(TRISTATE, TRISTATE),
    "unavailable",
]
KEY_STATES = ["no_key", "valid", "expired", "revoked"]


@dataclass(frozen=True)
class DeviceCase:
    key_state: str
    native: bool
    rcs: bool


DEVICES: list[DeviceCase | None] = [
    None,
    *(
        DeviceCase(k, n, r)
        for k, n, r in itertools.product(KEY_STATES, [True, False], [True, False])
    ),
]


def build_consent(name: str) -> ConsentInForce | ConsentRefused:
    return ConsentInForce(SEQ) if name == "granted" else ConsentRefused(ReasonCode(name))


def build_capabilities(provider: tuple[bool | None, bool | None] | str) -> CapabilityReport:
    if provider == "unavailable":
        return CapabilityReport.unavailable()
    assert isinstance(provider, tuple)
    return CapabilityReport(rcs=provider[0], native_e2ee=provider[1])


def build_device(case: DeviceCase | None) -> RegisteredDevice | None:
    if case is None:
        return None
    expiry = {
        "valid": NOW + timedelta(days=30),
        "expired": NOW - timedelta(seconds=1),
        "revoked": NOW + timedelta(days=30),
    }
    key = (
        None
        if case.key_state == "no_key"
        else DeviceKey(KID, SUITE, expiry[case.key_state], revoked=case.key_state == "revoked")
    )
    return RegisteredDevice(rcs=case.rcs, native_e2ee=case.native, key=key)


# --- the reference: the rules, restated plainly ----------------------------------------------


def reference(
    consent: str,
    provider: tuple[bool | None, bool | None] | str,
    device: DeviceCase | None,
    sensitive: bool,
) -> tuple[str, str | None, str | None, str | None]:
    """(action, mode, reason, device_kid) straight from the rules text."""
    if consent != "granted":
        return ("skipped", None, consent, None)

    if provider == "unavailable":
        provider_rcs, provider_native = None, None
    else:
        assert isinstance(provider, tuple)
        provider_rcs, provider_native = provider

    device_claims_native = device is not None and device.native
    device_claims_rcs = device is not None and device.rcs

    # Native E2EE: reported by the provider, or claimed by the device, unless the provider
    # contradicts it (says no native E2EE, or says the number has no RCS at all).
    reported = provider_native is True or device_claims_native
    contradicted = provider_native is False or provider_rcs is False
    if reported and not contradicted:
        return ("sent", "native_e2ee", None, None)

    # RCS: the provider says so, or the device says so and the provider does not deny it.
    has_rcs = provider_rcs is True or (device_claims_rcs and provider_rcs is not False)
    valid_key = device is not None and device.key_state == "valid"

    if valid_key and has_rcs:
        action, mode, reason = "sent", "app_layer", "e2ee_unavailable"
    elif valid_key:
        action, mode, reason = "sent", "in_app", "no_rcs"
    else:
        action = "fallback"
        mode = "secure_link" if sensitive else "sms_redacted"
        has_bad_key = device is not None and device.key_state in ("expired", "revoked")
        reason = "key_expired" if has_bad_key else "no_device_key"
    if provider == "unavailable":
        reason = "provider_unavailable"
    return (action, mode, reason, KID if valid_key else None)


TABLE = list(itertools.product(CONSENTS, PROVIDERS, DEVICES, [True, False]))


def _case_id(
    row: tuple[str, tuple[bool | None, bool | None] | str, DeviceCase | None, bool],
) -> str:
    consent, provider, device, sensitive = row
    p = "prov=down" if isinstance(provider, str) else f"prov=rcs:{provider[0]}/e2ee:{provider[1]}"
    d = (
        "dev=none"
        if device is None
        else f"dev={device.key_state}/e2ee:{device.native}/rcs:{device.rcs}"
    )
    return f"{consent}-{p}-{d}-{'sensitive' if sensitive else 'plain'}"


@pytest.mark.parametrize(
    ("consent", "provider", "device", "sensitive"), TABLE, ids=[_case_id(r) for r in TABLE]
)
def test_decision_table(
    consent: str,
    provider: tuple[bool | None, bool | None] | str,
    device: DeviceCase | None,
    sensitive: bool,
) -> None:
    decision = plan(
        build_consent(consent),
        sensitive=sensitive,
        capabilities=build_capabilities(provider),
        device=build_device(device),
        now=NOW,
    )
    action, mode, reason, kid = reference(consent, provider, device, sensitive)
    assert (decision.action, decision.mode, decision.reason) == (action, mode, reason)
    assert decision.device_kid == kid
    assert decision.suite == (SUITE if kid else None)
    assert decision.consent_seq == (None if action == "skipped" else SEQ)


def test_table_reaches_every_mode_and_reason() -> None:
    """The product is not lopsided: every outcome the planner can give shows up in it."""
    outcomes = {reference(*row)[1:3] for row in TABLE}
    modes = {mode for mode, _ in outcomes}
    reasons = {reason for _, reason in outcomes}
    assert modes == {None, *DeliveryMode}
    assert reasons == {
        None,
        *CONSENT_REFUSALS,
        ReasonCode.E2EE_UNAVAILABLE,
        ReasonCode.NO_RCS,
        ReasonCode.NO_DEVICE_KEY,
        ReasonCode.KEY_EXPIRED,
        ReasonCode.PROVIDER_UNAVAILABLE,
    }
    assert len(TABLE) == 6 * 10 * 17 * 2


# --- named rows, written out by hand ----------------------------------------------------------

VALID = DeviceKey(KID, SUITE, NOW + timedelta(days=1))
EXPIRED = DeviceKey(KID, SUITE, NOW - timedelta(days=1))
REVOKED = DeviceKey(KID, SUITE, NOW + timedelta(days=1), revoked=True)
UP = CapabilityReport
DOWN = CapabilityReport.unavailable()


def dev(
    *, rcs: bool = False, native: bool = False, key: DeviceKey | None = None
) -> RegisteredDevice:
    return RegisteredDevice(rcs=rcs, native_e2ee=native, key=key)


def sent(mode: DeliveryMode, reason: ReasonCode | None, *, sealed: bool) -> SendDecision:
    kid, suite = (KID, SUITE) if sealed else (None, None)
    return SendDecision(SendAction.SENT, mode, reason, kid, suite, SEQ)


def fallback(mode: DeliveryMode, reason: ReasonCode) -> SendDecision:
    return SendDecision(SendAction.FALLBACK, mode, reason, None, None, SEQ)


NAMED: dict[str, tuple[CapabilityReport, RegisteredDevice | None, bool, SendDecision]] = {
    "provider reports native, no device": (
        UP(rcs=True, native_e2ee=True),
        None,
        True,
        sent(DeliveryMode.NATIVE_E2EE, None, sealed=False),
    ),
    "native wins over a usable app key": (
        UP(rcs=True, native_e2ee=True),
        dev(rcs=True, key=VALID),
        False,
        sent(DeliveryMode.NATIVE_E2EE, None, sealed=False),
    ),
    "device claims native, provider silent": (
        UP(rcs=None, native_e2ee=None),
        dev(native=True),
        True,
        sent(DeliveryMode.NATIVE_E2EE, None, sealed=False),
    ),
    "device claims native, capability check failed": (
        DOWN,
        dev(native=True),
        True,
        sent(DeliveryMode.NATIVE_E2EE, None, sealed=False),
    ),
    "provider denies the device's native claim": (
        UP(rcs=True, native_e2ee=False),
        dev(rcs=True, native=True, key=VALID),
        True,
        sent(DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE, sealed=True),
    ),
    "provider says no RCS, which denies native too": (
        UP(rcs=False, native_e2ee=None),
        dev(rcs=True, native=True, key=VALID),
        True,
        sent(DeliveryMode.IN_APP, ReasonCode.NO_RCS, sealed=True),
    ),
    "provider says no RCS and native: inconsistent, not native": (
        UP(rcs=False, native_e2ee=True),
        None,
        False,
        fallback(DeliveryMode.SMS_REDACTED, ReasonCode.NO_DEVICE_KEY),
    ),
    "RCS from the provider, valid key": (
        UP(rcs=True, native_e2ee=None),
        dev(key=VALID),
        False,
        sent(DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE, sealed=True),
    ),
    "RCS from the device, provider silent": (
        UP(rcs=None, native_e2ee=False),
        dev(rcs=True, key=VALID),
        False,
        sent(DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE, sealed=True),
    ),
    "RCS unknown everywhere means no RCS": (
        UP(rcs=None, native_e2ee=None),
        dev(rcs=False, key=VALID),
        True,
        sent(DeliveryMode.IN_APP, ReasonCode.NO_RCS, sealed=True),
    ),
    "check failed, device RCS and key": (
        DOWN,
        dev(rcs=True, key=VALID),
        True,
        sent(DeliveryMode.APP_LAYER, ReasonCode.PROVIDER_UNAVAILABLE, sealed=True),
    ),
    "check failed, key but no RCS": (
        DOWN,
        dev(key=VALID),
        False,
        sent(DeliveryMode.IN_APP, ReasonCode.PROVIDER_UNAVAILABLE, sealed=True),
    ),
    "check failed, no device, sensitive": (
        DOWN,
        None,
        True,
        fallback(DeliveryMode.SECURE_LINK, ReasonCode.PROVIDER_UNAVAILABLE),
    ),
    "check failed, expired key, plain": (
        DOWN,
        dev(rcs=True, key=EXPIRED),
        False,
        fallback(DeliveryMode.SMS_REDACTED, ReasonCode.PROVIDER_UNAVAILABLE),
    ),
    "no device, plain template": (
        UP(rcs=True, native_e2ee=False),
        None,
        False,
        fallback(DeliveryMode.SMS_REDACTED, ReasonCode.NO_DEVICE_KEY),
    ),
    "device without a key, sensitive": (
        UP(rcs=True, native_e2ee=False),
        dev(rcs=True),
        True,
        fallback(DeliveryMode.SECURE_LINK, ReasonCode.NO_DEVICE_KEY),
    ),
    "expired key, sensitive": (
        UP(rcs=True, native_e2ee=False),
        dev(rcs=True, key=EXPIRED),
        True,
        fallback(DeliveryMode.SECURE_LINK, ReasonCode.KEY_EXPIRED),
    ),
    "revoked key, plain": (
        UP(rcs=False, native_e2ee=False),
        dev(key=REVOKED),
        False,
        fallback(DeliveryMode.SMS_REDACTED, ReasonCode.KEY_EXPIRED),
    ),
    "key expiring exactly now is expired": (
        UP(rcs=True, native_e2ee=False),
        dev(key=DeviceKey(KID, SUITE, NOW)),
        False,
        fallback(DeliveryMode.SMS_REDACTED, ReasonCode.KEY_EXPIRED),
    ),
    "key with no expiry is usable": (
        UP(rcs=True, native_e2ee=False),
        dev(key=DeviceKey(KID, SUITE, None)),
        False,
        sent(DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE, sealed=True),
    ),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_rows(name: str) -> None:
    capabilities, device, sensitive, expected = NAMED[name]
    got = plan(
        ConsentInForce(SEQ), sensitive=sensitive, capabilities=capabilities, device=device, now=NOW
    )
    assert got == expected


@pytest.mark.parametrize("refusal", sorted(CONSENT_REFUSALS))
def test_no_consent_skips_even_the_best_recipient(refusal: ReasonCode) -> None:
    got = plan(
        ConsentRefused(refusal),
        sensitive=False,
        capabilities=UP(rcs=True, native_e2ee=True),
        device=dev(rcs=True, native=True, key=VALID),
        now=NOW,
    )
    assert got == SendDecision(SendAction.SKIPPED, None, refusal, None, None, None)


def test_actions_compare_as_their_wire_strings() -> None:
    got = plan(
        ConsentInForce(SEQ),
        sensitive=True,
        capabilities=DOWN,
        device=None,
        now=NOW,
    )
    assert (got.action, got.mode, got.reason) == ("fallback", "secure_link", "provider_unavailable")


# --- inputs and outputs refuse nonsense -------------------------------------------------------


@pytest.mark.parametrize(
    "reason", [r for r in ReasonCode if r not in CONSENT_REFUSALS], ids=lambda r: str(r)
)
def test_consent_refusal_must_be_a_consent_reason(reason: ReasonCode) -> None:
    with pytest.raises(ValueError, match="not a consent refusal"):
        ConsentRefused(reason)


def test_failed_check_reports_nothing() -> None:
    with pytest.raises(ValueError, match="cannot report"):
        CapabilityReport(rcs=True, native_e2ee=None, available=False)


@pytest.mark.parametrize(
    "fields",
    [
        (SendAction.SENT, DeliveryMode.SECURE_LINK, ReasonCode.NO_DEVICE_KEY, None, None, SEQ),
        (SendAction.FALLBACK, DeliveryMode.IN_APP, ReasonCode.NO_RCS, KID, SUITE, SEQ),
        (SendAction.SENT, DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE, None, None, SEQ),
        (SendAction.SENT, DeliveryMode.NATIVE_E2EE, None, KID, SUITE, SEQ),
        (SendAction.SENT, DeliveryMode.NATIVE_E2EE, ReasonCode.NO_RCS, None, None, SEQ),
        (SendAction.SENT, DeliveryMode.IN_APP, None, KID, SUITE, SEQ),
        (SendAction.SENT, DeliveryMode.NATIVE_E2EE, None, None, None, None),
        (SendAction.SKIPPED, DeliveryMode.IN_APP, ReasonCode.WITHDRAWN, None, None, None),
        (SendAction.SKIPPED, None, ReasonCode.NO_RCS, None, None, None),
        (SendAction.SKIPPED, None, ReasonCode.WITHDRAWN, None, None, SEQ),
    ],
)
def test_send_decision_rejects_inconsistent_shapes(
    fields: tuple[
        SendAction, DeliveryMode | None, ReasonCode | None, str | None, str | None, int | None
    ],
) -> None:
    with pytest.raises(ValueError, match="inconsistent send decision"):
        SendDecision(*fields)


# --- consent_check from the state view --------------------------------------------------------


def _view(status: EffectiveStatus, expires_at: datetime | None = None) -> StateView:
    return StateView(status, NOW - timedelta(days=3), SEQ, expires_at)


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (None, ConsentRefused(ReasonCode.NO_CONSENT)),
        (_view(EffectiveStatus.GRANTED), ConsentInForce(SEQ)),
        (_view(EffectiveStatus.GRANTED, NOW + timedelta(days=1)), ConsentInForce(SEQ)),
        (_view(EffectiveStatus.GRANTED, NOW), ConsentRefused(ReasonCode.EXPIRED)),
        (
            _view(EffectiveStatus.EXPIRED, NOW - timedelta(days=1)),
            ConsentRefused(ReasonCode.EXPIRED),
        ),
        (_view(EffectiveStatus.WITHDRAWN), ConsentRefused(ReasonCode.WITHDRAWN)),
    ],
)
def test_consent_check_from_view(
    view: StateView | None, expected: ConsentInForce | ConsentRefused
) -> None:
    assert consent_check(view, NOW) == expected
