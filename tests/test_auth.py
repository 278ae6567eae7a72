"""The team's tracking server with users (issue 25): `python -m digits.tools.server serve` with
MLflow's basic-auth app, runs and users in PostgreSQL that asks for scram-sha-256 passwords;
reading, logging and the registry granted separately; 401/403 as one `error:` line; and the
planted passwords never on a command line, in an output, a log, a file or the MLflow store."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from digits.lib.tracking.access import denied_message, is_permission_denied, is_unauthenticated
from digits.lib.vocab import TEST_ACCURACY
from digits.tools.server import serving

from helpers import free_port, real_params, shrink, stage_env
from leaks import files_holding, leaked, watching_command_lines
from scram_postgres import Postgres, scram_postgres

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
# every character that breaks a naive URL parser or a shell, and a space
DB_PASSWORD = "db/#?@% pw-Quokka"
ADMIN_PASSWORD = "adm/#?@% pw-Wombat"
SUPER_PASSWORD = "su/#?@% pw-Numbat"
PLANTED = [DB_PASSWORD, ADMIN_PASSWORD, SUPER_PASSWORD]


@dataclass
class Team:
    url: str
    folder: Path
    postgres: Postgres
    seen_commands: list[str]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """The team server of docs/team.md: a role with a password owning `mlflow` and `mlflow_auth`,
    `digits.tools.server serve` with the URL in $SERVER_DB and the admin password in a 0600
    file; every process's command line watched while it runs."""
    folder = tmp_path_factory.mktemp("team")
    with scram_postgres(SUPER_PASSWORD) as pg:
        pg.add_role("mlflow", DB_PASSWORD, ["mlflow", "mlflow_auth"])
        admin_file = folder / "admin.pw"
        admin_file.write_text(ADMIN_PASSWORD + "\n")
        admin_file.chmod(0o600)
        port = free_port()
        cmd = [str(BIN / "python"), "-m", "digits.tools.server", "serve", "--port", str(port)]
        cmd += ["--artifacts-destination", str(folder / "artifacts")]
        cmd += ["--admin-password-file", str(admin_file)]
        env = stage_env(SERVER_DB=pg.url("mlflow", DB_PASSWORD, "mlflow"))
        url = f"http://127.0.0.1:{port}"
        log = folder / "server.log"
        with watching_command_lines() as seen, serving(cmd, url, log, env=env, cwd=folder):
            yield Team(url, folder, pg, seen)


