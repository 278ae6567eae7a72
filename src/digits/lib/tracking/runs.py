"""MLflow runs, written once for the stages and the sweep: where they go, what each records
(code, data, per-epoch metrics), and how each ends, even when its process dies."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow

from digits import PipelineError
from digits.lib.config import MLflowConfig, Params
from digits.lib.secrets import redact_text
from digits.lib.urls import check_database, is_database_url
from digits.lib.vocab import epoch_metrics

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

REMOTE_SCHEMES = {"http", "https", "databricks"}
PROCESS_TAG = "process"  # process_id() of the process that has the run open
ALIVE_TAG = "process.alive_until"  # Unix time; see keep_alive
# The experiment tag MLflow's UI reads and writes for an experiment's kind: model training
# ("Machine learning"), not GenAI
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def tracking_uri(cfg: MLflowConfig, root: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the configured default with a relative SQLite path anchored at
    `root` (so stages, tests and `make ui` all see one store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((root / uri[len(prefix) :]).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of client retries, when a tracking server (or a
    database used directly as the store) is down."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" and is_database_url(uri):
        check_database(uri, timeout)
        return
    if parsed.scheme not in {"http", "https"}:
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise TrackingError(
            f"MLflow tracking server {redact_text(uri)} is not reachable "
            f"({type(err).__name__}). Start it, "
            "fix MLFLOW_TRACKING_URI, or unset it to use the local store."
        ) from None


def setup(cfg: MLflowConfig, root: Path) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    # MLflow's async logging thread otherwise polls its queue each second and ending a run waits
    # for the next poll; buffered, the queue drains the moment the run ends.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    uri = tracking_uri(cfg, root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        local = urlparse(uri).scheme not in REMOTE_SCHEMES
        location = (root / cfg.artifact_location).resolve().as_uri() if local else None
        # another process (a second sweep host) may create it in the same instant
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(cfg.experiment, artifact_location=location)
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise TrackingError(f"could not create MLflow experiment {cfg.experiment!r}")
    experiment_id = experiment.experiment_id
    if EXPERIMENT_KIND not in experiment.tags:  # a choice made in the UI stays
        try:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        except mlflow.exceptions.MlflowException:
            # a tag is an INSERT on a database store: a racing process's insert won first
            if EXPERIMENT_KIND not in mlflow.get_experiment(experiment_id).tags:
                raise
    mlflow.set_experiment(experiment_id=experiment_id)
    close_dead_runs(experiment_id)
    return experiment_id


def run_name(params: Params) -> str:
    """What a run trains, as its name: the DVC experiment's name when there is one, else a
    short description such as `mlp-2x512-relu` or `cnn-32-64-k3` (never MLflow's random one)."""
    if exp := os.environ.get("DVC_EXP_NAME"):
        return exp
    model = params.model
    if model.type == "mlp":
        units = model.mlp.units
        sizes = f"{len(units)}x{units[0]}" if len(set(units)) == 1 else "-".join(map(str, units))
        name = f"mlp-{sizes or 0}-{model.mlp.activation}" + ("-bn" if model.mlp.batch_norm else "")
    elif model.type == "cnn":
        filters = "-".join(map(str, model.cnn.filters))
        name = f"cnn-{filters}-k{model.cnn.kernel_size}" + ("-bn" if model.cnn.batch_norm else "")
    elif model.type == "numpy_mlp":
        name = "numpy_mlp-" + "-".join(map(str, model.numpy_mlp.hidden))
    else:
        name = model.type
    if model.augment.enabled:
        name += "-aug"
    if model.dtype_policy == "mixed_bfloat16":
        name += "-bf16"
    return name


def ui_address(cfg: MLflowConfig, root: Path, base: str) -> str:
    """The experiment's runs in the MLflow UI at `base`, in the model training view. MLflow
    3.17's UI opens an experiment in GenAI or model training by a global switch (GenAI by
    default), not by the experiment's tag; `workflowType` in the address sets the switch, and
    only on the experiment's own page (from the experiments list it is lost on the way)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg, root))
    experiment = client.get_experiment_by_name(cfg.experiment)
    page = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def boot_id() -> str:
    """This kernel boot's id (changes with every reboot), short; "" where Linux has none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return fields[19] if len(fields) > 19 else ""


def process_id(pid: int | None = None) -> str:
    """`host:pid:boot:start`, naming a process across machines, reboots and reused pids."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{boot_id()}:{start_time(pid)}"


@dataclass(frozen=True)
class ProcessName:
    """A parsed `process_id`; `boot` and `start` are "" in the older `host:pid` names."""

    host: str
    pid: int
    boot: str = ""
    start: str = ""

    @classmethod
    def parse(cls, name: str) -> ProcessName | None:
        """`host:pid:boot:start` or `host:pid`; None for anything else."""
        parts = name.split(":")
        if len(parts) == 4:
            host, pid, boot, start = parts
        elif len(parts) == 2:
            (host, pid), boot, start = parts, "", ""
        else:
            return None
        return cls(host, int(pid), boot, start) if host and pid.isdigit() else None


def process_gone(process: str, single_host: bool = False) -> bool:
    """True when `process` (a `process_id`) no longer exists: on this host, its pid is gone,
    or this host rebooted since (boot id), or the pid now names a newer process (start time).
    A process on another host is gone only when `single_host` says every worker must be on
    this one (the journal storage); otherwise its heartbeat judges it."""
    name = ProcessName.parse(process)
    if name is None:
        return False
    if name.host != socket.gethostname():
        return single_host
    if name.boot and name.boot != boot_id():
        return True
    try:
        os.kill(name.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(name.start) and name.start != start_time(name.pid)


def close_dead_runs(
    experiment_id: str, dead: Iterable[str] = (), orphans: Iterable[str] = ()
) -> list[str]:
    """End FAILED the experiment's RUNNING runs whose process is gone: killed with -9, crashed,
    named in `dead` (process ids, e.g. a sweep worker that exited abnormally), whose run id is
    in `orphans` (e.g. a sweep trial already failed by its heartbeat on another host), or whose
    process stopped renewing its `ALIVE_TAG` (a sweep launcher on a host that died or lost its
    network). The one clean-up after dead processes, for the stages and the sweep: a run never
    stays RUNNING."""
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
    client.set_tag(run_id, "failure_reason", reason)
    if "optuna.trial" in client.get_run(run_id).data.tags:  # a sweep trial: it failed too
        client.set_tag(run_id, "optuna.state", "FAIL")
    client.set_terminated(run_id, status="FAILED")


def keep_alive(run_id: str, grace: float) -> None:
    """Promise that `run_id`'s process lives for `grace` more seconds: renew it sooner, or any
    process's `close_dead_runs` ends the run FAILED (hosts' clocks must agree within that)."""
    mlflow.MlflowClient().set_tag(run_id, ALIVE_TAG, f"{time.time() + grace:.0f}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def tracked_run(**start_run_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run` that always ends: FINISHED, FAILED (reason in tag `failure_reason`) or
    KILLED on Ctrl-C / SIGTERM, never left RUNNING."""
    run = mlflow.start_run(**start_run_kwargs)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        if previous in (signal.SIG_DFL, None):  # unless the program handles SIGTERM itself
            with contextlib.suppress(ValueError):  # only the main thread may set handlers
                signal.signal(signal.SIGTERM, _raise_interrupt)
        mlflow.set_tag(PROCESS_TAG, process_id())
        yield run
    except KeyboardInterrupt:
        _end(run, "KILLED", "interrupted")
        raise
    except BaseException as err:
        _end(run, "FAILED", redact_text(f"{type(err).__name__}: {err}")[:5000])
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        if previous in (signal.SIG_DFL, None):
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def _end(run: mlflow.ActiveRun, status: str, reason: str) -> None:
    """End the run with `status`, even when its reason cannot be recorded (a full disk under
    the store): the status is what must not stay RUNNING. If even that fails, the next stage
    that opens the store marks it FAILED (`close_dead_runs`)."""
    try:
        mlflow.set_tag("failure_reason", reason)
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


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with `-dirty` when the work tree has changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def context_tags(root: Path, data_digest: str) -> dict[str, str]:
    """Tags that tie a run to its code, data and DVC experiment."""
    tags = {"data.sha256": data_digest}
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        tags["git.commit"] = commit
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = baseline
    return tags


def numpy_dataset(x: Any, y: Any, path: Path, digest: str) -> mlflow.data.Dataset:
    """A split as an MLflow dataset named after its file, identified by `digest` (its first 8
    digits, the length MLflow's own have). (MLflow's own digest would hash the first 10,000
    values only, after copying the whole array.)"""
    with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(
            x, targets=y, name=path.name, source=str(path.resolve()), digest=digest[:8]
        )


def log_dataset(x: Any, y: Any, path: Path, digest: str, context: str) -> None:
    """Record a split as the run's dataset input (shown in the UI's Datasets column), identified
    by `digest`, the sha256 of the data files, all of it in the input's tag `sha256`."""
    mlflow.log_input(numpy_dataset(x, y, path, digest), context=context, tags={"sha256": digest})


def epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback that logs each epoch's metrics to the active run, step = epoch (from 1)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            metrics = epoch_metrics(logs)
            # queued, written by MLflow's logging thread: each synchronous write commits to
            # the store (an fsync on SQLite) inside the fit
            mlflow.log_metrics(metrics, step=epoch + 1, synchronous=False)

    return EpochLogger()
