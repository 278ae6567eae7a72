"""The training batches: every epoch in a fresh order, drawn from `train.seed` and the epoch.

Keras's own `fit(x, y, shuffle=True)` with a fixed seed repeats one permutation every epoch (its
seeded shuffle op restarts with each epoch's iterator), while SGD assumes a new one each time. Here
the order of epoch `e` is a stateless shuffle keyed by `(seed, e)`: a rerun sees the same batches,
and a resume at epoch `e` needs no saved state to see what an uninterrupted run would have seen.

Keras starts a new iterator over the dataset each epoch, after the callbacks' `on_epoch_begin`:
`EpochOrder` sets the epoch there, and the dataset reads it as its iterator starts. (One iterator
running across the epochs would not do: Keras pulls `steps_per_execution` batches at a time, so
an epoch's last pull would reach into the next epoch's batches.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def epoch_order(n: int, seed: int, epoch: Any) -> tf.Tensor:
    """The permutation of `n` rows that epoch `epoch` (from 0) trains in."""
    import tensorflow as tf

    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch, the last one partial when `batch_size` does not divide `n`."""
    return math.ceil(n / batch_size)


def epoch_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    elastic: tuple[float, float] | None = None,
) -> tuple[tf.data.Dataset, keras.callbacks.Callback]:
    """One epoch of `(x, y)` batches in the order of the epoch that `EpochOrder`, the callback
    returned with it, last began; pass both to `fit`. With `elastic` (alpha, sigma), each image
    is distorted (`digits.lib.elastic`), its field keyed by the seed, the epoch and the batch:
    a resume sees the same distortions too."""
    import tensorflow as tf

    n = len(x)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)

    def batched(_: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, epoch)).batch(batch_size)

    def gather(rows: tf.Tensor, arrays: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        return tf.gather(arrays[0], rows), tf.gather(arrays[1], rows)

    def gather_distorted(
        numbered: tuple[tf.Tensor, tf.Tensor], arrays: tuple[tf.Tensor, tf.Tensor]
    ) -> tuple[tf.Tensor, ...]:
        from digits.lib.elastic import elastic as distort

        assert elastic is not None
        batch, rows = numbered
        # a key of each batch's own, not (seed, epoch) itself, which is the shuffle's
        key = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(seed, tf.int64), epoch]), batch
        )
        images, labels = gather(rows, arrays)
        return distort(images, *elastic, key), labels

    indices = tf.data.Dataset.range(1).flat_map(batched)
    # the arrays enter as one repeated element, not as constants of the pipeline's graph (as
    # Keras's own array adapter does): a graph holding 150 MB of constants is slow to build
    arrays = tf.data.Dataset.from_tensors((x, y)).repeat()
    if elastic is None:
        pairs = tf.data.Dataset.zip((indices, arrays)).map(
            gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    else:
        pairs = tf.data.Dataset.zip((indices.enumerate(), arrays)).map(
            gather_distorted, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    # a known length: Keras then counts an epoch's batches instead of running to the end
    dataset = pairs.apply(tf.data.experimental.assert_cardinality(steps_per_epoch(n, batch_size)))
    return dataset.prefetch(tf.data.AUTOTUNE), epoch_callback(epoch)


def epoch_callback(epoch: tf.Variable) -> keras.callbacks.Callback:
    """Sets `epoch` as each epoch begins, before Keras starts that epoch's iterator."""
    import keras

    class EpochOrder(keras.callbacks.Callback):
        def on_epoch_begin(self, index: int, logs: dict[str, Any] | None = None) -> None:
            epoch.assign(index)

    return EpochOrder()
