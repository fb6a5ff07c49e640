"""``python -m consentgate.sandbox``: the sandbox carrier in a process of its own.

By default ``consentgate serve`` mounts the carrier at ``/sandbox`` of the API process; under
load the carrier then competes with the API and the dispatch worker for one interpreter. Run
here, it gets its own, and consentgate reaches it through ``CONSENTGATE_SANDBOX_URL`` (the
worker restart test and the campaign benchmark do this). The credentials must match those of
the consentgate processes: ``CONSENTGATE_SANDBOX_RBM_TOKEN`` (the RBM webhook client token)
and ``CONSENTGATE_SANDBOX_TWILIO_TOKEN``. Callbacks (receipts, inbound replies) go to
``--callback-url`` (default ``$CONSENTGATE_PUBLIC_URL/v1/providers/rbm/callbacks``).

No access log: RBM paths carry phone numbers.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
import uvicorn

from consentgate.sandbox.app import create_sandbox
from consentgate.sandbox.fastpath import RbmFastPath


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consentgate.sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--callback-url", default=None)
    parser.add_argument("--auto-receipts", action="store_true")
    args = parser.parse_args(argv)
    rbm_token = os.environ.get("CONSENTGATE_SANDBOX_RBM_TOKEN", "")
    twilio_token = os.environ.get("CONSENTGATE_SANDBOX_TWILIO_TOKEN", "")
    if not rbm_token or not twilio_token:
        print(
            "set CONSENTGATE_SANDBOX_RBM_TOKEN and CONSENTGATE_SANDBOX_TWILIO_TOKEN",
            file=sys.stderr,
        )
        return 2
    public = os.environ.get("CONSENTGATE_PUBLIC_URL", "").rstrip("/")
    callback = args.callback_url or (f"{public}/v1/providers/rbm/callbacks" if public else None)
    app = create_sandbox(
        callback,
        rbm_token,
        twilio_token,
        http=httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0)),
        auto_receipts=args.auto_receipts,
    )
    uvicorn.run(
        RbmFastPath(app), host=args.host, port=args.port, access_log=False, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
