"""Stage `preprocess`: IDX files -> flattened, scaled, one-hot, split `.npz` files.

The validation set is a seeded, stratified slice of the training file; the test file only ever
becomes the test split.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digits.lib.cli import stage_main
from digits.lib.config import DataConfig, ParamsError, load_params
from digits.lib.data import Split, save_split
from digits.lib.idx import NUM_CLASSES, IdxError, read_pair

log = logging.getLogger(__name__)


def to_features(images: np.ndarray) -> np.ndarray:
    """(n, rows, cols) uint8 -> (n, rows*cols) float32 in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels -> one-hot float32 rows."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val), val holding `val_size` rows in the classes' proportions.

    Raises ParamsError, naming `data.val_size` and the data's size, when the split is impossible:
    each part needs at least one row of every class present."""
    from sklearn.model_selection import train_test_split

    n, classes = len(labels), len(np.unique(labels))
    if not classes <= val_size <= n - classes:
        raise ParamsError(
            f"data.val_size: {val_size} does not fit the training file's {n} images of "
            f"{classes} classes: it must be between {classes} and {n - classes} (both parts "
            "need every class); lower it in params.yaml"
        )
    rows = np.arange(n)
    try:
        train_idx, val_idx = train_test_split(
            rows, test_size=val_size, random_state=seed, stratify=labels
        )
    except ValueError as err:  # e.g. a class with a single image cannot be stratified
        raise ParamsError(
            f"data.val_size: {val_size}: no stratified split possible ({err})"
        ) from None
    return np.sort(train_idx), np.sort(val_idx)


def make_splits(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], cfg: DataConfig
) -> dict[str, Split]:
    """The three splits from the (images, labels) of the training and test files."""
    (train_images, train_labels), (test_images, test_labels) = train, test
    train_idx, val_idx = stratified_split(train_labels, cfg.val_size, cfg.seed)

    def take(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Split:
        return Split(x=to_features(images[idx]), y=one_hot(labels[idx]), index=idx)

    return {
        "train": take(train_images, train_labels, train_idx),
        "val": take(train_images, train_labels, val_idx),
        "test": take(test_images, test_labels, np.arange(len(test_labels))),
    }


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.stages.preprocess --raw data/raw --out data/processed`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--raw", type=Path, required=True, help="folder of the four IDX files")
    parser.add_argument("--out", type=Path, required=True, help="folder for {train,val,test}.npz")
    args = parser.parse_args(argv)
    cfg = load_params(args.params).data

    train = read_pair(args.raw / "train-images-idx3-ubyte", args.raw / "train-labels-idx1-ubyte")
    test = read_pair(args.raw / "t10k-images-idx3-ubyte", args.raw / "t10k-labels-idx1-ubyte")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise IdxError(
            f"{args.raw}: train images are {train[0].shape[1:]} but test images "
            f"{test[0].shape[1:]}; both must come from the same dataset"
        )
    for name, split in make_splits(train, test, cfg).items():
        save_split(args.out / f"{name}.npz", split)
        log.info("%s: %d rows, %d features", name, len(split), split.x.shape[1])


if __name__ == "__main__":
    main()
