"""Predict the digit in image files or `.npy` batches with a trained model.

Images of any size, dark-on-light or light-on-dark, are normalised the way MNIST itself was
made (ink cropped, fitted into 20x20 keeping the aspect ratio, centred by centre of mass in
28x28, white on black, scaled to [0, 1]); `.npy` batches are taken to be MNIST-format already.
The model is a local Keras file or any MLflow model URI.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import re
import stat
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digits import PipelineError
from digits.lib.cli import stage_main
from digits.lib.config import PredictConfig
from digits.lib.shifts import Predictor, describe, keras_predictor, shifted

if TYPE_CHECKING:
    from PIL import Image

SIDE = 28  # MNIST images are 28x28 ...
BOX = 20  # ... with the ink fitted into a 20x20 box
CENTRE = 14.0  # where MNIST puts the centre of mass (row, column): 13.5-14.5 in the real data
INK = 0.2  # a pixel is ink above this fraction of the way from background to the darkest ink
MIN_CONTRAST = 0.1  # less than this between background and ink (0-1 scale): a blank image
DEFAULT_MODEL = "models/model.keras"
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:/..., models:/..., s3://...; not C:\
LIMITS = PredictConfig()  # params.yaml's `predict:` (the schema's defaults are its values)
# The formats a digit photo or scan comes in, told by their first bytes. Everything else
# (EPS, which Pillow hands to Ghostscript; PSD, ICO, PCX, ...) is refused before any decoder
IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}
ACCEPTED = ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WebP")
NPY_MAGIC = b"\x93NUMPY"
WORK_PIXELS = 4_000_000  # larger images are box-reduced to about this before becoming floats
CHUNK = 4096  # rows converted, and predicted, at a time: memory stays flat whatever the batch


class InputError(PipelineError, ValueError):
    """One input file cannot be predicted; the message names the defect (not the file)."""


def to_mnist(image: np.ndarray) -> np.ndarray:
    """A grayscale image (2-D; integers 0-255 or floats 0-1, 0 = black) -> a 28x28 float32
    MNIST digit: white ink on black, ink fitted into 20x20, centre of mass at the centre.

    The background is the border's median; it is inverted when light. The border's spread sets
    a noise floor, so paper texture and JPEG artefacts do not count as ink."""
    from PIL import Image
    from scipy import ndimage

    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"expected a 2-D grayscale image, got shape {image.shape}")
    a = image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        a /= 255
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    if np.median(border) > 0.5:  # light background: dark ink, invert to MNIST's white on black
        a, border = 1 - a, 1 - border
    background = float(np.median(border))
    spread = 1.4826 * float(np.median(np.abs(border - background)))  # robust std of the border
    floor = background + 3 * spread
    peak = float(a.max())
    if peak - floor < MIN_CONTRAST:
        raise InputError("no ink: a blank image (nothing stands out from the background)")
    a = np.clip((a - floor) / (peak - floor), 0, 1)

    rows, cols = np.flatnonzero((a > INK).any(axis=1)), np.flatnonzero((a > INK).any(axis=0))
    a = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX / max(a.shape)
    height, width = (max(1, round(n * scale)) for n in a.shape)
    small = Image.fromarray(np.ascontiguousarray(a)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    digit = np.clip(np.asarray(small, dtype=np.float32), 0, 1)
    if digit.max() <= 0:
        raise InputError("no ink left after shrinking the digit to 20x20")
    digit /= digit.max()  # a thin stroke shrunk from a big image is faint; MNIST ink peaks at 1

    cy, cx = ndimage.center_of_mass(digit)
    top = int(np.clip(np.floor(CENTRE - cy + 0.5), 0, SIDE - height))
    left = int(np.clip(np.floor(CENTRE - cx + 0.5), 0, SIDE - width))
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = digit
    return canvas


def read_bytes(path: str | Path, limits: PredictConfig = LIMITS) -> bytes:
    """A file's bytes, refusing, before reading anything, what is not a regular file (a folder,
    FIFO, device, socket, symlink loop) or is larger than `limits.max_bytes`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY  # a FIFO opens without waiting for a writer
    try:
        fd = os.open(path, flags)
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
    try:
        info = os.fstat(fd)  # of what was opened: no swap between a check and the read
        if stat.S_ISDIR(info.st_mode):
            raise InputError("is a directory, not a file")
        if stat.S_ISFIFO(info.st_mode):
            raise InputError("is a FIFO (named pipe), not a regular file")
        if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            raise InputError("is a device file, not a regular file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError("is not a regular file (a socket?)")
        if info.st_size == 0:
            raise InputError("empty file (0 bytes)")
        too_big = InputError(
            f"file too large: {info.st_size:,} bytes (limit predict.max_bytes = "
            f"{limits.max_bytes:,})"
        )
        if info.st_size > limits.max_bytes:
            raise too_big
        # one read of the whole file (and one byte more, to notice it growing): a list of
        # chunks joined at the end would hold the file twice
        chunks = [os.read(fd, info.st_size + 1)]
        size = len(chunks[0])
        while size <= limits.max_bytes and (chunk := os.read(fd, limits.max_bytes + 1 - size)):
            chunks.append(chunk)  # only when the file grew, or a short read
            size += len(chunk)
        if size > limits.max_bytes:  # it grew while being read
            raise too_big
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as err:  # an I/O error while reading
        raise InputError(f"cannot read ({err.strerror or err})") from None
    finally:
        os.close(fd)


def image_format(data: bytes) -> str | None:
    """The format of an image by its first bytes, if it is on the allow-list, else None."""
    if data[8:12] == b"WEBP" and data[:4] == b"RIFF":
        return "WEBP"
    return next((fmt for magic, fmt in IMAGE_MAGIC.items() if data.startswith(magic)), None)


def decode_image(data: bytes, limits: PredictConfig = LIMITS) -> np.ndarray:
    """An image file's bytes as a 2-D float32 grayscale array in [0, 1] (0 = black), upright per
    its EXIF orientation, transparent parts composited on white.

    Only the allow-listed formats, told by their first bytes (never the file's name), reach a
    decoder, and only that format's; the pixel count is checked from the header before
    anything is decoded; a multi-frame file (animation, multi-page TIFF) is refused rather
    than read by its first frame; an image above `WORK_PIXELS` is box-reduced before it is
    turned into floats (MNIST keeps 20x20 of it)."""
    from PIL import Image, ImageOps

    fmt = image_format(data)
    if fmt is None:
        raise InputError(
            f"not an image in an accepted format ({', '.join(ACCEPTED)}), judged by its first bytes"
        )
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow's own bomb check (89-179 M pixels) is replaced by ours, which names the limit
        # and runs at the same point: on the header, before any pixel is decoded
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the image still reads
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as opened:
                width, height = opened.size
                if width * height > limits.max_pixels:
                    raise InputError(
                        f"image too large: {width} x {height} = {width * height:,} pixels "
                        f"(limit predict.max_pixels = {limits.max_pixels:,})"
                    )
                if getattr(opened, "is_animated", False):
                    raise InputError(
                        f"a {fmt} with several frames (an animation or a multi-page file): "
                        "predict reads one image per file; save the frame you mean on its own"
                    )
                # Memory: a big image is reduced to about WORK_PIXELS as early as it can be, a
                # JPEG while it is decoded (DCT scaling), others right after, before any copy
                factor = math.ceil(math.sqrt(width * height / WORK_PIXELS))
                if fmt == "JPEG" and factor > 1:
                    opened.draft("L", (-(-width // factor), -(-height // factor)))
                img = ImageOps.exif_transpose(opened)
                img.load()
                img, scale = _reducible(img)
                factor = math.ceil(math.sqrt(img.width * img.height / WORK_PIXELS))
                if factor > 1:
                    img = img.reduce(factor)
                if img.mode in ("RGBA", "LA"):  # transparent parts on white
                    img = Image.alpha_composite(
                        Image.new("RGBA", img.size, "white"), img.convert("RGBA")
                    )
                gray = img if img.mode == "I" else img.convert("L")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"image too large ({err})") from None
    except MemoryError:
        raise InputError("out of memory decoding the image") from None
    except Exception as err:  # Pillow's decoders raise many types on bad data
        raise InputError(f"unreadable image ({type(err).__name__}: {err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    return np.clip(np.asarray(gray, dtype=np.float32) / scale, 0, 1)


def _reducible(img: Image.Image) -> tuple[Image.Image, float]:
    """The image in a mode `Image.reduce` takes, and the value of white in it: 16- and 32-bit
    grayscale as "I" (white 65535: "L" would clip), palette and 1-bit as "L", or "RGBA" when
    they have transparency."""
    if img.mode.startswith("I"):
        return (img if img.mode == "I" else img.convert("I")), 65535.0
    if img.mode in ("P", "PA", "1"):
        return img.convert("RGBA" if img.has_transparency_data else "L"), 255.0
    if img.mode not in ("RGBA", "LA") and img.has_transparency_data:  # e.g. RGB with tRNS
        return img.convert("RGBA"), 255.0
    return img, 255.0


def load_image(path: str | Path, limits: PredictConfig = LIMITS) -> np.ndarray:
    """An image file as a 2-D float32 grayscale array in [0, 1] (see `decode_image`)."""
    return decode_image(read_bytes(path, limits), limits)


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


def npy_rows(array: np.ndarray) -> np.ndarray:
    """An MNIST-format array -> (n, 784) float32 in [0, 1], only reshaped and scaled.

    Shapes (n, 28, 28), (n, 784), (28, 28) or (784,); uint8 (or any integer) 0-255, float 0-1
    or bool."""
    return scale_rows(check_npy(array))


def scale_rows(rows: np.ndarray) -> np.ndarray:
    """Rows checked by `check_npy` -> float32 in [0, 1]."""
    if np.issubdtype(rows.dtype, np.integer):
        return rows.astype(np.float32) / 255
    return rows.astype(np.float32)


def check_npy(array: np.ndarray) -> np.ndarray:
    """An MNIST-format array checked (shape, dtype, range) and reshaped to (n, 784), without
    converting it: a view where the input allows one, so a big batch is converted in slices."""
    pixels = SIDE * SIDE
    if array.shape in ((SIDE, SIDE), (pixels,)):
        array = array.reshape(1, pixels)
    elif array.ndim == 3 and array.shape[1:] == (SIDE, SIDE):
        array = array.reshape(len(array), pixels)
    if array.ndim != 2 or array.shape[1] != pixels:
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


def read_npy(path: str | Path, limits: PredictConfig = LIMITS) -> np.ndarray:
    """The array in a `.npy` file, as stored (no pickles; see `parse_npy`)."""
    return parse_npy(read_bytes(path, limits))


def load_chunks(
    path: str | Path, limits: PredictConfig = LIMITS, chunk: int = CHUNK
) -> Iterator[tuple[list[str], np.ndarray]]:
    """One input file as (names, rows) chunks of at most `chunk` 784-pixel float32 rows: one
    row for an image or a single digit, one per digit of an `.npy` batch (`batch.npy[3]`).
    What the file is, `.npy` or an image, is told by its bytes, not its name. Every check runs
    before the first chunk: a file raises InputError (naming the defect) or yields all its
    rows, and a big batch is converted to floats one chunk at a time."""
    name = str(path)
    data = read_bytes(path, limits)
    if data.startswith(NPY_MAGIC) or Path(path).suffix.lower() in (".npy", ".npz"):
        array = parse_npy(data)
        rows = check_npy(array)
        if array.shape in ((SIDE, SIDE), (SIDE * SIDE,)):
            yield [name], scale_rows(rows)  # a single digit: no index
            return
        for start in range(0, len(rows), chunk):
            stop = min(start + chunk, len(rows))
            yield [f"{name}[{i}]" for i in range(start, stop)], scale_rows(rows[start:stop])
        return
    yield [name], to_mnist(decode_image(data, limits)).reshape(1, -1)


def load_file(path: str | Path, limits: PredictConfig = LIMITS) -> list[tuple[str, np.ndarray]]:
    """One input file as (name, 784-pixel row) pairs (see `load_chunks`)."""
    return [
        (name, row)
        for names, rows in load_chunks(path, limits)
        for name, row in zip(names, rows, strict=True)
    ]


def load_inputs(
    paths: Iterable[str | Path], limits: PredictConfig = LIMITS
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Every input as (name, 784-pixel row) (see `load_file`). A file that cannot be read
    becomes a message `path: defect` instead, and the others are still read: one bad or
    hostile file never sinks the batch."""
    rows: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []
    for item in read_inputs(paths, limits):
        if isinstance(item, str):
            errors.append(item)
        else:
            rows += zip(*item, strict=True)
    return rows, errors


def read_inputs(
    paths: Iterable[str | Path], limits: PredictConfig = LIMITS
) -> Iterator[tuple[list[str], np.ndarray] | str]:
    """Every file's (names, rows) chunks (see `load_chunks`), or for a file that cannot be
    read, one message `path: defect` in its place; then the next file."""
    for path in paths:
        try:
            yield from load_chunks(path, limits)
        except InputError as err:
            yield f"{path}: {err}"
        except MemoryError:
            yield f"{path}: out of memory reading it"
        except Exception as err:  # a defect we did not foresee: still one line
            yield f"{path}: cannot read ({type(err).__name__}: {err})"


def top_k(probabilities: np.ndarray, k: int = 3) -> list[list[tuple[int, float]]]:
    """Per row, the `k` most probable classes as (label, probability), most probable first
    (ties: the lower label first)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [(int(c), float(p[c])) for c in row] for p, row in zip(probabilities, order, strict=True)
    ]


def format_line(name: str, ranked: Sequence[tuple[int, float]]) -> str:
    """`seven.png: 7  (7: 0.982, 1: 0.011, 9: 0.004)`."""
    scores = ", ".join(f"{label}: {p:.3f}" for label, p in ranked)
    return f"{name}: {ranked[0][0]}  ({scores})"


def is_model_uri(model: str) -> bool:
    """True for an MLflow model URI (`runs:/...`, `models:/...`, `s3://...`), False for a path."""
    return bool(URI.match(model))


def check_model(model: str) -> None:
    """Fail early, with the way out, when `model` is a path to nothing (URIs are not checked)."""
    if not is_model_uri(model) and not Path(model).exists():
        raise PipelineError(
            f"{model}: no such model file. Train one with `make repro`, or pass --model with a "
            ".keras file or an MLflow model URI (runs:/<run_id>/model, models:/<name>@<alias>)"
        )


def project_root(params: Path) -> Path:
    """The project's root, whose models are trusted: $DVC_ROOT, else the folder of params.yaml
    (as `digits.lib.tracking.project_root`, without importing MLflow)."""
    return Path(os.environ.get("DVC_ROOT") or params.resolve().parent)


def untrusted_reason(model: str, root: Path) -> str | None:
    """Why `model` is not the project's own (None when it is): the project's own are a `.keras`
    file inside the project `root` and `runs:/` or `models:/` URIs of the project's tracking
    store. Anything else may carry code that runs when it is loaded."""
    if is_model_uri(model):
        scheme, _, rest = model.partition(":")
        if scheme.lower() in ("runs", "models") and not rest.startswith("//"):
            return None  # resolved against the project's tracking store
        return "a model URI outside the project's tracking store and registry"
    path = Path(model).resolve()  # symlinks followed: a link in the project to outside is outside
    if path.is_dir():
        return "a folder (an MLflow model, loaded through pyfunc)"
    if not path.is_relative_to(root.resolve()):
        return f"a file outside the project ({root})"
    return None


def check_trust(model: str, root: Path, trust: bool) -> None:
    """Refuse a model from outside the project's own store unless the user said --trust-model."""
    reason = untrusted_reason(model, root)
    if reason and not trust:
        raise PipelineError(
            f"{model}: refused: {reason}. Loading a model can run code it carries (MLflow's "
            "pyfunc imports modules and unpickles objects; a Keras Lambda layer holds Python "
            "bytecode). Pass --trust-model (make predict TRUST=1) if you trust whoever made "
            "it, or use the project's own: models/model.keras, runs:/<id>/model, "
            "models:/<name>@<alias>"
        )


def load_keras(path: Path, trust: bool = False) -> Predictor:
    """A `.keras` file's predict; `safe_mode` stays on (no deserialised code, e.g. Lambda
    layers) unless the model is trusted."""
    import keras

    try:
        keras_model = keras.saving.load_model(path, safe_mode=not trust)
    except (ValueError, OSError, TypeError) as err:
        if not trust and ("safe_mode" in str(err) or "Lambda" in str(err)):
            raise PipelineError(
                f"{path}: refused: the model holds Python code (a Lambda layer, or another "
                "object Keras will only deserialise with safe_mode off), which would run "
                "on loading. If you trust whoever made it, pass --trust-model (make predict "
                "TRUST=1); otherwise ask for a model without Lambda layers"
            ) from None
        raise PipelineError(f"{path}: cannot load as a Keras model ({err})") from None
    return keras_predictor(keras_model)


def load_predictor(
    model: str, params: Path = Path("params.yaml"), trust: bool = False
) -> Predictor:
    """A function from (n, 784) float32 rows to (n, classes) probabilities.

    `model` is a Keras file, a folder holding an MLflow model (an `MLmodel` file), or an MLflow
    model URI, resolved against the tracking store the stages use: $MLFLOW_TRACKING_URI, else
    `mlflow.tracking_uri` of `params` anchored at the project root. The caller checks trust
    (`check_trust`); `trust` turns Keras's safe mode off."""
    if is_model_uri(model):
        import mlflow

        from digits.lib.config import MLflowConfig, load_params
        from digits.lib.environment import Environment
        from digits.lib.tracking.store import check_reachable, tracking_uri

        env = Environment.read()
        if params.exists() or not env.tracking_uri:
            cfg = load_params(params).mlflow
        else:  # the environment names the store; no params.yaml needed
            cfg = MLflowConfig()
        uri = tracking_uri(cfg, env.project_root(params), env)
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        return _pyfunc_predictor(model, f"tracking store {uri}")
    check_model(model)
    path = Path(model)
    if path.is_dir() and (path / "MLmodel").exists():
        return _pyfunc_predictor(str(path), str(path))
    return load_keras(path, trust)


def _pyfunc_predictor(model_uri: str, where: str) -> Predictor:
    """An MLflow pyfunc model's predict, its output (array or DataFrame) as a numpy array."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with contextlib.redirect_stdout(sys.stderr):
            pyfunc = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        message = getattr(err, "message", None) or str(err)
        raise PipelineError(
            f"{model_uri}: cannot load the model from {where} ({message})"
        ) from None

    def predict(x: np.ndarray) -> np.ndarray:
        with contextlib.redirect_stdout(sys.stderr):  # e.g. Keras' progress bar: stdout is ours
            output = pyfunc.predict(x)
        return np.asarray(output.to_numpy() if hasattr(output, "to_numpy") else output)

    return predict


def predict(predictor: Predictor, rows: Sequence[tuple[str, np.ndarray]], k: int) -> list[str]:
    """One output line per input row: its name, predicted label and top-`k` probabilities."""
    x = np.stack([row for _, row in rows]).astype(np.float32, copy=False)
    probabilities = np.asarray(predictor(x), dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(rows):
        raise PipelineError(
            f"the model returned shape {probabilities.shape} for {len(rows)} inputs; "
            "expected (n, 10) class probabilities"
        )
    return [
        format_line(name, r) for (name, _), r in zip(rows, top_k(probabilities, k), strict=True)
    ]


@stage_main
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: `python -m digits.tools.predict FILE... [--model PATH_OR_URI] [--top 3]`; exits 1 when
    any file could not be predicted (each named on stderr), 2 on usage errors."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Example: python -m digits.tools.predict seven.png scan.jpg batch.npy "
        "--model models:/mnist-digits@champion",
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="an image (PNG, JPEG, BMP, TIFF, GIF or WebP, told by its bytes) or a .npy batch",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a .keras file or an MLflow model URI: runs:/<run_id>/model, models:/<name>@<alias>, "
        f"models:/<name>/<version> (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="load a model from outside the project's own store (a folder, a .keras file "
        "elsewhere, another server's URI) and with Keras's safe mode off: loading can run "
        "code the model carries (pyfunc imports modules and unpickles objects), so only for "
        "a model whose maker you trust",
    )
    parser.add_argument(
        "--top", type=int, default=3, help="how many probabilities to print (1-10, default 3)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="where the MLflow tracking store, the `predict:` limits and `evaluate.shifts` (the "
        "test-time shifts evaluate scored the model with) are configured",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top must be between 1 and 10, got {args.top}")
    # before reading any file or importing TensorFlow
    check_model(args.model)
    check_trust(args.model, project_root(args.params), args.trust_model)
    from digits.lib.config import load_params

    params = load_params(args.params) if args.params.exists() else None
    limits = params.predict if params else LIMITS
    shifts = params.evaluate.shifts if params else 0
    if shifts:
        print(describe(shifts), file=sys.stderr)

    # Streamed: files are read, and their rows predicted, CHUNK rows at a time, so memory
    # stays flat however many files or rows there are; the model loads with the first rows
    predictor: Predictor | None = None
    pending: list[tuple[str, np.ndarray]] = []
    failed = False

    def flush() -> None:
        nonlocal predictor
        if pending:
            predictor = predictor or shifted(
                load_predictor(args.model, args.params, args.trust_model), shifts
            )
            for line in predict(predictor, pending, args.top):
                print(line)
            pending.clear()

    for item in read_inputs(args.files, limits):
        if isinstance(item, str):
            print(f"error: {item}", file=sys.stderr)
            failed = True
            continue
        pending += zip(*item, strict=True)
        if len(pending) >= CHUNK:
            flush()
    flush()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
