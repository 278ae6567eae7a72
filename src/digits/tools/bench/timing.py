"""What every benchmark shares: timing a command, a median with its runs, the bench/ scripts."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[4] / "bench"  # the repository's bench/ folder


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, its stdout). Fails loudly."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def spread(seconds: Sequence[float]) -> str:
    """'0.81 s (runs: 0.79, 0.81, 0.85)': the median and every run."""
    runs = ", ".join(f"{x:.2f}" for x in seconds)
    return f"{statistics.median(seconds):.2f} s (runs: {runs})"
