"""Worker hosts on one machine, for the multi-host sweep test and benchmark: Linux network
namespaces, each with its own hostname and a veth link to a bridge, where PostgreSQL and an
MLflow tracking server listen. Needs root, iproute2 and util-linux's `unshare`."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from digits.tools.server import serving

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Unavailable(Exception):
    """This machine cannot run hosts: not root, no iproute2, or namespaces refused."""


def sh(*cmd: str) -> str:
    """Run a command that must succeed; its stdout."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Host:
    name: str  # its hostname and network namespace
    address: str
    link: str  # its veth end on this machine: down = the host is cut off


@dataclass
class Network:
    server: str  # the bridge's address, where the shared services listen
    subnet: str
    hosts: list[Host] = field(default_factory=list)


def free_subnet() -> int:
    """N of a 10.231.N.0/24 that no interface here uses (random: parallel runs differ)."""
    used = sh("ip", "-4", "-o", "addr")
    free = [n for n in range(2, 252) if f" 10.231.{n}." not in used]
    if not free:
        raise RuntimeError("no free 10.231.N.0/24")
    return random.choice(free)


@contextlib.contextmanager
def network(count: int = 2) -> Iterator[Network]:
    """A bridge with `count` namespaces on it; everything deleted afterwards (any process
    left on a host killed first), whatever happened."""
    if os.geteuid() != 0:
        raise Unavailable("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    n = free_subnet()
    net = Network(f"10.231.{n}.1", f"10.231.{n}.0/24")
    bridge = f"d14b{tag}"
    made: list[tuple[str, str]] = []  # ("netns" | "link", name), deleted in reverse
    try:
        names = [f"d14{tag}{chr(ord('a') + i)}" for i in range(count)]
        for ns in names:
            done = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
            if done.returncode:
                raise Unavailable(f"cannot create a network namespace: {done.stderr.strip()}")
            made.append(("netns", ns))
        sh("ip", "link", "add", bridge, "type", "bridge")
        made.append(("link", bridge))
        sh("ip", "addr", "add", f"{net.server}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, ns in enumerate(names):
            outer = f"{ns}h"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            made.append(("link", outer))
            sh("ip", "link", "set", outer, "master", bridge, "up")
            address = f"10.231.{n}.{i + 2}"
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            net.hosts.append(Host(ns, address, outer))
        yield net
    finally:
        for kind, name in reversed(made):
            if kind == "netns":
                kill_host(name)
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True)


def on_host(host: Host, argv: list[str]) -> list[str]:
    """`argv` run on `host`: in its namespace, under its own hostname, at nice 19."""
    rename = 'hostname "$0" && exec "$@"'
    return [
        "ip", "netns", "exec", host.name, "unshare", "--uts", "sh", "-c", rename, host.name,
        "nice", "-n", "19", *argv,
    ]  # fmt: skip


def kill_host(name: str) -> list[int]:
    """kill -9 every process on the host: what a power cut does. Returns their pids."""
    listed = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    pids = [int(p) for p in listed.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def pg_query(sql: str) -> list[tuple] | None:
    """One statement on the local PostgreSQL as its superuser, outside a transaction."""
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    conn.autocommit = True  # ALTER SYSTEM refuses to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def restart_postgres() -> None:
    """Restart the server (listen_addresses needs it) and wait until it answers."""
    import psycopg2

    version, cluster = pg_query("SHOW cluster_name")[0][0].split("/")
    sh("pg_ctlcluster", version, cluster, "restart")
    for _ in range(60):
        try:
            psycopg2.connect(PG_ADMIN, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.5)
    raise RuntimeError("PostgreSQL did not come back after its restart")


@contextlib.contextmanager
def postgres_listening(net: Network) -> Iterator[None]:
    """PostgreSQL listening on the bridge too and trusting its subnet (Debian's cluster, which
    `pg_ctlcluster` restarts); listen_addresses and pg_hba.conf put back exactly as they were,
    and the server restarted, afterwards."""
    if not Path("/usr/bin/pg_ctlcluster").exists():
        raise Unavailable("no pg_ctlcluster (Debian's postgresql-common) to restart PostgreSQL")
    listening = pg_query("SHOW listen_addresses")[0][0]
    auto = pg_query(
        "SELECT setting FROM pg_file_settings WHERE name = 'listen_addresses' "
        "AND sourcefile LIKE '%postgresql.auto.conf'"
    )
    hba = Path(pg_query("SHOW hba_file")[0][0])
    original = hba.read_bytes()
    try:
        pg_query(f"ALTER SYSTEM SET listen_addresses = '{listening},{net.server}'")
        line = f"\nhost all all {net.subnet} trust  # digits: worker hosts (digits.tools.hosts)\n"
        hba.write_bytes(original + line.encode())
        restart_postgres()
        yield
    finally:
        hba.write_bytes(original)
        if auto:
            pg_query(f"ALTER SYSTEM SET listen_addresses = '{auto[-1][0]}'")
        else:
            pg_query("ALTER SYSTEM RESET listen_addresses")
        restart_postgres()
        if pg_query("SHOW listen_addresses")[0][0] != listening:
            raise RuntimeError("PostgreSQL's listen_addresses were not restored")


@contextlib.contextmanager
def tracking_server(
    net: Network, database: str, folder: Path, env: dict[str, str]
) -> Iterator[str]:
    """`python -m digits.tools.server` (`database` as backend store, artifacts proxied into
    `folder`) on the bridge's address; yields its URL once it answers."""
    port = 5000 + int(uuid.uuid4().hex[:3], 16) % 4000
    # no users: the hosts are namespaces on this machine; the URL travels in the environment
    cmd = [sys.executable, "-m", "digits.tools.server", "serve", "--no-auth"]
    cmd += ["--host", net.server, "--port", str(port)]
    cmd += ["--artifacts-destination", str(folder / "artifacts")]
    folder.mkdir(parents=True, exist_ok=True)
    url = f"http://{net.server}:{port}"
    env = {**env, "SERVER_DB": database}
    with serving(["nice", "-n", "19", *cmd], url, folder / "server.log", env=env) as answering:
        yield answering
