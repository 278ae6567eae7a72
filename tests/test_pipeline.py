"""The whole `dvc repro`, in a temporary copy of the project, on synthetic MNIST served over
loopback HTTP (the real download path), two epochs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, fresh_store, real_params, shrink, wait_until

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.xdist_group("pipeline")  # one worker: the tests share one project


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


# session, not module: xdist runs other files' tests between these on the same worker, and a
# module fixture would be torn down and built again (a whole `dvc repro`) each time
@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, mirror, http_mirror, store_template):
    """A fresh copy of the project (code, dvc.yaml, shrunk params) as its own git + DVC repo."""
    _, hashes = mirror
    root = tmp_path_factory.mktemp("project")
    fresh_store(root, store_template)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root)
    (root / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, [http_mirror])))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MLFLOW_TRACKING_URI", "MNIST_MIRROR"} and not k.startswith("DVC_")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    run(["git", "init", "-q"], root, env)
    run([str(BIN / "dvc"), "init", "-q"], root, env)
    first = run([str(BIN / "dvc"), "repro"], root, env)
    return root, env, first


def mlflow_client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_repro_runs_every_stage_and_writes_outputs(project) -> None:
    root, _, output = project
    assert stages_run(output) == {"download", "preprocess", "train", "evaluate", "report"}
    for path in [
        "data/raw/train-images-idx3-ubyte",
        "data/processed/test.npz",
        "models/model.keras",
        "reports/history.csv",
        "reports/confusion.csv",
        "reports/figures/confusion_matrix.png",
        "reports/figures/misclassified.png",
        "reports/figures/learning_curves.png",
        "reports/report.md",
        "dvc.lock",
    ]:
        assert (root / path).is_file(), path
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert 0.3 < metrics["test/accuracy"] <= 1.0  # synthetic classes are learnable; chance is 0.1
    report = (root / "reports/report.md").read_text()
    assert "Test accuracy" in report
    assert "![Learning curves](figures/learning_curves.png)" in report


def test_mlflow_holds_one_finished_run_with_everything(project) -> None:
    import mlflow

    root, _, _ = project
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["model.type"] == "mlp"
    assert "test/accuracy" in run.data.metrics
    assert run.data.tags["data.sha256"]
    # the stage ran this project's code, not the editable install's (dvc exp run --temp)
    assert Path(run.data.tags["mlflow.source.name"]).resolve().is_relative_to(root.resolve())
    for metric in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [1, 2], metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/learning_curves.png"} <= artifacts
    assert any(a.path == "confusion_matrix.json" for a in client.list_artifacts(run.info.run_id))
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train.npz", "test.npz"}  # test: the dataset of the test metrics
    assert inputs["test.npz"].dataset.digest == run.data.tags["test.sha256"][:8]
    data = inputs["train.npz"]
    assert data.dataset.name == "train.npz"
    assert data.dataset.digest == run.data.tags["data.sha256"][:8]
    assert {t.key: t.value for t in data.tags}["sha256"] == run.data.tags["data.sha256"]

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    local = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model")
    model = mlflow.pyfunc.load_model(local)
    from digits.lib.data import load_split

    test = load_split(root / "data/processed/test.npz")
    assert model.metadata.signature is not None
    assert model.predict(test.x[:3]).shape == (3, 10)
    # the input example serves (train logs the model without MLflow's own check of it)
    example = model.metadata.load_input_example(local)
    assert example.shape == (2, 784) and model.predict(example).shape == (2, 10)


def test_second_repro_runs_nothing_and_train_param_reruns_only_downstream(project) -> None:
    root, env, _ = project
    again = run([str(BIN / "dvc"), "repro"], root, env)
    assert stages_run(again) == set()
    assert "up to date" in again

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    changed = run([str(BIN / "dvc"), "repro"], root, env)
    assert stages_run(changed) == {"train", "evaluate", "report"}
    runs = mlflow_client(root).search_runs(
        [mlflow_client(root).get_experiment_by_name("mnist").experiment_id]
    )
    assert sorted(r.data.params["train.learning_rate"] for r in runs) == ["0.001", "0.002"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_registry_setting_reruns_evaluate_and_report_not_train(project) -> None:
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["mlflow"]["champion_alias"] = "best"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    changed = run([str(BIN / "dvc"), "repro"], root, env)
    assert stages_run(changed) == {"evaluate", "report"}
    registry = json.loads((root / "reports/registry.json").read_text())
    assert registry["alias"] == "best" and registry["champion"] is True
    assert "@best" in (root / "reports/report.md").read_text()


@pytest.mark.integration  # kill -9 of a process group: `make test-integration`
def test_kill_9_during_train_then_repro_recovers(project) -> None:
    """`kill -9` of the whole `dvc repro` while `train` runs: the next `dvc repro` reruns what
    is missing and succeeds, and the killed run does not stay RUNNING."""
    import signal

    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(learning_rate=0.003, epochs=200, patience=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("mnist").experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment])}
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"], cwd=root, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def training_run() -> str | None:  # a new run with two epochs logged
        for candidate in client.search_runs([experiment]):
            run_id = candidate.info.run_id
            if run_id not in before and len(client.get_metric_history(run_id, "val/loss")) >= 2:
                return run_id
        return None

    try:
        killed = wait_until(training_run, 300, "two epochs of training", interval=0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    again = run([str(BIN / "dvc"), "repro"], root, env)
    assert stages_run(again) == {"train", "evaluate", "report"}
    assert "up to date" in run([str(BIN / "dvc"), "status"], root, env)
    dead = client.get_run(killed)
    assert dead.info.status == "FAILED"
    assert dead.data.tags["failure_reason"].startswith("process died")
