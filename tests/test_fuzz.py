"""Fuzzing the two parsers that read files from outside: the IDX parser (`digits.lib.idx`) and
`predict`'s input loader (images and `.npy`). Every generated input must give a result or the
project's own error (IdxError, InputError), never another exception. A few thousand inputs in
the everyday suite (a few seconds); ten times as many under `-m slow`."""

from __future__ import annotations

import gzip
import io
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from digits.lib.idx import IdxError, parse_idx, read_idx, read_labels
from digits.lib.images import InputError
from digits.lib.inputs import decode_rows

EVERYDAY = {"idx": 700, "idx_gz": 200, "image": 1000, "npy": 700}


def fuzz(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no .hypothesis/ folder in the project
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- IDX --------------------------------------------------------------------------------------

shape_sizes = st.one_of(st.integers(0, 6), st.sampled_from([2**16, 2**31, 2**32 - 1]))


@st.composite
def idx_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed IDX headers (right or wrong magic, type and rank; shapes small or
    absurd) followed by payloads of about the declared size, or a few of any bytes."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.binary(max_size=64))
    zero = draw(st.sampled_from([0, 0, 0, 1, 0xFFFF]))
    dtype = draw(st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0D]))
    dims = draw(st.integers(0, 5))
    shape = draw(st.lists(shape_sizes, min_size=dims, max_size=dims))
    header = struct.pack(">HBB", zero, dtype, dims) + struct.pack(f">{dims}I", *shape)
    header = header[: draw(st.integers(0, len(header)))] if draw(st.booleans()) else header
    size = int(np.prod(shape, dtype=object)) if shape else 0
    size = max(0, min(size, 300) + draw(st.integers(-2, 2)))
    return header + draw(st.binary(min_size=size, max_size=size))


def check_idx(data: bytes, ndim: int) -> None:
    try:
        array = parse_idx(data, ndim)
    except IdxError:
        return
    assert array.dtype == np.uint8 and array.ndim == ndim
    assert array.size == len(data) - 4 - 4 * ndim


def idx_property(data: bytes, ndim: int) -> None:
    check_idx(data, ndim)


test_idx_parser = fuzz(EVERYDAY["idx"])(given(idx_bytes(), st.sampled_from([1, 3]))(idx_property))
test_idx_parser_slow = pytest.mark.slow(
    fuzz(10 * EVERYDAY["idx"])(given(idx_bytes(), st.sampled_from([1, 3]))(idx_property))
)


@st.composite
def gz_bytes(draw: st.DrawFn) -> bytes:
    """Gzipped IDX bytes, cut short or with bytes flipped; or not gzip at all."""
    data = gzip.compress(draw(idx_bytes()))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def gz_property(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.gz"
        path.write_bytes(data)
        try:
            labels = read_labels(path)
        except IdxError:
            return
        assert labels.ndim == 1 and (labels < 10).all()
        assert read_idx(path, 1).shape == labels.shape


test_idx_gzip = fuzz(EVERYDAY["idx_gz"])(given(gz_bytes())(gz_property))


# --- predict's loader -------------------------------------------------------------------------


def encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    buf = io.BytesIO()
    img.convert(mode).save(buf, fmt)
    return buf.getvalue()


SEEDS = [
    encoded(fmt, mode, size, i)
    for i, (fmt, mode, size) in enumerate(
        [
            ("PNG", "L", (9, 7)),
            ("PNG", "RGBA", (5, 12)),
            ("PNG", "I;16", (6, 6)),
            ("PNG", "P", (8, 3)),
            ("PNG", "1", (10, 10)),
            ("JPEG", "L", (16, 8)),
            ("JPEG", "RGB", (8, 8)),
            ("BMP", "RGB", (4, 5)),
            ("BMP", "P", (7, 2)),
            ("TIFF", "L", (6, 9)),
            ("TIFF", "RGBA", (3, 3)),
            ("GIF", "P", (11, 4)),
            ("WEBP", "RGB", (8, 8)),
            ("WEBP", "RGBA", (5, 5)),
        ]
    )
]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """A small valid file of an accepted format, then cut, with bytes flipped or spliced in;
    or a known magic number followed by anything; or anything at all."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        magic = draw(
            st.sampled_from(
                [
                    b"\x89PNG\r\n\x1a\n",
                    b"\xff\xd8\xff",
                    b"BM",
                    b"II*\x00",
                    b"MM\x00*",
                    b"GIF89a",
                    b"RIFF\x10\x00\x00\x00WEBP",
                ]
            )
        )
        return magic + draw(st.binary(max_size=64))
    data = draw(st.sampled_from(SEEDS))
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at + 1 :]
    return data


def rows_of(data: bytes, name: str) -> np.ndarray:
    """The rows `predict` reads from a file of these bytes named `name`, all chunks together."""
    return np.concatenate([chunk.rows for chunk in decode_rows(data, name)])


def image_property(data: bytes) -> None:
    try:
        rows = rows_of(data, "image")
    except InputError:
        return
    assert rows.shape == (1, 784) and rows.dtype == np.float32
    assert np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 1


test_image_loader = fuzz(EVERYDAY["image"])(given(image_bytes())(image_property))
test_image_loader_slow = pytest.mark.slow(
    fuzz(10 * EVERYDAY["image"])(given(image_bytes())(image_property))
)


def npy_header(descr: str, fortran: bool, shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


@st.composite
def npy_bytes(draw: st.DrawFn) -> bytes:
    """`.npy` headers of any dtype and shape, honest or lying, and payloads near their size."""
    if draw(st.integers(0, 4)) == 0:
        return b"\x93NUMPY" + draw(st.binary(max_size=80))
    descr = draw(
        st.sampled_from(
            [
                "|u1",
                "<f4",
                ">f8",
                "|b1",
                "<i8",
                "<c8",
                "|O",
                "<U3",
                "<f2",
                "|V4",
                "[('a', '<i4')]",
                "nonsense",
            ]
        )
    )
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 28, 784, 10**12]), max_size=3)))
    header = npy_header(descr, draw(st.booleans()), shape)
    if draw(st.integers(0, 5)) == 0:
        header = header[: draw(st.integers(0, len(header)))]
    try:
        honest = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize
    except (TypeError, ValueError):
        honest = 8
    size = max(0, min(honest, 5000) + draw(st.sampled_from([0, 0, 0, -1, 1, -8])))
    values = draw(st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x7f", b"\x3c"]))
    return header + (values * size)[:size]


def npy_property(data: bytes) -> None:
    try:
        rows = rows_of(data, "batch.npy")
    except InputError:
        return
    assert rows.ndim == 2 and rows.shape[1] == 784 and rows.dtype == np.float32
    assert np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 1


test_npy_loader = fuzz(EVERYDAY["npy"])(given(npy_bytes())(npy_property))
test_npy_loader_slow = pytest.mark.slow(
    fuzz(10 * EVERYDAY["npy"])(given(npy_bytes())(npy_property))
)
