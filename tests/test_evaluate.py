"""`evaluate` and `report`: calibration, champion against challenger, and what the MLflow UI
shows of a run (its name, description, metrics on the logged model, system metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from digits.lib.config import parse_params
from digits.lib.environment import Environment
from digits.lib.tracking import store
from digits.lib.tracking.naming import run_name
from digits.stages.evaluate import calibration, fixed_and_broke

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


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, mirror, processed: Path, store_template: Path):
    """`train` + `evaluate` + `report` twice in one project on the synthetic data: an
    untrained-ish model (1 epoch), then a better one (8 epochs) scored with test-time shifts."""
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
        for i, (epochs, lr) in enumerate(((1, 0.0003), (8, 0.003))):
            raw["train"].update(epochs=epochs, learning_rate=lr, patience=0)
            raw["evaluate"] = {"shifts": i}
            params = root / "params.yaml"
            params.write_text(yaml.safe_dump(raw))
            out = root / f"out{i}"
            common = {"params": params, "run_info": out / "run.json"}
            stage = {**common, "data": processed, "model": out / "model.keras"}
            stage |= {"history": out / "history.csv"}
            train.main(flags(**stage, metrics=out / "train.json"))
            evaluate.main(
                flags(**stage, metrics=out / "metrics.json", confusion=out / "confusion.csv")
                + flags(per_class=out / "pc.csv", figures=out / "figures")
                + flags(registry=out / "registry.json")
            )
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
def test_run_is_named_described_and_ranked_with_system_metrics(two_models) -> None:
    root, (first, _) = two_models
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


def test_second_model_is_compared_with_the_champion_side_by_side(two_models) -> None:
    root, (first, second) = two_models
    client = client_for(root)
    decision = json.loads((second / "registry.json").read_text())
    assert json.loads((first / "registry.json").read_text())["decision"] == "first"
    test = decision["test"]
    rows = pd.DataFrame(decision["fixed_and_broke"])
    assert (rows.change == "fixed").sum() == test["c"]
    assert (rows.change == "broke").sum() == test["b"]
    assert test["c"] > test["b"]  # 8 epochs at a sane rate beat 1 epoch at a tiny one
    assert decision["decision"] == ("promoted" if test["p_value"] < 0.05 else "kept")
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
    assert "![Confusion matrix against the champion](figures/champion_vs_challenger.png)" in report
    assert "### Fixed and broken test digits" in report
    assert "![Reliability diagram (calibration)](figures/reliability.png)" in report
    assert "Expected calibration error" in report


def test_test_time_shifts_are_stated_and_checked_on_validation(two_models) -> None:
    from digits.lib.vocab import SHIFTED_VAL_ACCURACY

    root, (first, second) = two_models
    client = client_for(root)
    plain, moved = (json.loads((out / "metrics.json").read_text()) for out in (first, second))
    assert SHIFTED_VAL_ACCURACY not in plain
    assert 0.1 < moved[SHIFTED_VAL_ACCURACY] <= 1.0
    decision = json.loads((second / "registry.json").read_text())
    version = client.get_model_version(decision["name"], decision["version"])
    assert version.tags["evaluate.shifts"] == "1"
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
