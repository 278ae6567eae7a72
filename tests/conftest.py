"""Shared fixtures: a small synthetic IDX dataset, the real params.yaml shrunk to fit it, and a
loopback HTTP mirror. Nothing here touches the network, ../shared or the project's own outputs."""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import http.server
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from digits.lib.idx import encode_idx

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


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder of synthetic MNIST .gz files and their content hashes."""
    folder = tmp_path_factory.mktemp("mirror")
    return folder, write_mirror(folder)


@pytest.fixture(autouse=True)
def mlflow_isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test inherits another's MLflow store: `mlflow.set_tracking_uri` keeps the URI in a
    process global and exports it as $MLFLOW_TRACKING_URI, which `tracking.setup` obeys."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


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


@pytest.fixture
def small_params(mirror: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    """params.yaml shrunk to the synthetic mirror (as a local folder)."""
    folder, hashes = mirror
    return shrink(real_params(), hashes, [str(folder)])


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def http_mirror(mirror: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """The synthetic mirror served over HTTP on loopback; yields its base URL."""
    folder, _ = mirror
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def processed(tmp_path_factory: pytest.TempPathFactory, mirror) -> Path:
    """The synthetic dataset, downloaded and preprocessed by the real stages."""
    from digits.stages import download, preprocess

    folder, hashes = mirror
    root = tmp_path_factory.mktemp("data")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(shrink(real_params(), hashes, [str(folder)])))
    download.main(["--params", str(params), "--out", str(root / "raw")])
    preprocess.main(["--params", str(params), "--raw", str(root / "raw"), "--out", str(root / "p")])
    return root / "p"


def postgres_database(prefix: str) -> str:
    """A fresh database on the local PostgreSQL (its SQLAlchemy URL), or skip; REQUIRE_POSTGRES=1
    (set by .ci/run) turns the skip into a failure."""
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
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


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
