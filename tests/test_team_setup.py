"""The team set-up, command by command, on loopback, against a PostgreSQL that asks for
scram-sha-256 passwords (issue 25): roles with passwords own the `mlflow`, `mlflow_auth` and
`optuna` databases; `make server` (users on, artifacts proxied) with its secrets in the
environment; the admin adds a logger; a worker host with the logger's credentials and the
password-protected OPTUNA_STORAGE runs `make sweep`. No planted password shows up anywhere."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from digits.tools.server import serving

from helpers import (
    GIT_IDENTITY,
    drop_database,
    free_port,
    make_command,
    postgres_database,
    project_copy,
    real_params,
    shrink,
    stage_env,
)
from leaks import files_holding, leaked, watching_command_lines
from scram_postgres import scram_postgres

pytestmark = pytest.mark.integration
ADMIN = "team admin/#?@% 12"
PASSWORDS = {"postgres": "su/#?@% Kea-1", "mlflow": "ml/#?@% Kiwi-2", "optuna": "op/#?@% Tui-3"}


@contextmanager
def make_server(project: Path, database: str, artifacts: Path) -> Iterator[str]:
    """`make server PORT=... ARTIFACTS=...` with SERVER_DB and the admin password exported,
    until the block ends; yields its URL."""
    port = free_port()
    cmd = make_command("server", f"PORT={port}", f"ARTIFACTS={artifacts}")
    env = stage_env(SERVER_DB=database, MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN)
    # make, python, then mlflow and its workers: one process group, stopped together
    log = project / f"server-{port}.log"
    with serving(cmd, f"http://127.0.0.1:{port}", log, timeout=300, cwd=project, env=env) as url:
        yield url


def add_logger(project: Path, server: str, name: str) -> str:
    """The admin's `python -m digits.tools.server user add NAME --role logger`; its password."""
    env = stage_env(
        MLFLOW_TRACKING_URI=server, MLFLOW_TRACKING_USERNAME="admin",
        MLFLOW_TRACKING_PASSWORD=ADMIN,
    )  # fmt: skip
    file = project.parent / f"{name}.pw"
    done = subprocess.run(
        ["python", "-m", "digits.tools.server", "user", "add", name, "--role", "logger",
         "--password-file", str(file)],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return file.read_text().strip()


def test_server_and_a_worker_host_with_passwords_everywhere(tmp_path: Path, mirror) -> None:
    import optuna
    from mlflow import MlflowClient

    folder, hashes = mirror
    project = project_copy(tmp_path / "project", shrink(real_params(), hashes, [str(folder)]))
    artifacts = tmp_path / "server-artifacts"
    with scram_postgres(PASSWORDS["postgres"]) as pg, watching_command_lines() as seen:
        pg.add_role("mlflow", PASSWORDS["mlflow"], ["mlflow", "mlflow_auth"])
        pg.add_role("optuna", PASSWORDS["optuna"], ["optuna"])
        storage = pg.url("optuna", PASSWORDS["optuna"], "optuna")
        with make_server(
            project, pg.url("mlflow", PASSWORDS["mlflow"], "mlflow"), artifacts
        ) as server:
            worker = add_logger(project, server, "worker1")
            # a worker host: the exports, then make sweep
            env = stage_env(
                MLFLOW_TRACKING_URI=server, MLFLOW_TRACKING_USERNAME="worker1",
                MLFLOW_TRACKING_PASSWORD=worker, OPTUNA_STORAGE=storage, **GIT_IDENTITY,
            )  # fmt: skip
            out = subprocess.run(
                make_command("sweep", "N_TRIALS=2", "WORKERS=2"), cwd=project, env=env,
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            assert not (project / "mlflow.db").exists(), "nothing logged to the local store"

            study = optuna.load_study(study_name="mnist-mlp", storage=storage)
            finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
            assert len(finished) == 2

            with pytest.MonkeyPatch.context() as as_worker:  # a logger may read
                as_worker.setenv("MLFLOW_TRACKING_USERNAME", "worker1")
                as_worker.setenv("MLFLOW_TRACKING_PASSWORD", worker)
                client = MlflowClient(tracking_uri=server)
                experiment = client.get_experiment_by_name("mnist")
                runs = client.search_runs([experiment.experiment_id])
                (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
                names = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
            assert {r.info.status for r in runs} == {"FINISHED"}
            assert len(runs) == 3, [r.info.run_name for r in runs]
            assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied
            assert "sweep/trials.csv" in names, names
            assert any(p.is_file() for p in artifacts.rglob("*")), "stored by the server"
            recorded = [
                f"{k}={v}" for r in runs for k, v in {**r.data.tags, **r.data.params}.items()
            ]
        pg_log = (pg.folder / "log").read_bytes()
    secrets = [*PASSWORDS.values(), ADMIN, worker]
    assert any("mlflow server --app-name basic-auth" in line for line in seen)
    assert leaked(seen, secrets) == []  # no command line, at any moment
    assert leaked(recorded, secrets) == []  # no MLflow tag or param
    assert leaked([out.stdout + out.stderr], secrets) == []
    assert files_holding(tmp_path, secrets, skip=("worker1.pw",)) == []  # trials.csv, logs...
    assert leaked([pg_log.decode(errors="replace")], secrets) == []


def test_make_server_takes_every_postgresql_spelling(tmp_path: Path, mirror) -> None:
    from mlflow import MlflowClient

    folder, hashes = mirror
    project = project_copy(tmp_path / "project", shrink(real_params(), hashes, [str(folder)]))
    for scheme in ("postgresql+psycopg", "postgresql+psycopg2"):
        database = postgres_database("digits_spelling")
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-U", "postgres", database.rsplit("/", 1)[1] + "_auth"],
            check=True,
        )  # the users' database beside the runs'
        url = scheme + "://" + database.split("://", 1)[1]
        try:
            with (
                make_server(project, url, tmp_path / f"art-{scheme}") as server,
                pytest.MonkeyPatch.context() as env,
            ):
                env.setenv("MLFLOW_TRACKING_USERNAME", "admin")
                env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN)
                client = MlflowClient(tracking_uri=server)
                run = client.create_run(client.create_experiment("e"))
                (tmp_path / "note.txt").write_text(scheme)
                client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
                client.set_terminated(run.info.run_id)
                assert client.get_run(run.info.run_id).info.status == "FINISHED"
                assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        finally:
            drop_database(database)
            drop_database(database + "_auth")
