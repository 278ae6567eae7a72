"""The README's team set-up, command by command, on loopback: `createdb` for the tracking server
and the sweep, `make server` (PostgreSQL backend, artifacts proxied), then a worker host that
points MLFLOW_TRACKING_URI at the server and OPTUNA_STORAGE at PostgreSQL and runs
`make sweep`; and `make server` with each PostgreSQL spelling."""

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

pytestmark = pytest.mark.integration


@contextmanager
def make_server(project: Path, database: str, artifacts: Path) -> Iterator[str]:
    """`make server SERVER_DB=... PORT=... ARTIFACTS=...` until the block ends; yields its URL."""
    port = free_port()
    cmd = make_command("server", f"SERVER_DB={database}", f"PORT={port}", f"ARTIFACTS={artifacts}")
    # make, python, then mlflow and its workers: one process group, stopped together
    log = project / f"server-{port}.log"
    with serving(
        cmd, f"http://127.0.0.1:{port}", log, timeout=300, cwd=project, env=stage_env()
    ) as url:
        yield url


def createdb(name: str) -> None:
    """The README's `createdb -h 127.0.0.1 -U postgres <name>`, with the test's name."""
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Fresh `mlflow` and `optuna` databases, made with the README's createdb."""
    probe = postgres_database("digits_team_probe")  # skips (or fails in CI) without PostgreSQL
    drop_database(probe)
    suffix = probe.rsplit("_", 1)[1]
    urls = {}
    for role in ("mlflow", "optuna"):
        createdb(f"digits_team_{role}_{suffix}")
        urls[role] = f"postgresql://postgres@127.0.0.1/digits_team_{role}_{suffix}"
    yield urls
    for url in urls.values():
        drop_database(url)


def test_server_and_a_worker_host_as_in_the_readme(
    tmp_path: Path, mirror, databases: dict[str, str]
) -> None:
    import optuna
    from mlflow import MlflowClient

    folder, hashes = mirror
    project = project_copy(tmp_path / "project", shrink(real_params(), hashes, [str(folder)]))
    artifacts = tmp_path / "server-artifacts"
    with make_server(project, databases["mlflow"], artifacts) as server:
        # a worker host: the README's two exports, then make sweep
        env = stage_env(MLFLOW_TRACKING_URI=server, OPTUNA_STORAGE=databases["optuna"])
        env.update(GIT_IDENTITY)
        out = subprocess.run(
            make_command("sweep", "N_TRIALS=2", "WORKERS=2"), cwd=project, env=env,
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert not (project / "mlflow.db").exists(), "nothing logged to the local store"

        study = optuna.load_study(study_name="mnist-mlp", storage=databases["optuna"])
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) == 2

        client = MlflowClient(tracking_uri=server)
        experiment = client.get_experiment_by_name("mnist")
        runs = client.search_runs([experiment.experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}
        (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
        assert len(runs) == 3, [r.info.run_name for r in runs]
        # artifacts went through the server (proxied), into its --artifacts-destination
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        names = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
        assert "sweep/trials.csv" in names, names
        assert any(p.is_file() for p in artifacts.rglob("*")), "stored by the server"


def test_make_server_takes_every_postgresql_spelling(tmp_path: Path, mirror) -> None:
    from mlflow import MlflowClient

    folder, hashes = mirror
    project = project_copy(tmp_path / "project", shrink(real_params(), hashes, [str(folder)]))
    for scheme in ("postgresql+psycopg", "postgresql+psycopg2"):
        database = postgres_database("digits_spelling")
        url = scheme + "://" + database.split("://", 1)[1]
        try:
            with make_server(project, url, tmp_path / f"art-{scheme}") as server:
                client = MlflowClient(tracking_uri=server)
                run = client.create_run(client.create_experiment("e"))
                (tmp_path / "note.txt").write_text(scheme)
                client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
                client.set_terminated(run.info.run_id)
                assert client.get_run(run.info.run_id).info.status == "FINISHED"
                assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        finally:
            drop_database(database)
