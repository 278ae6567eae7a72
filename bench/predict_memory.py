"""Peak memory of `predict` on a batch of 1,000 files of which 10 are hostile (issue 18).

The 990 ordinary files are digit photos and scans (PNG 400x300, JPEG 1000x800, .npy of 16
digits). The 10 hostile ones are the worst the `predict:` limits of params.yaml still let
through, and some they stop: three images just under `max_pixels` (RGBA PNG, 16-bit PNG, JPEG,
each 7,000 x 7,000 = 49 M pixels, decoded), a `.npy` just under `max_bytes` (121,000 digits),
a truncated 49 M pixel PNG, and, refused before decoding, a PNG header claiming 10^10 pixels, a
`.npy` header claiming (10^12, 784), a file over `max_bytes`, an animated GIF and an EPS file
named `.png`. The tool runs in a child process whose peak RSS (`ru_maxrss` from `wait4`) is
reported; the target is 2 GiB.

    python bench/predict_memory.py [--keep /tmp/batch]     # prints JSON
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2 * 2**30


def digit(
    d: int, canvas: tuple[int, int], size: int, ink: int = 0, paper: int = 255
) -> Image.Image:
    img = Image.new("L", canvas, paper)
    font = ImageFont.load_default(size=size)
    centre = (canvas[0] // 2, canvas[1] // 2)
    ImageDraw.Draw(img).text(
        centre, str(d), fill=ink, font=font, anchor="mm", stroke_width=size // 20
    )
    return img


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def build(folder: Path) -> list[Path]:
    """The 1,000 files, ordinary and hostile interleaved; returns their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ordinary: list[Path] = []
    for i in range(990):
        d = i % 10
        if i % 3 == 0:
            path = folder / f"photo{i:03d}.jpg"
            img = digit(d, (1000, 800), 500, ink=40, paper=200)
            noisy = np.asarray(img, np.float32) + rng.normal(0, 4, (800, 1000))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=85)
        elif i % 3 == 1:
            path = folder / f"scan{i:03d}.png"
            digit(d, (400, 300), 200).save(path)
        else:
            path = folder / f"digits{i:03d}.npy"
            np.save(path, rng.integers(0, 256, (16, 28, 28), dtype=np.uint8))
        ordinary.append(path)

    side = 7_000  # 49 M pixels: under predict.max_pixels (50 M)
    big = digit(7, (side, side), 5_000)
    hostile = {
        "near_cap_rgba.png": lambda p: big.convert("RGBA").save(p, compress_level=1),
        "near_cap_16bit.png": lambda p: Image.fromarray(np.asarray(big, np.uint16) * 257).save(
            p, compress_level=1
        ),
        "near_cap.jpg": lambda p: big.convert("RGB").save(p, quality=80),
        "near_cap.npy": lambda p: np.save(p, np.zeros((121_000, 784), np.uint8)),  # 94.9 MB
        "truncated_near_cap.png": lambda p: p.write_bytes(
            (folder / "near_cap_rgba.png").read_bytes()[:-20_000]  # its last 20 KB cut off
        ),
        "bomb.png": lambda p: p.write_bytes(bomb_png()),
        "lying_header.npy": lambda p: p.write_bytes(
            b"\x93NUMPY\x01\x00v\x00"
            + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 784), }".ljust(
                117
            )
            + b"\n"
            + b"\0" * 100
        ),
        "over_max_bytes.png": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 101_000_000),
        "animated.gif": lambda p: digit(1, (64, 64), 40).save(
            p, save_all=True, append_images=[digit(2, (64, 64), 40)]
        ),
        "eps_named.png": lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\nshowpage\n"),
    }
    paths = list(ordinary)
    for i, (name, make) in enumerate(hostile.items()):
        make(folder / name)
        paths.insert(50 + i * 95, folder / name)
    return paths


def model(folder: Path) -> Path:
    """An (untrained) MLP of params.yaml in `folder`, a project of its own, so no --trust-model."""
    import keras

    sys.path.insert(0, str(ROOT / "src"))
    from digits.lib.config import load_params
    from digits.lib.models import build_model

    params = load_params(ROOT / "params.yaml")
    (folder / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    keras.utils.set_random_seed(0)
    path = folder / "model.keras"
    build_model(params.model).save(path)
    return path


def measure(folder: Path) -> dict:
    """Build the batch in `folder`, run predict on it; peak RSS, lines, errors, seconds."""
    paths = build(folder / "batch")
    model_path = model(folder)
    cmd = [sys.executable, "-m", "digits.tools.predict", *map(str, paths)]
    cmd += ["--model", str(model_path), "--params", str(folder / "params.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().splitlines()
        errors = [e for e in err.read().decode().splitlines() if e.startswith("error: ")]
    return {
        "files": len(paths),
        "exit_code": proc.returncode,
        "prediction_lines": len(lines),
        "error_lines": errors,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),
        "target_gib": TARGET / 2**30,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the batch here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="predict-memory-"))
    try:
        print(json.dumps(measure(folder), indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
