"""`make repeat`: K seeds of one configuration as child runs of a parent that holds the mean,
sd, min and max of every summary metric; bad K stops before TensorFlow loads."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.lib.seeds import seed_list, spread, spread_metrics

from helpers import run_without_tensorflow


def test_spread_is_mean_sample_sd_min_max() -> None:
    rows = [{"a": 1.0, "b": 5.0}, {"a": 2.0, "b": 5.0}, {"a": 6.0}]
    table = spread(rows)
    assert list(table) == ["a"], "only metrics every seed has"
    assert table["a"] == {"mean": 3.0, "sd": pytest.approx(2.6457513), "min": 1.0, "max": 6.0}
    one = spread([{"a": 0.9}])
    assert one["a"]["sd"] is None, "one seed says nothing about the spread"
    assert spread_metrics(one) == {"a.mean": 0.9, "a.min": 0.9, "a.max": 0.9}
    assert seed_list(42, 3) == [42, 43, 44]


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_repeat_trains_seeds_as_child_runs_with_their_spread(
    tmp_path: Path, small_params: dict[str, Any], processed: Path
) -> None:
    from mlflow import MlflowClient

    from digits.tools import repeat

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({**small_params, "evaluate": {"shifts": 1}})
    )
    out = tmp_path / "reports/repeat"
    argv = ["--params", str(tmp_path / "params.yaml"), "--repeats", "3"]
    repeat.main([*argv, "--data", str(processed), "--out", str(out)])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("repeat") == "parent"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["train.seed"] for c in children) == ["42", "43", "44"]
    assert all(c.info.status == "FINISHED" for c in children)
    for metric in ("test/accuracy", "selected/val_loss", "train/seconds", "model.n_params"):
        values = [
            c.data.metrics.get(metric, float(c.data.params.get(metric, "nan"))) for c in children
        ]
        assert parent.data.metrics[f"{metric}.mean"] == pytest.approx(statistics.fmean(values))
        assert parent.data.metrics[f"{metric}.min"] == pytest.approx(min(values))
        assert parent.data.metrics[f"{metric}.max"] == pytest.approx(max(values))
    losses = [c.data.metrics["selected/val_loss"] for c in children]
    assert len(set(losses)) == 3, "each seed trains a different network"
    assert parent.data.metrics["selected/val_loss.sd"] == pytest.approx(statistics.stdev(losses))
    assert parent.data.metrics["seeds/count"] == 3

    record = json.loads((out / "spread.json").read_text())
    assert record["seeds"] == [42, 43, 44] and record["run_id"] == parent.info.run_id
    assert "train.seed" not in record["config"] and record["config"]["train.epochs"] == 2
    assert record["config"]["evaluate.shifts"] == 1  # the test metrics' views, as evaluate's
    assert parent.data.params["evaluate.shifts"] == "1"
    assert len((out / "seeds.csv").read_text().splitlines()) == 4
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "repeat")}
    assert artifacts == {"repeat/seeds.csv", "repeat/spread.json"}


@pytest.mark.parametrize("value", ["0", "-2"])
def test_repeat_k_below_one_names_the_key_before_tensorflow(
    tmp_path: Path, small_params: dict[str, Any], value: str
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params))
    stdout, stderr = run_without_tensorflow(
        "digits.tools.repeat", ["--params", "params.yaml", "--repeats", value], tmp_path
    )
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert "error:" in stderr and "train.repeats: Input should be greater than 0" in stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_report_shows_the_spread_of_its_own_configuration_only(
    small_params: dict[str, Any],
) -> None:
    import pandas as pd

    from digits.lib.config import parse_params
    from digits.lib.config.runparams import run_params
    from digits.lib.seeds import run_record
    from digits.stages.report import render

    params = parse_params(small_params)
    rows = [{"test/accuracy": 0.97, "test/errors": 30}, {"test/accuracy": 0.98, "test/errors": 20}]
    record = run_record(params, [42, 43], run_id="abc", spread=spread(rows))
    args = (
        {"test/accuracy": 0.97, "test/errors": 30, "test/loss": 0.1, "test/ece": 0.01},
        {"train/epochs": 2, "selected/epoch": 2, "train/seconds": 1.0},
        pd.DataFrame({"digit": [0], "precision": [1.0]}),
        {},
        "run",
    )
    text = render(run_params(params), *args, None, record)
    assert "## Spread over seeds" in text and "seed 42, one of them" in text
    assert "| test/accuracy | 0.9750 | 0.0071 | 0.9700 | 0.9800 |" in text
    assert "| test/errors | 25 | 7.0711 | 20 | 30 |" in text
    other = run_params(params.with_overrides({"train.learning_rate": 0.5}))
    assert "Spread over seeds" not in render(other, *args, None, record), "not its configuration"
    shifted = render(run_params(params), *args, None, record, 1)
    assert "Spread over seeds" not in shifted, "its test metrics were computed in one view"
    reseeded = run_params(params.with_overrides({"train.seed": 7}))
    text = render(reseeded, *args, None, record)
    assert "Spread over seeds" in text and "one of them" not in text
