"""A PostgreSQL instance of the test's own, with passwords (`initdb --auth=scram-sha-256`), on a
free loopback port in a temporary folder: what a team's database server looks like, unlike the
machine's trusting cluster on 5432. Run as the `postgres` OS user when the tests run as root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import free_port, wait_until


@dataclass(frozen=True)
class Postgres:
    port: int
    superuser_password: str = field(repr=False)
    folder: Path  # its data, socket and log

    def url(self, user: str, password: str, database: str) -> str:
        """A SQLAlchemy URL with the password percent-encoded, as users must write it."""
        secret = quote(password, safe="")
        return f"postgresql+psycopg2://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def execute(self, *statements: str, params: tuple = ()) -> None:
        """Run statements as the superuser, outside a transaction (CREATE DATABASE)."""
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres",
            password=self.superuser_password, dbname="postgres", connect_timeout=5,
        )  # fmt: skip
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement, params if "%s" in statement else None)
        finally:
            conn.close()

    def add_role(self, name: str, password: str, databases: list[str]) -> None:
        """A login role with a scram-sha-256 password, owning new `databases`."""
        self.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", params=(password,))
        self.execute(*[f"CREATE DATABASE {db} OWNER {name}" for db in databases])


def pg_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def scram_postgres(superuser_password: str) -> Iterator[Postgres]:
    """initdb (scram-sha-256 for every connection) and pg_ctl start; stopped and deleted after."""
    bin_ = pg_bin()
    if bin_ is None:
        reason = "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; REQUIRE_POSTGRES=1 makes it mandatory")
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="digits-pg-"))  # not under pytest's 0700 root folder
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    pwfile = folder / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    pwfile.chmod(0o600)
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    port, data = free_port(), folder / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(str(bin_ / "initdb"), "-D", str(data), "--auth=scram-sha-256", "-U", "postgres",
            f"--pwfile={pwfile}", "-E", "UTF8")  # fmt: skip
        pwfile.unlink()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        run(str(bin_ / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
            "-w", "start")  # fmt: skip
        server = Postgres(port, superuser_password, folder)
        wait_until(lambda: server.execute("SELECT 1") is None, 30, "the test's PostgreSQL")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bin_ / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
