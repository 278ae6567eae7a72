"""Files: atomic writes (a reader, or a `kill -9`, sees the old file or the new one, never half)
and the project root that relative paths are anchored at."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The temp name keeps the suffix, so writers that insist on one (Keras' `.keras`) accept it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp_path
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
