"""The delivery-mode planner: given whether consent is in force, what the provider reports for
the number, what the recipient's registered device claims, and whether the template is
sensitive, decide *whether* a message is sent and *how*, with a reason code saying why a
stronger mode was not used. It is a pure function over plain data: the gate supplies the
consent check, the provider adapter the capability report, the device registry the device,
and the dispatch worker acts on the returned :class:`SendDecision` and records it.

Facts the planner derives (provider = the capability check for the number, device = the
registered device, both possibly missing)::

    native  = (provider.native_e2ee is True or device.native_e2ee)
              and provider.native_e2ee is not False     # the provider contradicts the device
              and provider.rcs is not False             # native E2EE is an RCS feature
    rcs     = provider.rcs is True or (device.rcs and provider.rcs is not False)
    key_ok  = device has an app key that is not revoked and not expired at ``now``
              (expired means ``now >= expires_at``; no ``expires_at`` means no expiry)

Unknown capabilities (``None``) and a failed capability check count as "no" from the
provider, but do not contradict what the device claims. The decision table, first match
wins::

    consent       native  rcs  key_ok  sensitive | action    mode          reason
    ------------  ------  ---  ------  --------- | --------  ------------  ------------------
    refused (R)   -       -    -       -         | skipped   -             R
    in force      yes     -    -       -         | sent      native_e2ee   -
    in force      no      yes  yes     -         | sent      app_layer     e2ee_unavailable (*)
    in force      no      no   yes     -         | sent      in_app        no_rcs (*)
    in force      no      -    no      yes       | fallback  secure_link   no_device_key /
    in force      no      -    no      no        | fallback  sms_redacted    key_expired (*)

``R`` is the consent refusal: ``no_consent``, ``withdrawn``, ``expired``,
``store_unavailable`` or ``ambiguous``. For fallbacks the reason is ``key_expired`` when the
device has a key that is expired or revoked, ``no_device_key`` when there is no device or no
key. (*) When the capability check itself failed, every non-native decision carries
``provider_unavailable`` instead: the missing report may be all that stood between the
recipient and a stronger mode, and an outage must show up as such in the fallback audit
rather than as a fleet of missing keys.

``device_kid`` and ``suite`` are set only for ``app_layer`` and ``in_app`` (the modes that
seal an envelope to the device key); ``consent_seq`` is set for every decision that sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from consentgate.domain.consent import StateView
from consentgate.domain.reasons import ReasonCode, consent_refusal


class DeliveryMode(StrEnum):
    """How a message reaches the recipient, strongest first."""

    NATIVE_E2EE = "native_e2ee"  # the RCS channel's own end-to-end encryption
    APP_LAYER = "app_layer"  # envelope sealed to the device's app key, carried over RCS
    IN_APP = "in_app"  # envelope sealed to the device's app key, through the app inbox
    SECURE_LINK = "secure_link"  # neutral text + link to an authenticated landing page
    SMS_REDACTED = "sms_redacted"  # template text with PII tokens removed + the secure link


class SendAction(StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    FALLBACK = "fallback"


#: The reasons a consent check may refuse a send (DESIGN §3, fail closed).
CONSENT_REFUSALS: frozenset[ReasonCode] = frozenset(
    {
        ReasonCode.NO_CONSENT,
        ReasonCode.WITHDRAWN,
        ReasonCode.EXPIRED,
        ReasonCode.STORE_UNAVAILABLE,
        ReasonCode.AMBIGUOUS,
    }
)

_ENCRYPTED_MODES = frozenset(
    {DeliveryMode.NATIVE_E2EE, DeliveryMode.APP_LAYER, DeliveryMode.IN_APP}
)
_SEALED_MODES = frozenset({DeliveryMode.APP_LAYER, DeliveryMode.IN_APP})


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentInForce:
    """Consent is in force; ``consent_seq`` is the ledger seq of the leaf that granted it."""

    consent_seq: int


@dataclass(frozen=True, slots=True)
class ConsentRefused:
    """Consent is not in force (or could not be verified, which counts the same)."""

    reason: ReasonCode

    def __post_init__(self) -> None:
        if self.reason not in CONSENT_REFUSALS:
            raise ValueError(f"{self.reason!s} is not a consent refusal reason")


ConsentCheck = ConsentInForce | ConsentRefused


def consent_check(view: StateView | None, now: datetime) -> ConsentCheck:
    """The planner's consent input from a read of the state view.

    ``store_unavailable`` and ``ambiguous`` are not visible in a view; the gate builds those
    refusals itself when the read fails.
    """
    if view is None:
        return ConsentRefused(ReasonCode.NO_CONSENT)
    refusal = consent_refusal(view, now)
    return ConsentInForce(view.event_seq) if refusal is None else ConsentRefused(refusal)


@dataclass(frozen=True, slots=True)
class CapabilityReport:
    """The provider's capability check for the number. ``None`` means the provider did not
    say; ``available=False`` means the check itself failed (then it says nothing)."""

    rcs: bool | None
    native_e2ee: bool | None
    available: bool = True

    def __post_init__(self) -> None:
        if not self.available and (self.rcs is not None or self.native_e2ee is not None):
            raise ValueError("a failed capability check cannot report capabilities")

    @classmethod
    def unavailable(cls) -> CapabilityReport:
        return cls(rcs=None, native_e2ee=None, available=False)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """The app public key registered for a device (the key itself stays in the registry)."""

    kid: str
    suite: str
    expires_at: datetime | None
    revoked: bool = False

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """What the recipient's registered device claims about itself."""

    rcs: bool
    native_e2ee: bool
    key: DeviceKey | None


