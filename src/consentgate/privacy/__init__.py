"""Privacy operations: erasure of a subject and retention of operational records.

Erasure (:mod:`.erasure`) cuts every link between the ledger and a person and records that it
did, as a ledger leaf; retention (:mod:`.retention`) deletes what outlived the tenant's
horizons. Both push deleted bytes out of the database files afterwards (:mod:`.scrub`). The
ledger itself is never deleted from: that is what keeps every proof valid.
"""
