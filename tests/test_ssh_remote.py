"""An SSH DVC remote for real: OpenSSH's sshd, started here in the foreground on a free loopback
port with a host key and a client key made for the test; Alice pushes the processed data over
SFTP (dvc-ssh), Bob's fresh clone pulls it, both through `python -m digits.tools.remote`, which
checks the server's host key against the team's known_hosts file: an unknown or changed key is
refused before any data moves. REQUIRE_SSHD=1 (set by .ci/run) makes a missing sshd a failure;
elsewhere the test skips and says why."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import (
    GIT_IDENTITY,
    free_port,
    make_command,
    project_copy,
    real_params,
    shrink,
    stage_env,
    wait_until,
)

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    key: Path  # the client's private key
    host_key: Path  # the server's public host key

    def known_hosts_line(self, public_key: Path | None = None) -> str:
        """OpenSSH's known_hosts line for this server (with another key: a changed one)."""
        kind, key = (public_key or self.host_key).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"


def need_sshd() -> None:
    if Path(SSHD).is_file():
        return
    reason = f"no OpenSSH server at {SSHD} (Debian: apt-get install openssh-server)"
    if os.environ.get("REQUIRE_SSHD") == "1":
        pytest.fail(reason + "; REQUIRE_SSHD=1 makes it mandatory")
    print(reason)
    pytest.skip(reason)


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """sshd -D (not daemonised) on 127.0.0.1:<free port>, public keys only, for this user."""
    need_sshd()
    folder = tmp_path / "sshd"
    folder.mkdir()
    keygen(folder / "host_key")
    keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile none\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = (folder / "sshd.log").open("w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:

        def banner() -> bool:
            assert server.poll() is None, (folder / "sshd.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    return s.recv(64).startswith(b"SSH-")
            except OSError:
                return False

        wait_until(banner, 30, "sshd's banner")
        yield Sshd(port, getpass.getuser(), folder / "client_key", folder / "host_key.pub")
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def add_ssh_remote(clone: Path, sshd: Sshd, store: Path, env: dict[str, str]) -> None:
    """docs/team.md's commands for a team SSH remote; the key stays in the clone's config.local."""
    dvc = str(BIN / "dvc")
    run([dvc, "remote", "add", "--local", "team", f"ssh://127.0.0.1{store}"], clone, env)
    for option, value in (("port", sshd.port), ("user", sshd.user), ("keyfile", sshd.key)):
        run([dvc, "remote", "modify", "--local", "team", option, str(value)], clone, env)


REMOTE = [str(BIN / "python"), "-m", "digits.tools.remote"]  # dvc with host keys checked


def alice_with_data(tmp_path: Path, mirror, sshd: Sshd, env: dict[str, str]) -> Path:
    """Alice's clone with the processed data committed and the SSH remote `team` added."""
    folder, hashes = mirror
    alice = project_copy(tmp_path / "alice", shrink(real_params(), hashes, [str(folder)]))
    run([str(BIN / "dvc"), "repro", "preprocess"], alice, env)
    run(["git", "add", "-A"], alice, env)
    run(["git", "commit", "-qm", "data"], alice, env)
    add_ssh_remote(alice, sshd, tmp_path / "ssh-store", env)
    return alice


def test_push_and_pull_over_ssh(tmp_path: Path, mirror, sshd: Sshd) -> None:
    known_hosts = tmp_path / "known_hosts"  # the team's file, as `ssh-keyscan` writes it
    known_hosts.write_text(sshd.known_hosts_line())
    env = stage_env(DVC_SSH_KNOWN_HOSTS=str(known_hosts), **GIT_IDENTITY)
    alice = alice_with_data(tmp_path, mirror, sshd, env)
    store = tmp_path / "ssh-store"  # reached only through sshd
    pushed = run([*REMOTE, "push", "-r", "team", "preprocess"], alice, env)
    assert any(store.rglob("*")), pushed

    bob = tmp_path / "bob"
    run(["git", "clone", "-q", str(alice), str(bob)], tmp_path, env)
    add_ssh_remote(bob, sshd, store, env)
    run([*REMOTE, "pull", "-r", "team", "preprocess"], bob, env)
    for name in ("train.npz", "val.npz", "test.npz"):
        processed = Path("data/processed") / name
        assert (bob / processed).read_bytes() == (alice / processed).read_bytes(), name
    assert "didn't change" in run([str(BIN / "dvc"), "repro", "preprocess"], bob, env)
    log = (tmp_path / "sshd/sshd.log").read_text()
    assert "Accepted publickey" in log, log  # the data went through sshd, with the test's key


@pytest.mark.parametrize("trusted", ["unknown", "changed"])
def test_an_unknown_or_changed_host_key_is_refused(
    tmp_path: Path, mirror, sshd: Sshd, trusted: str
) -> None:
    """Nothing moves and the key is not even offered a login: one `error:` line that says how
    to check and add the key. `changed` lists another key for the same host and port."""
    known_hosts = tmp_path / "known_hosts"
    if trusted == "unknown":
        known_hosts.write_text("[127.0.0.1]:1 ssh-ed25519 " + sshd.known_hosts_line().split()[2])
    else:
        keygen(tmp_path / "other_key")
        known_hosts.write_text(sshd.known_hosts_line(tmp_path / "other_key.pub"))
    env = stage_env(DVC_SSH_KNOWN_HOSTS=str(known_hosts), **GIT_IDENTITY)
    alice = alice_with_data(tmp_path, mirror, sshd, env)
    out = subprocess.run(
        [*REMOTE, "push", "-r", "team", "preprocess"],
        cwd=alice, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the SSH remote 'team'"), out.stderr
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known_hosts}" in lines[0]
    assert not (tmp_path / "ssh-store").exists(), "data reached the server"
    assert "Accepted publickey" not in (tmp_path / "sshd/sshd.log").read_text()


def test_make_pull_checks_the_host_key(tmp_path: Path, mirror, sshd: Sshd) -> None:
    """`make pull` goes through the wrapper: from the default SSH remote with an unknown host
    key it fetches nothing and says so in one `error:` line."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("[127.0.0.1]:1 ssh-ed25519 " + sshd.known_hosts_line().split()[2])
    env = stage_env(DVC_SSH_KNOWN_HOSTS=str(known_hosts), **GIT_IDENTITY)
    alice = alice_with_data(tmp_path, mirror, sshd, env)
    run([str(BIN / "dvc"), "remote", "default", "--local", "team"], alice, env)
    out = subprocess.run(
        make_command("pull"), cwd=alice, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: the SSH remote 'team'"), out.stderr
    assert "Traceback" not in out.stderr
    assert "Accepted publickey" not in (tmp_path / "sshd/sshd.log").read_text()
