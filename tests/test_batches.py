"""Every epoch trains in a fresh order, drawn from the seed and the epoch alone, and each epoch
sees every training row exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digits.lib.batches import epoch_batches, steps_per_epoch
from digits.lib.data import load_splits

from helpers import real_params, shrink


def orders(seed: int, epochs: range, n: int = 50, batch: int = 8) -> list[list[int]]:
    """The rows each epoch visits, in order (x holds each row's own index), iterating the
    dataset once per epoch after the callback's `on_epoch_begin`, as `fit` does."""
    x = np.arange(n, dtype=np.float32)[:, None]
    dataset, order = epoch_batches(x, np.zeros((n, 1), np.float32), batch, seed)
    visits = []
    for epoch in epochs:
        order.on_epoch_begin(epoch)
        batches = [xb.numpy()[:, 0].astype(int).tolist() for xb, _ in dataset]
        assert len(batches) == steps_per_epoch(n, batch)
        visits.append([row for b in batches for row in b])
    return visits


def test_each_epoch_is_a_new_permutation_of_every_row() -> None:
    epochs = orders(seed=42, epochs=range(4))
    assert all(sorted(order) == list(range(50)) for order in epochs)  # each row once an epoch
    assert len({tuple(order) for order in epochs}) == 4  # no epoch repeats another's order
    assert epochs[0] != list(range(50))  # shuffled at all


def test_one_seed_gives_the_same_batches_and_another_seed_others() -> None:
    assert orders(seed=42, epochs=range(3)) == orders(seed=42, epochs=range(3))
    assert orders(seed=42, epochs=range(3)) != orders(seed=43, epochs=range(3))


def test_a_resume_at_epoch_k_sees_what_an_uninterrupted_run_sees() -> None:
    assert orders(seed=7, epochs=range(2, 5)) == orders(seed=7, epochs=range(5))[2:]


@pytest.mark.parametrize(("n", "batch", "steps"), [(50, 8, 7), (48, 8, 6), (5, 8, 1)])
def test_the_last_batch_is_partial(n: int, batch: int, steps: int) -> None:
    assert steps_per_epoch(n, batch) == steps
    assert len(orders(seed=1, epochs=range(1), n=n, batch=batch)[0]) == n


def test_fit_sees_every_row_once_an_epoch_in_a_new_order(
    mirror, processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real `fit` (32 batches per TensorFlow call, which does not divide an epoch
    here): the rows that each epoch's iterator hands to the model, as it hands them."""
    import keras
    import tensorflow as tf

    from digits.lib import training
    from digits.lib.config import parse_params

    pulled: list[list[int]] = []

    def spy(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, elastic: Any) -> Any:
        assert elastic is None  # no distortion configured
        rows = np.arange(len(x), dtype=np.float32)[:, None]  # each row's index, as a feature
        dataset, order = epoch_batches(np.hstack([x, rows]), y, batch_size, seed)

        def record(indices: tf.Tensor) -> tf.Tensor:
            pulled[-1].extend(indices.numpy().astype(int).tolist())
            return indices

        def strip(xb: tf.Tensor, yb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            seen = tf.py_function(record, [xb[:, -1]], tf.float32)
            with tf.control_dependencies([seen]):
                return tf.identity(xb[:, :-1]), yb

        class Epochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                order.on_epoch_begin(epoch)
                pulled.append([])

        return dataset.map(strip), Epochs()

    monkeypatch.setattr(training, "epoch_batches", spy)
    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["model"]["type"] = "softmax"
    raw["train"].update(epochs=3, batch_size=8)  # 500 rows: 63 batches, 32 a call
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))
    _, history = training.fit(params.model, params.train, splits["train"], splits["val"], verbose=0)
    n = len(splits["train"])
    assert len(history) == 3 and len(pulled) == 3
    assert all(sorted(rows) == list(range(n)) for rows in pulled)  # each row once an epoch
    assert len({tuple(rows) for rows in pulled}) == 3  # each epoch in its own order


# --- elastic distortion (model.augment.elastic) -----------------------------------------------


def distorted(seed: int, epochs: range, n: int = 20, batch: int = 8) -> list[np.ndarray]:
    """Each epoch's distorted images, in order, of `n` copies of one thick stroke."""
    stroke = np.zeros((28, 28), np.float32)
    stroke[6:22, 12:16] = 1.0
    x = np.repeat(stroke.reshape(1, 784), n, axis=0)
    dataset, order = epoch_batches(x, np.zeros((n, 1), np.float32), batch, seed, (34.0, 4.0))
    seen = []
    for epoch in epochs:
        order.on_epoch_begin(epoch)
        seen.append(np.concatenate([xb.numpy() for xb, _ in dataset]))
    return seen


def test_elastic_distortion_moves_each_image_its_own_way_and_reruns_alike() -> None:
    first, second = distorted(seed=3, epochs=range(2))
    assert len({image.tobytes() for image in first}) == 20  # a field per image, not per batch
    assert not np.array_equal(first, second)  # new fields each epoch
    assert first.min() >= 0.0 and first.max() <= 1.0
    ink = 16 * 4
    assert np.all(np.abs(first.sum(axis=1) - ink) < 0.5 * ink)  # moved and stretched, not lost
    again = distorted(seed=3, epochs=range(2))
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)
    # a resume at epoch 1 distorts as the uninterrupted run did
    assert np.array_equal(distorted(seed=3, epochs=range(1, 2))[0], second)
    assert not np.array_equal(distorted(seed=4, epochs=range(1))[0], first)


def test_elastic_distortion_at_alpha_zero_is_the_identity() -> None:
    import tensorflow as tf

    from digits.lib.elastic import elastic

    x = tf.constant(np.random.default_rng(0).random((4, 784), np.float32))
    assert np.allclose(elastic(x, 0.0, 4.0, tf.constant([1, 2], tf.int64)).numpy(), x.numpy())


def test_fit_with_elastic_distortion_learns_and_repeats_per_seed(mirror, processed: Path) -> None:
    from digits.lib import training
    from digits.lib.config import parse_params
    from digits.lib.vocab import VAL_ACCURACY

    _, hashes = mirror
    raw = shrink(real_params(), hashes, ["x"])
    raw["model"].update(type="cnn", augment={"elastic": 20, "elastic_sigma": 4})
    raw["train"].update(epochs=3, patience=0, learning_rate=0.01)
    params = parse_params(raw)
    splits = load_splits(processed, ("train", "val"))

    def history(p: Any) -> Any:
        return training.fit(p.model, p.train, splits["train"], splits["val"], verbose=0)[1]

    first, again = history(params), history(params)
    plain = history(params.with_overrides({"model.augment.elastic": 0}))
    assert first.equals(again)  # the same seed distorts the same way
    assert not first.equals(plain)  # and the distortion reaches the model
    assert first[VAL_ACCURACY].iloc[-1] > 0.3  # it still learns (chance: 0.1)
