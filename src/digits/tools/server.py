"""`make server`: the team's MLflow tracking server, with a database as its backend store and
artifacts proxied through it (clients need no access to the artifact folder).

    python -m digits.tools.server --backend-store-uri postgresql://postgres@127.0.0.1/mlflow

The database is checked first, so a missing driver or a server that does not answer is one
`error:` line instead of MLflow's traceback; then this process becomes `mlflow server`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.urls import check_database, redact


def server_command(args: argparse.Namespace) -> list[str]:
    """The `mlflow server` command line for these options."""
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    return [
        mlflow, "server",
        "--backend-store-uri", args.backend_store_uri,
        "--artifacts-destination", args.artifacts_destination,
        "--serve-artifacts",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip


@contextlib.contextmanager
def serving(
    command: list[str], url: str, log: Path, *, timeout: float = 240, **popen: Any
) -> Iterator[str]:
    """Run a server `command` (output into `log`) in a process group of its own, as MLflow's
    servers start workers of their own; yield `url` once its `/health` answers, and stop the
    whole group when the block ends (SIGTERM, then SIGKILL after 30 s)."""
    import requests

    with log.open("w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"exited {server.returncode}" if server.poll() is not None else "no answer"
                raise RuntimeError(f"{url}: {state}; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """Check the backend store, then exec `mlflow server`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend-store-uri", required=True, help="SQLAlchemy URL of runs and the registry"
    )
    parser.add_argument(
        "--artifacts-destination",
        default=str(Path("server-artifacts").resolve()),
        help="where the server stores artifacts (a folder or an object-store URI)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (more serve more clients at once; each costs memory and start-up)",
    )
    args = parser.parse_args(argv)
    if "://" not in args.backend_store_uri:
        raise PipelineError(f"{args.backend_store_uri}: not a database URL (postgresql://...)")
    check_database(args.backend_store_uri)
    print(
        f"mlflow server on http://{args.host}:{args.port}, runs in "
        f"{redact(args.backend_store_uri)}, artifacts in {args.artifacts_destination}",
        flush=True,
    )
    command = server_command(args)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
