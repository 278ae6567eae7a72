"""Stage `train`: fit the model from `params.yaml`, save it, and track the run in MLflow.

The MLflow run it opens is the one `evaluate` adds test metrics to (its id is in `--run-info`).
Every output is written before the run ends FINISHED: a failed write (a full disk) ends it
FAILED and leaves no output that `dvc repro` or `evaluate` would trust.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from digits.lib import checkpoint
from digits.lib.architecture import count_params, training_bytes
from digits.lib.cli import stage_main
from digits.lib.config import ModelConfig, Params, ParamsError, load_params
from digits.lib.data import Split, file_digest, load_splits
from digits.lib.environment import Environment
from digits.lib.files import atomic_path, write_json, write_text
from digits.lib.run_info import RunInfo
from digits.lib.vocab import SELECTED_EPOCH, SELECTED_VAL_ACCURACY, TRAIN_EPOCHS, TRAIN_SECONDS

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced."""

    model: keras.Model
    history: pd.DataFrame
    metrics: dict[str, Any]
    run_id: str
    model_uri: str  # the model logged in the run (`models:/m-...`), for the registry


@dataclass(frozen=True)
class Outputs:
    """Where the stage writes (from `dvc.yaml`'s command line)."""

    model: Path
    run_info: Path
    metrics: Path
    history: Path

    def remove(self) -> None:
        """Delete every output there is."""
        for path in (self.model, self.run_info, self.metrics, self.history):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Context:
    """What every run of one stage shares: the data, the project, the environment."""

    data_path: Path
    root: Path
    digest: str  # sha256 of train.npz and val.npz
    env: Environment


def train(
    params: Params,
    train: Split,
    val: Split,
    data_path: Path,
    root: Path,
    outputs: Outputs | None = None,
    experiment_id: str | None = None,
    checkpoint_path: Path | None = None,
    env: Environment | None = None,
) -> TrainResult:
    """Fit in an MLflow run that records params, per-epoch metrics, data, code version and the
    model, and write `outputs` inside it, so the run ends FINISHED only once the model is saved.
    (Figures, the learning curves among them, are `evaluate`'s.) With `checkpoint_path` (and
    `train.resume`), a run killed after epoch k continues at epoch k+1 in its own MLflow run,
    and every epoch's state is saved there. `env` (the stage's environment) names the DVC
    experiment, if any.

    With `train.refit`, that run (named `<name>-validation`, no model logged) only chooses the
    epochs: a second run trains on train + val for as many epochs as it selected, from the same
    seed, and is the one returned and written. A refit killed after an epoch resumes without
    its validation run again; a kill during the validation run starts that again."""
    env = env or Environment()
    context = Context(
        data_path, root, file_digest(data_path / "train.npz", data_path / "val.npz"), env
    )
    if not params.train.refit:
        return tracked_fit(params, train, val, context, outputs, experiment_id, checkpoint_path)
    import mlflow

    from digits.lib.tracking.provenance import REFIT_BY, REFIT_OF

    chooser = chosen_before(params, context, checkpoint_path)
    if chooser is None:
        chosen = tracked_fit(params, train, val, context, chooses_only=True)
        chooser = chosen.run_id, int(chosen.metrics[SELECTED_EPOCH])
    chooser_id, epochs = chooser
    refit = params.with_overrides({"train.epochs": epochs, "train.patience": 0})
    result = tracked_fit(
        refit, train + val, None, context, outputs, experiment_id, checkpoint_path,
        tags={REFIT_OF: chooser_id},
    )  # fmt: skip
    mlflow.MlflowClient().set_tag(chooser_id, REFIT_BY, result.run_id)
    return result


def chosen_before(
    params: Params, context: Context, checkpoint_path: Path | None
) -> tuple[str, int] | None:
    """The validation run, and the epochs it chose, of a killed refit this one will resume:
    the checkpoint's run is a refit whose validation run finished from these very params and
    data. None when there is no such refit to resume."""
    if checkpoint_path is None or not params.train.resume:
        return None
    saved = checkpoint.saved_run(checkpoint_path)
    if saved is None:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    from digits.lib.config.runparams import run_params
    from digits.lib.tracking.provenance import DATA_DIGEST, REFIT_OF

    client = mlflow.MlflowClient()
    try:
        chooser = client.get_run(client.get_run(saved).data.tags[REFIT_OF])
    except (MlflowException, KeyError):
        return None
    # as mlflow.log_params has them (the run's parameter count is logged beside them)
    same = all(chooser.data.params.get(k) == str(v) for k, v in run_params(params).items())
    if (
        chooser.info.status != "FINISHED"
        or chooser.info.lifecycle_stage != "active"  # deleted in the UI: choose again
        or not same
        or chooser.data.tags.get(DATA_DIGEST) != context.digest
        or SELECTED_EPOCH not in chooser.data.metrics
    ):
        return None
    log.info("resuming a refit: its validation run %s chose its epochs", chooser.info.run_id)
    return chooser.info.run_id, int(chooser.data.metrics[SELECTED_EPOCH])


