"""Reading and writing IDX files (the MNIST format), with every defect named.

Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, one
big-endian uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from digits import PipelineError

UBYTE = 0x08
NUM_CLASSES = 10


class IdxError(PipelineError, ValueError):
    """An IDX file is malformed; the message names the file and the defect."""


def _open(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise IdxError(f"{path}: corrupt gzip data ({type(err).__name__}: {err})") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file of `ndim` dimensions (plain or .gz)."""
    path = Path(path)
    return parse_idx(_open(path), ndim, path)


def parse_idx(data: bytes, ndim: int, path: str | Path = "<bytes>") -> np.ndarray:
    """Parse the bytes of an unsigned-byte IDX file of `ndim` dimensions; `path` names it in
    errors. The declared shape is checked against the payload before any array is made."""
    if len(data) < 4:
        raise IdxError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE:
        raise IdxError(
            f"{path}: bad magic number 0x{data[:4].hex()} (expected 0x0000080{ndim}, "
            "an unsigned-byte IDX file); is this an MNIST-format file?"
        )
    if dims != ndim:
        raise IdxError(f"{path}: has {dims} dimension(s), expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise IdxError(f"{path}: truncated header ({len(data)} bytes)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    if any(s == 0 for s in shape):
        raise IdxError(f"{path}: empty dimension in shape {shape}")
    expected = math.prod(shape)  # Python ints: a lying header cannot overflow it
    payload = len(data) - header
    if payload != expected:
        kind = "truncated" if payload < expected else "has trailing bytes"
        raise IdxError(
            f"{path}: payload {kind}: {payload} bytes for shape {shape} ({expected} expected)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_images(path: str | Path) -> np.ndarray:
    """Images as uint8 (n, rows, cols)."""
    return read_idx(path, ndim=3)


def read_labels(path: str | Path) -> np.ndarray:
    """Labels as uint8 (n,), each a digit 0-9."""
    labels = read_idx(path, ndim=1)
    bad = labels >= NUM_CLASSES
    if bad.any():
        first = int(np.argmax(bad))
        raise IdxError(
            f"{path}: {int(bad.sum())} label(s) outside 0-{NUM_CLASSES - 1} "
            f"(first at index {first}: {labels[first]})"
        )
    return labels


def read_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and their labels, checked to be the same count."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise IdxError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (used to write synthetic datasets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.tobytes()
