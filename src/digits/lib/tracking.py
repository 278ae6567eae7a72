"""MLflow, written once for `train`, `evaluate` and the sweep: where runs go, how they end, and
what every run records.

Metric vocabulary, the same in MLflow, `reports/metrics.json` and the DVC plots:
`train/loss`, `train/accuracy`, `val/loss`, `val/accuracy` (per epoch, step = epoch, from 1),
`test/loss`, `test/accuracy` and `test/<digit>/{precision,recall,f1}`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
import pandas as pd

from digits import PipelineError
from digits.lib.config import MLflowConfig
from digits.lib.secrets import redact_text

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

KERAS_TO_METRIC = {
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
}
REMOTE_SCHEMES = {"http", "https", "databricks"}
PROCESS_TAG = "process"  # host:pid of the process that has the run open


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def project_root(params_path: Path) -> Path:
    """The project's root: $DVC_ROOT, which DVC sets for every stage (and points at the main
    workspace even for `dvc exp run --temp` and queued runs), else the folder of params.yaml."""
    return Path(os.environ.get("DVC_ROOT") or params_path.resolve().parent)


def tracking_uri(cfg: MLflowConfig, root: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the configured default with a relative SQLite path anchored at
    `root` (so stages, tests and `make ui` all see one store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((root / uri[len(prefix) :]).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of client retries, when a tracking server is down."""
    parsed = urlparse(uri)
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
    # MLflow's async logging thread otherwise waits on its queue in 1 s polls, and ending a run
    # waits for that thread: ~0.7 s per run here. Buffered, it drains the moment the run ends.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    uri = tracking_uri(cfg, root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        local = urlparse(uri).scheme not in REMOTE_SCHEMES
        location = (root / cfg.artifact_location).resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    close_dead_runs(experiment_id)
    return experiment_id


def process_id(pid: int | None = None) -> str:
    """`host:pid`, naming a process across machines."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def process_gone(process: str) -> bool:
    """True when `process` (host:pid) ran on this host and no longer exists. A process on
    another host is never judged from here."""
    host, _, pid = process.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def close_dead_runs(experiment_id: str) -> list[str]:
    """End FAILED the experiment's RUNNING runs whose process on this host is gone (killed
    with -9, or the machine crashed): a run never stays RUNNING for ever."""
    client = mlflow.MlflowClient()
    closed = []
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    for run in running:
        if process_gone(run.data.tags.get(PROCESS_TAG, "")):
            client.set_tag(run.info.run_id, "failure_reason", "process died (killed or crashed)")
            client.set_terminated(run.info.run_id, status="FAILED")
            closed.append(run.info.run_id)
    if closed:
        log.warning("runs %s were left RUNNING by dead processes: marked FAILED", closed)
    return closed


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


def log_dataset(x: Any, y: Any, path: Path, digest: str, context: str) -> None:
    """Record a split as the run's dataset input (shown in the UI's Datasets column), identified
    by `digest`, the sha256 of the data files: its first 8 digits as the dataset's digest (the
    length MLflow's own have), all of it as the input's tag `sha256`. (MLflow's own digest
    would hash the first 10,000 values only, after copying the whole array: ~0.3 s here.)"""
    with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(
            x, targets=y, name=path.name, source=str(path.resolve()), digest=digest[:8]
        )
    mlflow.log_input(dataset, context=context, tags={"sha256": digest})


def history_frame(history: Mapping[str, list[float]]) -> pd.DataFrame:
    """Keras History.history -> one row per epoch (from 1) in the metric vocabulary."""
    frame = pd.DataFrame({KERAS_TO_METRIC.get(k, k): v for k, v in history.items()})
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    return frame


def epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback that logs each epoch's metrics to the active run, step = epoch (from 1)."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            metrics = {
                KERAS_TO_METRIC[k]: float(v)
                for k, v in (logs or {}).items()
                if k in KERAS_TO_METRIC
            }
            # queued, written by MLflow's logging thread: each synchronous write commits to
            # the store (an fsync on SQLite), which cost the fit ~0.2 s per epoch here
            mlflow.log_metrics(metrics, step=epoch + 1, synchronous=False)

    return EpochLogger()


class _KerasFlavor:
    """`mlflow.keras` with its model folder created first: with an input example, MLflow 3.17's
    keras `save_model` writes the example before making the folder (mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
        # `validate_serving_input` is `Model.log`'s own option, which it passes on to the
        # flavor; `mlflow.keras.save_model` does not take it
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(model: keras.Model, x_sample: Any, name: str = "model") -> str:
    """Log the model (Keras flavour, loadable as pyfunc) with signature and input example;
    returns its model URI. The requirements are the running Keras and TensorFlow, given rather
    than inferred (MLflow's inference reloads the model in a subprocess: ~10 s per run). MLflow
    does not reload the model to serve the input example either (~2 s per run): the model is
    always a Keras model of one of our builders, and `tests/test_pipeline.py` serves the logged
    example through pyfunc."""
    import keras
    import tensorflow as tf
    from mlflow.models import Model, infer_signature

    signature = infer_signature(x_sample, model.predict(x_sample, verbose=0))
    # MLflow checks the input example with a bare `predict`: its progress bar is not ours
    with contextlib.redirect_stdout(io.StringIO()):
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=_KerasFlavor,
            flavor_name="keras",
            model=model,
            signature=signature,
            input_example=x_sample[:2],
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
            validate_serving_input=False,
        )
    return info.model_uri


@dataclass(frozen=True)
class Registration:
    """A model version registered by `evaluate`, and whether it took the champion alias."""

    name: str
    version: str
    alias: str
    champion: bool
    previous: str | None  # the champion version before, if any
    previous_accuracy: float | None


def beats(accuracy: float, champion_accuracy: float | None) -> bool:
    """Whether a new model takes the alias: strictly better test accuracy, or no champion yet."""
    return champion_accuracy is None or accuracy > champion_accuracy


def register(model_uri: str, accuracy: float, cfg: MLflowConfig) -> Registration:
    """Register a logged model (`models:/m-...` or `runs:/<id>/model`) as a new version of
    `cfg.registered_model` and move the `cfg.champion_alias` alias to it only when it beats
    the current champion's test accuracy."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    previous = previous_accuracy = None
    try:
        current = client.get_model_version_by_alias(cfg.registered_model, cfg.champion_alias)
    except MlflowException:  # no registered model yet, or no version holds the alias
        current = None
    if current is not None:
        previous = str(current.version)
        if "test_accuracy" in current.tags:
            previous_accuracy = float(current.tags["test_accuracy"])
        elif current.run_id:
            previous_accuracy = client.get_run(current.run_id).data.metrics.get("test/accuracy")
    version = mlflow.register_model(
        model_uri, cfg.registered_model, tags={"test_accuracy": str(accuracy)}
    )
    champion = beats(accuracy, previous_accuracy)
    if champion:
        client.set_registered_model_alias(
            cfg.registered_model, cfg.champion_alias, str(version.version)
        )
    return Registration(
        cfg.registered_model,
        str(version.version),
        cfg.champion_alias,
        champion,
        previous,
        previous_accuracy,
    )
