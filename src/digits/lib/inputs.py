"""Files given to `predict`, read as hostile: each input becomes rows of 784 MNIST pixels with
the name to print for them, or one message that says why it cannot be read.

What a file is, `.npy` batch or image, is told by its bytes, not its name; nothing that is not
a regular file is opened; names are printed escaped, one line each, in any locale."""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits.lib.config import PredictConfig
from digits.lib.images import LIMITS, SIDE, InputError, decode_image, to_mnist

NPY_MAGIC = b"\x93NUMPY"
CHUNK = 4096  # rows converted, and predicted, at a time: memory stays flat whatever the batch
PIXELS = SIDE * SIDE
ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class Rows:
    """Rows read from one input: `rows[i]` (784 float32 pixels in [0, 1]) is `names[i]`'s."""

    names: list[str]
    rows: np.ndarray


@dataclass(frozen=True)
class Unreadable:
    """An input that cannot be predicted: its printable name and the defect."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def display_name(path: str | os.PathLike[str]) -> str:
    """A file name as one printable line: backslash escapes for control characters (newlines,
    terminal escapes, bidi overrides) and `\\xNN` for bytes that are not UTF-8 (which Python
    keeps as lone surrogates); other characters as they are."""
    out = []
    for char in os.fspath(path):
        code = ord(char)
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 name (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp"):
            out.append(_escape(code))
        else:
            out.append(char)
    return "".join(out)


def _escape(code: int) -> str:
    """A code point as Python writes it in a string literal: `\\x1b`, `\\u202e`, `\\U000e0001`."""
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _regular(path: str | Path) -> tuple[str, os.stat_result]:
    """The path to open (symlinks resolved) and its `lstat`, refusing before anything is opened
    what is not a regular file: opening a device or a FIFO can have side effects."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            path = os.path.realpath(path, strict=True)
            info = os.lstat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError("a symbolic link to nothing (dangling)") from None
        raise InputError("no such file") from None
    except PermissionError:
        raise InputError("permission denied (unreadable)") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError("a symbolic link loop") from None
        raise InputError(f"cannot open ({err.strerror or err})") from None
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise InputError("is a directory, not a file")
    if stat.S_ISFIFO(mode):
        raise InputError("is a FIFO (named pipe), not a regular file")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise InputError("is a device file, not a regular file")
    if not stat.S_ISREG(mode):
        raise InputError("is not a regular file (a socket?)")
    return str(path), info


def read_bytes(path: str | Path, limits: PredictConfig = LIMITS) -> bytes:
    """A file's bytes, refusing, before opening it, what is not a regular file (a folder, FIFO,
    device, socket, symlink loop) and, before reading, what is larger than `limits.max_bytes`.
    The file is opened without following links or waiting for a writer, and must be the one
    that was checked (a swap in between is refused)."""
    target, checked = _regular(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags)
    except PermissionError:
        raise InputError("permission denied (unreadable)") from None
    except OSError as err:
        raise InputError(f"changed while being opened ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (checked.st_dev, checked.st_ino) or not stat.S_ISREG(
            info.st_mode
        ):
            raise InputError("changed while being opened (replaced by another file)")
        return _read_all(fd, info.st_size, limits)
    except OSError as err:  # an I/O error while reading
        raise InputError(f"cannot read ({err.strerror or err})") from None
    finally:
        os.close(fd)


