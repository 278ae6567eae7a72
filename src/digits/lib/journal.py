"""Optuna's journal file (`JournalFileBackend`), repaired before a sweep opens it.

Optuna appends one JSON record per line. A short write (a full disk, a crash mid-append) leaves
a partial last line; the next append is glued onto it, and from then on Optuna cannot read the
study. `repair_journal` drops such partial records (a glued line keeps its intact record), after
copying the journal as it was to a backup, and warns naming both.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits.lib.files import atomic_path, reporting_disk_full

if TYPE_CHECKING:
    from optuna.storages.journal import JournalFileBackend

log = logging.getLogger(__name__)

RECORD_START = b'{"op_code"'  # how every record Optuna writes begins


def journal_backend(path: str | Path) -> JournalFileBackend:
    """Optuna's `JournalFileBackend` on `path` whose appends report a full disk as a
    DiskFullError naming the journal and the space left (a short write it leaves behind is
    what `repair_journal` drops)."""
    from optuna.storages.journal import JournalFileBackend

    class Backend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            with reporting_disk_full(path):
                super().append_logs(logs)

    return Backend(str(path))


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def salvage(data: bytes) -> tuple[bytes, list[bytes]]:
    """The journal's bytes without partial records, and the partial records dropped. A line
    whose start is a partial record and whose end an intact one (an append glued onto a short
    write) keeps the intact one."""
    *lines, tail = data.split(b"\n")  # tail: after the last newline, b"" when it ends with one
    kept: list[bytes] = []
    dropped: list[bytes] = []
    for line in lines:
        if _is_record(line):
            kept.append(line)
            continue
        at = line.rfind(RECORD_START)
        if at > 0 and _is_record(line[at:]):
            kept.append(line[at:])
            dropped.append(line[:at])
        else:
            dropped.append(line)
    if tail:
        dropped.append(tail)
    return b"".join(line + b"\n" for line in kept), dropped


def repair_journal(path: str | Path) -> Path | None:
    """Drop partial records from the journal at `path` under Optuna's own lock, keeping a
    backup; returns the backup's path, or None when the journal was intact (or absent)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))  # the lock JournalFileBackend takes by default
    lock.acquire()
    try:
        data = path.read_bytes()
        good, dropped = salvage(data)
        if not dropped:
            return None
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        with reporting_disk_full(backup):
            shutil.copy2(path, backup)
        if data.startswith(good):  # only a partial last line: cut it, the file stays the same
            with reporting_disk_full(path), open(path, "r+b") as f:
                f.truncate(len(good))
        else:
            with atomic_path(path) as tmp:
                tmp.write_bytes(good)
    finally:
        lock.release()
    log.warning(
        "%s: dropped %d partial record(s) (%d bytes) left by an interrupted write; the journal "
        "as it was is kept in %s",
        path,
        len(dropped),
        sum(len(d) for d in dropped),
        backup,
    )
    return backup
