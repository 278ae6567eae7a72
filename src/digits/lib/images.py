"""Images of digits as MNIST digits: decoding a file's bytes (only allow-listed formats, told
by their first bytes, with the pixel count checked before decoding) and normalising the way
MNIST itself was made (ink cropped, fitted into 20x20 keeping the aspect ratio, centred by
centre of mass in 28x28, white on black, scaled to [0, 1])."""

from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from digits import PipelineError
from digits.lib.config import PredictConfig

if TYPE_CHECKING:
    from PIL import Image

SIDE = 28  # MNIST images are 28x28 ...
BOX = 20  # ... with the ink fitted into a 20x20 box
CENTRE = 14.0  # where MNIST puts the centre of mass (row, column): 13.5-14.5 in the real data
INK = 0.2  # a pixel is ink above this fraction of the way from background to the darkest ink
MIN_CONTRAST = 0.1  # less than this between background and ink (0-1 scale): a blank image
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
WORK_PIXELS = 4_000_000  # larger images are box-reduced to about this before becoming floats


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
    from PIL import Image

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
                gray, scale = _grayscale(opened, fmt, limits)
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


def _grayscale(opened: Image.Image, fmt: str, limits: PredictConfig) -> tuple[Image.Image, float]:
    """An opened image, its size checked before decoding, decoded upright, reduced to about
    `WORK_PIXELS`, transparent parts on white, as grayscale; and the value of white in it."""
    from PIL import Image, ImageOps

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
    # Memory: a big image is reduced to about WORK_PIXELS as early as it can be, a JPEG while
    # it is decoded (DCT scaling), others right after, before any copy
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
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    return (img if img.mode == "I" else img.convert("L")), scale


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
