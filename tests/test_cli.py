"""What every stage's `main` shares: a quick exit that still ends everything that must end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, os, sys
from digits.lib.cli import stage_main

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)

class Cycle:  # garbage that only the cyclic collector frees
    def __del__(self, write=os.write, fd=fd):
        write(fd, b"collected;")

kept = []

def main():
    atexit.register(os.write, fd, b"atexit;")
    sys.stdout.write("buffered")  # no newline, no flush: exit must flush it
    cycle = Cycle()
    cycle.self = cycle
    kept.append(cycle)  # alive until the interpreter clears the module at exit

if sys.argv[2] == "stage":
    main = stage_main(main)
main()
main()
"""


@pytest.mark.parametrize("kind", ["stage", "plain"])
def test_stage_exit_skips_only_the_final_collection(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "log"
    log.touch()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), kind], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered" * 2
    events = log.read_text()
    assert events.startswith("atexit;atexit;")
    # a plain program collects its cycles at exit; a stage leaves them to the OS
    assert ("collected;" in events) == (kind == "plain")
