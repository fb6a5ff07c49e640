"""Audit: point-in-time consent recomputed from the ledger, send and fallback reports, and
per-subject export bundles that an auditor verifies offline.

Reads only: nothing here writes to the store. The rules come from
:mod:`consentgate.domain.consent`; proofs and signatures from :mod:`consentgate.ledger`,
:mod:`consentgate.consent.receipt_check` and :mod:`consentgate.crypto.jws`.
"""

from consentgate.audit.bundle_check import BundleInvalid, Summary, verify_bundle
from consentgate.audit.export import ExportService
from consentgate.audit.pointintime import AsOfQuery, StatusFilter, SubjectState
from consentgate.audit.service import AuditService

__all__ = [
    "AsOfQuery",
    "AuditService",
    "BundleInvalid",
    "ExportService",
    "StatusFilter",
    "SubjectState",
    "Summary",
    "verify_bundle",
]
