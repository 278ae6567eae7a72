"""Predict the digit in image files or `.npy` batches with a trained model.

Images of any size, dark-on-light or light-on-dark, are normalised the way MNIST itself was
made (ink cropped, fitted into 20x20 keeping the aspect ratio, centred by centre of mass in
28x28, white on black, scaled to [0, 1]); `.npy` batches are taken to be MNIST-format already.
The model is a local Keras file or any MLflow model URI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from digits import PipelineError
from digits.lib.cli import stage_main

SIDE = 28  # MNIST images are 28x28 ...
BOX = 20  # ... with the ink fitted into a 20x20 box
CENTRE = 14.0  # where MNIST puts the centre of mass (row, column): 13.5-14.5 in the real data
INK = 0.2  # a pixel is ink above this fraction of the way from background to the darkest ink
MIN_CONTRAST = 0.1  # less than this between background and ink (0-1 scale): a blank image
DEFAULT_MODEL = "models/model.keras"
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # runs:/..., models:/..., s3://...; not C:\

Predictor = Callable[[np.ndarray], np.ndarray]


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


def load_image(path: str | Path) -> np.ndarray:
    """An image file as a 2-D float32 grayscale array in [0, 1] (0 = black), upright per its
    EXIF orientation, transparent parts composited on white."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.load()
    except UnidentifiedImageError:
        raise InputError("not an image (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"unreadable image ({type(err).__name__}: {err})") from None
    if img.mode.startswith("I"):  # 16-bit grayscale: convert("L") would clip, so scale
        return np.clip(np.asarray(img, dtype=np.float32) / 65535, 0, 1)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255


def npy_rows(array: np.ndarray) -> np.ndarray:
    """An MNIST-format array -> (n, 784) float32 in [0, 1], only reshaped and scaled.

    Shapes (n, 28, 28), (n, 784), (28, 28) or (784,); uint8 (or any integer) 0-255, float 0-1
    or bool."""
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
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InputError(f"integer pixels must be 0-255, found {low} to {high}")
        return array.astype(np.float32) / 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise InputError(
                f"float pixels must be in [0, 1], found {low:g} to {high:g} "
                "(save uint8 for 0-255 pixels)"
            )
        return array.astype(np.float32)
    raise InputError(f"unsupported dtype {array.dtype}: expected uint8 0-255 or float 0-1")


def read_npy(path: str | Path) -> np.ndarray:
    """The array in a `.npy` file, as stored (no pickles)."""
    path = Path(path)
    _check_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise InputError("not a .npy array (an .npz archive?)")
    return array


def _check_file(path: Path) -> None:
    """The defects every input can have, named before any format is tried."""
    if not path.exists():
        raise InputError("no such file")
    if path.is_dir():
        raise InputError("is a directory, not a file")
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")


def load_inputs(paths: Iterable[str | Path]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Every input as (name, 784-pixel row): one per image, one per row of an `.npy` batch
    (`batch.npy[3]`). Files that cannot be read become messages `path: defect` instead."""
    rows: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []
    for path in paths:
        name = str(path)
        try:
            if Path(path).suffix.lower() == ".npy":
                array = read_npy(path)
                batch = npy_rows(array)
                if array.shape in ((SIDE, SIDE), (SIDE * SIDE,)):
                    rows.append((name, batch[0]))  # a single digit: no index
                else:
                    rows += [(f"{name}[{i}]", row) for i, row in enumerate(batch)]
            else:
                rows.append((name, to_mnist(load_image(path)).reshape(-1)))
        except InputError as err:
            errors.append(f"{name}: {err}")
        except OSError as err:  # unreadable (permissions, I/O): name the reason
            errors.append(f"{name}: cannot read ({err.strerror or err})")
    return rows, errors


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


def load_predictor(model: str, params: Path = Path("params.yaml")) -> Predictor:
    """A function from (n, 784) float32 rows to (n, classes) probabilities.

    `model` is a Keras file, a folder holding an MLflow model (an `MLmodel` file), or an MLflow
    model URI, resolved against the tracking store the stages use: $MLFLOW_TRACKING_URI, else
    `mlflow.tracking_uri` of `params` anchored at the project root."""
    if is_model_uri(model):
        import mlflow

        from digits.lib.config import MLflowConfig, load_params
        from digits.lib.files import project_root
        from digits.lib.tracking import runs

        if params.exists() or not os.environ.get("MLFLOW_TRACKING_URI"):
            cfg = load_params(params).mlflow
        else:  # the environment names the store; no params.yaml needed
            cfg = MLflowConfig()
        uri = runs.tracking_uri(cfg, project_root(params))
        runs.check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        return _pyfunc_predictor(model, f"tracking store {uri}")
    check_model(model)
    path = Path(model)
    if path.is_dir() and (path / "MLmodel").exists():
        return _pyfunc_predictor(str(path), str(path))
    import keras

    try:
        keras_model = keras.saving.load_model(path)
    except (ValueError, OSError, TypeError) as err:
        raise PipelineError(f"{model}: cannot load as a Keras model ({err})") from None
    return lambda x: np.asarray(keras_model.predict(x, batch_size=1024, verbose=0))


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
    x = np.stack([row for _, row in rows]).astype(np.float32)
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
        "files", nargs="+", metavar="FILE", help="PNG/JPEG (any Pillow format) or .npy batch"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a .keras file or an MLflow model URI: runs:/<run_id>/model, models:/<name>@<alias>, "
        f"models:/<name>/<version> (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--top", type=int, default=3, help="how many probabilities to print (1-10, default 3)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="where the MLflow tracking store is configured (for model URIs)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 10:
        parser.error(f"--top must be between 1 and 10, got {args.top}")
    check_model(args.model)  # before reading any file or importing TensorFlow

    rows, errors = load_inputs(args.files)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if rows:
        for line in predict(load_predictor(args.model, args.params), rows, args.top):
            print(line)
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
