"""Consent: ingest into the ledger, the latest-state view, subject links."""
