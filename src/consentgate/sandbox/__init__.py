"""The sandbox carrier: a local, test-only stand-in for the RCS, SMS and push providers that
speaks their wire formats over real HTTP, with a device population and fault injection.
Never needed in production (DESIGN §2)."""

from consentgate.sandbox.app import (
    PhoneRedactingFilter,
    create_sandbox,
    redact_phone_numbers_in_access_log,
)

__all__ = ["PhoneRedactingFilter", "create_sandbox", "redact_phone_numbers_in_access_log"]
