"""Shared fixtures: a small synthetic IDX dataset, the real params.yaml shrunk to fit it, and a
loopback HTTP mirror. Nothing here touches the network, ../shared or the project's own outputs.
Plain helpers are in helpers.py."""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import real_params, shrink, write_mirror


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder of synthetic MNIST .gz files and their content hashes."""
    folder = tmp_path_factory.mktemp("mirror")
    return folder, write_mirror(folder)


@pytest.fixture(autouse=True)
def mlflow_isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test inherits another's MLflow store: `mlflow.set_tracking_uri` keeps the URI in a
    process global and exports it as $MLFLOW_TRACKING_URI, which `store.setup` obeys."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with every table migrated and nothing logged: a fresh file costs
    MLflow ~4 s of schema migrations, a copy of this one a few milliseconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


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
