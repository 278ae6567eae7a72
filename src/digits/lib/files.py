"""Files: atomic writes (a reader, or a `kill -9`, sees the old file or the new one, never half),
a full disk reported as such (naming the path and the space left), and the project root that
relative paths are anchored at."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digits import PipelineError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    """Whether `err`, or an error it was raised from, is a full disk or quota."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        err = err.__cause__ or err.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temp name keeps the suffix, so writers that insist on one (Keras' `.keras`) accept it.
    A full disk, at any point, raises DiskFullError naming `path`; an error that was caused by
    one (a writer that wraps its OSError) too.
    """
    path = Path(path)
    with reporting_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
        )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
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


def project_root(params_path: Path) -> Path:
    """The project's root: $DVC_ROOT, which DVC sets for every stage (and points at the main
    workspace even for `dvc exp run --temp` and queued runs), else the folder of params.yaml."""
    return Path(os.environ.get("DVC_ROOT") or params_path.resolve().parent)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write pretty JSON (stable key order, so diffs stay small)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
