"""IDX parsing: round trips, and every defect named with its file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from digits.lib.idx import IdxError, encode_idx, read_images, read_labels, read_pair


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    plain = write(tmp_path / "img", encode_idx(images))
    gz = write(tmp_path / "img.gz", gzip.compress(encode_idx(images)))
    np.testing.assert_array_equal(read_images(plain), images)
    np.testing.assert_array_equal(read_images(gz), images)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x09\x03" + struct.pack(">3I", 1, 2, 2) + bytes(4), "bad magic number"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4), "has 1 dimension"),
        (encode_idx(np.zeros((3, 4, 4)))[:-5], "payload truncated"),
        (encode_idx(np.zeros((3, 4, 4))) + b"xx", "trailing bytes"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 0, 28, 28), "empty dimension"),
    ],
)
def test_malformed_images_are_named(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "bad-images", data)
    with pytest.raises(IdxError, match=message) as err:
        read_images(path)
    assert str(path) in str(err.value)


def test_labels_outside_0_to_9(tmp_path: Path) -> None:
    path = write(tmp_path / "labels", encode_idx(np.array([1, 2, 12, 3, 10])))
    with pytest.raises(IdxError, match=r"2 label\(s\) outside 0-9 \(first at index 2: 12\)"):
        read_labels(path)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    images = write(tmp_path / "images", encode_idx(np.zeros((5, 28, 28))))
    labels = write(tmp_path / "labels", encode_idx(np.zeros(4)))
    with pytest.raises(IdxError, match=r"5 images but .* 4 labels"):
        read_pair(images, labels)
