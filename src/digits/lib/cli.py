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
from digits.lib import secrets
from digits.lib.files import disk_full, is_disk_full
from digits.lib.tracking import access

F = TypeVar("F", bound=Callable[..., None])


def stage_main(func: F) -> F:
    """Decorate a stage's `main`: INFO logging with passwords in URLs redacted; a
    PipelineError exits 1 with its message only (redacted too), and so do a full disk and
    running out of memory; a quick exit (`exit_quickly`)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
        exit_quickly()
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        secrets.redact_logging()
        try:
            access.check_credentials_file()  # it holds a password: 0600 or refused
            return func(*args, **kwargs)
        except PipelineError as err:
            print(f"error: {secrets.redact_text(str(err))}", file=sys.stderr)
            raise SystemExit(1) from None
        except MemoryError:
            print("error: out of memory", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as err:
            if (denied := access.denied_message(err)) is not None:  # the server's 401/403
                print(f"error: {secrets.redact_text(denied)}", file=sys.stderr)
                raise SystemExit(1) from None
            if not is_disk_full(err):
                raise
            cause = err
            while cause is not None and getattr(cause, "filename", None) is None:
                cause = cause.__cause__ or cause.__context__
            where = getattr(cause, "filename", None) or os.getcwd()
            print(f"error: {secrets.redact_text(str(disk_full(where)))}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


def exit_quickly() -> None:
    """Skip the interpreter's final garbage collection at exit: `gc.freeze` as the process ends.

    With TensorFlow, MLflow and pandas loaded that last pass walks hundreds of thousands of
    objects (docs/benchmarks.md, Overhead), for memory the OS takes back anyway. Everything else
    still happens: atexit handlers (MLflow ends its run and drains its queue, logging
    flushes), streams flush, files close. Only `__del__` of objects caught in reference cycles
    may not run, which Python never promises at exit. Registered once, however often called.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
