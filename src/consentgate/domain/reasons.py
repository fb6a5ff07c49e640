"""The closed set of reason codes: why a send was skipped or fell back, why a consent token
was refused. Shared by the gate, the planner, the audit reports and the docs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from consentgate.domain.consent import EffectiveStatus, StateView


class ReasonCode(StrEnum):
    NO_CONSENT = "no_consent"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    STORE_UNAVAILABLE = "store_unavailable"
    AMBIGUOUS = "ambiguous"
    NO_RCS = "no_rcs"
    NO_DEVICE_KEY = "no_device_key"
    KEY_EXPIRED = "key_expired"
    E2EE_UNAVAILABLE = "e2ee_unavailable"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    ERASED = "erased"  # a queued campaign recipient whose subject was erased before dispatch


def consent_refusal(view: StateView | None, now: datetime) -> ReasonCode | None:
    """None when ``view`` is a grant in force at ``now``; otherwise why not."""
    if view is None:
        return ReasonCode.NO_CONSENT
    if view.status is EffectiveStatus.WITHDRAWN:
        return ReasonCode.WITHDRAWN
    if view.status is EffectiveStatus.EXPIRED or (
        view.expires_at is not None and now >= view.expires_at
    ):
        return ReasonCode.EXPIRED
    return None
