"""Ending the runs of dead processes: the one clean-up for the stages and the sweep. A run
names its process (`PROCESS_TAG`) and, while it lives, keeps promising to live a while longer
(`ALIVE_TAG`, renewed by a `Heartbeat`); a run whose process is gone, or whose promise lapsed
(its host died or lost its network), is ended FAILED by the next process that looks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import mlflow

from digits.lib.process import process_gone

log = logging.getLogger(__name__)

PROCESS_TAG = "process"  # process_id() of the process that has the run open
ALIVE_TAG = "process.alive_until"  # Unix time; see keep_alive
FAILURE_REASON = "failure_reason"
HEARTBEAT_SECONDS = 60.0  # how often a live run renews its ALIVE_TAG, unless told otherwise
# a run counts as alive this many beats past its last one (as the sweep's trials: Optuna's
# grace is 2 to 3 heartbeats); hosts' clocks must agree within that
GRACE_BEATS = 3


def close_dead_runs(
    experiment_id: str, dead: Iterable[str] = (), orphans: Iterable[str] = ()
) -> list[str]:
    """End FAILED the experiment's RUNNING runs whose process is gone: killed with -9, crashed,
    named in `dead` (process ids, e.g. a sweep worker that exited abnormally), whose run id is
    in `orphans` (e.g. a sweep trial already failed by its heartbeat on another host), or whose
    process stopped renewing its `ALIVE_TAG` (a stage or a sweep launcher on a host that died
    or lost its network). A run never stays RUNNING."""
    client = mlflow.MlflowClient()
    dead, orphans = set(dead), set(orphans)
    closed = []
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    for run in running:
        process = run.data.tags.get(PROCESS_TAG, "")
        if run.info.run_id in orphans or process in dead or process_gone(process):
            close_run(run.info.run_id, "process died (killed or crashed)")
        elif float(run.data.tags.get(ALIVE_TAG, "inf")) < time.time():
            close_run(
                run.info.run_id,
                f"process {process} stopped beating (host died or lost its network)",
            )
        else:
            continue
        closed.append(run.info.run_id)
    if closed:
        log.warning("runs %s were left RUNNING by dead processes: marked FAILED", closed)
    return closed


def close_run(run_id: str, reason: str) -> None:
    """End a run FAILED with `reason`, for a process that can no longer end it itself."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, FAILURE_REASON, reason)
    if "optuna.trial" in client.get_run(run_id).data.tags:  # a sweep trial: it failed too
        client.set_tag(run_id, "optuna.state", "FAIL")
    client.set_terminated(run_id, status="FAILED")


def keep_alive(run_id: str, grace: float) -> None:
    """Promise that `run_id`'s process lives for `grace` more seconds: renew it sooner, or any
    process's `close_dead_runs` ends the run FAILED (hosts' clocks must agree within that)."""
    mlflow.MlflowClient().set_tag(run_id, ALIVE_TAG, f"{time.time() + grace:.0f}")


class Heartbeat:
    """`keep_alive` for a run every `interval` seconds (HEARTBEAT_SECONDS by default), with a
    grace of GRACE_BEATS beats, from a daemon thread, until `stop`."""

    def __init__(self, run_id: str, interval: float | None = None) -> None:
        self.run_id = run_id
        self.interval = HEARTBEAT_SECONDS if interval is None else interval
        self.grace = GRACE_BEATS * self.interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Beat now (the run is never without a promise), then every `interval`."""
        keep_alive(self.run_id, self.grace)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                keep_alive(self.run_id, self.grace)
            except Exception as err:  # a store down for a moment: the next beat may pass
                log.warning("run %s: heartbeat not recorded: %s", self.run_id, err)

    def stop(self) -> None:
        """Stop beating (the run is ending), waiting for a beat in progress."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
