"""A campaign audience is normalised and hashed in batches (the bulk path), with the answers
of the number-by-number path: the same rows accepted, the same row numbers reported invalid,
seqs in row order, each stored hashed id and sealed number that of the row's E.164 form."""

from __future__ import annotations

from sqlalchemy import select

from consentgate.bootstrap import App
from consentgate.delivery.campaigns import BATCH
from consentgate.delivery.sealed import unseal_number
from consentgate.delivery.templates import Template
from consentgate.domain.identity import normalise_phone
from consentgate.errors import InvalidInput
from consentgate.storage.engine import read_tx
from consentgate.storage.tables import campaign_recipients

SHAPES = ("07400 1{:05d}", "+44 7400 1{:05d}", "(07400) 1{:05d}", "+447400.1{:05d}")


def _row(i: int) -> str:
    if i % 997 == 5:
        return "+44 12"  # too short
    if i % 1499 == 7:
        return f"07700 900{i % 1000:03d}"  # unallocated (drama range)
    return SHAPES[i % len(SHAPES)].format(i)


def test_upload_in_batches_matches_the_one_by_one_answers(core: App, backend: str) -> None:
    core.tenants.create("acme", "GB")
    core.registry.create_template("acme", Template("tpl-1", "hello", "Hello", None, False))
    campaign = core.campaigns.create("acme", "tpl-1", "marketing_rcs")
    raws = [_row(i) for i in range(2 * BATCH + 321)]
    body = "phone\n" + "".join(f"{r}\n" for r in raws)
    chunks = (body[i : i + 7001].encode() for i in range(0, len(body), 7001))
    result = core.campaigns.upload("acme", "GB", campaign, chunks, "text/csv")

    expected: list[str] = []
    invalid: list[int] = []
    for number, raw in enumerate(raws, start=1):
        try:
            expected.append(normalise_phone(raw, "GB").value)
        except InvalidInput:
            invalid.append(number)
    assert invalid and result["invalid"] == len(invalid)
    assert result["invalid_rows"] == invalid[:100]
    assert result["accepted"] == len(expected)

    with read_tx(core.engine) as conn:
        stored = conn.execute(
            select(
                campaign_recipients.c.seq,
                campaign_recipients.c.hashed_id,
                campaign_recipients.c.sealed,
                campaign_recipients.c.wrapped_key,
            )
            .where(campaign_recipients.c.campaign_id == campaign)
            .order_by(campaign_recipients.c.seq)
        ).all()
    assert [r.seq for r in stored] == list(range(len(expected)))
    for r, e164 in zip(stored, expected, strict=True):
        assert (
            r.hashed_id == core.links.hash_identifier("acme", normalise_phone(e164, None)).current
        )
        context = f"{campaign}:{r.seq}"
        assert unseal_number(core.keystore, "acme", context, r.sealed, r.wrapped_key) == e164
