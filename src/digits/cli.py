"""What every stage's `main` shares: logging set-up and turning user errors into clean exits."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from digits import PipelineError

F = TypeVar("F", bound=Callable[..., None])


def stage_main(func: F) -> F:
    """Decorate a stage's `main`: INFO logging; a PipelineError exits 1 with its message only."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
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
