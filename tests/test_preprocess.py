"""Preprocessing invariants on synthetic IDX data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digits.lib.config import DataConfig, ParamsError
from digits.lib.data import load_splits
from digits.stages.preprocess import main, make_splits, one_hot, to_features

from helpers import synthetic_digits


def test_features_are_flat_float32_in_unit_range() -> None:
    images, _ = synthetic_digits(50, seed=0)
    x = to_features(images)
    assert x.shape == (50, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[3].reshape(28, 28) * 255, images[3], atol=1e-3)


def test_one_hot() -> None:
    y = one_hot(np.array([0, 3, 9]))
    assert y.shape == (3, 10) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(axis=1), 1)
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 3, 9])


def test_splits_sizes_stratification_and_no_leak() -> None:
    train, test = synthetic_digits(1000, seed=1), synthetic_digits(300, seed=2)
    splits = make_splits(train, test, DataConfig(val_size=200, seed=7))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [800, 200, 300]
    # train and val partition the training file; the test split is exactly the test file
    assert not set(splits["train"].index) & set(splits["val"].index)
    assert sorted([*splits["train"].index, *splits["val"].index]) == list(range(1000))
    np.testing.assert_array_equal(splits["test"].index, np.arange(300))
    np.testing.assert_array_equal(splits["test"].labels, test[1])
    # stratified: every class has its share of the validation set (20 of 200 each here)
    assert set(np.bincount(splits["val"].labels, minlength=10)) == {20}
    # seeded: the same seed gives the same split, another seed another
    again = make_splits(train, test, DataConfig(val_size=200, seed=7))
    other = make_splits(train, test, DataConfig(val_size=200, seed=8))
    np.testing.assert_array_equal(splits["val"].index, again["val"].index)
    assert not np.array_equal(splits["val"].index, other["val"].index)


def test_stage_writes_loadable_npz(tmp_path: Path, small_params, mirror) -> None:
    import yaml

    from digits.lib.config import parse_params
    from digits.lib.environment import Environment
    from digits.stages.download import download

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(small_params))
    download(parse_params(small_params).download, tmp_path / "raw", Environment())
    main(
        [
            "--params",
            str(params_file),
            "--raw",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "processed"),
        ]
    )
    splits = load_splits(tmp_path / "processed")
    assert [len(s) for s in splits.values()] == [500, 100, 200]
    assert all(s.x.shape[1] == 784 for s in splits.values())
    assert not list((tmp_path / "processed").glob(".*tmp*"))  # no temp files left behind


@pytest.mark.parametrize("val_size", [600, 595, 5, 10**6])
def test_val_size_is_checked_against_the_data(val_size: int) -> None:
    """600 training images of 10 classes: the validation part must leave 10 to each side."""
    train, test = synthetic_digits(600, seed=0), synthetic_digits(100, seed=1)
    with pytest.raises(ParamsError, match=rf"data.val_size: {val_size} does not fit .* 600 images"):
        make_splits(train, test, DataConfig(val_size=val_size, seed=1))
    assert len(make_splits(train, test, DataConfig(val_size=590, seed=1))["val"]) == 590
