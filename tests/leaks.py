"""Where a secret could leak: every process's command line (what `ps` shows), sampled while a
scenario runs, and the spellings a password may take in text (raw, percent-encoded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus


def command_lines() -> list[str]:
    """Every process's command line on this machine."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                raw = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return lines


@contextmanager
def watching_command_lines(interval: float = 0.3) -> Iterator[list[str]]:
    """Every command line seen while the block runs (sampled every `interval` seconds)."""
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(command_lines())
            time.sleep(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def spellings(*secrets: str) -> list[str]:
    """How the secrets may show up in text: raw and percent-encoded."""
    return sorted({x for s in secrets for x in (s, quote(s, safe=""), quote(s), quote_plus(s))})


def leaked(texts: list[str], secrets: list[str]) -> list[str]:
    """The texts holding any spelling of any secret."""
    every = spellings(*secrets)
    return [text for text in texts if any(s in text for s in every)]


def files_holding(folder: Path, secrets: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Files under `folder` (names in `skip` aside) holding any spelling of any secret."""
    every = [s.encode() for s in spellings(*secrets)]
    return [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and p.name not in skip and any(s in p.read_bytes() for s in every)
    ]
