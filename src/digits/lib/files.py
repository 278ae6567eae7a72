"""Files: atomic writes (a reader, or a `kill -9`, sees the old file or the new one, never half),
temp files that name their writer (so the next writer removes those a dead process left), and a
full disk reported as such (naming the path and the space left)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.process import process_gone, process_id

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
STORE_FULL = "database or disk is full"  # SQLite's message for SQLITE_FULL
# `.{stem}.{random}.tmp.{host:pid:boot:start of the writer}{suffix}`; `*.tmp.*` is git-ignored
TEMP_NAME = re.compile(r"\.[^/]*\.[0-9a-f]{8}\.tmp\.(?P<writer>[^:/]+:\d+:[\w-]*:\d*)(\.[^/]*)?")


class DiskFullError(PipelineError):
    """A write failed for want of space (or quota); the message names the path and what is
    free there."""


def free_bytes(path: str | Path) -> int | None:
    """Bytes free on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            if candidate.exists():
                return shutil.disk_usage(candidate).free
    return None


def disk_full(path: str | Path) -> DiskFullError:
    """The error for a write to `path` that found no space."""
    free = free_bytes(path)
    left = "unknown" if free is None else f"{free:,} bytes ({free / 2**20:,.1f} MiB)"
    return DiskFullError(
        f"no space left on the device writing {path} (free there: {left}); nothing was "
        "written in its place: free some space and rerun",
    )


@contextlib.contextmanager
def reporting_disk_full(path: str | Path) -> Iterator[None]:
    """Turn an ENOSPC / EDQUOT raised inside into a DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno in DISK_FULL:
            raise disk_full(path) from None
        raise


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a full disk or quota, or a full SQLite
    database (SQLite raises its own error, not an OSError)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        if STORE_FULL in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def remove_dead_temps(folder: Path) -> list[Path]:
    """Delete the temp files in `folder` whose writer is dead (killed mid-write); a live
    writer's, or one on another host sharing the folder, stays. Returns those deleted."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMP_NAME.fullmatch(entry.name)
            if match and process_gone(match["writer"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new empty temp file in `path`'s folder, open for writing: (fd, its path). Its name
    keeps `path`'s suffix (Keras insists on `.keras`) and names this process, so the next
    writer there deletes it if this process dies first (`remove_dead_temps`). Its mode is the
    usual 0o666 less the umask, which the kernel applies: the process umask is never touched
    (other threads, MLflow's, create files meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path.parent)
    writer = process_id()
    while True:
        tmp = path.parent / f".{path.stem}.{os.urandom(4).hex()}.tmp.{writer}{path.suffix}"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temp name keeps the suffix, so writers that insist on one (Keras' `.keras`) accept it.
    A full disk, at any point, raises DiskFullError naming `path`; an error that was caused by
    one (a writer that wraps its OSError) too.
    """
    path = Path(path)
    with reporting_disk_full(path):
        fd, tmp_path = temp_beside(path)
    os.close(fd)
    try:
        with reporting_disk_full(path):
            try:
                yield tmp_path
            except Exception as err:
                if is_disk_full(err) and not isinstance(err, DiskFullError):
                    raise disk_full(path) from err
                raise
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write pretty JSON (stable key order, so diffs stay small)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
