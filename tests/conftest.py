"""Shared fixtures: a small synthetic IDX dataset, the real params.yaml shrunk to fit it, and a
loopback HTTP mirror. Nothing here touches the network, ../shared or the project's own outputs."""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from digits.idx import encode_idx

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 600, "t10k": 200}


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
