"""No secret printed or logged (issue 18): a password planted in a storage or tracking URL must
not appear in any output, log line, error, MLflow tag or param, `make` echo, report, or any
process's command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.secrets import redact_logging, redact_text
from digits.tools.sweep import __main__ as sweep
from digits.tools.sweep import study as sweep_study

from helpers import ROOT, drop_database, postgres_database, stage_env

BIN = Path(sys.executable).parent
PASSWORD = "s3cr3tpw"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql+psycopg2://postgres:s3cr3tpw@127.0.0.1:5432/db",
            "postgresql+psycopg2://postgres:***@127.0.0.1:5432/db",
        ),
        ("http://u:p@ss@h:5000/x?y=1", "http://u:***@h:5000/x?y=1"),  # a raw @ in the password
        ("see postgresql://a:b@c/d, https://q:w@e", "see postgresql://a:***@c/d, https://q:***@e"),
        ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=k3y",
            "postgresql://u@h/db?sslmode=require&sslpassword=***",
        ),
        ("git: https://ghp_T0KEN@github.com/o/r", "git: https://***@github.com/o/r"),  # a token
        ("postgresql://u:p%2F%23%3F%40%25%20x@h/db", "postgresql://u:***@h/db"),  # encoded
        ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: unchanged
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("sweeps/optuna-journal.log", "sweeps/optuna-journal.log"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


AWKWARD = "pa/ss#w?o@r%d x"  # every character a URL parser trips on, and a space


def test_a_parsed_url_is_typed_and_its_password_masked_in_every_spelling() -> None:
    """Parsed once at the entry point: its kind, a redacted form, the original only on demand;
    from then on the password is masked wherever it appears, raw or percent-encoded (a
    driver's error message quotes it decoded)."""
    from urllib.parse import quote

    from digits.lib.urls import StorageKind, StorageUrl

    text = f"postgresql+psycopg2://bob:{quote(AWKWARD, safe='')}@db:5432/optuna?sslpassword=k3yz"
    url = StorageUrl.parse(text)
    assert (url.kind, url.database, url.secret) == (StorageKind.POSTGRESQL, "optuna", text)
    assert str(url) == "postgresql+psycopg2://bob:***@db:5432/optuna?sslpassword=***"
    assert AWKWARD not in repr(url) and "k3yz" not in repr(url)
    assert url.with_database("optuna_auth").redacted.startswith("postgresql+psycopg2://bob:***@")
    said = f"FATAL: password {AWKWARD!r} for bob failed; url was {text}; key k3yz"
    assert (
        redact_text(said)
        == "FATAL: password '***' for bob failed; url was "
        + str(url).replace("?sslpassword=***", "?sslpassword=***")
        + "; key ***"
    )
    assert StorageUrl.parse("sweeps/optuna-journal.log").kind is StorageKind.FILE
    assert StorageUrl.parse("https://T0KEN99@h:5000").redacted == "https://***@h:5000"


def test_tracebacks_and_warnings_are_redacted(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncaught exception and a warning (Optuna's, MLflow's) pass through the same masking:
    the secrets of the environment are known from the start."""
    import warnings

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AWKWARD)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    previous = logging.getLogRecordFactory()
    try:
        redact_logging()
        try:
            raise RuntimeError(f"login with {AWKWARD} refused")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"retrying postgresql://u:{PASSWORD}@h/db", UserWarning, stacklevel=1)
    finally:
        logging.setLogRecordFactory(previous)
    err = capsys.readouterr().err
    assert "Traceback" in err and "login with *** refused" in err
    assert "retrying postgresql://u:***@h/db" in err
    assert AWKWARD not in err and PASSWORD not in err


def test_a_credentials_file_others_may_read_is_refused(tmp_path: Path) -> None:
    from digits.lib.tracking.access import AccessError, check_credentials_file

    creds = tmp_path / "credentials"
    creds.write_text("[mlflow]\nmlflow_tracking_username = a\nmlflow_tracking_password = b\n")
    creds.chmod(0o644)
    with pytest.raises(AccessError, match="chmod 600"):
        check_credentials_file(creds)
    creds.chmod(0o600)
    check_credentials_file(creds)


def test_every_entry_point_refuses_a_readable_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow/credentials").write_text("[mlflow]\nmlflow_tracking_password = b\n")
    (tmp_path / ".mlflow/credentials").chmod(0o640)
    monkeypatch.setenv("HOME", str(tmp_path))
    ran = []
    previous = logging.getLogRecordFactory()
    try:
        with pytest.raises(SystemExit):
            stage_main(lambda: ran.append(1))()
    finally:
        logging.setLogRecordFactory(previous)
    assert not ran
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}/.mlflow/credentials holds your")


def test_401_and_403_become_one_line_that_says_what_to_do(monkeypatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    from digits.lib.tracking.access import AccessError, explain_denied, is_permission_denied

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    denied = MlflowException("403", error_code=codes.PERMISSION_DENIED)
    assert is_permission_denied(denied)
    with pytest.raises(AccessError) as err, explain_denied("http://t:5000", "register a model"):
        raise denied
    assert str(err.value).startswith("user 'alice' may not register a model on the tracking ")
    with pytest.raises(AccessError) as err, explain_denied("http://t:5000", "log runs"):
        raise MlflowException("401", error_code=codes.UNAUTHENTICATED)
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in str(err.value)
    with pytest.raises(MlflowException), explain_denied("http://t:5000", "log runs"):
        raise MlflowException("gone", error_code=codes.RESOURCE_DOES_NOT_EXIST)


def test_log_records_are_redacted_whatever_handler_emits_them() -> None:
    """Optuna's logger has its own handler and does not propagate: redaction happens when a
    record is made, so it reaches every handler."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    logger = logging.getLogger("optuna.test-secrets")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    previous = logging.getLogRecordFactory()
    try:
        redact_logging()
        redact_logging()  # idempotent
        logger.info("storage %s", f"postgresql://u:{PASSWORD}@h/db")
        logger.warning(f"inline postgresql://u:{PASSWORD}@h/db")
    finally:
        logging.setLogRecordFactory(previous)
    assert seen == ["storage postgresql://u:***@h/db", "inline postgresql://u:***@h/db"]


def test_errors_are_redacted(capsys) -> None:
    @stage_main
    def failing() -> None:
        raise PipelineError(f"cannot reach http://admin:{PASSWORD}@tracking:5000")

    previous = logging.getLogRecordFactory()
    try:
        with pytest.raises(SystemExit):
            failing()
    finally:
        logging.setLogRecordFactory(previous)
    err = capsys.readouterr().err
    assert err == "error: cannot reach http://admin:***@tracking:5000\n"


def test_unreachable_tracking_server_and_failure_reason_are_redacted(tmp_path: Path) -> None:
    import mlflow

    from digits.lib.config import MLflowConfig
    from digits.lib.environment import Environment
    from digits.lib.tracking import runs
    from digits.lib.tracking import store as tracking

    with pytest.raises(tracking.TrackingError) as err:
        tracking.check_reachable(f"http://admin:{PASSWORD}@127.0.0.1:9/", timeout=1)
    assert PASSWORD not in str(err.value) and "admin:***@127.0.0.1" in str(err.value)

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    tracking.setup(MLflowConfig(tracking_uri="sqlite:///mlflow.db"), tmp_path, Environment())
    with pytest.raises(RuntimeError), runs.tracked_run() as run:
        raise RuntimeError(f"lost postgresql://u:{PASSWORD}@db/optuna")
    finished = mlflow.get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags["failure_reason"] == "RuntimeError: lost postgresql://u:***@db/optuna"


@pytest.mark.parametrize("target", ["sweep", "promote", "dashboard"])
def test_make_never_echoes_the_storage_password(target: str) -> None:
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/x"
    out = subprocess.run(
        ["make", "-n", target, f"STORAGE={url}", "WORKERS=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "OPTUNA_STORAGE=" in out.stdout  # it still reaches the tool, via the environment
    assert PASSWORD not in out.stdout + out.stderr


def small_project(tmp_path: Path, small_params: dict[str, Any]) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params))
    return tmp_path


def test_sweep_storage_prints_the_password_only_when_asked(
    tmp_path: Path, small_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    project = small_project(tmp_path, small_params)
    url = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:5432/x"
    monkeypatch.setenv("OPTUNA_STORAGE", url)
    argv = ["--params", str(project / "params.yaml"), "storage"]
    sweep.main(argv)
    assert capsys.readouterr().out == "postgresql+psycopg2://postgres:***@127.0.0.1:5432/x\n"
    sweep.main([*argv, "--show-password"])
    assert capsys.readouterr().out == url + "\n"


def command_lines() -> list[str]:
    """Every process's command line on this machine."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return lines


@pytest.fixture
def pg_with_password() -> Any:
    """A fresh PostgreSQL database, its URL with a password planted (trust auth ignores it)."""
    url = postgres_database("digits_secret_test")
    yield url.replace("postgres@", f"postgres:{PASSWORD}@")
    drop_database(url)


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_a_real_sweep_never_shows_the_password(
    tmp_path: Path, small_params: dict[str, Any], processed: Path, pg_with_password: str
) -> None:
    """A tiny sweep on PostgreSQL with the password in $OPTUNA_STORAGE: not in any process's
    command line while it runs, its output, any file it writes (trials.csv, best_params.yaml,
    plots, the MLflow store and artifacts), nor any MLflow tag or param."""
    project = small_project(tmp_path, small_params)
    cmd = [str(BIN / "python"), "-m", "digits.tools.sweep", "--params", "params.yaml", "run"]
    cmd += ["--data", str(processed), "--n-trials", "2", "--workers", "1"]
    env = stage_env(OPTUNA_STORAGE=pg_with_password)
    leaks: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            leaks.extend(line for line in command_lines() if PASSWORD in line)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    finally:
        done.set()
        watcher.join()
    assert out.returncode == 0, out.stderr
    assert not leaks, leaks
    assert "postgres:***@127.0.0.1" in out.stderr  # the storage is logged, masked
    assert PASSWORD not in out.stdout + out.stderr
    written = [p for p in project.rglob("*") if p.is_file()]
    assert any(p.name == "trials.csv" for p in written) and (project / "mlflow.db").exists()
    assert [p for p in written if PASSWORD.encode() in p.read_bytes()] == []

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert len(runs) == 3  # the parent and two trials
    for run in runs:
        recorded = {**run.data.tags, **run.data.params}
        assert not [k for k, v in recorded.items() if PASSWORD in f"{k}={v}"]
    assert any(
        r.data.tags.get("optuna.storage", "").endswith(
            "***@127.0.0.1:5432/" + pg_with_password.rsplit("/", 1)[1]
        )
        for r in runs
    )


def test_the_dashboard_gets_the_storage_in_process_and_prints_it_masked(
    tmp_path: Path, small_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`make dashboard` runs `digits.tools.dashboard`: the storage object is handed to
    optuna-dashboard in Python, the URL is never an argument of any command."""
    import optuna_dashboard

    from digits.tools import dashboard

    project = small_project(tmp_path, small_params)
    journal = project / "sweeps" / "optuna-journal.log"
    monkeypatch.setenv("OPTUNA_STORAGE", str(journal))
    served = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda *a: served.append(a))
    dashboard.main(["--params", str(project / "params.yaml"), "--port", "8123"])
    ((storage, host, port),) = served
    assert type(storage).__name__ == "JournalStorage" and (host, port) == ("127.0.0.1", 8123)
    assert capsys.readouterr().out == f"optuna-dashboard on {journal}: http://127.0.0.1:8123\n"

    monkeypatch.setenv("OPTUNA_STORAGE", f"postgresql+psycopg2://postgres:{PASSWORD}@h:1/x")
    monkeypatch.setattr(sweep_study, "open_storage", lambda url, heartbeat: url)
    dashboard.main(["--params", str(project / "params.yaml")])
    assert served[-1][0].secret.endswith(f":{PASSWORD}@h:1/x")  # the real URL, in-process
    assert capsys.readouterr().out.startswith(
        "optuna-dashboard on postgresql+psycopg2://postgres:***@h:1/x"
    )
