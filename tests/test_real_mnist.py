"""Slow checks on real MNIST (`make test-all`): accuracy targets (below) for the default
params and the softmax config. They need the real files: set MNIST_MIRROR to a folder holding
them (here: ../shared/data/mnist); without it they skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from digits.lib.config import load_params
from digits.lib.data import load_splits

from helpers import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from digits.stages import download, preprocess

    if not os.environ.get("MNIST_MIRROR"):
        pytest.skip("set MNIST_MIRROR to a folder with the four MNIST files")
    root = tmp_path_factory.mktemp("mnist")
    params = str(ROOT / "params.yaml")
    download.main(["--params", params, "--out", str(root / "raw")])
    preprocess.main(["--params", params, "--raw", str(root / "raw"), "--out", str(root / "p")])
    return root / "p"


@pytest.mark.parametrize(
    ("overrides", "target"),
    [
        ({}, 0.983),  # default params.yaml: above the course notes' best MLP (98.26%)
        ({"model.type": "softmax", "train.epochs": 30, "train.lr_schedule": "constant"}, 0.917),
    ],
    ids=["default", "softmax"],
)
def test_accuracy_target(mnist: Path, overrides: dict, target: float) -> None:
    from digits.lib.scoring import score
    from digits.lib.training import fit

    params = load_params(ROOT / "params.yaml").with_overrides(overrides)
    splits = load_splits(mnist)
    model, _ = fit(params.model, params.train, splits["train"], splits["val"], verbose=0)
    probabilities = model.predict(splits["test"].x, batch_size=1024, verbose=0)
    accuracy = score(splits["test"].labels, probabilities).metrics["test/accuracy"]
    print(f"test accuracy {accuracy:.4f} (target {target})")
    assert accuracy >= target
