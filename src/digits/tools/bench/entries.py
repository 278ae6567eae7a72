"""Results files that hold one entry per name (reports/bench/timed.json, shuffle.json): a new
measurement replaces only its own name's entry, so each is recorded on its own day and machine."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from digits import PipelineError
from digits.lib.files import write_text


def read_entries(path: Path) -> dict[str, Any]:
    """{name: entry} of a results file; empty when it does not exist."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: not JSON ({err}): fix or remove it") from None
    if not isinstance(entries, dict):
        raise PipelineError(f"{path}: not an object of named entries: fix or remove it")
    return entries


def merge_entry(path: Path, name: str, entry: Mapping[str, Any]) -> None:
    """Write `entry` under `name` into `path` (atomically), keeping the other names."""
    entries = read_entries(path)
    entries[name] = dict(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(entries, indent=2) + "\n")
