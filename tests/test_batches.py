"""Every epoch trains in a fresh order, drawn from the seed and the epoch alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digits.lib.batches import epoch_batches, steps_per_epoch
from digits.lib.data import load_splits

from helpers import real_params, shrink


def orders(seed: int, first: int, epochs: int, n: int = 50, batch: int = 8) -> list[list[int]]:
    """The rows each epoch visits, in order (x holds each row's own index)."""
    x = np.arange(n, dtype=np.float32)[:, None]
    y = np.zeros((n, 1), dtype=np.float32)
    steps = steps_per_epoch(n, batch)
    batches = [xb.numpy()[:, 0].astype(int).tolist() for xb, _ in
               epoch_batches(x, y, batch, seed, first, epochs)]  # fmt: skip
    assert len(batches) == steps * (epochs - first)
    rows = [row for batch in batches for row in batch]
    return [rows[e * n : (e + 1) * n] for e in range(epochs - first)]


def test_each_epoch_is_a_new_permutation_of_every_row() -> None:
    epochs = orders(seed=42, first=0, epochs=4)
    assert all(sorted(order) == list(range(50)) for order in epochs)  # each row once an epoch
    assert len({tuple(order) for order in epochs}) == 4  # no epoch repeats another's order
    assert epochs[0] != list(range(50))  # shuffled at all


def test_one_seed_gives_the_same_batches_and_another_seed_others() -> None:
    assert orders(seed=42, first=0, epochs=3) == orders(seed=42, first=0, epochs=3)
    assert orders(seed=42, first=0, epochs=3) != orders(seed=43, first=0, epochs=3)


def test_a_resume_at_epoch_k_sees_what_an_uninterrupted_run_sees() -> None:
    assert orders(seed=7, first=2, epochs=5) == orders(seed=7, first=0, epochs=5)[2:]


@pytest.mark.parametrize(("n", "batch", "steps"), [(50, 8, 7), (48, 8, 6), (5, 8, 1)])
def test_the_last_batch_is_partial(n: int, batch: int, steps: int) -> None:
    assert steps_per_epoch(n, batch) == steps
    assert len(orders(seed=1, first=0, epochs=1, n=n, batch=batch)[0]) == n


def test_fit_trains_on_the_seeded_per_epoch_batches(
    mirror, processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fit` draws its batches here, keyed by `train.seed`, for every epoch it trains."""
    from digits.lib import training
    from digits.lib.config import parse_params

    calls = []

    def spy(*args: Any) -> Any:
        calls.append(args[2:])
        return epoch_batches(*args)

    monkeypatch.setattr(training, "epoch_batches", spy)
    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["model"]["type"] = "softmax"
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))
    _, history = training.fit(params.model, params.train, splits["train"], splits["val"], verbose=0)
    cfg = params.train
    assert calls == [(cfg.batch_size, cfg.seed, 0, cfg.epochs)]
    assert len(history) == cfg.epochs
