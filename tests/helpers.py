"""Helpers the tests share: synthetic IDX data, the real params.yaml shrunk to fit it, fresh
stores and databases, subprocess environments, and one way to wait for a condition. Fixtures live
in conftest.py; this is a plain module that tests import."""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

from digits.lib.idx import encode_idx

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]


SIZES = {"train": 600, "t10k": 200}


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` 28x28 uint8 images of ten learnable classes: each class a fixed random stroke pattern,
    shifted by a pixel and with noise, so a model can beat chance in one epoch."""
    rng = np.random.default_rng(seed)
    coarse = np.random.default_rng(1234).random((10, 7, 7)) > 0.6
    templates = coarse.repeat(4, axis=1).repeat(4, axis=2)  # blocky 28x28 patterns
    labels = np.tile(np.arange(10, dtype=np.uint8), n // 10 + 1)[:n]
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        shifted = np.roll(templates[label], rng.integers(-1, 2, size=2), axis=(0, 1))
        noise = rng.integers(0, 60, size=(28, 28))
        images[i] = np.clip(shifted * 200 + noise, 0, 255)
    return images, labels


def write_mirror(folder: Path, sizes: dict[str, int] = SIZES) -> dict[str, str]:
    """Write the four gzipped IDX files; returns {name: sha256 of decompressed content}."""
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for seed, (split, n) in enumerate(sizes.items()):
        images, labels = synthetic_digits(n, seed)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            name, content = f"{split}-{kind}", encode_idx(array)
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
            hashes[name] = hashlib.sha256(content).hexdigest()
    return hashes


def fresh_store(folder: Path, template: Path) -> Path:
    """`folder`/mlflow.db as an empty, migrated MLflow store (the project's default store)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(template, folder / "mlflow.db"))


def real_params() -> dict[str, Any]:
    """The project's params.yaml as a dict."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def shrink(raw: dict[str, Any], hashes: dict[str, str], mirrors: list[str]) -> dict[str, Any]:
    """The real config, shrunk: synthetic data, small model, two epochs."""
    raw = copy.deepcopy(raw)
    raw["download"].update(files=hashes, mirrors=mirrors, local_mirror=None, retries=0, timeout=5)
    raw["data"]["val_size"] = 100
    raw["model"]["mlp"].update(depth=1, width=32)
    raw["train"].update(epochs=2, batch_size=64)
    if sweep := raw.get("sweep"):
        sweep["fixed"]["train.epochs"] = 2
        sweep["space"]["model.mlp.depth"] = {"low": 1, "high": 2}
        sweep["space"]["model.mlp.width"] = {"choices": [16, 32]}
        # plain momentum SGD at a tiny rate: a trial the tests know the pruner stops
        sweep["space"]["train.optimizer"] = {"choices": ["adam", "rmsprop", "momentum"]}
        sweep.update(n_trials=4, startup_trials=1, warmup_epochs=1, workers=1, pruner="median")
    return raw


def postgres_database(prefix: str) -> str:
    """A fresh database on the local PostgreSQL (its plain `postgresql://` URL), or skip;
    REQUIRE_POSTGRES=1 (set by .ci/run) turns the skip into a failure."""
    try:
        import psycopg2

        conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except Exception as err:  # any reason: not installed, refused, auth
        reason = f"no PostgreSQL at 127.0.0.1:5432 ({type(err).__name__}: {err})".strip()
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; REQUIRE_POSTGRES=1 makes it mandatory")
        print(reason)
        pytest.skip(reason)
    conn.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"  # psycopg 3, SQLAlchemy 2.1's default


def drop_database(url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    conn.close()


def free_port() -> int:
    """A loopback port nothing listens on (for servers to start, or to fail to reach)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment for running a stage in a subprocess: this venv first on PATH, and none
    of the variables that would point it at the developer's own store, storage, data or DVC."""
    drop = {"MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "MNIST_MIRROR"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


NO_TENSORFLOW = """
import sys
from {module} import main
try:
    main({argv!r})
except SystemExit as exit_:
    print("exit", exit_.code)
print(sorted({{"tensorflow", "keras"}} & set(sys.modules)))
"""


def run_without_tensorflow(module: str, argv: list[str], cwd: Path) -> tuple[str, str]:
    """Run a CLI's main in a fresh interpreter: (stdout, stderr); stdout ends with the heavy
    modules it had imported when it returned."""
    code = NO_TENSORFLOW.format(module=module, argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout, done.stderr


def make_command(*args: str) -> list[str]:
    """`make ARGS` with this test run's venv, told not to reinstall it (its `.installed` stamp
    may be older than a copied pyproject.toml): the make targets, as a user runs them."""
    venv = Path(sys.executable).parent.parent
    # --no-print-directory: under `make test` the outer make would add "Entering directory" lines
    return ["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/bin/.installed", *args]


def project_copy(dest: Path, params: dict[str, Any]) -> Path:
    """The project's git-tracked files as they are in the work tree (not HEAD: uncommitted edits
    are what is under test), with `params`, as a fresh git repository with one commit."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    skip = ("tests/", "reports/bench/", "bench/")
    for name in files:
        source = ROOT / name
        if name and not name.startswith(skip) and source.is_file() and not source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_env(**GIT_IDENTITY)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "DVC_NO_ANALYTICS": "1",
}


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail the test with
    `what` once `timeout` seconds pass. Every polling loop in the tests goes through here, so
    each is bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
