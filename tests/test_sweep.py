"""`make sweep` on synthetic data: workers, nested runs, pruning, failures, resume, kill -9,
promote; against the embedded journal storage and against PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.lib.config import edit_params, flatten, parse_params
from digits.tools.sweep.study import (
    DEFAULT_JOURNAL,
    FINISHED,
    count_trials,
    open_study,
    storage_url,
)

from conftest import ROOT, drop_database, postgres_database, stage_env

BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path: Path, small_params: dict[str, Any]) -> Path:
    """A project folder with the shrunk params.yaml (comments kept, as `promote` must keep
    them): MLflow store and journal storage land here."""
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    edit_params(tmp_path / "params.yaml", _flat(small_params))
    return tmp_path


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves only (a dict value of a leaf key such as sweep.space.x is kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("fixed", "space", "spaces", "files"):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_sweep(project: Path, data: Path, *args: str, check: bool = True) -> str:
    cmd = [
        str(BIN / "python"),
        "-m",
        "digits.tools.sweep",
        "--params",
        str(project / "params.yaml"),
    ]
    cmd += ["run", "--data", str(data), "--out", str(project / "reports/sweep"), *args]
    out = subprocess.run(
        cmd, cwd=project, env=stage_env(), capture_output=True, text=True, timeout=600
    )
    if check:
        assert out.returncode == 0, f"sweep failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def load(project: Path, storage: str | None = None):
    from digits.lib.config import load_params

    params = load_params(project / "params.yaml")
    url = storage_url(params.sweep, project, storage)
    return open_study(params, url, params.sweep.study, 0)


def client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def sweep_runs(project: Path) -> tuple[list[Any], list[Any]]:
    """(parent runs, child runs) of the project's MLflow experiment."""
    mlflow = client(project)
    experiment = mlflow.get_experiment_by_name("mnist")
    runs = mlflow.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def check_two_worker_sweep(project: Path, data: Path, storage: str | None = None) -> None:
    extra = ["--storage", storage] if storage else []
    output = run_sweep(project, data, "--workers", "2", "--n-trials", "4", *extra)
    study = load(project, storage)
    counts = count_trials(study)
    # two workers can both start the last trial in the same instant: at most one extra
    assert 4 <= counts.finished <= 5, output
    assert counts.running == 0
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, "both workers ran trials"

    parents, children = sweep_runs(project)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_run = {c.info.run_id: c for c in children}
    for trial in study.trials:
        child = by_run[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.data.tags["optuna.trial"] == str(trial.number)
        assert child.info.status == "FINISHED"
        assert child.data.params["train.learning_rate"] == str(trial.params["train.learning_rate"])
        steps = [
            m.step for m in client(project).get_metric_history(child.info.run_id, "val/accuracy")
        ]
        assert steps == list(range(1, len(steps) + 1)) and steps
    assert parent.data.metrics["best/val_accuracy"] == pytest.approx(study.best_value)
    assert parent.data.params["best.train.learning_rate"] == str(
        study.best_trial.params["train.learning_rate"]
    )
    out = project / "reports/sweep"
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + len(study.trials)
    assert (
        yaml.safe_load((out / "best_params.yaml").read_text())["trial"] == study.best_trial.number
    )
    assert (out / "optimization_history.png").stat().st_size > 1000
    artifacts = {a.path for a in client(project).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/best_params.yaml", "sweep/optimization_history.png"} <= (
        artifacts
    )


def test_two_workers_record_every_trial_as_a_nested_run(project: Path, processed: Path) -> None:
    check_two_worker_sweep(project, processed)
    assert (project / DEFAULT_JOURNAL).is_file()


def test_bad_trial_is_pruned_failing_trial_does_not_stop_the_sweep(
    project: Path, processed: Path
) -> None:
    study = load(project)
    good = {"train.optimizer": "adam", "train.learning_rate": 0.003}
    study.enqueue_trial(good)  # completes: the median the next trial is measured against
    study.enqueue_trial({"train.optimizer": "momentum", "train.learning_rate": 1e-4})  # pruned
    study.enqueue_trial({"model.mlp.dropout": 1.5})  # out of range: the trial raises
    output = run_sweep(project, processed, "--n-trials", "3")
    states = [t.state.name for t in load(project).trials]
    assert states[:3] == ["COMPLETE", "PRUNED", "FAIL"], output
    assert len(states) == 4 and states[3] in FINISHED, "the sweep went on after the failure"
    _, children = sweep_runs(project)
    failed = [c for c in children if c.data.tags["optuna.state"] == "FAIL"]
    assert [c.info.status for c in failed] == ["FAILED"], output
    assert "model.mlp.dropout" in failed[0].data.tags["failure_reason"]


def test_resume_continues_the_study(project: Path, processed: Path) -> None:
    run_sweep(project, processed, "--n-trials", "2")
    run_sweep(project, processed, "--n-trials", "3")
    study = load(project)
    assert count_trials(study).finished == 3
    assert [t.number for t in study.trials] == [0, 1, 2]
    output = run_sweep(project, processed, "--n-trials", "3")
    assert "nothing to run" in output
    parents, children = sweep_runs(project)
    assert len(parents) == 2 and len(children) == 3


def start_slow_sweep(project: Path, data: Path, **popen: Any) -> tuple[subprocess.Popen, Any]:
    """`make sweep` with two workers and 40-epoch trials; returns it and its first trial once
    that trial is RUNNING with its MLflow run open."""
    edit_params(
        project / "params.yaml",
        {"sweep.fixed": {"model.type": "mlp", "train.epochs": 40, "train.monitor": "val/accuracy"}},
    )
    cmd = [
        str(BIN / "python"),
        "-m",
        "digits.tools.sweep",
        "--params",
        str(project / "params.yaml"),
    ]
    cmd += ["run", "--workers", "2", "--n-trials", "3", "--data", str(data)]
    cmd += ["--out", str(project / "reports/sweep")]
    proc = subprocess.Popen(
        cmd,
        cwd=project,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if not (project / DEFAULT_JOURNAL).exists():
            continue
        for trial in load(project).trials:
            if trial.state.name == "RUNNING" and "mlflow_run_id" in trial.user_attrs:
                return proc, trial
    proc.kill()
    raise AssertionError(f"no trial started:\n{proc.communicate()[0]}")


def test_killed_worker_trial_ends_fail_and_the_others_go_on(project: Path, processed: Path) -> None:
    proc, victim = start_slow_sweep(project, processed)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    study = load(project)
    assert study.trials[victim.number].state.name == "FAIL"
    assert count_trials(study).finished >= 3, output
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "no trial counted twice"
    run = client(project).get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "process died (killed or crashed)"


def test_ctrl_c_ends_trials_fail_and_runs_killed_then_resumes(
    project: Path, processed: Path
) -> None:
    proc, _ = start_slow_sweep(project, processed, start_new_session=True)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output
    study = load(project)
    assert count_trials(study).running == 0, output
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert interrupted, output
    parents, children = sweep_runs(project)
    assert [p.info.status for p in parents] == ["KILLED"]
    by_run = {c.info.run_id: c for c in children}
    runs = [
        by_run[t.user_attrs["mlflow_run_id"]]
        for t in interrupted
        if t.user_attrs.get("mlflow_run_id")
    ]
    assert runs, "the trial that was training has its run"
    for run in runs:
        assert run.info.status == "KILLED", (run.data.tags.get("failure_reason"), output)
    assert not [c for c in children if c.info.status == "RUNNING"]


def test_promote_round_trips_into_params_and_retrains_the_same(
    project: Path, processed: Path
) -> None:
    from digits.lib.config import load_params
    from digits.lib.data import load_splits
    from digits.lib.training import fit_logged

    run_sweep(project, processed, "--n-trials", "2")
    best = load(project).best_trial
    cmd = [str(BIN / "python"), "-m", "digits.tools.sweep", "--params", "params.yaml", "promote"]
    out = subprocess.run(
        cmd, cwd=project, env=stage_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    text = (project / "params.yaml").read_text()
    assert "# softmax | mlp | cnn" in text, "comments kept"
    params = load_params(project / "params.yaml")
    settings = flatten(params.model_dump())
    for key, value in best.user_attrs["overrides"].items():
        assert settings[key] == value, key

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'check.db'}")
    mlflow.set_experiment("check")  # not the experiment id another test left active
    splits = load_splits(processed, ("train", "val"))
    with mlflow.start_run():
        _, _, summary = fit_logged(params, splits["train"], splits["val"], verbose=0)
    assert summary["selected/val_accuracy"] == pytest.approx(best.value, abs=1e-6)


def test_sweep_space_is_validated_against_the_schema(small_params: dict[str, Any]) -> None:
    from digits.lib.config import ParamsError

    small_params["sweep"]["space"]["model.mlp.widht"] = {"choices": [8]}
    small_params["sweep"]["space"]["train.learning_rate"] = {"low": -1.0, "high": 0.1}
    small_params["sweep"]["fixed"]["train.epochs"] = 0
    with pytest.raises(ParamsError) as err:
        parse_params(small_params)
    message = str(err.value)
    assert "sweep.space.model.mlp.widht: no such setting" in message
    assert "sweep.space.train.learning_rate: Input should be greater than 0" in message
    assert "sweep.fixed.train.epochs: Input should be greater than 0" in message


# --- PostgreSQL: the storage many machines share -------------------------------------------


@pytest.fixture
def pg_storage() -> Any:
    url = postgres_database("digits_sweep_test")
    yield url
    drop_database(url)


def test_two_workers_on_postgresql(project: Path, processed: Path, pg_storage: str) -> None:
    check_two_worker_sweep(project, processed, pg_storage)
    assert not (project / DEFAULT_JOURNAL).exists()


def test_postgresql_heartbeat_fails_a_stale_trial(project: Path, pg_storage: str) -> None:
    """A trial whose worker (on any machine) stopped beating is failed by the next worker."""
    import optuna

    from digits.lib.config import load_params

    edit_params(project / "params.yaml", {"sweep.heartbeat": 1})
    params = load_params(project / "params.yaml")
    study = open_study(params, pg_storage, "hb", 0)
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", "elsewhere:1")
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state.name == "FAIL"


def test_space_dimensions_are_checked_together(small_params: dict[str, Any]) -> None:
    """A per-layer width list in the base params is fine when the space also sets the width,
    and an error when only the depth is searched."""
    from digits.lib.config import ParamsError

    small_params["model"]["mlp"].update(depth=4, width=[20, 10, 6, 3])
    parse_params(small_params)  # the space sets both depth and width
    del small_params["sweep"]["space"]["model.mlp.width"]
    with pytest.raises(ParamsError, match=r"sweep\.space\.model\.mlp\.depth: width lists 4 layer"):
        parse_params(small_params)


def test_workers_threads_cap_tensorflow_thread_pools() -> None:
    """`sweep.threads` reaches each worker as TensorFlow's thread-pool sizes; 0 leaves them."""
    from digits.tools.sweep.workers import run_workers, thread_env

    assert thread_env(0) == {}
    probe = "import os; print(os.environ['TF_NUM_INTRAOP_THREADS'], flush=True)"
    exits: list[int] = []
    codes = run_workers([[sys.executable, "-c", probe]], "x", lambda w, c: exits.append(c), 1)
    assert list(codes.values()) == [0] and exits == [0]
    assert thread_env(1) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def test_named_space_replaces_the_study_fixed_settings_and_space() -> None:
    """`make sweep SPACE=cnn`: the CNN study of params.yaml, checked like the main space."""
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    cnn = params.sweep.choose("cnn")
    assert cnn.study != params.sweep.study and cnn.fixed["model.type"] == "cnn"
    assert "model.mlp.width" not in cnn.space and cnn.pruner == params.sweep.pruner
    assert params.sweep.choose(None) is params.sweep
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sweep"]["spaces"]["cnn"]["space"]["model.cnn.padding"] = {"choices": ["full"]}
    with pytest.raises(Exception, match=r"sweep\.spaces\.cnn\.space\.model\.cnn\.padding"):
        parse_params(raw)
