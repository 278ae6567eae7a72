"""Resuming a killed training run: a checkpoint written at each epoch's end, read back only when
it was made from the same params and data.

One `.npz` file holds every model variable (weights, and the dropout and augmentation layers'
random-generator states), every optimizer variable (its slots and its step count, which is the
learning-rate schedule's position), early stopping's state with its best weights, the history so
far and the MLflow run it belongs to. The data order needs nothing saved: each epoch's order is
drawn from `train.seed` and the epoch number (`digits.lib.batches`). With the rest restored, the
epochs after a resume are bit-identical to an uninterrupted run's; `tests/test_resume.py` checks
it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digits.lib.config import Params
from digits.lib.config.runparams import run_params
from digits.lib.files import temp_beside

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

FORMAT = 1
# Settings that do not change what is trained.
NEUTRAL = {"train.resume"}


@dataclass
class State:
    """A checkpoint's content."""

    identity: dict[str, Any]  # what it was made from: params, data digest, format
    epoch: int  # epochs done
    run_id: str
    seconds: float  # fit time spent so far
    history: dict[str, list[float]]  # Keras' names, one value per epoch done
    stopping: dict[str, Any]  # early stopping: wait, best, best_epoch
    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray] | None = None


def identity(params: Params, data_digest: str) -> dict[str, Any]:
    """What a checkpoint must have been made from to be resumed: every setting that shapes the
    run, and the data's sha256."""
    settings = {k: v for k, v in run_params(params).items() if k not in NEUTRAL}
    return {"format": FORMAT, "data.sha256": data_digest, **settings}


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'key: saved -> wanted' for every setting that differs."""
    keys = sorted(set(saved) | set(wanted))
    return [
        f"{k}: {saved.get(k)} -> {wanted.get(k)}" for k in keys if saved.get(k) != wanted.get(k)
    ]


def save(path: Path, state: State) -> None:
    """Write atomically (temp file, rename). No fsync: a killed process's writes survive in the
    page cache, and a file torn by a power cut fails its zip checksums and is not resumed."""
    meta = {
        "identity": state.identity,
        "epoch": state.epoch,
        "run_id": state.run_id,
        "seconds": state.seconds,
        "history": state.history,
        "stopping": state.stopping,
        "has_best": state.best_weights is not None,
    }
    arrays = {f"model/{i}": a for i, a in enumerate(state.model)}
    arrays |= {f"optimizer/{i}": a for i, a in enumerate(state.optimizer)}
    arrays |= {f"best/{i}": a for i, a in enumerate(state.best_weights or [])}
    fd, tmp = temp_beside(path)  # named after this process: the next run deletes it if we die
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, arrays: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A checkpoint's metadata and (if `arrays`) its arrays; None when there is no file or it
    is unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            found = {name: z[name] for name in z.files if name != "meta"} if arrays else {}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("checkpoint %s is unreadable (%s): starting afresh", path, err)
        return None
    return meta, found


def saved_run(path: Path) -> str | None:
    """The MLflow run the checkpoint at `path` was saved by; None when there is none."""
    read = _read(path, arrays=False)
    run_id = read[0].get("run_id") if read else None
    return run_id if isinstance(run_id, str) else None


def load(path: Path, wanted: dict[str, Any]) -> State | None:
    """The checkpoint at `path` if it can be resumed, else None with a warning saying why."""
    read = _read(path)
    if read is None:
        return None
    meta, arrays = read
    if meta["identity"] != wanted:
        changed = "; ".join(differences(meta["identity"], wanted))
        log.warning(
            "checkpoint %s was made from other params or data (%s): starting afresh", path, changed
        )
        return None

    def group(prefix: str) -> list[np.ndarray]:
        return [arrays[f"{prefix}/{i}"] for i in range(sum(k.startswith(prefix) for k in arrays))]

    return State(
        identity=meta["identity"],
        epoch=int(meta["epoch"]),
        run_id=meta["run_id"],
        seconds=float(meta["seconds"]),
        history={k: list(v) for k, v in meta["history"].items()},
        stopping=meta["stopping"],
        model=group("model"),
        optimizer=group("optimizer"),
        best_weights=group("best") if meta["has_best"] else None,
    )


def remove(path: Path) -> None:
    """Delete the checkpoint (the run it served has finished)."""
    path.unlink(missing_ok=True)


def fits(model: keras.Model, state: State) -> bool:
    """Whether the saved variables match this model's, shape for shape (same code)."""
    model.optimizer.build(model.trainable_variables)
    ours = [tuple(v.shape) for v in [*model.variables, *model.optimizer.variables]]
    saved = [a.shape for a in [*state.model, *state.optimizer]]
    return ours == saved


