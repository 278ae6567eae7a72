"""`make server`: the team's MLflow tracking server, with users and permissions.

MLflow's basic-auth app, a database as its backend store, its users in a second database on the
same PostgreSQL server, and artifacts proxied through it (clients need no access to the folder).

    export SERVER_DB=postgresql://mlflow:PASSWORD@db-host/mlflow   # read from the environment
    export MLFLOW_AUTH_ADMIN_PASSWORD=...                          # or --admin-password-file
    python -m digits.tools.server serve
    python -m digits.tools.server user add alice --role logger     # see digits.tools.users

No secret is ever on a command line (`ps` shows those): the backend URL reaches `mlflow server`
as $MLFLOW_BACKEND_STORE_URI, the auth store's URL in a 0600 ini file in a private folder, the
admin password as $MLFLOW_AUTH_ADMIN_PASSWORD. The databases are checked first, so a missing
driver or a server that does not answer is one `error:` line instead of MLflow's traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets as tokens
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.secrets import read_private_file, write_private_file
from digits.lib.urls import StorageUrl, check_database

DEFAULT_PERMISSION = "NO_PERMISSIONS"  # least privilege: a new user sees nothing until granted
ADMIN_MIN_LENGTH = 12  # MLflow's rule for passwords


def server_command(args: argparse.Namespace) -> list[str]:
    """The `mlflow server` command line for these options (no secret in it)."""
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    auth = [] if args.no_auth else ["--app-name", "basic-auth"]
    return [
        mlflow, "server", *auth,
        "--artifacts-destination", args.artifacts_destination,
        "--serve-artifacts",
        "--host", args.host,
        "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip


def auth_ini(database: StorageUrl, admin: str) -> str:
    """MLflow's basic_auth.ini: users in `database`, new users with no permission."""
    uri = database.secret.replace("%", "%%")  # configparser interpolates `%`
    return (
        f"[mlflow]\ndefault_permission = {DEFAULT_PERMISSION}\ndatabase_uri = {uri}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def admin_password(file: Path | None) -> str:
    """The admin's password: $MLFLOW_AUTH_ADMIN_PASSWORD, else the 0600 `file`."""
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or (
        read_private_file(file).strip() if file else ""
    )
    if len(password) < ADMIN_MIN_LENGTH:
        raise PipelineError(
            f"the server's admin password must be set, at least {ADMIN_MIN_LENGTH} characters: "
            "export MLFLOW_AUTH_ADMIN_PASSWORD=... or pass --admin-password-file FILE (mode 0600)"
        )
    return password


def server_environment(args: argparse.Namespace, folder: Path) -> dict[str, str]:
    """The environment `mlflow server` runs with: the backend URL, and with auth the 0600 ini
    in `folder`, the admin password and a session key shared by its workers."""
    backend = backend_url()
    check_database(backend.secret)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend.secret}
    env.pop("SERVER_DB", None)
    if args.no_auth:
        return env
    password = admin_password(args.admin_password_file)
    users = auth_url(backend)
    check_database(users.secret, purpose="the server's users: createdb it beside the runs")
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    ini = folder / "basic_auth.ini"
    write_private_file(ini, auth_ini(users, admin))
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=env.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or tokens.token_hex(32),
    )
    return env


def backend_url() -> StorageUrl:
    """$SERVER_DB (or MLflow's own $MLFLOW_BACKEND_STORE_URI), parsed once."""
    text = os.environ.get("SERVER_DB") or os.environ.get("MLFLOW_BACKEND_STORE_URI")
    if not text:
        raise PipelineError(
            "no backend store: export SERVER_DB=postgresql://USER@HOST/mlflow (USER:PASSWORD@ "
            "with a password, percent-encoded), in the environment, never on the command line"
        )
    url = StorageUrl.parse(text)
    if url.database is None:
        raise PipelineError(f"{url}: not a database URL (postgresql://...)")
    return url


def auth_url(backend: StorageUrl) -> StorageUrl:
    """$SERVER_AUTH_DB, else the backend's server with database `<backend>_auth`."""
    text = os.environ.get("SERVER_AUTH_DB")
    return StorageUrl.parse(text) if text else backend.with_database(f"{backend.database}_auth")


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


def serve(args: argparse.Namespace) -> int:
    """Run `mlflow server` until it exits or this process is stopped; the private folder with
    the ini file is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="digits-server-") as folder:  # mode 0700
        env = server_environment(args, Path(folder))
        auth = "no auth (anyone who reaches it may do anything)" if args.no_auth else "users"
        print(
            f"mlflow server on http://{args.host}:{args.port} ({auth}), runs in "
            f"{backend_url()}, artifacts in {args.artifacts_destination}",
            flush=True,
        )
        server = subprocess.Popen(server_command(args), env=env)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to the server too
            return server.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the tracking server ($SERVER_DB: its database)")
    run.add_argument(
        "--artifacts-destination",
        default=str(Path("server-artifacts").resolve()),
        help="where the server stores artifacts (a folder or an object-store URI)",
    )
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    run.add_argument("--port", type=int, default=5000, help="port to listen on")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (more serve more clients at once; each costs memory and start-up)",
    )
    run.add_argument(
        "--admin-password-file",
        type=Path,
        help="a 0600 file with the admin's password (else $MLFLOW_AUTH_ADMIN_PASSWORD)",
    )
    run.add_argument(
        "--no-auth",
        action="store_true",
        help="no users: only for a server on loopback or a closed test network",
    )
    from digits.tools import users

    users.add_parser(commands)
    return parser.parse_args(argv)


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """`serve` the tracking server, or manage its users (`user ...`)."""
    args = parse_args(argv)
    if args.command == "user":
        from digits.tools import users

        users.run(args)
        return
    code = serve(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
