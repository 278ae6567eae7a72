"""Test-time shifts (`evaluate.shifts`): the views, the averaging, and the schema's limits."""

from __future__ import annotations

import numpy as np
import pytest

from digits.lib.config import ParamsError, parse_params
from digits.lib.shifts import offsets, shift_images, shifted

from helpers import real_params


def test_views_are_every_move_up_to_n_pixels_unshifted_first() -> None:
    assert offsets(0) == [(0, 0)]
    one = offsets(1)
    assert one[0] == (0, 0) and len(one) == len(set(one)) == 9
    assert set(one) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert len(set(offsets(2))) == 25 and max(max(map(abs, m)) for m in offsets(2)) == 2


@pytest.mark.parametrize("shape", [(2, 784), (2, 28, 28)])
def test_a_pixel_moves_and_black_comes_in_from_the_edge(shape) -> None:
    images = np.zeros((2, 28, 28), np.float32)
    images[0, 10, 10] = 1.0
    images[1, 0, 27] = 0.5  # on the top-right corner: moved up or right, it leaves the image
    x = images.reshape(shape)
    moved = shift_images(x, 2, -3)
    assert moved.shape == x.shape and moved.dtype == x.dtype
    moved = moved.reshape(2, 28, 28)
    assert moved[0, 12, 7] == 1.0 and moved[0].sum() == 1.0
    assert moved[1, 2, 24] == 0.5 and moved[1].sum() == 0.5
    gone = shift_images(x, -1, 1).reshape(2, 28, 28)
    assert gone[1].sum() == 0.0 and gone[0, 9, 11] == 1.0
    assert shift_images(x, 0, 0) is x
    assert x.reshape(2, 28, 28)[0, 10, 10] == 1.0  # the input is never changed


def test_probabilities_are_the_mean_over_the_views() -> None:
    def column(x: np.ndarray) -> np.ndarray:  # one-hot of the ink's column, 0-9
        cols = x.reshape(-1, 28, 28).max(axis=1).argmax(axis=1)
        return np.eye(10, dtype=np.float32)[np.clip(cols, 0, 9)]

    x = np.zeros((1, 784), np.float32)
    x.reshape(28, 28)[14, 5] = 1.0
    assert shifted(column, 0) is column
    p = shifted(column, 1)(x)
    # three of the nine views each see the ink in column 4, 5 and 6
    assert p.dtype == np.float32 and p.shape == (1, 10)
    np.testing.assert_allclose(p[0], [0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0], atol=1e-7)


def test_a_model_that_only_knows_centred_digits_recovers_moved_ones() -> None:
    rng = np.random.default_rng(0)
    templates = np.zeros((10, 28, 28), np.float32)
    templates[:, 4:24, 4:24] = rng.random((10, 20, 20)) < 0.1  # ten random 20x20 "digits"

    def matcher(x: np.ndarray) -> np.ndarray:  # softmax over overlap with each template
        # /10: sure where an image overlaps a template (~40 pixels), unsure off it (~4)
        overlap = x.reshape(-1, 784) @ templates.reshape(10, 784).T / 10
        e = np.exp(overlap - overlap.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    labels = np.repeat(np.arange(10), 3)
    moves = [(1, -1), (-1, 0), (0, 1)]
    x = np.stack([shift_images(templates[d], *moves[i % 3]) for i, d in enumerate(labels)])
    plain = (matcher(x).argmax(axis=1) == labels).mean()
    assert plain < 0.5, plain
    assert (shifted(matcher, 1)(x).argmax(axis=1) == labels).mean() == 1.0


@pytest.mark.parametrize("value", [-1, 3, 1.5, "yes"])
def test_shifts_outside_0_to_2_pixels_are_a_params_error(value) -> None:
    raw = real_params()
    raw["evaluate"] = {"shifts": value}
    with pytest.raises(ParamsError, match=r"evaluate\.shifts: Input should be"):
        parse_params(raw)
