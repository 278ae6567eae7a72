"""`evaluate` and `report`: calibration, champion against challenger, and what the MLflow UI
shows of a run (its name, description, metrics on the logged model, system metrics)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from digits.lib.config import parse_params
from digits.lib.environment import Environment
from digits.lib.scoring import calibration, fixed_and_broke
from digits.lib.tracking import store
from digits.lib.tracking.naming import run_name

from helpers import fresh_store, real_params, run_without_tensorflow, shrink


def test_calibration_error_of_known_cases() -> None:
    labels = np.zeros(10, dtype=int)
    # confidence 0.8 and right on 8 of 10: calibrated
    probabilities = np.full((10, 10), 0.2 / 9)
    probabilities[:, 0] = 0.8
    probabilities[8:] = probabilities[8:, ::-1]  # the last two predict 9 with 0.8
    ece, bins = calibration(labels, probabilities)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert bins["count"].sum() == 10 and len(bins) == 15
    # always sure (confidence 1.0) and right half the time: ECE 0.5
    sure = np.eye(10)[np.array([0] * 5 + [1] * 5)]
    assert calibration(labels, sure)[0] == pytest.approx(0.5)
    # two bins: 0.95 confident and right, 0.55 confident and wrong -> (0.05 + 0.55) / 2
    mixed = np.full((2, 10), 0.05 / 9)
    mixed[0, 0] = 0.95
    mixed[1] = 0.45 / 9
    mixed[1, 1] = 0.55
    assert calibration(np.zeros(2, dtype=int), mixed)[0] == pytest.approx(0.3)


def test_fixed_and_broke_lists_each_disagreement_once() -> None:
    labels = np.array([0, 1, 2, 3, 4])
    champion = np.array([0, 9, 2, 9, 4])
    challenger = np.array([9, 1, 2, 3, 4])
    table = fixed_and_broke(labels, champion, challenger)
    assert table.to_dict("list") == {
        "test_index": [1, 3, 0],
        "digit": [1, 3, 0],
        "champion": [9, 9, 0],
        "challenger": [1, 3, 9],
        "change": ["fixed", "fixed", "broke"],
    }


def test_run_names_say_what_is_trained(mirror) -> None:
    base = real_params()

    def name(env: Environment | None = None, **overrides) -> str:
        params = parse_params(base)
        return run_name(params.with_overrides(overrides), env or Environment())

    assert name() == "mlp-2x512-relu"
    assert name(**{"model.mlp.width": [256, 128], "model.mlp.activation": "gelu"}) == (
        "mlp-256-128-gelu"
    )
    assert name(**{"model.type": "cnn", "model.cnn.batch_norm": True}) == "cnn-32-64-k3-bn"
    assert name(**{"model.type": "softmax", "model.augment.rotation": 8}) == "softmax-aug"
    assert name(Environment(exp_name="wiry-mast")) == "wiry-mast"


def flags(**paths: Path) -> list[str]:
    """`--per-class x` for per_class=x."""
    return [
        arg for key, value in paths.items() for arg in (f"--{key.replace('_', '-')}", str(value))
    ]


def evaluate_argv(out: Path, params: Path, data: Path) -> list[str]:
    """`evaluate`'s command line, reading and writing in `out`."""
    stage = {"params": params, "run_info": out / "run.json", "data": data}
    stage |= {"model": out / "model.keras", "history": out / "history.csv"}
    return (
        flags(**stage, metrics=out / "metrics.json", confusion=out / "confusion.csv")
        + flags(per_class=out / "pc.csv", figures=out / "figures")
        + flags(registry=out / "registry.json")
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory, mirror, processed: Path, store_template: Path):
    """`train` + `evaluate` + `report` three times in one project on the synthetic data: an
    untrained-ish model (1 epoch), a better one (8 epochs) scored with test-time shifts, and
    the better one again in one view."""
    from digits.stages import evaluate, report, train

    _, hashes = mirror
    root = tmp_path_factory.mktemp("evaluate")
    fresh_store(root, store_template)
    raw = shrink(real_params(), hashes, ["x"])
    outputs = []
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("DVC_EXP_NAME", raising=False)
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    try:
        for i, (epochs, lr, shifts) in enumerate(((1, 0.0003, 0), (8, 0.003, 1), (8, 0.003, 0))):
            raw["train"].update(epochs=epochs, learning_rate=lr, patience=0)
            raw["evaluate"] = {"shifts": shifts}
            params = root / "params.yaml"
            params.write_text(yaml.safe_dump(raw))
            out = root / f"out{i}"
            common = {"params": params, "run_info": out / "run.json"}
            stage = {**common, "data": processed, "model": out / "model.keras"}
            train.main(flags(**stage, history=out / "history.csv", metrics=out / "train.json"))
            evaluate.main(evaluate_argv(out, params, processed))
            report.main(
                flags(**common, metrics=out / "metrics.json", train_metrics=out / "train.json")
                + flags(per_class=out / "pc.csv", registry=out / "registry.json")
                + flags(figures=out / "figures", out=out / "report.md")
            )
            outputs.append(out)
    finally:
        mp.undo()
    return root, outputs


