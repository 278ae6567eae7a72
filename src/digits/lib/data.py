"""The processed dataset on disk: one `.npz` per split, written by `preprocess`, read by training,
evaluation and the sweep (one loader for all of them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits.lib.files import atomic_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Features `x` (n, 784) float32 in [0, 1], one-hot `y` (n, 10) float32, and `index`, each
    row's position in its source IDX file (provenance: proves no test row leaks into train/val)."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Integer class labels."""
        return self.y.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.x)

    def __add__(self, other: Split) -> Split:
        """Both splits' rows, this one's first (a refit's training + validation images)."""
        return Split(
            x=np.concatenate([self.x, other.x]),
            y=np.concatenate([self.y, other.y]),
            index=np.concatenate([self.index, other.index]),
        )


def save_split(path: Path, split: Split) -> None:
    """Write a split atomically, uncompressed so it loads in a fraction of a second."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=split.x, y=split.y, index=split.index)


def load_split(path: Path) -> Split:
    """Read one split written by `save_split`."""
    with np.load(path) as npz:
        return Split(x=npz["x"], y=npz["y"], index=npz["index"])


def load_splits(folder: Path, names: tuple[str, ...] = SPLITS) -> dict[str, Split]:
    """Read the named splits from `folder`."""
    return {name: load_split(folder / f"{name}.npz") for name in names}


def file_digest(*paths: Path) -> str:
    """sha256 over the files' bytes, to tag a run with exactly the data it saw."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
