"""What every stage's `main` shares: logging set-up and turning user errors into clean exits."""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from digits import PipelineError

F = TypeVar("F", bound=Callable[..., None])


def stage_main(func: F) -> F:
    """Decorate a stage's `main`: INFO logging; a PipelineError exits 1 with its message only;
    a quick exit (`exit_quickly`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
        exit_quickly()
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            return func(*args, **kwargs)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


def exit_quickly() -> None:
    """Skip the interpreter's final garbage collection at exit: `gc.freeze` as the process ends.

    With TensorFlow, MLflow and pandas loaded that last pass walks hundreds of thousands of
    objects (BENCHMARKS.md, Overhead), for memory the OS takes back anyway. Everything else
    still happens: atexit handlers (MLflow ends its run and drains its queue, logging
    flushes), streams flush, files close. Only `__del__` of objects caught in reference cycles
    may not run, which Python never promises at exit. Registered once, however often called.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
