"""Does this ledger extend a checkpoint saved earlier? The check after a restore.

``ledger verify`` proves a ledger is consistent with *itself*: every leaf, node, checkpoint and
state row agrees. A restored backup passes that even when it is older than what the service
had acknowledged, or when it is a different history altogether: a database restored from the
wrong dump, or one rewritten wholesale (leaves, nodes and re-signed checkpoints) by someone
holding the signing key. A signed checkpoint saved outside the database (``consentgate ledger
checkpoint --out DIR`` on a schedule, an auditor's copy, a witness) settles it: the restored
tree must be at least that large and an RFC 9162 consistency proof, built from the restored
nodes, must take the saved root to the restored root. Run it after :func:`verify_tenant`
(which proves the stored nodes and head match the leaves), in the same transaction.

A failure says which of three things happened: the note does not verify under the tenant's
keys (``signature``), the restored tree is smaller than the saved one, i.e. acknowledged
events are missing (``behind``, with how many), or the trees disagree (``forked``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, select

from consentgate.ledger import merkle
from consentgate.ledger.checkpoint import NoteError, parse_checkpoint_body, split_note, verify_note
from consentgate.ledger.store import LedgerStore
from consentgate.storage.tables import ledger_heads

Reason = Literal["signature", "behind", "forked"]


class NotExtended(Exception):
    """The restored ledger does not extend the saved checkpoint; ``reason`` says how."""

    def __init__(self, reason: Reason, detail: str, *, missing: int | None = None) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail
        self.missing = missing


@dataclass(frozen=True)
class ExtendsReport:
    tenant: str
    checkpoint_size: int
    tree_size: int
    proof_hashes: int

    def as_dict(self) -> dict[str, Any]:
        return {"ok": True, **self.__dict__}


def note_origin(note: str) -> str:
    """The origin line of a signed checkpoint note (unverified: only to find its tenant)."""
    try:
        body, _ = split_note(note)
        return parse_checkpoint_body(body).origin
    except NoteError as exc:
        raise ValueError(f"not a signed checkpoint note: {exc}") from None


def check_extends(conn: Connection, tenant: str, store: LedgerStore, note: str) -> ExtendsReport:
    """Prove the tenant's ledger extends the checkpoint in ``note`` or raise NotExtended."""
    try:
        saved = verify_note(note, store.verifier_keys(tenant))
    except NoteError as exc:
        raise NotExtended(
            "signature", f"the saved checkpoint does not verify under the tenant's keys: {exc}"
        ) from None
    if saved.origin != store.origin(tenant):
        raise NotExtended("signature", f"the saved checkpoint is for origin {saved.origin!r}")
    head = conn.execute(
        select(ledger_heads.c.tree_size, ledger_heads.c.root_hash).where(
            ledger_heads.c.tenant_id == tenant
        )
    ).one()
    size, root = int(head.tree_size), bytes(head.root_hash)
    if saved.size > size:
        missing = saved.size - size
        raise NotExtended(
            "behind",
            f"the ledger has {size} leaves but a checkpoint saved earlier signed {saved.size}: "
            f"{missing} acknowledged events are missing (seq {size} to {saved.size - 1})",
            missing=missing,
        )
    proof: list[bytes] = []
    if saved.size == size:
        agrees = saved.root_hash == root
    elif saved.size == 0:
        agrees = saved.root_hash == merkle.EMPTY_ROOT
    else:
        proof = store.consistency_proof(conn, tenant, saved.size, size)
        try:
            merkle.verify_consistency(saved.size, size, proof, saved.root_hash, root)
            agrees = True
        except merkle.ProofError:
            agrees = False
    if not agrees:
        saved_root = base64.b64encode(saved.root_hash).decode()
        raise NotExtended(
            "forked",
            f"the ledger (size {size}) does not extend the saved checkpoint at size "
            f"{saved.size} (root {saved_root}): its first {saved.size} leaves are not the ones "
            "that checkpoint signed",
        )
    return ExtendsReport(tenant, saved.size, size, len(proof))


__all__ = ["ExtendsReport", "NotExtended", "check_extends", "note_origin"]