@dataclass
class Checkpointer:
    """Saves a `State` at each epoch end of a Keras fit, and restores one before the fit."""

    path: Path
    identity: dict[str, Any]
    run_id: str = ""
    start: State | None = None  # what the fit resumes from
    history: dict[str, list[float]] = field(default_factory=dict)
    saves: int = 0

    def restore(self, model: keras.Model) -> int:
        """Put the saved state into a compiled model; returns the epochs already done (0 when
        there is nothing to resume or the variables do not match this model)."""
        if self.start is None:
            return 0
        if not fits(model, self.start):
            log.warning("checkpoint %s does not match this model's variables: afresh", self.path)
            self.start = None
            return 0
        for variable, value in zip(model.variables, self.start.model, strict=True):
            variable.assign(value)
        for variable, value in zip(model.optimizer.variables, self.start.optimizer, strict=True):
            variable.assign(value)
        self.history = {k: list(v) for k, v in self.start.history.items()}
        return self.start.epoch

    def callback(self, stopping: keras.callbacks.EarlyStopping | None) -> keras.callbacks.Callback:
        """The Keras callback; it must come after `stopping` in the callback list, so that it
        restores early stopping's state after `stopping` resets it, and saves it once updated."""
        import keras

        owner = self

        class SaveEachEpoch(keras.callbacks.Callback):
            def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
                self.started = time.perf_counter()
                if owner.start is not None and stopping is not None:
                    saved = owner.start.stopping
                    stopping.wait = saved["wait"]
                    stopping.best = saved["best"]
                    stopping.best_epoch = saved["best_epoch"]
                    stopping.best_weights = owner.start.best_weights

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                for key, value in logs.items():
                    owner.history.setdefault(key, []).append(float(value))
                if not np.isfinite(logs.get("loss", 0.0)):
                    return  # a diverged run is not worth resuming
                owner.save_epoch(self.model, epoch + 1, stopping, self.started)

        return SaveEachEpoch()

    def save_epoch(
        self,
        model: keras.Model,
        epoch: int,
        stopping: keras.callbacks.EarlyStopping | None,
        started: float,
    ) -> None:
        prior = self.start.seconds if self.start else 0.0
        state = State(
            identity=self.identity,
            epoch=epoch,
            run_id=self.run_id,
            seconds=prior + time.perf_counter() - started,
            history=self.history,
            stopping={
                "wait": stopping.wait if stopping else 0,
                "best": _plain(stopping.best) if stopping else None,
                "best_epoch": stopping.best_epoch if stopping else 0,
                "stopped": bool(model.stop_training),
            },
            model=[v.numpy() for v in model.variables],
            optimizer=[v.numpy() for v in model.optimizer.variables],
            best_weights=stopping.best_weights if stopping else None,
        )
        save(self.path, state)
        self.saves += 1

    def remaining(self, epochs: int) -> bool:
        """Whether the resumed fit still has epochs to train (not done, not stopped early)."""
        if self.start is None:
            return True
        return self.start.epoch < epochs and not self.start.stopping.get("stopped", False)


def _plain(value: Any) -> Any:
    """A JSON-able float (early stopping's best value may be a NumPy scalar)."""
    return None if value is None else float(value)


def resumable(params: Params, digest: str, path: Path | None) -> Checkpointer | None:
    """The checkpointer for this run (None when resuming is off or the model is the NumPy one),
    holding the saved state it resumes from if there is a usable one whose MLflow run exists."""
    if path is None or not params.train.resume or params.model.type == "numpy_mlp":
        return None
    wanted = identity(params, digest)
    checkpointer = Checkpointer(path, wanted)
    start = load(path, wanted)
    if start is not None and (why := _not_resumable(start.run_id)):
        log.warning("checkpoint %s: its MLflow run %s %s: starting afresh", path, start.run_id, why)
        start = None
    if start is not None:
        log.info("resuming run %s after epoch %d (checkpoint %s)", start.run_id, start.epoch, path)
    checkpointer.start = start
    return checkpointer


def _not_resumable(run_id: str) -> str | None:
    """Why the MLflow run `run_id` cannot be reopened, or None when it can. A run deleted in
    the UI is still found (soft-deleted) until `mlflow gc`, but `start_run` refuses it."""
    import mlflow
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return "is not in this store"
    if run.info.lifecycle_stage == LifecycleStage.DELETED:
        return "was deleted in MLflow"
    return None


def reopened(run_id: str, start: State) -> None:
    """Make the reopened run tell the truth: not failed, resumed after which epoch, and every
    saved epoch in its metric history exactly once (the dead process's last queued metrics
    may never have been written)."""
    import mlflow

    from digits.lib.vocab import KERAS_TO_METRIC

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if "failure_reason" in run.data.tags:
        client.delete_tag(run_id, "failure_reason")
    resumes = run.data.tags.get("resumed_after_epochs")
    mlflow.set_tag("resumed_after_epochs", f"{resumes},{start.epoch}" if resumes else start.epoch)
    for name, values in start.history.items():
        metric = KERAS_TO_METRIC.get(name)
        if metric is None:
            continue
        logged = {m.step for m in client.get_metric_history(run_id, metric)}
        missing = {step: v for step, v in enumerate(values, 1) if step not in logged}
        for step, value in missing.items():
            mlflow.log_metric(metric, value, step=step)
