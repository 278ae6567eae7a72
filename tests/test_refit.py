"""`train.refit`: the validation run chooses the epochs, a second run trains on train + val for
that many, and the two MLflow runs name each other; the test set stays out of both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digits.lib.config import MLflowConfig, ParamsError, parse_params
from digits.lib.data import load_splits

from helpers import fresh_store, real_params, shrink


def test_refit_trains_on_train_and_val_for_the_epochs_the_validation_run_chose(
    tmp_path: Path, mirror, processed: Path, store_template: Path
) -> None:
    import mlflow

    from digits.lib.environment import Environment
    from digits.lib.tracking.provenance import REFIT_BY, REFIT_OF
    from digits.lib.tracking.store import setup
    from digits.stages.train import Outputs, train

    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["train"].update(epochs=4, patience=2, refit=True, learning_rate=0.05)
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))
    outputs = Outputs(*(tmp_path / name for name in ("m.keras", "run.json", "m.json", "h.csv")))
    setup(MLflowConfig(), fresh_store(tmp_path, store_template).parent, Environment.read())
    try:
        result = train(params, splits["train"], splits["val"], processed, tmp_path, outputs)
        client = mlflow.MlflowClient()
        refit = client.get_run(result.run_id)
        chooser = client.get_run(refit.data.tags[REFIT_OF])
        datasets = {
            run.info.run_id: json.loads(run.inputs.dataset_inputs[0].dataset.profile)
            for run in (refit, chooser)
        }
    finally:
        mlflow.set_tracking_uri(None)

    assert chooser.data.tags[REFIT_BY] == refit.info.run_id
    assert (refit.info.status, chooser.info.status) == ("FINISHED", "FINISHED")
    assert chooser.info.run_name == refit.info.run_name + "-validation"
    chosen = int(chooser.data.metrics["selected/epoch"])
    assert 1 <= chosen <= 4
    assert refit.data.params["train.epochs"] == str(chosen)
    assert refit.data.params["train.refit"] == "True"
    n_train, n_val = len(splits["train"]), len(splits["val"])
    assert datasets[chooser.info.run_id]["features_shape"][0] == n_train
    assert datasets[refit.info.run_id]["features_shape"][0] == n_train + n_val
    # the refit has no held-out images: no validation curve or score is logged for it
    assert "selected/val_accuracy" in chooser.data.metrics
    assert not any(key.startswith(("val/", "selected/val")) for key in refit.data.metrics)
    assert json.loads(outputs.metrics.read_text())["train/epochs"] == chosen
    assert json.loads(outputs.run_info.read_text())["run_id"] == refit.info.run_id
    assert not any(a.path == "model" for a in client.list_artifacts(chooser.info.run_id))
    assert result.model_uri.startswith("models:/")
    # a model trained from scratch, not the chooser's weights carried on
    assert len(result.history) == chosen
    assert not np.isnan(result.history["train/loss"]).any()
    # `dvc plots` wants every curve it draws: the validation ones are there, and empty
    written = pd.read_csv(outputs.history)
    assert {"epoch", "train/loss", "train/accuracy", "val/loss", "val/accuracy"} <= set(written)


def test_a_resumed_refit_does_not_run_its_validation_again_unless_it_must(
    tmp_path: Path, mirror, processed: Path, store_template: Path
) -> None:
    import mlflow

    from digits.lib.environment import Environment
    from digits.lib.tracking.provenance import REFIT_OF
    from digits.lib.tracking.store import setup
    from digits.stages.train import train

    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["train"].update(epochs=3, patience=2, refit=True, resume=True, learning_rate=0.05)
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))
    saved = tmp_path / "checkpoint.npz"
    setup(MLflowConfig(), fresh_store(tmp_path, store_template).parent, Environment.read())
    try:
        client = mlflow.MlflowClient()

        def chooser_of(p):  # the stage removes the checkpoint once its outputs are written
            run_id = train(p, splits["train"], splits["val"], processed, tmp_path, None, None,
                           saved).run_id  # fmt: skip
            return run_id, client.get_run(run_id).data.tags[REFIT_OF]

        first, chose = chooser_of(params)
        again = chooser_of(params)  # as after a kill once the refit saved its last epoch
        resumed = client.get_run(first).data.tags
        client.delete_run(chose)  # in the UI
        after_delete = chooser_of(params)
        changed = chooser_of(params.with_overrides({"train.learning_rate": 0.04}))
        choosers = client.search_runs(
            [client.get_run(first).info.experiment_id],
            filter_string="attributes.run_name LIKE '%-validation'",
            run_view_type=mlflow.entities.ViewType.ALL,
        )
    finally:
        mlflow.set_tracking_uri(None)

    assert again == (first, chose)  # the refit reopened, with the epochs chosen before
    assert "resumed_after_epochs" in resumed
    assert after_delete[0] == first and after_delete[1] != chose  # chosen again, then resumed
    assert changed[0] != first and changed[1] not in {chose, after_delete[1]}
    assert len(choosers) == 3  # the first, the one after the delete, the changed params'


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("evaluate.shifts", 1, "evaluate.shifts: test-time shifts stay on only if"),
        ("model.type", "numpy_mlp", "train.refit: numpy_mlp has no refit mode"),
    ],
)
def test_a_refit_refuses_what_validation_would_choose_after_it(
    setting: str, value: object, message: str
) -> None:
    raw = real_params()
    raw["train"]["refit"] = True
    section, key = setting.split(".")
    raw[section][key] = value
    if value == "numpy_mlp":
        raw["model"]["dtype_policy"] = "float32"
        raw["model"]["augment"] = {k: 0 for k in raw["model"]["augment"]}
        raw["train"].update(optimizer="sgd", lr_schedule="constant")
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_the_report_says_a_refit_model_learned_from_the_validation_images_too(
    small_params: dict,
) -> None:
    from digits.lib.config.runparams import run_params
    from digits.stages.report import render

    args = (
        {"test/accuracy": 0.97, "test/errors": 30, "test/loss": 0.1, "test/ece": 0.01},
        {"train/epochs": 2, "selected/epoch": 2, "train/seconds": 1.0},
        pd.DataFrame({"digit": [0], "precision": [1.0]}),
        {},
        "run",
    )
    params = parse_params(small_params)
    refit = params.with_overrides({"train.refit": True})
    phrase = "on the training and validation images together"
    assert phrase in render(run_params(refit), *args)
    assert phrase not in render(run_params(params), *args)
