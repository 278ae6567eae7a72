"""Where runs go: the tracking store's URI, checking it can be reached, the experiment, the UI
address, and a full SQLite store reported like a full disk."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow

from digits import PipelineError
from digits.lib.config import MLflowConfig
from digits.lib.environment import Environment
from digits.lib.files import STORE_FULL, disk_full, is_disk_full
from digits.lib.secrets import redact_text
from digits.lib.tracking.reaping import close_dead_runs
from digits.lib.urls import check_database, is_database_url

REMOTE_SCHEMES = {"http", "https", "databricks"}
# The experiment tag MLflow's UI reads and writes for an experiment's kind: model training
# ("Machine learning"), not GenAI
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
SQLITE = "sqlite:///"


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def tracking_uri(cfg: MLflowConfig, root: Path, env: Environment) -> str:
    """$MLFLOW_TRACKING_URI, else the configured default with a relative SQLite path anchored at
    `root` (so stages, tests and `make ui` all see one store)."""
    uri = env.tracking_uri or cfg.tracking_uri
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = SQLITE + str((root / uri[len(SQLITE) :]).resolve())
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


def store_path(uri: str) -> str:
    """The file a SQLite store lives in; any other store by its (redacted) URI."""
    return uri[len(SQLITE) :] if uri.startswith(SQLITE) else redact_text(uri)


@contextlib.contextmanager
def reporting_store_full() -> Iterator[None]:
    """Turn a full store ("database or disk is full", which SQLite raises instead of ENOSPC)
    raised inside into the DiskFullError a full disk gives, naming the store's file."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err) or isinstance(err, PipelineError):
            raise
        raise disk_full(store_path(mlflow.get_tracking_uri())) from None


# the MLflow modules that log a full store's error (with its traceback) before raising it, or
# instead of raising it (the thread that writes queued metrics)
STORE_FULL_LOGGERS = ("mlflow.store.db.utils", "mlflow.utils.async_logging.async_logging_queue")


class _QuietStoreFull(logging.Filter):
    """Drop MLflow's own reports of a full store: the stage reports it itself, in one `error:`
    line with the path and the free space."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        full = (error is not None and is_disk_full(error)) or STORE_FULL in record.getMessage()
        return not full


def _quiet_store_full() -> None:
    for name in STORE_FULL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietStoreFull) for f in logger.filters):
            logger.addFilter(_QuietStoreFull())


def setup(cfg: MLflowConfig, root: Path, env: Environment) -> str:
    """Point MLflow at the store and experiment, and end the runs dead processes left RUNNING
    there; returns the experiment id."""
    # MLflow's async logging thread otherwise polls its queue each second and ending a run waits
    # for the next poll; buffered, the queue drains the moment the run ends.
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    _quiet_store_full()
    uri = tracking_uri(cfg, root, env)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with reporting_store_full():
        experiment_id = _experiment(cfg, root, uri)
        mlflow.set_experiment(experiment_id=experiment_id)
        close_dead_runs(experiment_id)
    return experiment_id


def _experiment(cfg: MLflowConfig, root: Path, uri: str) -> str:
    """The configured experiment's id, created (tagged as model training) if missing."""
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        local = urlparse(uri).scheme not in REMOTE_SCHEMES
        location = (root / cfg.artifact_location).resolve().as_uri() if local else None
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException as err:
            if is_disk_full(err):
                raise
            # else another process (a second sweep host) created it in the same instant
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
    return experiment_id


def ui_address(cfg: MLflowConfig, root: Path, env: Environment, base: str) -> str:
    """The experiment's runs in the MLflow UI at `base`, in the model training view. MLflow
    3.17's UI opens an experiment in GenAI or model training by a global switch (GenAI by
    default), not by the experiment's tag; `workflowType` in the address sets the switch, and
    only on the experiment's own page (from the experiments list it is lost on the way)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(cfg, root, env))
    experiment = client.get_experiment_by_name(cfg.experiment)
    page = f"experiments/{experiment.experiment_id}/runs" if experiment else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"
