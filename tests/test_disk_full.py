"""A full disk at any write (issue 18): a clear `error:` naming the path and the free space, the
MLflow run FAILED, nothing a later stage or `dvc repro` would trust; the Optuna journal left
with a partial record by a short write is repaired on open. ENOSPC is patched into the write,
and once for real on a tiny tmpfs where this machine lets the test mount one."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from digits.lib.files import DiskFullError, write_json, write_text

from helpers import fresh_store, real_params, shrink, stage_env

BIN = Path(sys.executable).parent
FREE = r"\(free there: [\d,]+ bytes \([\d,.]+ MiB\)\)"


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- atomic writes: reports, metrics, figures ---------------------------------------------------


@pytest.mark.parametrize("writer", ["text", "json", "figure", "wrapped"])
def test_a_full_disk_names_the_path_and_leaves_nothing(
    tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digits.lib import files

    path = tmp_path / "reports" / "report.md"
    if writer == "figure":
        import matplotlib.figure

        from digits.lib import plots

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", enospc)
        figure = matplotlib.figure.Figure()
        path = path.with_suffix(".png")
        call = lambda: plots.save(figure, path)  # noqa: E731
    elif writer == "wrapped":  # a library that wraps the OSError in its own exception

        def wrapped(*args, **kwargs):
            try:
                enospc()
            except OSError as err:
                raise RuntimeError("could not save") from err

        def call() -> None:
            with files.atomic_path(path):
                wrapped()
    else:
        monkeypatch.setattr(Path, "write_text", enospc)
        call = (lambda: write_text(path, "x")) if writer == "text" else lambda: write_json(path, {})
    with pytest.raises(DiskFullError) as err:
        call()
    assert re.fullmatch(
        rf"no space left on the device writing {re.escape(str(path))} {FREE}; nothing was "
        r"written in its place: free some space and rerun",
        str(err.value),
    ), str(err.value)
    assert list(path.parent.iterdir()) == []  # no temp file, no half file


# --- the train stage --------------------------------------------------------------------------


def train_stage(
    tmp_path: Path, mirror, processed: Path, capsys, store_template: Path
) -> tuple[int, str]:
    """Run the train stage in-process in `tmp_path` (its own MLflow store); (exit code, stderr)."""
    from digits.stages import train

    _, hashes = mirror
    fresh_store(tmp_path, store_template)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    argv = ["--params", str(tmp_path / "params.yaml"), "--data", str(processed)]
    argv += ["--model", str(tmp_path / "m/model.keras"), "--run-info", str(tmp_path / "m/run.json")]
    argv += ["--metrics", str(tmp_path / "r/m.json"), "--history", str(tmp_path / "r/h.csv")]
    os.environ.pop("DVC_ROOT", None)
    try:
        train.main(argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def the_run(tmp_path: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    return run


def no_outputs(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("[mr]/*"))


def test_model_save_on_a_full_disk_ends_the_run_failed_with_no_outputs(
    tmp_path: Path,
    mirror,
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    store_template: Path,
) -> None:
    import keras

    real_save = keras.Model.save

    def save(self, path, *args, **kwargs):  # the stage's own save; MLflow's copy goes through
        if Path(path).parent == tmp_path / "m":
            enospc()
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    code, err = train_stage(tmp_path, mirror, processed, capsys, store_template)
    assert code == 1
    model = re.escape(str(tmp_path / "m/model.keras"))
    assert re.search(rf"^error: no space left on the device writing {model} {FREE}", err, re.M)
    run = the_run(tmp_path)
    assert run.info.status == "FAILED"  # the model is saved before the run may end FINISHED
    assert run.data.tags["failure_reason"].startswith("DiskFullError: no space left")
    assert no_outputs(tmp_path) == []  # no model, run.json, metrics or history to trust


def test_mlflow_artifacts_on_a_full_disk_end_the_run_failed_with_no_outputs(
    tmp_path: Path,
    mirror,
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    store_template: Path,
) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", enospc)
    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", enospc)
    code, err = train_stage(tmp_path, mirror, processed, capsys, store_template)
    assert code == 1
    assert re.search(
        rf"^error: no space left on the device writing \S*mlartifacts\S* {FREE}", err, re.M
    ), err
    assert the_run(tmp_path).info.status == "FAILED"
    assert no_outputs(tmp_path) == []


def test_a_later_write_failing_removes_what_the_stage_wrote_before(
    tmp_path: Path,
    mirror,
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    store_template: Path,
) -> None:
    """The metrics write fails after the model was saved: the run ends FAILED and run.json,
    which `evaluate` reads, is never written; a stale one from the last run is gone too."""
    from digits.stages import train

    (tmp_path / "m").mkdir()
    (tmp_path / "m/run.json").write_text('{"run_id": "stale"}')
    real = train.write_json

    def failing(path, data):
        if path.name == "m.json":
            enospc()
        return real(path, data)

    monkeypatch.setattr(train, "write_json", lambda p, d: _via_atomic(failing, p, d))
    code, err = train_stage(tmp_path, mirror, processed, capsys, store_template)
    assert code == 1 and "no space left on the device writing" in err
    assert the_run(tmp_path).info.status == "FAILED"
    assert not (tmp_path / "m/run.json").exists()


def _via_atomic(write, path: Path, data) -> None:
    from digits.lib.files import reporting_disk_full

    with reporting_disk_full(path):
        write(path, data)


def store_full(*args, **kwargs):
    """What SQLite raises, through SQLAlchemy, when the database's disk is full."""
    import sqlite3

    import sqlalchemy.exc

    raise sqlalchemy.exc.OperationalError(
        "INSERT INTO ...", {}, sqlite3.OperationalError("database or disk is full")
    )


