"""``consentgate demo``: the whole send path against the sandbox carrier, in one command.

It starts a throwaway consentgate (SQLite in a temporary directory, the sandbox mounted) on a
free loopback port, records consent for a handful of made-up recipients, registers an app key
for one of them with the device SDK, sends one message to each, and prints who got what, in
which mode, and why. Numbers are shown masked.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from consentgate.device import DeviceKeys, register


@dataclass(frozen=True)
class Recipient:
    label: str
    phone: str
    consent: str | None  # granted / withdrawn / None
    rcs: bool = False
    native_e2ee: bool = False
    app_key: bool = False
    sensitive: bool = False


RECIPIENTS = [
    Recipient("native E2EE phone", "+447911100001", "granted", rcs=True, native_e2ee=True),
    Recipient("RCS + app key", "+447911100002", "granted", rcs=True, app_key=True),
    Recipient("app only (no RCS)", "+447911100003", "granted", app_key=True),
    Recipient("SMS only", "+447911100004", "granted"),
    Recipient("SMS only, sensitive", "+447911100004", "granted", sensitive=True),
    Recipient("never consented", "+447911100005", None, rcs=True),
    Recipient("withdrew (STOP)", "+447911100006", "withdrawn", rcs=True, native_e2ee=True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mask(phone: str) -> str:
    return phone[:3] + "•" * (len(phone) - 5) + phone[-2:]


def run(console: Console | None = None) -> list[dict[str, Any]]:
    """Run the scenario; return the rows it printed (for tests)."""
    from consentgate.api.app import create_app
    from consentgate.bootstrap import build
    from consentgate.config import load_settings

    console = console or Console()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="consentgate-demo-") as data_dir:
        env = {
            **os.environ,
            "CONSENTGATE_DATA_DIR": data_dir,
            "CONSENTGATE_DATABASE_URL": f"sqlite:///{data_dir}/demo.db",
            "CONSENTGATE_PUBLIC_URL": url,
        }
        env.pop("CONSENTGATE_SANDBOX_URL", None)
        core = build(load_settings(env))
        server = uvicorn.Server(
            uvicorn.Config(create_app(core), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            for _ in range(200):
                if server.started:
                    break
                time.sleep(0.025)
            return _scenario(core, url, console)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            core.close()


def _scenario(core: Any, url: str, console: Console) -> list[dict[str, Any]]:
    tenant = core.tenants.create("demo", "GB")
    key = tenant["api_key"]
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    sandbox = httpx.Client(base_url=f"{url}/sandbox", timeout=10)
    sandbox.put(
        "/devices",
        json={
            "devices": [
                {"phone": r.phone, "rcs": r.rcs, "native_e2ee": r.native_e2ee}
                for r in RECIPIENTS
                if r.rcs
            ]
        },
    ).raise_for_status()
    events = []
    for i, r in enumerate(RECIPIENTS):
        if r.consent is None:
            continue
        events.append(
            {
                "consent_id": f"demo-{i}-grant",
                "phone": r.phone,
                "consent_type": "marketing_rcs",
                "status": "granted",
                "timestamp": "2026-11-01T09:00:00Z",
                "source": "web",
            }
        )
        if r.consent == "withdrawn":
            events.append(
                {
                    "consent_id": f"demo-{i}-stop",
                    "phone": r.phone,
                    "consent_type": "marketing_rcs",
                    "status": "withdrawn",
                    "timestamp": "2026-11-02T09:00:00Z",
                    "source": "inbound_keyword",
                }
            )
    http.post("/v1/consent-events", json={"events": events}).raise_for_status()
    keys = {}
    for r in RECIPIENTS:
        if r.app_key:
            keys[r.phone] = DeviceKeys.generate()
            register(
                url,
                key,
                keys=keys[r.phone],
                rcs=r.rcs,
                native_e2ee=False,
                phone=r.phone,
                client=http,
            )
    plain = http.post(
        "/v1/templates", json={"name": "order", "text": "Hi {{first_name}}, your order has shipped"}
    ).json()["template_id"]
    sensitive = http.post(
        "/v1/templates",
        json={
            "name": "result",
            "text": "{{first_name}}, your test result is ready",
            "sensitive": True,
        },
    ).json()["template_id"]
    rows = []
    for i, r in enumerate(RECIPIENTS):
        answer = http.post(
            "/v1/messages",
            json={
                "to": r.phone,
                "consent_type": "marketing_rcs",
                "template_id": sensitive if r.sensitive else plain,
                "variables": {"first_name": "Ada"},
                "idempotency_key": f"demo-{i}",
            },
        ).json()
        rows.append({"recipient": r.label, "to": _mask(r.phone), **answer["decision"]})
    carried = sandbox.get("/messages").json()["messages"]
    jwks = httpx.get(f"{url}/v1/tenants/demo/jwks.json").json()
    opened = ""
    for m in carried:
        if m.get("envelope") and m.get("to") in keys:
            opened = keys[m["to"]].open(m["envelope"], jwks, tenant="demo")["text"]
            break
    table = Table(title="consentgate demo: one message each, against the sandbox carrier")
    for column in ("recipient", "to", "action", "mode", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(str(row[c] or "–") for c in ("recipient", "to", "action", "mode", "reason"))
        )
    console.print(table)
    console.print(f"The carrier received {len(carried)} messages; none to the two refused.")
    if opened:
        console.print(
            f"An app-layer envelope, opened on the device with its key: [bold]{opened}[/]"
        )
    return rows
