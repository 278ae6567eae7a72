"""Elastic distortion of training images (Simard, Steinkraus and Platt, 2003): each image moves
along its own smooth random displacement field, a uniform field in [-1, 1] per pixel and axis,
smoothed by a Gaussian of `sigma` pixels and scaled by `alpha`, then resampled bilinearly.

Keras's `RandomElasticTransform` (3.15) is not used: inside a traced model, where the batch size
is unknown, it draws one field for the whole batch, and its two axes share one seed, so they
move alike.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian out to 3 sigma."""
    t = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1, dtype=np.float32)
    kernel = np.exp(-(t**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def elastic(x: tf.Tensor, alpha: float, sigma: float, key: tf.Tensor) -> tf.Tensor:
    """Each flattened square image of `x` (n, side * side) under its own displacement field,
    drawn from the stateless `key`; black where a pixel reads from outside the image."""
    import tensorflow as tf

    side = math.isqrt(x.shape[-1])
    n = tf.shape(x)[0]
    field = tf.random.stateless_uniform((n, side, side, 2), key, -1.0, 1.0)
    kernel = tf.constant(gaussian_kernel(sigma))
    for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):  # separable: rows, then columns
        field = tf.nn.depthwise_conv2d(
            field, tf.tile(tf.reshape(kernel, shape), (1, 1, 2, 1)), (1, 1, 1, 1), "SAME"
        )
    grid = tf.range(side, dtype=tf.float32)
    rows = grid[:, None] + alpha * field[..., 0]  # where each output pixel reads from
    cols = grid[None, :] + alpha * field[..., 1]
    return tf.reshape(bilinear(tf.reshape(x, (n, side, side)), rows, cols), (n, side * side))


def bilinear(images: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """`images` (n, side, side) read at fractional `rows` and `cols` (n, side, side), black
    outside the image. (Keras's `map_coordinates` needs a static batch size, which an epoch's
    last, partial batch does not have.)"""
    import tensorflow as tf

    n, side = tf.shape(images)[0], tf.shape(images)[1]
    flat = tf.reshape(images, (-1,))
    image = tf.reshape(tf.range(n), (-1, 1, 1)) * side * side
    top, left = tf.floor(rows), tf.floor(cols)
    out = tf.zeros_like(rows)
    for r in (top, top + 1):
        for c in (left, left + 1):
            weight = (1 - tf.abs(rows - r)) * (1 - tf.abs(cols - c))
            inside = (r >= 0) & (r < tf.cast(side, tf.float32)) & (c >= 0)
            inside &= c < tf.cast(side, tf.float32)
            index = image + tf.cast(r, tf.int32) * side + tf.cast(c, tf.int32)
            pixel = tf.gather(flat, tf.where(inside, index, 0))
            out += tf.where(inside, pixel * weight, 0.0)
    return out
