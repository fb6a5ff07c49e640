"""consentgate: consent-gated messaging with a provable consent ledger."""

__version__ = "0.1.0"
