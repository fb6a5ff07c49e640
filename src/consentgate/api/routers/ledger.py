"""Ledger endpoints: checkpoints, verifier keys, leaves, proofs, the tenant's JWKS."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from consentgate.api.deps import MAX_INT64, get_app
from consentgate.api.models import ConsistencyProofOut, InclusionProofOut
from consentgate.api.routers.consent import Auditor
from consentgate.crypto.signing import public_jwk
from consentgate.errors import NotFound
from consentgate.ledger.store import b64
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import checkpoints

router = APIRouter(tags=["ledger"])

NOTE = "text/plain; charset=utf-8"


@router.get("/v1/ledger/checkpoint", response_class=PlainTextResponse)
def checkpoint(request: Request, principal: Auditor) -> Response:
    """The latest signed checkpoint (C2SP tlog-checkpoint in a C2SP signed note)."""
    app = get_app(request)
    with read_tx(app.engine) as conn:
        cp = app.ledger.latest_checkpoint(conn, principal.tenant)
    return PlainTextResponse(cp.note, media_type=NOTE)


@router.get("/v1/ledger/key", response_class=PlainTextResponse)
def verifier_key(
    request: Request,
    principal: Auditor,
    all_keys: Annotated[bool, Query(alias="all")] = False,
) -> Response:
    """The checkpoint verifier key (C2SP note verifier key); `?all=true` adds retired keys,
    one per line after the current one."""
    keys = get_app(request).ledger.verifier_keys(principal.tenant)
    return PlainTextResponse("\n".join(keys if all_keys else keys[:1]) + "\n", media_type=NOTE)


@router.get("/v1/ledger/entries/{seq}")
def entry(
    seq: Annotated[int, Path(ge=0, le=MAX_INT64)], request: Request, principal: Auditor
) -> Response:
    """The exact canonical bytes (RFC 8785 JSON) of one leaf."""
    app = get_app(request)
    with read_tx(app.engine) as conn:
        leaf, leaf_hash = app.ledger.entry(conn, principal.tenant, seq)
    return Response(leaf, media_type="application/json", headers={"Leaf-Hash": b64(leaf_hash)})


@router.get("/v1/ledger/proof/inclusion", response_model=InclusionProofOut)
def inclusion(
    request: Request,
    principal: Auditor,
    seq: Annotated[int, Query(ge=0, le=MAX_INT64)],
    tree_size: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
) -> Any:
    """RFC 9162 inclusion proof of leaf `seq` in the tree of `tree_size` (default: latest)."""
    app = get_app(request)
    with read_tx(app.engine) as conn:
        size, leaf_hash, hashes = app.ledger.inclusion_proof(conn, principal.tenant, seq, tree_size)
        note = conn.execute(
            checkpoints.select()
            .with_only_columns(checkpoints.c.note)
            .where(checkpoints.c.tenant_id == principal.tenant, checkpoints.c.tree_size == size)
        ).scalar_one_or_none()
    return {
        "seq": seq,
        "tree_size": size,
        "leaf_hash": b64(leaf_hash),
        "hashes": [b64(h) for h in hashes],
        "checkpoint": note,
    }


@router.get("/v1/ledger/proof/consistency", response_model=ConsistencyProofOut)
def consistency(
    request: Request,
    principal: Auditor,
    first: Annotated[int, Query(ge=1, le=MAX_INT64)],
    second: Annotated[int, Query(ge=1, le=MAX_INT64)],
) -> Any:
    """RFC 9162 consistency proof between tree sizes `first` ≤ `second`."""
    app = get_app(request)
    with read_tx(app.engine) as conn:
        hashes = app.ledger.consistency_proof(conn, principal.tenant, first, second)
    return {"first": first, "second": second, "hashes": [b64(h) for h in hashes]}


@router.get("/v1/tenants/{tenant}/jwks.json")
def jwks(tenant: str, request: Request) -> Response:
    """The tenant's public signing keys, retired ones included (public, cacheable)."""
    app = get_app(request)
    if not app.tenants.exists(tenant) or not app.keystore.has_tenant(tenant):
        raise NotFound("no such tenant")
    keys = [public_jwk(k.public_key, k.kid) for k in app.keystore.signing_keys(tenant)]
    return JSONResponse({"keys": keys}, headers={"Cache-Control": "public, max-age=300"})
