"""The scale-out tracking path: the same train and evaluate stages logging to an MLflow tracking
server backed by PostgreSQL, chosen only by MLFLOW_TRACKING_URI; and a dead server failing fast."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from digits.tools.server import serving

from helpers import (
    ROOT,
    drop_database,
    free_port,
    make_command,
    postgres_database,
    real_params,
    shrink,
    stage_env,
)

BIN = Path(sys.executable).parent


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on loopback with a fresh PostgreSQL database as its backend store."""
    database = postgres_database("digits_mlflow_test")
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", database, "--artifacts-destination", str(tmp_path / "art")]
    try:
        with serving(cmd, f"http://127.0.0.1:{port}", tmp_path / "server.log") as url:
            yield url
    finally:
        drop_database(database)


def stage(
    module: str, args: list[str], cwd: Path, uri: str, monkeypatch, capsys
) -> tuple[int, str]:
    """Run a stage's `main` in this process (TensorFlow is loaded once per test worker) with
    only MLFLOW_TRACKING_URI choosing the store; returns (exit code, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in [n for n in os.environ if n.startswith("DVC_")]:
        monkeypatch.delenv(name)
    capsys.readouterr()
    try:
        importlib.import_module(module).main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def train_args(data: Path) -> list[str]:
    return [
        "--data", str(data), "--model", "models/model.keras", "--run-info", "models/run.json",
        "--metrics", "reports/train_metrics.json", "--history", "reports/history.csv",
    ]  # fmt: skip


@pytest.mark.integration  # a tracking server process on PostgreSQL: `make test-integration`
def test_stages_log_to_a_postgresql_backed_server(
    tmp_path: Path, mirror, processed: Path, tracking_server: str, monkeypatch, capsys
) -> None:
    from mlflow import MlflowClient

    _, hashes = mirror
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    code, err = stage(
        "digits.stages.train", train_args(processed), tmp_path, tracking_server, monkeypatch, capsys
    )
    assert code == 0, err
    code, err = stage(
        "digits.stages.evaluate",
        ["--data", str(processed), "--model", "models/model.keras", "--run-info",
         "models/run.json", "--history", "reports/history.csv", "--metrics",
         "reports/metrics.json", "--confusion",
         "reports/confusion.csv", "--per-class", "reports/per_class.csv", "--figures", "figs",
         "--registry", "reports/registry.json"],
        tmp_path, tracking_server, monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0, err
    assert not (tmp_path / "mlflow.db").exists(), "nothing went to the local default store"

    client = MlflowClient(tracking_uri=tracking_server)
    run_id = json.loads((tmp_path / "models/run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.type"] == "mlp"
    assert "test/accuracy" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"plots", "confusion_matrix.json"} <= artifacts

    import mlflow

    mlflow.set_tracking_uri(tracking_server)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.signature is not None


def test_dead_tracking_server_fails_fast_before_training(
    tmp_path: Path, mirror, processed: Path, monkeypatch, capsys
) -> None:
    _, hashes = mirror
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    started = time.perf_counter()
    dead = f"http://127.0.0.1:{free_port()}"
    code, err = stage(
        "digits.stages.train", train_args(processed), tmp_path, dead, monkeypatch, capsys
    )
    assert code == 1
    assert "is not reachable" in err and "MLFLOW_TRACKING_URI" in err
    assert not (tmp_path / "models/model.keras").exists()
    assert time.perf_counter() - started < 30  # seconds, not minutes of client retries


def test_make_ui_on_a_tracking_server_prints_its_address_and_starts_nothing() -> None:
    """With MLFLOW_TRACKING_URI on a server, the runs are there, not in mlflow.db: `make ui`
    names the server's UI (credentials dropped) instead of opening the local store."""
    import subprocess

    env = stage_env(MLFLOW_TRACKING_URI="http://alice:s3cret-Kiwi@127.0.0.1:5001/mlflow/")
    out = subprocess.run(
        make_command("ui"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "the runs are on the tracking server in MLFLOW_TRACKING_URI: open "
        "http://127.0.0.1:5001/mlflow/ (no local UI started)\n"
    )