def _read_all(fd: int, size: int, limits: PredictConfig) -> bytes:
    """An open regular file's bytes, `size` long by its `fstat`, within `limits.max_bytes`."""
    if size == 0:
        raise InputError("empty file (0 bytes)")
    too_big = InputError(
        f"file too large: {size:,} bytes (limit predict.max_bytes = {limits.max_bytes:,})"
    )
    if size > limits.max_bytes:
        raise too_big
    # one read of the whole file (and one byte more, to notice it growing): a list of chunks
    # joined at the end would hold the file twice
    chunks = [os.read(fd, size + 1)]
    total = len(chunks[0])
    while total <= limits.max_bytes and (chunk := os.read(fd, limits.max_bytes + 1 - total)):
        chunks.append(chunk)  # only when the file grew, or a short read
        total += len(chunk)
    if total > limits.max_bytes:  # it grew while being read
        raise too_big
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_npy(data: bytes) -> np.ndarray:
    """A `.npy` file's bytes as its array (a read-only view), its header checked first: a
    version this reader knows, a plain numeric dtype (no objects, so no pickles), and a shape
    whose size is exactly the bytes that follow. Nothing is allocated from the header's word."""
    from numpy.lib import format as npy

    if data.startswith(b"PK"):
        raise InputError("not a .npy array (an .npz archive?)")
    if not data.startswith(NPY_MAGIC):
        raise InputError("not a readable .npy array (it does not start with NumPy's magic)")
    f = io.BytesIO(data)
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise InputError(f"not a readable .npy array (format version {version})")
    except InputError:
        raise
    except Exception as err:  # numpy's header parser: ValueError, SyntaxError...
        raise InputError(f"not a readable .npy array (bad header: {err})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputError(f"unsupported dtype {dtype}: expected uint8 0-255 or float 0-1")
    count = math.prod(shape)  # Python ints: no overflow, whatever the header claims
    if count == 0:  # checked first: (0, 10**12) holds no bytes but numpy cannot shape it
        raise InputError(f"empty batch: shape {shape} holds no pixels")
    payload = len(data) - f.tell()
    if count * dtype.itemsize != payload:
        raise InputError(
            f"not a readable .npy array: its header says shape {shape} of {dtype} "
            f"({count * dtype.itemsize:,} bytes) but {payload:,} bytes follow"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def check_npy(array: np.ndarray) -> np.ndarray:
    """An MNIST-format array checked (shape, dtype, range) and reshaped to (n, 784), without
    converting it: a view where the input allows one, so a big batch is converted in slices.

    Shapes (n, 28, 28), (n, 784), (28, 28) or (784,); uint8 (or any integer) 0-255, float 0-1
    or bool."""
    if array.shape in ((SIDE, SIDE), (PIXELS,)):
        array = array.reshape(1, PIXELS)
    elif array.ndim == 3 and array.shape[1:] == (SIDE, SIDE):
        array = array.reshape(len(array), PIXELS)
    if array.ndim != 2 or array.shape[1] != PIXELS:
        raise InputError(
            f"wrong shape {array.shape}: expected (n, 28, 28), (n, 784), (28, 28) or (784,)"
        )
    if len(array) == 0:
        raise InputError("empty batch: no rows")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InputError(f"integer pixels must be 0-255, found {low} to {high}")
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise InputError(
                f"float pixels must be in [0, 1], found {low:g} to {high:g} "
                "(save uint8 for 0-255 pixels)"
            )
        return array
    raise InputError(f"unsupported dtype {array.dtype}: expected uint8 0-255 or float 0-1")


def scale_rows(rows: np.ndarray) -> np.ndarray:
    """Rows checked by `check_npy` -> float32 in [0, 1]."""
    if np.issubdtype(rows.dtype, np.integer):
        return rows.astype(np.float32) / 255
    return rows.astype(np.float32)


def decode_rows(
    data: bytes, name: str, limits: PredictConfig = LIMITS, chunk: int = CHUNK
) -> Iterator[Rows]:
    """A file's bytes as chunks of at most `chunk` rows: one row for an image or a single digit,
    one per digit of an `.npy` batch (named `batch.npy[3]`). `.npy` when its bytes start with
    NumPy's magic or its name ends in `.npy`/`.npz`, else an image. Every check runs before
    the first chunk: InputError (naming the defect), or all the rows."""
    if data.startswith(NPY_MAGIC) or Path(name).suffix.lower() in (".npy", ".npz"):
        array = parse_npy(data)
        rows = check_npy(array)
        if array.shape in ((SIDE, SIDE), (PIXELS,)):
            yield Rows([name], scale_rows(rows))  # a single digit: no index
            return
        for start in range(0, len(rows), chunk):
            stop = min(start + chunk, len(rows))
            yield Rows([f"{name}[{i}]" for i in range(start, stop)], scale_rows(rows[start:stop]))
        return
    yield Rows([name], to_mnist(decode_image(data, limits)).reshape(1, -1))


def iter_rows(
    paths: Iterable[str | Path], limits: PredictConfig = LIMITS
) -> Iterator[Rows | Unreadable]:
    """Every input's rows (see `decode_rows`), named by `display_name`, or for an input that
    cannot be read one `Unreadable` in its place; then the next: one bad or hostile file never
    sinks the batch."""
    for path in paths:
        name = display_name(path)
        try:
            yield from decode_rows(read_bytes(path, limits), name, limits)
        except InputError as err:
            yield Unreadable(name, str(err))
        except MemoryError:
            yield Unreadable(name, "out of memory reading it")
        except Exception as err:  # a defect we did not foresee: still one line
            yield Unreadable(name, f"cannot read ({type(err).__name__}: {err})")
