"""A run's own lifecycle: opened, beating while it lives, and always ended (FINISHED, FAILED
with the reason, KILLED on Ctrl-C or SIGTERM), even when the store under it is full."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import mlflow

from digits.lib.process import process_id
from digits.lib.secrets import redact_text
from digits.lib.tracking.reaping import FAILURE_REASON, PROCESS_TAG, Heartbeat
from digits.lib.tracking.store import reporting_store_full

log = logging.getLogger(__name__)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def tracked_run(
    heartbeat: float | None = None, **start_run_kwargs: Any
) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that always ends: FINISHED, FAILED (reason in tag `failure_reason`) or
    KILLED on Ctrl-C / SIGTERM, never left RUNNING. While open, the run names its process and
    beats every `heartbeat` seconds (`Heartbeat`), so that if this host dies any other process
    ends it FAILED. A full store raises the DiskFullError a full disk gives."""
    with reporting_store_full():
        run = mlflow.start_run(**start_run_kwargs)
        previous = signal.getsignal(signal.SIGTERM)
        beating = None
        try:
            if previous in (signal.SIG_DFL, None):  # unless the program handles SIGTERM itself
                with contextlib.suppress(ValueError):  # only the main thread may set handlers
                    signal.signal(signal.SIGTERM, _raise_interrupt)
            mlflow.set_tag(PROCESS_TAG, process_id())
            beating = Heartbeat(run.info.run_id, heartbeat).start()
            yield run
        except KeyboardInterrupt:
            _end(run, beating, "KILLED", "interrupted")
            raise
        except BaseException as err:
            _end(run, beating, "FAILED", redact_text(f"{type(err).__name__}: {err}")[:5000])
            raise
        else:
            if beating is not None:
                beating.stop()
            mlflow.end_run("FINISHED")
        finally:
            if previous in (signal.SIG_DFL, None):
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, previous)


def _end(run: mlflow.ActiveRun, heartbeat: Heartbeat | None, status: str, reason: str) -> None:
    """End the run with `status`, even when its reason cannot be recorded (a full disk under
    the store): the status is what must not stay RUNNING. If even that fails, the next stage
    that opens the store marks it FAILED (`close_dead_runs`)."""
    if heartbeat is not None:
        heartbeat.stop()
    try:
        mlflow.set_tag(FAILURE_REASON, reason)
    except Exception as err:
        log.warning("could not record why run %s failed: %s", run.info.run_id, err)
    try:
        mlflow.end_run(status)
    except Exception as err:
        log.warning("could not end run %s %s: %s", run.info.run_id, status, err)


def artifact_dir(run: mlflow.ActiveRun) -> str:
    """Where the run's artifacts are written: a local folder, or the URI of a remote store."""
    uri = run.info.artifact_uri
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("file", "") else redact_text(uri)
