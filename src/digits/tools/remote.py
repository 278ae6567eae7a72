"""`dvc push`/`pull`/`fetch`/`status -c` with SSH host keys checked: dvc-ssh 4.3 connects with
`known_hosts=None`, accepting any server key (a man in the middle included), and DVC's config has
no option for it. This runs DVC in-process with dvc-ssh told to verify every SSH remote's key
against a known_hosts file, and checks the remote's key first, so an unknown or changed key is
one `error:` line, before any data moves.

    python -m digits.tools.remote push -r team

The known_hosts file: $DVC_SSH_KNOWN_HOSTS, else `.dvc/ssh_known_hosts` if the team commits one,
else ~/.ssh/known_hosts (OpenSSH's format; `ssh-keyscan -p PORT HOST` prints the lines).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from digits import PipelineError
from digits.lib.cli import stage_main

TEAM_FILE = Path(".dvc/ssh_known_hosts")


@dataclass(frozen=True)
class SshRemote:
    name: str
    host: str
    port: int
    user: str | None


def known_hosts_file() -> Path:
    """Where the trusted host keys are (see the module's docstring)."""
    if chosen := os.environ.get("DVC_SSH_KNOWN_HOSTS"):
        return Path(chosen).expanduser()
    return TEAM_FILE if TEAM_FILE.is_file() else Path("~/.ssh/known_hosts").expanduser()


def ssh_remotes(argv: Sequence[str]) -> list[SshRemote]:
    """The SSH remotes this DVC command may use: `-r NAME`, else the default remote."""
    from dvc.repo import Repo

    with Repo() as repo:
        config = repo.config
    remotes = config.get("remote", {})
    args = list(argv)
    name = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-r", "--remote")), None)
    name = name or config.get("core", {}).get("remote")
    if name not in remotes:
        return []
    options = remotes[name]
    url = urlsplit(options.get("url", ""))
    if url.scheme != "ssh":
        return []
    port = int(options.get("port") or url.port or 22)
    user = options.get("user") or url.username
    return [SshRemote(name, url.hostname or "", port, user)]


def check_host_key(remote: SshRemote, known_hosts: Path) -> None:
    """Connect far enough to see the server's host key, and refuse one `known_hosts` does
    not list (unknown, or changed). Authentication is left to DVC."""
    import asyncssh

    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # its INFO lines: every packet step

    async def probe() -> None:
        try:
            conn = await asyncssh.connect(
                remote.host, remote.port, username=remote.user or "dvc",
                known_hosts=str(known_hosts), client_keys=None, agent_path=None,
                password=None, preferred_auth="none", connect_timeout=30, config=None,
            )  # fmt: skip
            conn.close()
        except asyncssh.PermissionDenied:  # the key was verified before authentication failed
            return

    address = remote.host if remote.port == 22 else f"[{remote.host}]:{remote.port}"
    try:
        asyncio.run(probe())
    except asyncssh.HostKeyNotVerifiable:
        raise PipelineError(
            f"the SSH remote {remote.name!r} ({address}) presented a host key that {known_hosts} "
            "does not list: an unknown server, or its key changed (which may be an attack); "
            "check its fingerprint with the server's admin, then add it: "
            f"ssh-keyscan -p {remote.port} {remote.host} >> {known_hosts}"
        ) from None
    except (OSError, asyncssh.Error) as err:
        raise PipelineError(
            f"cannot reach the SSH remote {remote.name!r} ({address}): {err}"
        ) from None


def verify_in_dvc(known_hosts: Path) -> None:
    """Make dvc-ssh pass `known_hosts` to asyncssh for every connection of this process."""
    from dvc_ssh import SSHFileSystem

    original = SSHFileSystem._prepare_credentials
    if getattr(original, "checks_host_keys", False):
        return

    @functools.wraps(original)
    def prepare(self, **config):
        login = original(self, **config)
        login["known_hosts"] = str(known_hosts)
        return login

    prepare.checks_host_keys = True  # type: ignore[attr-defined]
    SSHFileSystem._prepare_credentials = prepare


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """Check the SSH remote's host key, then run `dvc ARGV` verifying it on every connection."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    known_hosts = known_hosts_file()
    remotes = ssh_remotes(args)
    if remotes and not known_hosts.is_file():
        raise PipelineError(
            f"no known_hosts file {known_hosts} to check the SSH remote's host key against: "
            "commit one as .dvc/ssh_known_hosts, or set DVC_SSH_KNOWN_HOSTS"
        )
    for remote in remotes:
        check_host_key(remote, known_hosts)
    verify_in_dvc(known_hosts)
    from dvc.cli import main as dvc

    code = dvc(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
