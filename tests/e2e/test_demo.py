"""`consentgate demo` runs the whole send path and explains every decision."""

from __future__ import annotations

import io

from rich.console import Console

from consentgate.demo import run


def test_demo_covers_every_mode_and_refusal() -> None:
    out = io.StringIO()
    rows = run(Console(file=out, width=200))
    modes = {r["mode"] for r in rows}
    assert {"native_e2ee", "app_layer", "in_app", "sms_redacted", "secure_link"} <= modes
    assert {r["reason"] for r in rows if r["action"] == "skipped"} == {"no_consent", "withdrawn"}
    text = out.getvalue()
    assert "Hi Ada, your order has shipped" in text  # the envelope opened on the device
    assert "+447911100001" not in text  # numbers are masked
