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


def test_out_of_memory_and_a_full_disk_are_one_line_errors(capsys) -> None:
    """MemoryError never escapes as a traceback; nor does an ENOSPC raised where no path is
    known (it names the folder the stage runs in and what is free there)."""
    import errno
    import logging
    import os

    from digits.lib.cli import stage_main

    @stage_main
    def out_of_memory() -> None:
        raise MemoryError

    @stage_main
    def disk_full() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("a library wrapped it") from err

    previous = logging.getLogRecordFactory()
    try:
        for func in (out_of_memory, disk_full):
            with pytest.raises(SystemExit) as exit_:
                func()
            assert exit_.value.code == 1
    finally:
        logging.setLogRecordFactory(previous)
    first, second = capsys.readouterr().err.splitlines()
    assert first == "error: out of memory"
    assert second.startswith(f"error: no space left on the device writing {os.getcwd()} (free")