def client_for(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_run_is_named_described_and_ranked_with_system_metrics(models) -> None:
    root, (first, _, _) = models
    client = client_for(root)
    run_id = json.loads((first / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    metrics = json.loads((first / "metrics.json").read_text())
    assert run.info.run_name == "mlp-1x32-relu"
    note = run.data.tags["mlflow.note.content"]
    assert f"test accuracy {metrics['test/accuracy']:.2%}" in note
    assert f"({metrics['test/errors']} errors)" in note and "1 epochs" in note
    # test metrics against the logged model: the Models view ranks by them
    model_id = json.loads((first / "run.json").read_text())["model_uri"].removeprefix("models:/")
    logged = {m.key: m.value for m in client.get_logged_model(model_id).metrics}
    assert logged["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert logged["test/ece"] == pytest.approx(metrics["test/ece"])
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    assert any(k.startswith("system/system_memory_usage") for k in run.data.metrics)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[store.EXPERIMENT_KIND] == store.MODEL_TRAINING
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/reliability.png" in artifacts
    assert (first / "figures/reliability.png").is_file()
    assert 0 <= metrics["test/ece"] <= 1


def test_a_better_model_is_compared_with_the_champion_side_by_side(models) -> None:
    root, (first, _, second) = models
    client = client_for(root)
    decision = json.loads((second / "registry.json").read_text())
    assert json.loads((first / "registry.json").read_text())["decision"] == "first"
    test = decision["test"]
    rows = pd.DataFrame(decision["fixed_and_broke"])
    assert (rows.change == "fixed").sum() == test["c"]
    assert (rows.change == "broke").sum() == test["b"]
    assert test["c"] > test["b"]  # 8 epochs at a sane rate beat 1 epoch at a tiny one
    assert test["challengers"] == 1 and test["level"] == 0.05  # the champion's first
    assert decision["decision"] == ("promoted" if test["p_value"] < 0.05 else "kept")
    assert "significance / k" in decision["reason"] and "McNemar" in decision["line"]
    run_id = json.loads((second / "run.json").read_text())["run_id"]
    tags = client.get_run(run_id).data.tags
    assert (tags["registry.b"], tags["registry.c"]) == (str(test["b"]), str(test["c"]))
    assert tags["registry.decision"] == decision["decision"]
    version = client.get_model_version(decision["name"], decision["version"])
    assert version.tags["registry.p_value"] == tags["registry.p_value"]
    artifacts = {a.path for a in client.list_artifacts(run_id, "comparison")}
    assert {"comparison/champion_vs_challenger.png", "comparison/fixed_and_broke.png"} <= artifacts
    assert "comparison/fixed_and_broke.json" in artifacts
    report = (second / "report.md").read_text()
    assert "## Model registry" in report and "McNemar exact p-value" in report
    assert "| level: significance / k | 0.05 (k = 1) |" in report
    assert "![Confusion matrix against the champion](figures/champion_vs_challenger.png)" in report
    assert "### Fixed and broken test digits" in report
    assert "![Reliability diagram (calibration)](figures/reliability.png)" in report
    assert "Expected calibration error" in report


def test_test_time_shifts_are_stated_checked_on_validation_and_kept_apart(models) -> None:
    from digits.lib.vocab import SHIFTED_VAL_ACCURACY

    root, (first, second, _) = models
    client = client_for(root)
    plain, moved = (json.loads((out / "metrics.json").read_text()) for out in (first, second))
    assert SHIFTED_VAL_ACCURACY not in plain
    assert 0.1 < moved[SHIFTED_VAL_ACCURACY] <= 1.0
    decision = json.loads((second / "registry.json").read_text())
    version = client.get_model_version(decision["name"], decision["version"])
    assert version.tags["evaluate.shifts"] == "1"
    # nine views against one: not paired with the one-view champion, a registered model apart
    assert decision["decision"] == "first" and decision["name"] != "mnist-digits"
    assert decision["not_compared_with"] == "mnist-digits"
    assert "evaluate.shifts 1 differs from mnist-digits's 0" in decision["reason"]
    run = client.get_run(json.loads((second / "run.json").read_text())["run_id"])
    assert run.data.tags["evaluate.shifts"] == "1"
    assert run.data.metrics[SHIFTED_VAL_ACCURACY] == pytest.approx(moved[SHIFTED_VAL_ACCURACY])
    assert "with test-time shifts (9 views)" in run.data.tags["mlflow.note.content"]
    report = (second / "report.md").read_text()
    assert "averaged over 9 views, moved by up to 1 pixel along each axis" in report
    assert f"{moved[SHIFTED_VAL_ACCURACY]:.2%} with the shifts" in report
    assert "one view per image (no test-time shifts)" in (first / "report.md").read_text()
    # the registry paired the two models' own predictions: the test accuracy it recorded for
    # the version is that of the shifted predictions
    assert float(version.tags["test_accuracy"]) == pytest.approx(moved["test/accuracy"])


def copy_of(out: Path, dest: Path) -> Path:
    """What `train` left in `out` (model, run.json, history), copied into `dest`, as a clone
    gets it from `make pull`."""
    dest.mkdir(parents=True)
    for name in ("model.keras", "run.json", "history.csv"):
        shutil.copy(out / name, dest / name)
    return dest


def stored_predictions(client, run_id: str, folder: Path) -> dict[str, np.ndarray]:
    path = client.download_artifacts(run_id, "predictions/test.npz", str(folder))
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def test_evaluating_a_run_again_registers_nothing_and_keeps_its_predictions(
    models, processed: Path, tmp_path: Path, monkeypatch
) -> None:
    """The champion's stored predictions are the evidence it was promoted on: evaluating its
    run again, even with other views, neither overwrites them nor adds a version."""
    from digits.stages import evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, (_, _, better) = models
    client = client_for(root)
    run_id = json.loads((better / "run.json").read_text())["run_id"]
    before = stored_predictions(client, run_id, tmp_path / "before")
    versions = len(client.search_model_versions("name = 'mnist-digits'"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["evaluate"] = {"shifts": 1}
    params = root / "again.yaml"
    params.write_text(yaml.safe_dump(raw))
    again = copy_of(better, tmp_path / "again")
    evaluate.main(evaluate_argv(again, params, processed))
    decision = json.loads((again / "registry.json").read_text())
    registered = json.loads((better / "registry.json").read_text())
    assert decision["decision"] == "already_registered"
    assert (decision["name"], decision["version"]) == (registered["name"], registered["version"])
    assert "nothing new registered, its stored predictions kept" in decision["line"]
    assert len(client.search_model_versions("name = 'mnist-digits'")) == versions
    after = stored_predictions(client, run_id, tmp_path / "after")
    np.testing.assert_array_equal(after["confidence"], before["confidence"])
    # the new views did change the predictions: what was kept is the original evidence
    plain, shifted = (json.loads((o / "metrics.json").read_text()) for o in (better, again))
    assert shifted["test/ece"] != plain["test/ece"]


def test_a_model_trained_in_another_store_is_evaluated_into_a_new_run(
    models, processed: Path, tmp_path: Path, store_template: Path, monkeypatch, caplog
) -> None:
    """After `make pull`, run.json names a run this store never saw: the local model is logged
    into a new run tagged with the training run's id, registered and compared there; the same
    copy is used again next time."""
    from digits.stages import evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, (_, _, better) = models
    clone = tmp_path / "clone"
    fresh_store(clone, store_template)
    params = clone / "params.yaml"
    shutil.copy(root / "params.yaml", params)
    out = copy_of(better, clone / "models")
    trained = json.loads((out / "run.json").read_text())["run_id"]
    with caplog.at_level(logging.WARNING):
        evaluate.main(evaluate_argv(out, params, processed))
    assert f"run {trained} is not in the tracking store" in caplog.text
    decision = json.loads((out / "registry.json").read_text())
    assert decision["decision"] == "first" and decision["version"] == "1"
    client = client_for(clone)
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["evaluate.trained_run"] == trained and run.info.status == "FINISHED"
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    version = client.get_model_version("mnist-digits", "1")
    assert version.run_id == run.info.run_id
    evaluate.main(evaluate_argv(out, params, processed))  # again: the same copy, no new one
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert json.loads((out / "registry.json").read_text())["decision"] == "already_registered"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "run.json: not found; run `dvc repro train`"),
        ("{not json", "run.json: unreadable"),
        ('{"run_id": 3, "model_uri": "runs:/x"}', "run_id must be a non-empty string"),
    ],
)
def test_a_missing_or_malformed_run_json_is_an_error_line_before_tensorflow(
    tmp_path: Path, content: str | None, message: str
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(real_params()))
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    argv = ["--params", "params.yaml", "--data", "d", "--model", "m.keras"]
    argv += ["--run-info", "run.json", "--history", "h", "--metrics", "x", "--confusion", "c"]
    argv += ["--per-class", "p", "--figures", "f", "--registry", "g"]
    stdout, stderr = run_without_tensorflow("digits.stages.evaluate", argv, tmp_path)
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert stderr.startswith("error: ") and message in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1])
def test_significance_outside_0_1_is_a_params_error_before_tensorflow(tmp_path, level) -> None:
    raw = real_params()
    raw["mlflow"]["significance"] = level
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    argv = ["--params", "params.yaml", "--data", "d", "--model", "m.keras", "--run-info", "r"]
    argv += ["--history", "h", "--metrics", "x", "--confusion", "c", "--per-class", "p"]
    argv += ["--figures", "f", "--registry", "g"]
    stdout, stderr = run_without_tensorflow("digits.stages.evaluate", argv, tmp_path)
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert "mlflow.significance: Input should be" in stderr
