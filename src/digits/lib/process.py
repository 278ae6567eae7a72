"""Process identity across machines, reboots and reused pids: who owns a run, a lock, a trial
or a temp file, and whether that process is gone."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def boot_id() -> str:
    """This kernel boot's id (changes with every reboot), short; "" where Linux has none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return fields[19] if len(fields) > 19 else ""


def process_id(pid: int | None = None) -> str:
    """`host:pid:boot:start`, naming a process across machines, reboots and reused pids."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{boot_id()}:{start_time(pid)}"


@dataclass(frozen=True)
class ProcessName:
    """A parsed `process_id`; `boot` and `start` are "" in the older `host:pid` names."""

    host: str
    pid: int
    boot: str = ""
    start: str = ""

    @classmethod
    def parse(cls, name: str) -> ProcessName | None:
        """`host:pid:boot:start` or `host:pid`; None for anything else."""
        parts = name.split(":")
        if len(parts) == 4:
            host, pid, boot, start = parts
        elif len(parts) == 2:
            (host, pid), boot, start = parts, "", ""
        else:
            return None
        return cls(host, int(pid), boot, start) if host and pid.isdigit() else None


def process_gone(process: str, single_host: bool = False) -> bool:
    """True when `process` (a `process_id`) no longer exists: on this host, its pid is gone,
    or this host rebooted since (boot id), or the pid now names a newer process (start time).
    A process on another host is gone only when `single_host` says every worker must be on
    this one (the journal storage); otherwise its heartbeat judges it."""
    name = ProcessName.parse(process)
    if name is None:
        return False
    if name.host != socket.gethostname():
        return single_host
    if name.boot and name.boot != boot_id():
        return True
    try:
        os.kill(name.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(name.start) and name.start != start_time(name.pid)