def tool(team: Team, user: str, password: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m digits.tools.server ARGS` as `user` (credentials in MLflow's variables)."""
    env = stage_env(
        MLFLOW_TRACKING_URI=team.url, MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password, HOME=str(team.folder),
    )  # fmt: skip
    return subprocess.run(
        [str(BIN / "python"), "-m", "digits.tools.server", *args],
        cwd=team.folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def add_user(team: Team, name: str, role: str) -> str:
    """`user add NAME --role ROLE` as the admin; the new user's password (from its 0600 file)."""
    file = team.folder / f"{name}.pw"
    done = tool(team, "admin", ADMIN_PASSWORD, "user", "add", name, "--role", role,
                "--password-file", str(file))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    password = file.read_text().strip()
    assert password not in done.stdout + done.stderr
    return password


def as_user(monkeypatch: pytest.MonkeyPatch, url: str, name: str, password: str):
    """An MlflowClient that sends `name`'s credentials (MLflow's environment variables)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(tracking_uri=url)


def outcome(action) -> str:
    """'ok', '401' or '403' for an MLflow call."""
    try:
        action()
        return "ok"
    except Exception as err:
        if is_unauthenticated(err):
            return "401"
        if is_permission_denied(err):
            return "403"
        raise


def what_may(client, experiment: str, seeded: str) -> dict[str, str]:
    """What `client`'s user may do: read a run, log one, register a version, move @champion."""
    model = "mnist-digits"  # the team's model, made by `user add` as the admin's
    runs: list = []
    versions: list = []
    got = {
        "read": outcome(lambda: client.get_run(seeded)),
        "log": outcome(lambda: runs.append(client.create_run(experiment))),
        "register": outcome(
            lambda: versions.append(
                client.create_model_version(model, f"runs:/{seeded}/model", seeded)
            )
        ),
    }
    if runs:
        got["metric"] = outcome(lambda: client.log_metric(runs[0].info.run_id, "m", 1))
    version = versions[0].version if versions else "1"
    got["alias"] = outcome(lambda: client.set_registered_model_alias(model, "champion", version))
    return got


def test_reading_logging_and_the_registry_are_granted_separately(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    roles = ("reader", "logger", "registrar")
    passwords = {role: add_user(team, f"{role}1", role) for role in roles}
    admin = as_user(monkeypatch, team.url, "admin", ADMIN_PASSWORD)
    experiment = admin.get_experiment_by_name("mnist").experiment_id  # made by `user add`
    seeded = admin.create_run(experiment).info.run_id
    got = {
        role: what_may(as_user(monkeypatch, team.url, f"{role}1", password), experiment, seeded)
        for role, password in passwords.items()
    }
    assert got == {
        "reader": {"read": "ok", "log": "403", "register": "403", "alias": "403"},
        "logger": {"read": "ok", "log": "ok", "metric": "ok", "register": "403", "alias": "403"},
        "registrar": {"read": "ok", "log": "ok", "metric": "ok", "register": "ok", "alias": "ok"},
    }
    # a user the admin made without a role sees nothing (default permission NO_PERMISSIONS)
    from mlflow.server.auth.client import AuthServiceClient

    as_user(monkeypatch, team.url, "admin", ADMIN_PASSWORD)
    AuthServiceClient(team.url).create_user("norole1", "norole-password-1")
    bare = as_user(monkeypatch, team.url, "norole1", "norole-password-1")
    assert outcome(lambda: bare.get_run(seeded)) == "403"
    wrong = as_user(monkeypatch, team.url, "reader1", "not-the-password")
    assert outcome(lambda: wrong.get_run(seeded)) == "401"


def test_401_and_403_are_one_error_line_that_says_what_to_do(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = add_user(team, "logger2", "logger")
    denied = tool(team, "logger2", password, "user", "role", "logger2", "--role", "registrar")
    assert denied.returncode == 1
    assert denied.stderr.startswith("error: user 'logger2' may not manage users on the tracking")
    assert "ask its admin" in denied.stderr and len(denied.stderr.splitlines()) == 1
    refused = tool(team, "logger2", "wrong-password", "user", "role", "logger2", "--role", "reader")
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in refused.stderr
    # the helper evaluate calls before registering: a 403 is recognised, and its line names it
    client = as_user(monkeypatch, team.url, "logger2", password)
    try:
        client.create_registered_model("someone-elses")
        client.create_model_version("mnist-digits", "runs:/x/model")
    except Exception as err:
        assert is_permission_denied(err)
        assert "may not register" in denied_message(err, team.url, "register")
    else:
        pytest.fail("a logger registered a version of the team's model")


def test_a_stage_refused_by_the_server_says_so_in_one_error_line(
    team: Team, mirror, processed: Path, tmp_path: Path
) -> None:
    """The train stage as a reader (403: it may not create runs), and with a wrong password
    (401): one `error:` line each, naming what to set or whom to ask; no traceback."""
    _, hashes = mirror
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    reader = add_user(team, "reader3", "reader")
    train = [str(BIN / "python"), "-m", "digits.stages.train", "--data", str(processed)]
    train += ["--model", "models/model.keras", "--run-info", "models/run.json"]
    train += ["--metrics", "reports/train_metrics.json", "--history", "reports/history.csv"]
    for user, password, expected in (
        ("reader3", reader, "user 'reader3' may not call experiments/"),  # its first write
        ("reader3", "wrong-password", "did not accept your credentials"),
    ):
        env = stage_env(
            MLFLOW_TRACKING_URI=team.url, MLFLOW_TRACKING_USERNAME=user,
            MLFLOW_TRACKING_PASSWORD=password,
        )  # fmt: skip
        out = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        assert out.returncode == 1, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and expected in errors[0], out.stderr
        assert "Traceback" not in out.stderr and password not in out.stderr


def as_user_env(team: Team, user: str, password: str) -> dict[str, str]:
    """A stage's environment as `user` on the team's server (MLflow's variables)."""
    return stage_env(
        MLFLOW_TRACKING_URI=team.url, MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password, HOME=str(team.folder),
    )  # fmt: skip


def test_a_logger_trains_and_evaluates_and_is_told_why_nothing_was_registered(
    team: Team, mirror, processed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: a logger's train and evaluate log their run and metrics; evaluate writes
    metrics.json, records `not_registered` and says in one line why, and exits 0. Made a
    registrar, the user's evaluate registers the first champion; a reader predicts with it."""
    _, hashes = mirror
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    env = as_user_env(team, "logger4", add_user(team, "logger4", "logger"))
    train = [str(BIN / "python"), "-m", "digits.stages.train", "--data", str(processed)]
    train += ["--model", "models/model.keras", "--run-info", "models/run.json"]
    train += ["--metrics", "reports/train_metrics.json", "--history", "reports/history.csv"]
    evaluate = [str(BIN / "python"), "-m", "digits.stages.evaluate", "--data", str(processed)]
    evaluate += ["--model", "models/model.keras", "--run-info", "models/run.json"]
    evaluate += ["--history", "reports/history.csv", "--metrics", "reports/metrics.json"]
    evaluate += ["--confusion", "reports/confusion.csv", "--per-class", "reports/per_class.csv"]
    evaluate += ["--figures", "figures", "--registry", "reports/registry.json"]
    for command in (train, evaluate):
        out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        assert out.returncode == 0, out.stderr
    said = [line for line in out.stdout.splitlines() if "not registered" in line]
    assert said == [
        f"evaluate: not registered: logger4 may log runs but not register models on {team.url}; "
        "ask an admin for `python -m digits.tools.server user role logger4 --role registrar`"
    ], out.stdout + out.stderr
    assert "error:" not in out.stderr and "Traceback" not in out.stderr
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    registry = json.loads((tmp_path / "reports/registry.json").read_text())
    assert registry["decision"] == "not_registered" and registry["version"] is None
    run_id = json.loads((tmp_path / "models/run.json").read_text())["run_id"]
    run = as_user(monkeypatch, team.url, "admin", ADMIN_PASSWORD).get_run(run_id)
    assert run.data.metrics[TEST_ACCURACY] == pytest.approx(metrics[TEST_ACCURACY])
    assert run.data.tags["registry.decision"] == "not_registered"
    # the line's remedy: as a registrar, the same evaluate registers the first champion
    granted = tool(team, "admin", ADMIN_PASSWORD, "user", "role", "logger4", "--role", "registrar")
    assert granted.returncode == 0, granted.stderr
    out = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    registry = json.loads((tmp_path / "reports/registry.json").read_text())
    # the team's model, or (when earlier tests left versions without test data in it) its kin
    assert registry["name"].startswith("mnist-digits"), registry
    assert (registry["version"], registry["decision"]) == ("1", "first"), registry
    # and a reader predicts with that champion (`make predict MODEL=models:/...@champion`)
    import numpy as np
    from PIL import Image

    with np.load(processed / "test.npz") as test:
        digit = (np.asarray(test["x"][0]).reshape(28, 28) * 255).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    reader = as_user_env(team, "reader4", add_user(team, "reader4", "reader"))
    predict = [str(BIN / "python"), "-m", "digits.tools.predict", "digit.png"]
    predict += ["--model", f"models:/{registry['name']}@champion"]
    out = subprocess.run(predict, cwd=tmp_path, env=reader, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("digit.png") and len(out.stdout.splitlines()) == 1, out.stdout


def test_a_logger_runs_a_sweep(team: Team, mirror, processed: Path, tmp_path: Path) -> None:
    """`make sweep` as a logger: its parent and trial runs go to the server; no error."""
    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["sweep"].update(n_trials=1, workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = as_user_env(team, "logger5", add_user(team, "logger5", "logger"))
    sweep = [str(BIN / "python"), "-m", "digits.tools.sweep", "--params", "params.yaml", "run"]
    sweep += ["--data", str(processed), "--out", "reports/sweep", "--n-trials", "1"]
    out = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "error:" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_no_password_on_a_command_line_in_a_log_a_file_or_the_store(team: Team) -> None:
    """Run last in this module: everything the server and the tools did above is checked."""
    assert any("mlflow server --app-name basic-auth" in line for line in team.seen_commands)
    assert leaked(team.seen_commands, PLANTED) == []
    assert "Created admin user 'admin'" in (team.folder / "server.log").read_text()
    assert files_holding(team.folder, PLANTED, skip=("admin.pw",)) == []  # server.log too
    assert files_holding(team.postgres.folder, PLANTED) == []  # PostgreSQL's log and data
    # the MLflow store and the users' store: a dump of both databases holds no planted password
    env = {**os.environ, "PGPASSWORD": DB_PASSWORD}
    for database in ("mlflow", "mlflow_auth"):
        dump = subprocess.run(
            ["pg_dump", "-h", "127.0.0.1", "-p", str(team.postgres.port), "-U", "mlflow", database],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert "CREATE TABLE" in dump
        assert leaked([dump], PLANTED) == [], database
