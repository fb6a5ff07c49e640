"""The one error root of consentgate and its kinds.

Domain code raises these with a stable machine ``code`` and a human ``detail`` that never
contains a raw identifier. Only ``api/`` turns them into RFC 9457 problems, and only ``cli``
turns them into exit codes::

    ConsentGateError
    ├── InvalidInput          bad input: the request is rejected, nothing is written
    ├── NotFound              no such thing for this tenant (also: another tenant's thing)
    ├── Conflict              the request contradicts what is recorded (e.g. consent_id reuse)
    ├── Unauthenticated       no or unknown credentials
    ├── Forbidden             credentials lack the scope
    │   └── ConsentRefused    no consent in force for what was asked (carries a reason code)
    ├── BudgetExhausted       a differentially private query would overspend the privacy budget
    ├── StoreUnavailable      the store cannot be reached: callers fail closed
    ├── KeyStoreError         the key store is unusable (wrong master key, missing key)
    └── LedgerTampered        verification found a change made behind the service's back
"""

from __future__ import annotations


class ConsentGateError(Exception):
    """Root of every error consentgate raises on purpose."""

    code = "error"
    status = 500
    title = "Internal error"

    def __init__(
        self, detail: str, *, field: str | None = None, extra: dict[str, object] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra or {}


class InvalidInput(ConsentGateError):
    code = "invalid-input"
    status = 422
    title = "Invalid input"


class NotFound(ConsentGateError):
    code = "not-found"
    status = 404
    title = "Not found"


class Conflict(ConsentGateError):
    code = "conflict"
    status = 409
    title = "Conflict"


class UnsupportedMediaType(ConsentGateError):
    """The body is labelled as something the endpoint does not read (its Content-Type)."""

    code = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class Unauthenticated(ConsentGateError):
    code = "unauthenticated"
    status = 401
    title = "Unauthenticated"


class Forbidden(ConsentGateError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class ConsentRefused(Forbidden):
    code = "consent-refused"
    title = "No consent in force"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail, extra={"reason": reason})
        self.reason = reason


class BudgetExhausted(ConsentGateError):
    """The tenant's privacy budget for the month cannot pay for this query; nothing was
    charged and nothing released. It refills at the next calendar month (UTC)."""

    code = "privacy-budget-exhausted"
    status = 429
    title = "Privacy budget exhausted"


class StoreUnavailable(ConsentGateError):
    code = "store-unavailable"
    status = 503
    title = "Store unavailable"


class KeyStoreError(ConsentGateError):
    code = "key-store"
    status = 500
    title = "Key store error"


class LedgerTampered(ConsentGateError):
    """Raised by verification; ``seq`` is the first leaf found bad (None: not leaf-specific)."""

    code = "ledger-tampered"
    status = 500
    title = "Ledger verification failed"

    def __init__(self, detail: str, *, seq: int | None = None) -> None:
        super().__init__(detail)
        self.seq = seq
