"""A sweep trial resumed after kill -9, on real data: a one-worker sweep (1 trial, 5 epochs) is
killed once its trial has reported epoch 2, then run again. The retry must continue in the same
MLflow run and end with the per-epoch values of an uninterrupted fit of the same settings, and
leave no checkpoint behind once the study ends.

    PYTHONPATH=src .venv/bin/python bench/sweep_resume.py     # needs data/processed; ~1 min
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from digits.lib.config import edit_params, load_params
from digits.lib.data import load_splits
from digits.lib.training import fit_logged

ROOT = Path(__file__).resolve().parents[1]
STUDY = "resume"


def main() -> None:
    project = Path(tempfile.mkdtemp(prefix="sweep-resume-"))
    data = ROOT / "data/processed"
    (project / "sweeps").mkdir()
    shutil.copy(ROOT / "params.yaml", project)
    fixed = {"model.type": "mlp", "train.epochs": 5, "train.patience": 0}
    settings = {"sweep.n_trials": 1, "sweep.pruner": "none", "sweep.study": STUDY}
    edit_params(project / "params.yaml", {"sweep.fixed": fixed, **settings})
    cmd = [sys.executable, "-m", "digits.tools.sweep", "--params", "params.yaml", "run"]
    cmd += ["--data", str(data), "--out", "out"]
    journal = optuna.storages.journal.JournalFileBackend(str(project / "sweeps/journal.log"))
    os.environ["OPTUNA_STORAGE"] = str(project / "sweeps/journal.log")
    storage = optuna.storages.JournalStorage(journal)

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name=STUDY, storage=storage).trials
        except KeyError:
            return []

    with (project / "first.log").open("w") as log:
        first = subprocess.Popen(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (
            (found := trials()) and len(found[0].intermediate_values) >= 2
        ):
            time.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    victim = trials()[0]
    print("killed after the reported epochs", sorted(victim.intermediate_values))
    with (project / "again.log").open("w") as log:
        subprocess.run(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, check=True)
    retry = next(t for t in trials() if t.user_attrs.get("retry_of") == victim.number)
    print(f"trial {retry.number} {retry.state.name}: resumed after epoch",
          retry.user_attrs.get("resumed_after_epoch"))  # fmt: skip
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(retry.user_attrs["mlflow_run_id"])
    same = run.info.run_id == victim.user_attrs["mlflow_run_id"]
    resumed = run.data.tags.get("resumed_after_epochs")
    print("run", run.info.status, "the killed one:", same, "resumed_after_epochs", resumed)
    metric = client.get_metric_history(run.info.run_id, "val/accuracy")
    history = sorted((m.step, m.value) for m in metric)
    print("val/accuracy by epoch, resumed:     ", [v for _, v in history])

    params = load_params(project / "params.yaml").with_overrides(retry.user_attrs["overrides"])
    splits = load_splits(data, ("train", "val"))
    mlflow.set_tracking_uri(f"sqlite:///{project / 'check.db'}")
    mlflow.set_experiment("check")
    with mlflow.start_run():
        _, whole, _ = fit_logged(params, splits["train"], splits["val"], verbose=0)
    uninterrupted = [float(v) for v in whole["val/accuracy"]]
    print("val/accuracy by epoch, uninterrupted:", uninterrupted)
    print("identical:", [v for _, v in history] == uninterrupted)
    left = sorted(str(p.relative_to(project)) for p in (project / "sweeps").rglob("*.npz"))
    print("checkpoints left after the study ended:", left or "none")


if __name__ == "__main__":
    main()
