"""A two-host sweep on real data, one host killed mid-trial: two network-namespace hosts (one
worker each) share a PostgreSQL study and an MLflow server on a bridge (`digits.tools.hosts`);
once host a's trial has reported an epoch, every process on host a is killed with -9.

    sudo PYTHONPATH=src .venv/bin/python bench/multihost.py --data data/processed

Prints JSON: trials by state, wall time (both launchers started to the survivor's end), best
validation accuracy, and the trial retried (by which host, with how many inherited epochs).
Needs root, iproute2 and Debian's PostgreSQL on 127.0.0.1:5432 (its settings are restored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from digits.tools import hosts

ROOT = Path(__file__).resolve().parents[1]


def create_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    hosts.pg_query(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="processed train/val .npz")
    parser.add_argument("--trials", type=int, default=6, help="finished trials to reach")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    parser.add_argument("--heartbeat", type=float, default=10, help="sweep.heartbeat, seconds")
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    study = f"multihost-{uuid.uuid4().hex[:6]}"
    params["sweep"].update(study=study, n_trials=args.trials, heartbeat=args.heartbeat)
    params["sweep"]["fixed"]["train.epochs"] = args.epochs
    params["mlflow"]["experiment"] = study
    optuna_db, mlflow_db = create_database("bench_optuna"), create_database("bench_mlflow")
    drop = ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            hosts.network(2) as net,
            hosts.postgres_listening(net),
            hosts.tracking_server(net, mlflow_db, Path(tmp) / "server", env) as server,
        ):
            result = run(args, params, net, server, optuna_db, Path(tmp), env)
    finally:
        for url in (optuna_db, mlflow_db):
            hosts.pg_query(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    print(json.dumps(result, indent=2))


def run(
    args: argparse.Namespace,
    params: dict,
    net: hosts.Network,
    server: str,
    storage: str,
    tmp: Path,
    env: dict[str, str],
) -> dict:
    import optuna

    env = {**env, "MLFLOW_TRACKING_URI": server}
    env["OPTUNA_STORAGE"] = storage.replace("127.0.0.1", net.server)
    procs = {}
    load = os.getloadavg()
    started = time.monotonic()
    for host in net.hosts:
        project = tmp / host.name
        project.mkdir()
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        argv = [sys.executable, "-m", "digits.tools.sweep", "--params", "params.yaml", "run"]
        argv += ["--workers", "1", "--data", str(args.data.resolve()), "--out", "out"]
        with (project / "sweep.log").open("w") as log:
            procs[host.name] = subprocess.Popen(
                hosts.on_host(host, argv), cwd=project, env=env, stdout=log, stderr=log
            )
    lost, survivor = net.hosts
    name = params["sweep"]["study"]
    victim, killed_at = None, None
    while victim is None and time.monotonic() - started < 1800:
        time.sleep(1)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:
            continue  # not created yet
        for t in trials:
            on_lost = t.user_attrs.get("worker", "").startswith(f"{lost.name}:")
            if t.state.name == "RUNNING" and on_lost and t.intermediate_values:
                hosts.kill_host(lost.name)
                victim, killed_at = t.number, time.monotonic() - started
                break
    code = procs[survivor.name].wait(timeout=3600)
    wall = time.monotonic() - started
    study = optuna.load_study(study_name=name, storage=storage)
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") is not None]
    states = [t.state.name for t in study.trials]
    return {
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "survivor_exit_code": code,
        "wall_seconds": round(wall, 1),
        "killed_after_seconds": round(killed_at or 0, 1),
        "best_val_accuracy": study.best_value,
        "best_trial": study.best_trial.number,
        "victim": victim,
        "retries": [
            {
                "trial": t.number,
                "retry_of": t.user_attrs["retry_of"],
                "state": t.state.name,
                "worker": t.user_attrs.get("worker"),
                "inherited_epochs": t.user_attrs["inherited_epochs"],
                "value": t.value,
            }
            for t in retries
        ],
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "epochs_per_trial": args.epochs,
        "heartbeat_seconds": args.heartbeat,
    }


if __name__ == "__main__":
    main()