@pytest.mark.parametrize("when", ["setup", "mid-run"])
def test_a_full_sqlite_store_ends_like_a_full_disk(
    tmp_path: Path,
    mirror,
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    store_template: Path,
    when: str,
) -> None:
    """SQLite says "database or disk is full" (no OSError): the stage still ends with one
    `error:` naming the store's file and the free space, no traceback, no outputs, and the run
    FAILED. One write fails, the stage's first or the first after the fit; the space is freed
    right after (so the run can still be ended, as the next stage would end it)."""
    import sqlalchemy.orm

    from digits.lib import training

    full = {"now": when == "setup"}
    real_commit, real_fit = sqlalchemy.orm.Session.commit, training.fit_logged

    def commit(self):
        if full["now"]:
            full["now"] = False
            store_full()
        return real_commit(self)

    def fit_then_fill(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        full["now"] = True
        return result

    monkeypatch.setattr(sqlalchemy.orm.Session, "commit", commit)
    monkeypatch.setattr(training, "fit_logged", fit_then_fill)
    code, err = train_stage(tmp_path, mirror, processed, capsys, store_template)
    assert code == 1
    store = re.escape(str(tmp_path / "mlflow.db"))
    assert re.search(rf"^error: no space left on the device writing {store} {FREE}", err, re.M)
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert "database or disk is full" not in err, err  # said once, in the project's words
    assert no_outputs(tmp_path) == []
    assert [p.name for p in tmp_path.rglob(".*.tmp.*")] == []
    if when == "mid-run":
        run = the_run(tmp_path)
        assert run.info.status == "FAILED"
        assert "database or disk is full" in run.data.tags["failure_reason"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 64 KiB tmpfs, or skip where this machine does not let the test mount one."""
    point = tmp_path / "tiny"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", f"digits-{uuid.uuid4().hex[:6]}", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield point
    subprocess.run(["umount", str(point)], check=True)


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_a_real_full_disk_under_the_model(
    tmp_path: Path, mirror, processed: Path, tiny_tmpfs: Path
) -> None:
    """The same as the patched test, with a real ENOSPC: the model does not fit in 64 KiB."""
    _, hashes = mirror
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(shrink(real_params(), hashes, ["x"])))
    cmd = [str(BIN / "python"), "-m", "digits.stages.train", "--data", str(processed)]
    cmd += ["--model", str(tiny_tmpfs / "model.keras"), "--run-info", "m/run.json"]
    cmd += ["--metrics", "r/m.json", "--history", "r/h.csv"]
    out = subprocess.run(cmd, cwd=tmp_path, env=stage_env(), capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    model = re.escape(str(tiny_tmpfs / "model.keras"))
    assert re.search(
        rf"^error: no space left on the device writing {model} {FREE}", out.stderr, re.M
    ), out.stderr
    assert "Traceback" not in out.stderr
    assert the_run(tmp_path).info.status == "FAILED"
    assert list(tiny_tmpfs.iterdir()) == [] and no_outputs(tmp_path) == []


# --- the Optuna journal -----------------------------------------------------------------------


def journal_with_trials(path: Path, n: int = 3) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def load_trials(path: Path) -> int:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return len(optuna.load_study(study_name="s", storage=storage).trials)


def test_a_partial_last_record_is_dropped_with_a_backup_and_a_warning(
    tmp_path: Path, caplog
) -> None:
    from digits.lib.urls import StorageUrl
    from digits.tools.sweep.study import repair_storage

    journal = tmp_path / "optuna-journal.log"
    journal_with_trials(journal)
    intact = journal.read_bytes()
    partial = b'{"op_code":5,"worker_id":"w","trial_id":'  # a short write: a full disk
    journal.write_bytes(intact + partial)
    with caplog.at_level(logging.WARNING):
        repair_storage(StorageUrl.parse(str(journal)))
    (backup,) = tmp_path.glob("optuna-journal.log.bak-*")
    assert backup.read_bytes() == intact + partial
    assert journal.read_bytes() == intact
    assert f"{journal}: dropped 1 partial record(s) ({len(partial)} bytes)" in caplog.text
    assert str(backup) in caplog.text
    assert load_trials(journal) == 3
    repair_storage(StorageUrl.parse(str(journal)))  # intact now: nothing to do, no second backup
    assert len(list(tmp_path.glob("optuna-journal.log.bak-*"))) == 1


def test_a_record_glued_onto_a_partial_one_is_kept(tmp_path: Path) -> None:
    """Another worker appended after the short write: Optuna cannot open that journal at all;
    repaired, the glued record is kept and the study has all its trials."""
    from digits.lib.journal import repair_journal

    journal = tmp_path / "optuna-journal.log"
    journal_with_trials(journal, n=2)
    intact = journal.read_bytes()
    lines = intact.splitlines(keepends=True)
    at = len(lines) // 2  # a record glued after a partial one, more records after it
    journal.write_bytes(b"".join([*lines[:at], b'{"op_code":5,"wor', *lines[at:]]))
    with pytest.raises(json.JSONDecodeError):
        load_trials(journal)
    assert repair_journal(journal) is not None
    assert journal.read_bytes() == intact
    assert load_trials(journal) == 2


def test_a_full_disk_under_the_journal_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's journal appends through `journal_backend`: ENOSPC there is a DiskFullError
    naming the journal (not the folder the worker happens to run in)."""
    from optuna.storages.journal import JournalFileBackend
    from optuna.study import StudyDirection

    from digits.lib.urls import StorageUrl
    from digits.tools.sweep.study import open_storage

    journal = tmp_path / "sweeps" / "optuna-journal.log"
    storage = open_storage(StorageUrl.parse(str(journal)), heartbeat=30)
    monkeypatch.setattr(JournalFileBackend, "append_logs", enospc)
    with pytest.raises(DiskFullError, match=rf"writing {re.escape(str(journal))} {FREE}"):
        storage.create_new_study(directions=[StudyDirection.MINIMIZE], study_name="s")


@pytest.mark.integration  # a whole multi-process scenario: `make test-integration`
def test_evaluate_on_a_full_disk_leaves_no_metrics_and_the_run_failed(
    tmp_path: Path,
    mirror,
    processed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    store_template: Path,
) -> None:
    """The train stage succeeds; `evaluate` then finds the artifact store full: its run ends
    FAILED and no metrics.json is left for `report` or `dvc metrics` to trust."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from digits.stages import evaluate

    code, _ = train_stage(tmp_path, mirror, processed, capsys, store_template)
    assert code == 0
    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", enospc)
    argv = ["--params", str(tmp_path / "params.yaml"), "--data", str(processed)]
    argv += ["--model", str(tmp_path / "m/model.keras"), "--run-info", str(tmp_path / "m/run.json")]
    argv += ["--history", str(tmp_path / "r/h.csv"), "--metrics", str(tmp_path / "r/metrics.json")]
    argv += ["--confusion", str(tmp_path / "r/c.csv"), "--per-class", str(tmp_path / "r/p.csv")]
    argv += ["--figures", str(tmp_path / "r/figures"), "--registry", str(tmp_path / "r/reg.json")]
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.search(
        rf"^error: no space left on the device writing \S*mlartifacts\S* {FREE}", err, re.M
    ), err
    assert the_run(tmp_path).info.status == "FAILED"
    assert not (tmp_path / "r/metrics.json").exists()