def tracked_fit(
    params: Params,
    train: Split,
    val: Split | None,
    context: Context,
    outputs: Outputs | None = None,
    experiment_id: str | None = None,
    checkpoint_path: Path | None = None,
    tags: dict[str, str] | None = None,
    chooses_only: bool = False,
) -> TrainResult:
    """One MLflow run of `train` (see there); `val` None: a refit, which no held-out images
    check. A run that `chooses_only` (a refit's first) is named `<name>-validation` and logs no
    model."""
    import mlflow

    from digits.lib.files import reporting_disk_full
    from digits.lib.tracking import logged_model, runs
    from digits.lib.tracking.naming import run_name
    from digits.lib.tracking.provenance import context_tags, log_dataset
    from digits.lib.training import fit_logged

    checkpointer = checkpoint.resumable(params, context.digest, checkpoint_path)
    start = checkpointer.start if checkpointer else None
    name = run_name(params, context.env) + ("-validation" if chooses_only else "")
    # system metrics (CPU, memory) every 10 s by MLflow's monitor thread; needs psutil
    with runs.tracked_run(
        run_name=name, run_id=start.run_id if start else None, log_system_metrics=True
    ) as run:
        if checkpointer is not None:
            checkpointer.run_id = run.info.run_id
        if start is not None:
            checkpoint.reopened(run.info.run_id, start)
        else:
            mlflow.set_tags(context_tags(context.root, context.digest, context.env))
            source = context.data_path / "train.npz" if val is not None else context.data_path
            log_dataset(train.x, train.y, source, context.digest, "training")
        mlflow.set_tags(tags or {})
        model, history, metrics = fit_logged(params, train, val, checkpoint=checkpointer)
        with reporting_disk_full(runs.artifact_dir(run)):
            mlflow.log_table(history, artifact_file="history.json")
            model_uri = "" if chooses_only else logged_model.log_keras_model(model, train.x[:5])
        result = TrainResult(model, history, metrics, run.info.run_id, model_uri)
        if outputs is not None:
            write_outputs(result, outputs, experiment_id)
    return result


def write_outputs(result: TrainResult, outputs: Outputs, experiment_id: str | None) -> None:
    """The model, history, metrics and run info, each atomically; run info last, so a stage
    that failed half-way has no run.json naming a run whose outputs are incomplete."""
    with atomic_path(outputs.model) as tmp:
        result.model.save(tmp)
    write_text(outputs.history, result.history.to_csv(index=False, float_format="%.6g"))
    write_json(outputs.metrics, result.metrics)
    RunInfo(result.run_id, experiment_id, result.model_uri).write(outputs.run_info)


def physical_memory() -> int:
    """This machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_memory(model: ModelConfig) -> None:
    """Refuse, before TensorFlow loads, a network whose training state alone (weights,
    gradients, Adam's two moments; activations not counted) exceeds this machine's RAM."""
    n = count_params(model)
    need, have = training_bytes(n), physical_memory()
    if need > have:
        raise ParamsError(
            f"model.{model.type}: the network would have ~{n:,} parameters, ~{need / 1e9:,.1f} "
            f"GB of memory to train, more than this machine's {have / 1e9:,.1f} GB: make it "
            "smaller"
        )


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.train --data data/processed --model models/model.keras ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--data", type=Path, required=True, help="folder with train/val .npz")
    parser.add_argument("--model", type=Path, required=True, help="where to save the .keras model")
    parser.add_argument("--run-info", type=Path, required=True, help="JSON with the MLflow run id")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of training metrics")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (DVC plot)")
    parser.add_argument(
        "--checkpoint", type=Path, help="state after each epoch, to resume a killed run from"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    check_fits_memory(params.model)

    from digits.lib.tracking.store import setup

    env = Environment.read()
    root = env.project_root(args.params)
    experiment_id = setup(params.mlflow, root, env)
    splits = load_splits(args.data, ("train", "val"))
    outputs = Outputs(args.model, args.run_info, args.metrics, args.history)
    outputs.remove()  # a failed run leaves none of the last run's outputs
    try:
        result = train(
            params,
            splits["train"],
            splits["val"],
            args.data,
            root,
            outputs,
            experiment_id,
            args.checkpoint,
            env,
        )
    except BaseException:
        outputs.remove()  # nor its own: written, but its run could not end FINISHED (full store)
        raise
    val_accuracy = result.metrics.get(SELECTED_VAL_ACCURACY)  # a refit has no held-out images
    log.info(
        "run %s: %s (epoch %d of %d) in %.0f s",
        result.run_id,
        "refit" if val_accuracy is None else f"val accuracy {val_accuracy:.4f}",
        result.metrics[SELECTED_EPOCH],
        result.metrics[TRAIN_EPOCHS],
        result.metrics[TRAIN_SECONDS],
    )
    if args.checkpoint is not None:
        checkpoint.remove(args.checkpoint)  # the outputs are written: nothing left to resume


if __name__ == "__main__":
    main()