# --- output ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendDecision:
    action: SendAction
    mode: DeliveryMode | None
    reason: ReasonCode | None
    device_kid: str | None
    suite: str | None
    consent_seq: int | None

    def __post_init__(self) -> None:
        # The shape is part of the audit contract: reject a decision that cannot be explained.
        if self.action is SendAction.SKIPPED:
            ok = self.mode is None and self.reason in CONSENT_REFUSALS and self.consent_seq is None
        else:
            ok = (
                self.mode is not None
                and (self.mode in _ENCRYPTED_MODES) == (self.action is SendAction.SENT)
                and (self.reason is None) == (self.mode is DeliveryMode.NATIVE_E2EE)
                and self.consent_seq is not None
            )
        sealed = self.mode in _SEALED_MODES
        if not ok or sealed != (self.device_kid is not None) or sealed != (self.suite is not None):
            raise ValueError(f"inconsistent send decision: {self!r}")


# --- the rule --------------------------------------------------------------------------------


def plan(
    consent: ConsentCheck,
    *,
    sensitive: bool,
    capabilities: CapabilityReport,
    device: RegisteredDevice | None,
    now: datetime,
) -> SendDecision:
    """Decide whether and how to deliver one message; see the module docstring's table."""
    if isinstance(consent, ConsentRefused):
        return SendDecision(SendAction.SKIPPED, None, consent.reason, None, None, None)
    seq = consent.consent_seq

    # A device claim stands unless the provider positively says otherwise; a silent or failed
    # provider is no evidence either way, but on its own it never establishes a capability.
    claims_native = capabilities.native_e2ee is True or (device is not None and device.native_e2ee)
    native = (
        claims_native and capabilities.native_e2ee is not False and capabilities.rcs is not False
    )
    if native:
        return SendDecision(SendAction.SENT, DeliveryMode.NATIVE_E2EE, None, None, None, seq)

    rcs = capabilities.rcs is True or (
        device is not None and device.rcs and capabilities.rcs is not False
    )
    key = device.key if device is not None else None
    usable = key if key is not None and key.usable_at(now) else None
    outage = None if capabilities.available else ReasonCode.PROVIDER_UNAVAILABLE

    if usable is not None:
        if rcs:
            mode, reason = DeliveryMode.APP_LAYER, ReasonCode.E2EE_UNAVAILABLE
        else:
            mode, reason = DeliveryMode.IN_APP, ReasonCode.NO_RCS
        return SendDecision(SendAction.SENT, mode, outage or reason, usable.kid, usable.suite, seq)

    mode = DeliveryMode.SECURE_LINK if sensitive else DeliveryMode.SMS_REDACTED
    reason = ReasonCode.NO_DEVICE_KEY if key is None else ReasonCode.KEY_EXPIRED
    return SendDecision(SendAction.FALLBACK, mode, outage or reason, None, None, seq)
