"""The training batches: every epoch in a fresh order, drawn from `train.seed` and the epoch.

Keras's own `fit(x, y, shuffle=True)` with a fixed seed repeats one permutation every epoch (its
seeded shuffle op restarts with each epoch's iterator), while SGD assumes a new one each time. Here
the order of epoch `e` is a stateless shuffle keyed by `(seed, e)`: a rerun sees the same batches,
and a resume at epoch `e` needs no saved state to see what an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf


def epoch_order(n: int, seed: int, epoch: int) -> tf.Tensor:
    """The permutation of `n` rows that epoch `epoch` (from 0) trains in."""
    import tensorflow as tf

    return tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch, the last one partial when `batch_size` does not divide `n`."""
    return math.ceil(n / batch_size)


def epoch_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """`(x, y)` batches for epochs `first_epoch` .. `epochs - 1`, each epoch in its own order;
    `fit` reads it with `steps_per_epoch`, so one iterator runs across the epochs."""
    import tensorflow as tf

    n = len(x)

    def batched(epoch: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, epoch)).batch(batch_size)

    def gather(rows: tf.Tensor, arrays: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        return tf.gather(arrays[0], rows), tf.gather(arrays[1], rows)

    indices = tf.data.Dataset.range(first_epoch, epochs).flat_map(batched)
    # the arrays enter as one repeated element, not as constants of the pipeline's graph (as
    # Keras's own array adapter does): a graph holding 150 MB of constants is slow to build
    arrays = tf.data.Dataset.from_tensors((x, y)).repeat()
    dataset = tf.data.Dataset.zip((indices, arrays)).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
