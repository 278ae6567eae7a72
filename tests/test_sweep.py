"""`make sweep` on synthetic data: workers, nested runs, pruning, failures, resume, kill -9,
promote; against the embedded journal storage and against PostgreSQL."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits.lib.config import flatten, parse_params
from digits.lib.config.edit import edit_params
from digits.lib.config.sweep import SweepParams
from digits.lib.process import ProcessName
from digits.lib.urls import StorageUrl
from digits.tools.sweep import checks
from digits.tools.sweep.study import (
    DEFAULT_JOURNAL,
    FINISHED,
    count_trials,
    open_study,
    session_limits,
    single_host,
    storage_url,
)

from helpers import (
    ROOT,
    drop_database,
    fresh_store,
    postgres_database,
    run_without_tensorflow,
    stage_env,
    wait_until,
)

BIN = Path(sys.executable).parent


@pytest.fixture
def project(tmp_path: Path, small_params: dict[str, Any], store_template: Path) -> Path:
    """A project folder with the shrunk params.yaml (comments kept, as `promote` must keep
    them) and an empty MLflow store: the sweep's runs and journal storage land here."""
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    edit_params(tmp_path / "params.yaml", _flat(small_params))
    fresh_store(tmp_path, store_template)
    return tmp_path


@pytest.fixture
def sweep_here(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> Callable[..., str]:
    """Runs the sweep's command line in this process, as `make sweep` does with one worker (the
    trials then run in the launcher's process; TensorFlow is already loaded here). Returns
    what it printed and logged."""
    from digits.tools.sweep.__main__ import main

    monkeypatch.chdir(project)
    for name in [n for n in os.environ if n == "OPTUNA_STORAGE" or n.startswith("DVC_")]:
        monkeypatch.delenv(name)
    caplog.set_level(logging.INFO)

    def run(*args: str) -> str:
        capsys.readouterr()
        caplog.clear()
        main(args)
        out = capsys.readouterr()
        return out.out + out.err + caplog.text

    return run


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves only (a dict value of a leaf key such as sweep.space.x is kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("fixed", "space", "spaces", "files"):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def sweep_args(project: Path, data: Path, *args: str) -> list[str]:
    """`make sweep`'s arguments for the project."""
    run = ["run", "--data", str(data), "--out", str(project / "reports/sweep"), *args]
    return ["--params", str(project / "params.yaml"), *run]


def sweep_command(project: Path, data: Path, *args: str) -> list[str]:
    """`make sweep` for the project, as a command line."""
    return [str(BIN / "python"), "-m", "digits.tools.sweep", *sweep_args(project, data, *args)]


def run_sweep(project: Path, data: Path, *args: str, check: bool = True) -> str:
    cmd = sweep_command(project, data, *args)
    out = subprocess.run(
        cmd, cwd=project, env=stage_env(), capture_output=True, text=True, timeout=600
    )
    if check:
        assert out.returncode == 0, f"sweep failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def load(project: Path, storage: str | None = None):
    from digits.lib.config import load_params

    params = load_params(project / "params.yaml", SweepParams)
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


def check_sweep(
    project: Path, output: str, workers: int, storage: str | None = None, n_trials: int = 4
) -> None:
    """A finished sweep: every trial a nested run of one parent, results written."""
    study = load(project, storage)
    counts = count_trials(study)
    # two workers can both start the last trial in the same instant: at most one extra
    assert n_trials <= counts.finished <= n_trials + (workers > 1), output
    assert counts.running == 0
    assert len({t.user_attrs["worker"] for t in study.trials}) == workers, "each worker ran trials"

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


@pytest.mark.integration  # two worker processes: `make test-integration`
def test_two_workers_record_every_trial_as_a_nested_run(project: Path, processed: Path) -> None:
    check_sweep(project, run_sweep(project, processed, "--workers", "2", "--n-trials", "4"), 2)
    assert (project / DEFAULT_JOURNAL).is_file()


def test_bad_trial_is_pruned_failing_trial_does_not_stop_the_sweep(
    project: Path, processed: Path, sweep_here: Callable[..., str]
) -> None:
    study = load(project)
    good = {"train.optimizer": "adam", "train.learning_rate": 0.003}
    study.enqueue_trial(good)  # completes: the median the next trial is measured against
    study.enqueue_trial({"train.optimizer": "momentum", "train.learning_rate": 1e-4})  # pruned
    study.enqueue_trial({"model.mlp.dropout": 1.5})  # out of range: the trial raises
    output = sweep_here(*sweep_args(project, processed, "--n-trials", "3"))
    states = [t.state.name for t in load(project).trials]
    assert states[:3] == ["COMPLETE", "PRUNED", "FAIL"], output
    assert len(states) == 4 and states[3] in FINISHED, "the sweep went on after the failure"
    _, children = sweep_runs(project)
    failed = [c for c in children if c.data.tags["optuna.state"] == "FAIL"]
    assert [c.info.status for c in failed] == ["FAILED"], output
    assert "model.mlp.dropout" in failed[0].data.tags["failure_reason"]


def test_resume_continues_the_study(
    project: Path, processed: Path, sweep_here: Callable[..., str]
) -> None:
    sweep_here(*sweep_args(project, processed, "--n-trials", "2"))
    sweep_here(*sweep_args(project, processed, "--n-trials", "3"))
    study = load(project)
    assert count_trials(study).finished == 3
    assert [t.number for t in study.trials] == [0, 1, 2]
    output = sweep_here(*sweep_args(project, processed, "--n-trials", "3"))
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
    cmd = sweep_command(project, data, "--workers", "2", "--n-trials", "3")
    proc = subprocess.Popen(
        cmd,
        cwd=project,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )

    def running_trial() -> Any:
        if proc.poll() is not None:
            raise AssertionError(
                f"the sweep ended before a trial started:\n{proc.communicate()[0]}"
            )
        if not (project / DEFAULT_JOURNAL).exists():
            return None
        for trial in load(project).trials:
            if trial.state.name == "RUNNING" and "mlflow_run_id" in trial.user_attrs:
                return trial
        return None

    try:
        return proc, wait_until(running_trial, 180, "a running trial", interval=0.3)
    except BaseException:
        proc.kill()
        raise


@pytest.mark.integration  # kill -9 of a worker process: `make test-integration`
def test_killed_worker_trial_is_retried_and_resumed_in_its_run(
    project: Path, processed: Path, store_template: Path
) -> None:
    """kill -9 of a worker after epoch k of its trial: the trial ends FAIL, the other worker
    retries it from the checkpoint, at epoch k+1, in the dead attempt's MLflow run (reopened),
    and trains exactly what an uninterrupted fit trains; the other trials go on."""
    from digits.lib.config import load_params
    from digits.lib.data import load_splits
    from digits.lib.training import fit_logged

    proc, victim = start_slow_sweep(project, processed)

    def two_epochs() -> Any:  # after epoch 2 at least: a checkpoint to resume from
        trial = load(project).trials[victim.number]
        return trial if len(trial.intermediate_values) >= 2 else None

    victim = wait_until(two_epochs, 120, "two epochs of the victim trial")
    os.kill(ProcessName.parse(victim.user_attrs["worker"]).pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    study = load(project)
    assert study.trials[victim.number].state.name == "FAIL"
    assert count_trials(study).finished >= 3, output
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "no trial counted twice"
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == victim.params, "retried by the surviving worker"
    assert retry.state.name in FINISHED, output
    resumed = retry.user_attrs["resumed_after_epoch"]
    assert resumed >= 2, "resumed after the epochs the checkpoint holds"
    assert retry.user_attrs["mlflow_run_id"] == victim.user_attrs["mlflow_run_id"]
    run = client(project).get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert run.data.tags["resumed_after_epochs"] == str(resumed)
    assert run.data.tags["optuna.trial"] == str(retry.number)
    history = client(project).get_metric_history(run.info.run_id, "val/accuracy")
    steps = sorted(m.step for m in history)
    assert steps == list(range(1, len(steps) + 1)), "no epoch missing or logged twice"
    assert not list((project / "sweeps/checkpoints").rglob("*.npz")), "checkpoints removed"

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{fresh_store(project / 'check', store_template)}")
    mlflow.set_experiment("check")
    params = load_params(project / "params.yaml").with_overrides(retry.user_attrs["overrides"])
    splits = load_splits(processed, ("train", "val"))
    with mlflow.start_run():
        _, whole, _ = fit_logged(params, splits["train"], splits["val"], verbose=0)
    by_step = {m.step: m.value for m in history}
    uninterrupted = whole["val/accuracy"].tolist()[: len(steps)]
    assert [by_step[step] for step in steps] == pytest.approx(uninterrupted, abs=1e-6)


@pytest.mark.integration  # Ctrl-C to a process group of workers: `make test-integration`
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
    project: Path, processed: Path, sweep_here: Callable[..., str], store_template: Path
) -> None:
    from digits.lib.config import load_params
    from digits.lib.data import load_splits
    from digits.lib.training import fit_logged

    sweep_here(*sweep_args(project, processed, "--n-trials", "2"))
    best = load(project).best_trial
    output = sweep_here("--params", "params.yaml", "promote")
    assert f"trial {best.number} (" in output and "written to params.yaml" in output
    text = (project / "params.yaml").read_text()
    assert "# softmax | mlp | cnn" in text, "comments kept"
    params = load_params(project / "params.yaml")
    settings = flatten(params.model_dump())
    for key, value in best.user_attrs["overrides"].items():
        assert settings[key] == value, key

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{fresh_store(project / 'check', store_template)}")
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
        checks.check_sweep(parse_params(small_params, schema=SweepParams))
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


@pytest.mark.integration  # a sweep process on PostgreSQL: `make test-integration`
def test_one_worker_on_postgresql_trains_in_the_launcher(
    project: Path, processed: Path, pg_storage: str, sweep_here: Callable[..., str]
) -> None:
    from digits.lib.process import process_id

    args = sweep_args(project, processed, "--n-trials", "2", "--storage", pg_storage)
    check_sweep(project, sweep_here(*args), 1, pg_storage, n_trials=2)
    assert {t.user_attrs["worker"] for t in load(project, pg_storage).trials} == {process_id()}
    assert not (project / DEFAULT_JOURNAL).exists()


@pytest.mark.integration  # two worker processes on one PostgreSQL study: `make test-integration`
def test_two_workers_on_postgresql(project: Path, processed: Path, pg_storage: str) -> None:
    args = ["--workers", "2", "--n-trials", "4", "--storage", pg_storage]
    check_sweep(project, run_sweep(project, processed, *args), 2, pg_storage)
    assert not (project / DEFAULT_JOURNAL).exists()


def test_postgresql_heartbeat_fails_a_stale_trial(project: Path, pg_storage: str) -> None:
    """A trial whose worker (on any machine) stopped beating is failed by the next worker."""
    import optuna

    from digits.lib.config import load_params

    edit_params(project / "params.yaml", {"sweep.heartbeat": 1})
    params = load_params(project / "params.yaml", SweepParams)
    study = open_study(params, StorageUrl.parse(pg_storage), "hb", 0)

    def dies(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", "elsewhere:1")
        raise SystemExit  # leaves it RUNNING with its heartbeat recorded, as a lost host does

    with pytest.raises(SystemExit):
        study.optimize(dies, n_trials=1)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state.name == "FAIL"


@pytest.mark.integration  # a whole sweep process: `make test-integration`
def test_a_running_trial_without_an_owner_does_not_stall_the_sweep(
    project: Path, processed: Path, sweep_here: Callable[..., str]
) -> None:
    """Issue 26: a kill before a trial records its worker leaves it RUNNING without one; the
    sweep used to wait for it for ever. It is failed after two heartbeats and retried."""
    orphan, study, output = sweep_after_an_ownerless_trial(project, processed, sweep_here, None)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"], output
    assert study.trials[1].user_attrs["retry_of"] == orphan


@pytest.mark.integration  # a whole sweep process: `make test-integration`
def test_a_running_trial_without_an_owner_is_retried_on_postgresql(
    project: Path, processed: Path, pg_storage: str, sweep_here: Callable[..., str]
) -> None:
    """The same on PostgreSQL, where Optuna's heartbeat never saw the trial."""
    orphan, study, output = sweep_after_an_ownerless_trial(
        project, processed, sweep_here, pg_storage
    )
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"], output
    assert study.trials[1].user_attrs["retry_of"] == orphan


def sweep_after_an_ownerless_trial(
    project: Path, processed: Path, sweep_here: Callable[..., str], storage: str | None
) -> tuple[int, Any, str]:
    """Leave a trial RUNNING with no worker (its process was killed), then sweep one trial;
    returns the orphan's number, the study after the sweep and the sweep's output."""
    edit_params(project / "params.yaml", {"sweep.heartbeat": 1})
    orphan = load(project, storage).ask()
    args = ["--n-trials", "1", "--timeout", "120"]  # bounded: the old code waited until then
    args += ["--storage", storage] if storage else []
    output = sweep_here(*sweep_args(project, processed, *args))
    return orphan.number, load(project, storage), output


def test_checkpoints_of_ended_trials_are_removed_by_the_next_run(
    project: Path, processed: Path, sweep_here: Callable[..., str]
) -> None:
    """Issue 26: a checkpoint left by a dead process goes once no trial can resume it; the
    one a queued retry will resume from stays."""
    import optuna

    from digits.lib.config import load_params
    from digits.lib.config.sweep import SweepParams

    study = load(project)
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING):
        study.add_trial(
            optuna.create_trial(
                state=state,
                value=0.5 if state.name == "COMPLETE" else None,
                params={"train.learning_rate": 0.003},
                distributions={"train.learning_rate": distribution},
                user_attrs={"overrides": {"train.learning_rate": 0.003}, "first_attempt": 0},
            )
        )
    folder = (
        project
        / "sweeps/checkpoints"
        / load_params(project / "params.yaml", SweepParams).sweep.study
    )
    folder.mkdir(parents=True)
    for name in ("trial-0.npz", "trial-5.npz", ".trial-5.k3j4.tmp.npz"):
        (folder / name).write_bytes(b"a dead process's state")
    (folder / "trial-0.npz").write_bytes(b"the state the queued retry resumes")
    output = sweep_here(*sweep_args(project, processed, "--n-trials", "1"))
    assert "nothing to run" in output
    assert sorted(p.name for p in folder.iterdir()) == ["trial-0.npz"], output


@pytest.mark.integration  # a whole sweep process: `make test-integration`
def test_the_timeout_stops_a_trial_in_flight(
    project: Path, processed: Path, sweep_here: Callable[..., str]
) -> None:
    """Issue 27: `sweep.timeout` bounds a sweep's wall time whatever trials it draws: a trial
    still training at the deadline stops at its next epoch end, PRUNED, its epochs kept."""
    fixed = {"model.type": "mlp", "train.epochs": 5000, "train.patience": 0}
    edit_params(project / "params.yaml", {"sweep.fixed": fixed, "sweep.pruner": "none"})
    started = time.monotonic()
    output = sweep_here(*sweep_args(project, processed, "--n-trials", "2", "--timeout", "15"))
    assert time.monotonic() - started < 120, output
    (trial,) = load(project).trials
    assert trial.state.name == "PRUNED", output
    assert 0 < trial.user_attrs["epochs"] < 5000
    _, (child,) = sweep_runs(project)
    assert child.data.tags["optuna.stopped_by"] == "timeout"
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "FINISHED"


def promote_study(project: Path, overrides: Any) -> None:
    """A study whose one complete trial carries `overrides`, as anyone who can write to the
    study's storage can record them."""
    import optuna

    study = load(project)
    distribution = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    study.add_trial(
        optuna.create_trial(
            value=0.99,
            params={"train.learning_rate": 0.003},
            distributions={"train.learning_rate": distribution},
            user_attrs={"overrides": overrides},
        )
    )


def test_promote_writes_only_the_searched_settings(
    project: Path, sweep_here: Callable[..., str], capsys
) -> None:
    """Issue 25: a trial that sets a tracking URI and a download mirror is refused by name, and
    params.yaml keeps every byte."""
    promote_study(
        project,
        {
            "train.learning_rate": 0.003,
            "mlflow.tracking_uri": "http://evil.invalid:5000",
            "download.mirrors": ["http://evil.invalid/mnist/"],
        },
    )
    before = (project / "params.yaml").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        sweep_here("--params", "params.yaml", "promote")
    assert exit_.value.code == 1
    assert (project / "params.yaml").read_bytes() == before
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "'mlflow.tracking_uri', 'download.mirrors'" in errors[0]
    assert "sweep.space and sweep.fixed do not hold: refused" in errors[0]


def test_promote_refuses_settings_that_are_not_a_mapping(
    project: Path, sweep_here: Callable[..., str], capsys
) -> None:
    promote_study(project, "mlflow.tracking_uri=http://evil.invalid:5000")
    before = (project / "params.yaml").read_bytes()
    with pytest.raises(SystemExit):
        sweep_here("--params", "params.yaml", "promote")
    assert (project / "params.yaml").read_bytes() == before
    err = capsys.readouterr().err
    assert "error: trial 0 of study 'mnist-mlp' records its settings (user attr" in err


def test_space_dimensions_are_checked_together(small_params: dict[str, Any]) -> None:
    """A per-layer width list in the base params is fine when the space also sets the width,
    and an error when only the depth is searched."""
    from digits.lib.config import ParamsError

    small_params["model"]["mlp"].update(depth=4, width=[20, 10, 6, 3])
    # the space sets both depth and width
    checks.check_sweep(parse_params(small_params, schema=SweepParams))
    del small_params["sweep"]["space"]["model.mlp.width"]
    with pytest.raises(ParamsError, match=r"sweep\.space\.model\.mlp\.depth: width lists 4 layer"):
        checks.check_sweep(parse_params(small_params, schema=SweepParams))


# --- several objectives, several seeds per trial (issue 16, points 4 and 5) ------------------


def test_pick_takes_the_smallest_model_near_the_best_accuracy() -> None:
    import optuna

    from digits.lib.config.sweep import PromoteRule
    from digits.tools.sweep.results import pick

    def trial(number: int, accuracy: float, n_params: int) -> Any:
        done = optuna.trial.create_trial(values=[accuracy, n_params])
        done.number = number
        return done

    front = [trial(0, 0.9800, 400_000), trial(1, 0.9792, 100_000), trial(2, 0.9750, 20_000)]
    names, ways = ["val/accuracy", "model.n_params"], ["maximize", "minimize"]
    assert pick(front, names, ways, PromoteRule(tolerance=0.001)).number == 1
    assert pick(front, names, ways, PromoteRule(tolerance=0.0)).number == 0
    assert pick(front, names, ways, PromoteRule(tolerance=0.01)).number == 2
    by_accuracy = PromoteRule(metric="model.n_params", then="val/accuracy", tolerance=100_000)
    assert pick(front, names, ways, by_accuracy).number == 1  # within 100k of 20k: 1 and 2


def test_summary_of_a_two_objective_study_is_typed(tmp_path: Path) -> None:
    """The summary and the best trial are values: several objectives are the study's (its
    directions), the parent run's metrics are named, the front's pick is typed."""
    import optuna

    from digits.lib.config.sweep import PromoteRule
    from digits.tools.sweep.results import write_results

    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, size, rate in (
        (0.98, 400_000, 0.001),
        (0.979, 100_000, 0.002),
        (0.9, 9e5, 0.003),
    ):
        overrides = {"train.learning_rate": rate}
        study.add_trial(
            optuna.create_trial(values=[accuracy, size], user_attrs={"overrides": overrides})
        )
    objectives = {"val/accuracy": "maximize", "model.n_params": "minimize"}
    summary = write_results(study, tmp_path, 2, objectives, PromoteRule(tolerance=0.002))
    best = summary.best
    assert best is not None and best.multi_objective and best.pareto_front == [0, 1]
    assert best.number == 1 and best.params == {"train": {"learning_rate": 0.002}}
    assert summary.metrics() == {
        "trials/complete": 3,
        "trials/pruned": 0,
        "trials/failed": 0,
        "epochs/trained": 0,
        "epochs/saved_by_pruning": 0,
        "best/val_accuracy": 0.98,
        "best/model.n_params": 100_000,
        "trials/pareto": 2,
        "promoted/val_accuracy": 0.979,
        "promoted/model.n_params": 100_000,
    }
    assert summary.counts_line() == "3 complete, 0 pruned, 0 failed"
    record = yaml.safe_load((tmp_path / "best_params.yaml").read_text())
    assert record["trial"] == 1 and record["pareto_front"] == [0, 1]


@pytest.mark.parametrize(
    ("objectives", "promote", "message"),
    [
        ({"val/acc": "maximize"}, {}, "sweep.objectives.val/acc: unknown objective"),
        ({"test/accuracy": "maximize"}, {}, "sweep.objectives.test/accuracy: the test set never"),
        ({"val/accuracy": "maximise"}, {}, "sweep.objectives.val/accuracy: Input should be"),
        ({"val/loss": "maximize"}, {}, "sweep.objectives.val/loss: val/loss is to minimize"),
        (
            {"val/accuracy": "maximize", "train/seconds": "minimize"},
            {},
            "sweep.promote.then: model.n_params is not in sweep.objectives",
        ),
        ({"val/accuracy": "maximize"}, {"then": "n_params"}, "sweep.promote.then: unknown metric"),
    ],
)
def test_bad_objectives_name_the_key(
    small_params: dict[str, Any], objectives: dict, promote: dict, message: str
) -> None:
    from digits.lib.config import ParamsError

    small_params["sweep"]["objectives"] = objectives
    small_params["sweep"]["promote"].update(promote)
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(small_params, schema=SweepParams)


def test_bad_objective_stops_make_sweep_before_tensorflow(project: Path) -> None:
    text = (project / "params.yaml").read_text()  # edit_params would refuse it
    (project / "params.yaml").write_text(
        text.replace("val/accuracy: maximize", "val/accuracy: best")
    )
    stdout, stderr = run_without_tensorflow(
        "digits.tools.sweep.__main__", ["--params", "params.yaml", "run"], project
    )
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert "error:" in stderr and "sweep.objectives.val/accuracy: Input should be" in stderr


def test_a_study_keeps_its_objectives(project: Path) -> None:
    from digits.tools.sweep.study import StudyMismatch

    load(project)  # created with the default objective and one seed
    edit_params(project / "params.yaml", {"sweep.repeats": 3})
    with pytest.raises(StudyMismatch, match=re.escape("sweep.repeats 3")):
        load(project)


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_multi_objective_sweep_has_a_pareto_front_and_never_prunes(
    project: Path, processed: Path
) -> None:
    objectives = {"val/accuracy": "maximize", "model.n_params": "minimize"}
    edit_params(project / "params.yaml", {"sweep.objectives": objectives})
    study = load(project)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # the median pruner (the default) would prune the second trial in a single-objective study
    study.enqueue_trial({"train.optimizer": "adam", "train.learning_rate": 0.003})
    study.enqueue_trial({"train.optimizer": "momentum", "train.learning_rate": 1e-4})
    output = run_sweep(project, processed, "--n-trials", "4")
    assert "sweep.pruner 'median' is ignored: Optuna prunes single-objective" in output
    study = load(project)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4, output
    assert all(t.user_attrs["epochs"] == 2 for t in study.trials), "every epoch trained"

    out = project / "reports/sweep"
    front = sorted(t.number for t in study.best_trials)
    pareto = (out / "pareto.csv").read_text().splitlines()
    assert pareto[0].startswith("number,val/accuracy,model.n_params,promoted,")
    assert sorted(int(row.split(",")[0]) for row in pareto[1:]) == front
    assert (out / "pareto_front.png").stat().st_size > 1000
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["pareto_front"] == front and best["rule"].startswith("smallest model.n_params")
    chosen = study.trials[best["trial"]]
    top = max(study.trials[n].values[0] for n in front)
    near = [study.trials[n] for n in front if study.trials[n].values[0] >= top - 0.001]
    assert chosen.values[1] == min(t.values[1] for t in near)
    for trial in study.trials:  # the objectives are the trial's own measurements
        assert trial.values == [
            trial.user_attrs["scores"]["val/accuracy"],
            trial.user_attrs["scores"]["model.n_params"],
        ]

    (parent,), _ = sweep_runs(project)
    assert "ignored" in parent.data.tags["optuna.pruning"]
    assert parent.data.metrics["trials/pareto"] == len(front)
    assert parent.data.metrics["promoted/model.n_params"] == chosen.values[1]
    artifacts = {a.path for a in client(project).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/pareto.csv", "sweep/pareto_front.png", "sweep/best_params.yaml"} <= artifacts

    cmd = [str(BIN / "python"), "-m", "digits.tools.sweep", "--params", "params.yaml", "promote"]
    done = subprocess.run(cmd, cwd=project, env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"trial {chosen.number} (" in done.stdout
    settings = flatten(
        parse_params(yaml.safe_load((project / "params.yaml").read_text())).model_dump()
    )
    for key, value in chosen.user_attrs["overrides"].items():
        assert settings[key] == value, key


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_repeats_optimise_the_mean_and_prune_on_the_first_seed(
    project: Path, processed: Path
) -> None:
    edit_params(project / "params.yaml", {"sweep.repeats": 2})
    study = load(project)
    study.enqueue_trial({"train.optimizer": "adam", "train.learning_rate": 0.003})
    study.enqueue_trial({"train.optimizer": "momentum", "train.learning_rate": 1e-4})
    output = run_sweep(project, processed, "--n-trials", "2")
    study = load(project)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"], output

    found = client(project).search_runs(
        [client(project).get_experiment_by_name("mnist").experiment_id]
    )
    by_parent: dict[str, list[Any]] = {}
    for run in found:
        by_parent.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    complete, pruned = study.trials
    seeds = by_parent[complete.user_attrs["mlflow_run_id"]]
    assert sorted(r.data.params["train.seed"] for r in seeds) == ["42", "43"]
    accuracies = [r.data.metrics["selected/val_accuracy"] for r in seeds]
    assert complete.value == pytest.approx(sum(accuracies) / 2)
    trial_run = client(project).get_run(complete.user_attrs["mlflow_run_id"])
    assert trial_run.data.metrics["selected/val_accuracy.mean"] == pytest.approx(complete.value)
    assert complete.user_attrs["epochs"] == 4
    (first,) = by_parent[pruned.user_attrs["mlflow_run_id"]]  # pruned: no second seed
    assert first.data.params["train.seed"] == "42"
    pruned_run = client(project).get_run(pruned.user_attrs["mlflow_run_id"])
    assert not [m for m in pruned_run.data.metrics if m.endswith(".mean")]
    steps = client(project).get_metric_history(first.info.run_id, "val/accuracy")
    assert pruned.user_attrs["epochs"] == len(steps) <= 2


def test_workers_threads_cap_tensorflow_thread_pools() -> None:
    """`sweep.threads` reaches each worker as TensorFlow's thread-pool sizes; 0 leaves them."""
    from digits.tools.sweep.workers import run_workers, thread_env

    assert thread_env(0) == {}
    probe = "import os; print(os.environ['TF_NUM_INTRAOP_THREADS'], flush=True)"
    exits: list[int] = []
    codes = run_workers(
        [[sys.executable, "-c", probe]],
        StorageUrl.parse("x"),
        lambda w, c: exits.append(c),
        threads=1,
    )
    assert list(codes.values()) == [0] and exits == [0]
    assert thread_env(1) == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def test_named_space_replaces_the_study_fixed_settings_and_space() -> None:
    """`make sweep SPACE=cnn`: the CNN study of params.yaml, checked like the main space."""
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()), schema=SweepParams)
    cnn = params.sweep.choose("cnn")
    assert cnn.study != params.sweep.study and cnn.fixed["model.type"] == "cnn"
    assert "model.mlp.width" not in cnn.space and cnn.pruner == params.sweep.pruner
    assert params.sweep.choose(None) is params.sweep
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sweep"]["spaces"]["cnn"]["space"]["model.cnn.padding"] = {"choices": ["full"]}
    with pytest.raises(Exception, match=r"sweep\.spaces\.cnn\.space\.model\.cnn\.padding"):
        checks.check_sweep(parse_params(raw, schema=SweepParams))


def test_the_storage_url_is_parsed_once_into_its_kind_and_redacted_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: `storage_url` hands down a StorageUrl; its kind, not the text, chooses the
    journal or PostgreSQL's session limits, and only its redacted form is shown."""
    from types import SimpleNamespace
    from urllib.parse import quote

    from digits.lib.urls import StorageKind

    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    journal = storage_url(SimpleNamespace(storage=None), tmp_path)
    assert journal.is_path and single_host(journal) and session_limits(journal, 30) == {}
    assert journal.secret == journal.redacted == str((tmp_path / DEFAULT_JOURNAL).resolve())
    password = "pw-Kea/#?@"
    typed = f"postgresql+psycopg2://sweeper:{quote(password, safe='')}@db:5432/optuna"
    monkeypatch.setenv("OPTUNA_STORAGE", typed)
    pg = storage_url(SimpleNamespace(storage="ignored.log"), tmp_path)
    assert (pg.kind, pg.secret, single_host(pg)) == (StorageKind.POSTGRESQL, typed, False)
    assert pg.redacted == "postgresql+psycopg2://sweeper:***@db:5432/optuna"
    assert "idle_in_transaction" in session_limits(pg, 30)["connect_args"]["options"]
