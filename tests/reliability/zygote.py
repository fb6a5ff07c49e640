"""A process that imports consentgate once and forks the suite's servers and workers from it.

Starting ``consentgate serve`` or ``worker`` costs about two seconds of CPU in imports alone
(ten seconds of wall time on a shared 2-core machine), and the scenarios start and kill a
dozen of them. A child forked from this already-imported interpreter runs the very same entry
points (:func:`consentgate.cli.cli`, the carrier's ``main``) in a process of its own (its own
session, log file and environment), starts in milliseconds, and dies to ``kill -9`` like any
other. The test process talks to it over stdin/stdout, one JSON line each way.

It is started with ``python -m tests.reliability.zygote``; it exits when its stdin closes.
Children are reaped by the kernel (``SIGCHLD`` ignored); the tests watch them through a pidfd.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _child(request: dict[str, object]) -> None:
    os.setsid()
    log = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    args = [str(a) for a in request["args"]]  # type: ignore[attr-defined]
    code: object = 0
    try:
        if request["program"] == "sandbox":
            from consentgate.sandbox.__main__ import main as sandbox_main

            sys.argv = ["consentgate-sandbox", *args]
            code = sandbox_main(args)
        else:
            from consentgate.cli import cli

            sys.argv = ["consentgate", *args]
            cli(args, prog_name="consentgate")
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def main() -> None:
    # The imports every child inherits (serve's own are lazy, inside the command).
    import uvicorn  # noqa: F401

    import consentgate.api.app
    import consentgate.api.server
    import consentgate.cli
    import consentgate.observability.logs
    import consentgate.sandbox.__main__  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    main()
