"""`digits.tools.predict`: MNIST's own normalisation of arbitrary images, `.npy` batches, per-file
errors, and predictions from a local Keras file and from MLflow model URIs.

The test digits are the font's glyphs 0-9 drawn with Pillow: a model trained on their MNIST
forms (from small, varied renderings) must read big, off-centre, inverted, JPEG and transparent
renderings of them, which only works if the preprocessing does its job."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from digits.lib.config import IDX_KINDS, PredictConfig
from digits.lib.images import LIMITS, InputError, decode_image, to_mnist
from digits.lib.inputs import Rows, Unreadable, decode_rows, iter_rows
from digits.lib.predictions import top_k
from digits.tools.predict import main

from helpers import ROOT, fresh_store

LINE = re.compile(r"^(?P<name>.+): (?P<label>\d)  \((?P<scores>.+)\)$")


def glyph(
    digit: int | str,
    size: int = 80,
    stroke: int = 0,
    angle: float = 0.0,
    canvas: tuple[int, int] = (160, 160),
    centre: tuple[int, int] | None = None,
) -> np.ndarray:
    """`digit` in Pillow's default font, white on black, as uint8 (height, width)."""
    img = Image.new("L", canvas, 0)
    font = ImageFont.load_default(size=size)
    xy = centre or (canvas[0] // 2, canvas[1] // 2)
    ImageDraw.Draw(img).text(
        xy, str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    if angle:
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC)
    return np.asarray(img)


def ink_box(digit: np.ndarray) -> tuple[int, int]:
    """Height and width of the bounding box of the non-zero pixels."""
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def parse(stdout: str) -> list[tuple[str, int, list[tuple[int, float]]]]:
    """Prediction lines -> (name, label, [(digit, probability), ...])."""
    parsed = []
    for line in stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a prediction line: {line!r}"
        scores = [s.split(": ") for s in match["scores"].split(", ")]
        parsed.append((match["name"], int(match["label"]), [(int(d), float(p)) for d, p in scores]))
    return parsed


def read_all(
    paths: list[Path], limits: PredictConfig = LIMITS
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """`iter_rows` collected: every (name, 784-pixel row), and every `name: defect` message."""
    rows: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []
    for item in iter_rows(paths, limits):
        if isinstance(item, Unreadable):
            errors.append(str(item))
        else:
            assert isinstance(item, Rows)
            rows += zip(item.names, item.rows, strict=True)
    return rows, errors


def load_image(path: Path) -> np.ndarray:
    """An image file decoded as `iter_rows` decodes it, before normalisation."""
    return decode_image(path.read_bytes())


def npy_rows(array: np.ndarray) -> np.ndarray:
    """`array` saved as a `.npy` file's bytes and read back as `iter_rows` reads it."""
    buf = io.BytesIO()
    np.save(buf, array)
    return np.concatenate([chunk.rows for chunk in decode_rows(buf.getvalue(), "batch.npy")])


def run(argv: list[str]) -> int:
    """`main(argv)`'s exit code."""
    try:
        main(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


# --- preprocessing ---------------------------------------------------------------------------


def test_either_polarity_anywhere_gives_one_centred_mnist_digit() -> None:
    # a big 7 far from the centre of a 300x200 image, as white-on-black and black-on-white
    # (elsewhere on the canvas): the same MNIST digit
    light = glyph(7, size=150, stroke=4, canvas=(300, 200), centre=(80, 90))
    dark = 255 - glyph(7, size=150, stroke=4, canvas=(300, 200), centre=(200, 110))
    a, b = to_mnist(light), to_mnist(dark)
    assert a.shape == (28, 28) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)
    np.testing.assert_allclose(a, b, atol=0.02)
    assert max(ink_box(a)) == 20 and min(ink_box(a)) < 20  # fitted into 20x20
    cy, cx = ndimage.center_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5  # where MNIST puts it (13.5-14.5)
    # the raw image's ink is nowhere near the centre: the centring did the work
    _, raw_cx = ndimage.center_of_mass(light)
    assert abs(raw_cx - 150) > 50


def test_aspect_ratio_is_kept() -> None:
    tall = np.zeros((300, 300), dtype=np.uint8)
    tall[40:200, 30:70] = 255  # 160 x 40, off-centre
    wide = np.full((300, 300), 255, dtype=np.uint8)  # dark ink on white
    wide[220:260, 100:260] = 0
    assert ink_box(to_mnist(tall)) == (20, 5)
    assert ink_box(to_mnist(wide)) == (5, 20)
    for bar in (to_mnist(tall), to_mnist(wide)):
        cy, cx = ndimage.center_of_mass(bar)
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_mnist_digits_pass_through_unchanged() -> None:
    # an image already in MNIST form is a fixed point, as uint8 0-255 or float 0-1
    digit = to_mnist(glyph(3, size=90, stroke=2, angle=8))
    np.testing.assert_allclose(to_mnist(digit), digit, atol=1e-5)
    np.testing.assert_allclose(to_mnist(np.round(digit * 255).astype(np.uint8)), digit, atol=0.01)


def test_noise_and_paper_shade_are_not_ink() -> None:
    # a dim photo: grey paper, strong sensor noise, a faint digit: the same as the clean digit
    rng = np.random.default_rng(0)
    clean = glyph(4, size=120, stroke=3, canvas=(240, 200))
    paper = 170 - clean * (90 / 255) + rng.normal(0, 10, clean.shape)
    noisy = to_mnist(np.clip(paper, 0, 255).astype(np.uint8))
    assert np.abs(noisy - to_mnist(clean)).mean() < 0.03
    assert ink_box(noisy) == ink_box(to_mnist(clean))


@pytest.mark.parametrize(
    "image",
    [
        np.full((50, 40), 255, np.uint8),  # white
        np.zeros((28, 28), np.uint8),  # black
        np.full((30, 30), 0.5, np.float32),  # grey
        np.clip(np.random.default_rng(1).normal(128, 8, (200, 200)), 0, 255).astype(np.uint8),
    ],
    ids=["white", "black", "grey", "noise"],
)
def test_blank_images_have_no_ink(image: np.ndarray) -> None:
    with pytest.raises(InputError, match="no ink"):
        to_mnist(image)


def test_load_image_transparency_orientation_and_16_bit(tmp_path: Path) -> None:
    upright = 255 - glyph(7, size=60, canvas=(120, 80))  # black on white, portrait
    # black ink whose shape is all in the alpha channel: composited on white, not on black
    sticker = np.zeros((80, 120, 4), np.uint8)
    sticker[..., 3] = 255 - upright
    Image.fromarray(sticker).save(tmp_path / "sticker.png")
    np.testing.assert_allclose(load_image(tmp_path / "sticker.png"), upright / 255, atol=1 / 255)
    # a phone photo stored sideways, with the EXIF tag that says "rotate 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.shape == upright.shape
    assert np.abs(loaded - upright / 255).mean() < 0.02
    # 16-bit grayscale keeps its scale (convert("L") would clip everything to white)
    deep = np.array([[0, 32768, 65535]] * 3, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(load_image(tmp_path / "deep.png")[0], [0, 0.5, 1], atol=0.001)


def test_npy_rows_accepts_mnist_shapes_and_scales() -> None:
    batch = np.arange(2 * 784).reshape(2, 28, 28) % 256
    for array in (batch.astype(np.uint8), batch.reshape(2, 784).astype(np.uint8)):
        rows = npy_rows(array)
        assert rows.shape == (2, 784) and rows.dtype == np.float32
        np.testing.assert_allclose(rows * 255, batch.reshape(2, 784), atol=1e-3)
    single = npy_rows(batch[0].astype(np.float32) / 255)
    assert single.shape == (1, 784)
    assert npy_rows(np.ones(784, np.float64)).shape == (1, 784)


@pytest.mark.parametrize(
    ("array", "defect"),
    [
        (np.zeros((3, 5), np.uint8), r"wrong shape \(3, 5\)"),
        (np.zeros((2, 28, 27), np.uint8), r"wrong shape \(2, 28, 27\)"),
        (np.zeros((0, 784), np.uint8), "empty batch"),
        (np.full((1, 784), 255.0), r"float pixels must be in \[0, 1\], found 255 to 255"),
        (np.full((1, 784), 300), "integer pixels must be 0-255, found 300 to 300"),
        (np.full((1, 784), np.nan), "NaN"),
        (np.full((1, 784), "a"), "unsupported dtype"),
    ],
)
def test_npy_rows_names_the_defect(array: np.ndarray, defect: str) -> None:
    with pytest.raises(InputError, match=defect):
        npy_rows(array)


def test_top_k_sorted_with_ties_to_the_lower_label() -> None:
    p = np.array([[0.1, 0.2, 0.05, 0.6, 0.05, 0, 0, 0, 0, 0], [0.25, 0, 0.25, 0.5] + [0] * 6])
    assert top_k(p, 3) == [
        [(3, pytest.approx(0.6)), (1, pytest.approx(0.2)), (0, pytest.approx(0.1))],
        [(3, 0.5), (0, 0.25), (2, 0.25)],
    ]
    assert [len(r) for r in top_k(p, 1)] == [1, 1]


# --- predictions -----------------------------------------------------------------------------


def training_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` glyphs in MNIST form (rows of 784) in varied sizes, weights and slants, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = [
        to_mnist(
            glyph(d, int(rng.integers(40, 100)), int(rng.integers(0, 4)), rng.uniform(-12, 12))
        )
        for d in labels
    ]
    return np.stack(images).reshape(n, 784), labels


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A softmax regression (the project's builder) trained on glyphs, saved as .keras."""
    import keras

    from digits.lib.config import ModelConfig
    from digits.lib.models import build_model

    x, labels = training_digits(600, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(type="softmax"))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, labels, epochs=15, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.97
    x_new, labels_new = training_digits(100, seed=1)  # renderings it has not seen
    assert (model.predict(x_new, verbose=0).argmax(axis=1) == labels_new).mean() > 0.95
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def write_inputs(folder: Path) -> dict[str, int]:
    """Image files and .npy batches of known digits in many forms: {name printed: label}."""
    rng = np.random.default_rng(2)
    truth = {}
    for d in range(10):
        # black on white, big, off-centre
        paper = 255 - glyph(d, size=200, stroke=5, canvas=(400, 300), centre=(120, 200))
        Image.fromarray(paper).save(folder / f"paper{d}.png")
        # a photo: grey paper, noise, JPEG
        shade = 210 - glyph(d, 120, 3, 5.0, (260, 220)) * (160 / 255) + rng.normal(0, 3, (220, 260))
        Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8)).save(folder / f"photo{d}.jpg")
        # small, white on black, RGB
        Image.fromarray(glyph(d, 40, 1, -6.0, (48, 64))).convert("RGB").save(folder / f"rgb{d}.png")
        # ink in the alpha channel only
        sticker = np.zeros((180, 180, 4), np.uint8)
        sticker[..., 3] = glyph(d, 110, 2, canvas=(180, 180), centre=(70, 100))
        Image.fromarray(sticker).save(folder / f"sticker{d}.png")
        truth |= {f"paper{d}.png": d, f"photo{d}.jpg": d, f"rgb{d}.png": d, f"sticker{d}.png": d}
    x, labels = training_digits(10, seed=3)
    np.save(folder / "batch.npy", np.round(x.reshape(10, 28, 28) * 255).astype(np.uint8))
    np.save(folder / "one.npy", x[4])  # (784,) float: a single digit, printed without index
    truth |= {f"batch.npy[{i}]": int(label) for i, label in enumerate(labels)}
    truth["one.npy"] = int(labels[4])
    return truth


def check_lines(stdout: str, truth: dict[str, int], folder: Path, k: int = 3) -> None:
    """One line per input, in order, with the true label and `k` sorted probabilities."""
    lines = parse(stdout)
    assert [name for name, _, _ in lines] == [str(folder / n) for n in truth]
    wrong = [(name, label) for name, label, _ in lines if label != truth[Path(name).name]]
    assert not wrong
    for _, label, scores in lines:
        assert len(scores) == k and scores[0][0] == label
        assert len({d for d, _ in scores}) == k
        probabilities = [p for _, p in scores]
        assert probabilities == sorted(probabilities, reverse=True)
        assert probabilities[-1] >= 0 and sum(probabilities) <= 1.002


def test_predicts_images_and_batches(tmp_path: Path, model_file: Path, capsys) -> None:
    truth = write_inputs(tmp_path)
    files = [str(tmp_path / name.split("[")[0]) for name in truth]
    files = list(dict.fromkeys(files))  # batch.npy once
    assert run([*files, "--model", str(model_file), "--trust-model"]) == 0
    out, err = capsys.readouterr()
    check_lines(out, truth, tmp_path)
    assert "error" not in err
    # the images are hard without the preprocessing: squeezing each into 28x28 fails
    import keras

    naive = [
        np.asarray(Image.open(tmp_path / f"paper{d}.png").convert("L").resize((28, 28))) / 255
        for d in range(10)
    ]
    model = keras.saving.load_model(model_file)
    guesses = model.predict(np.stack(naive).reshape(10, 784), verbose=0).argmax(axis=1)
    assert (guesses == np.arange(10)).sum() <= 3


def test_predict_applies_the_shifts_evaluate_scored_with(
    tmp_path: Path, model_file: Path, capsys
) -> None:
    import keras

    from digits.lib.shifts import shifted

    rows = np.stack([to_mnist(glyph(d)) for d in range(10)]).reshape(10, 784)
    np.save(tmp_path / "digits.npy", rows)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["evaluate"] = {"shifts": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    argv = [
        str(tmp_path / "digits.npy"),
        "--model",
        str(model_file),
        "--trust-model",
        "--top",
        "10",
    ]
    assert run([*argv, "--params", str(tmp_path / "params.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "averaged over 9 views" in err
    model = keras.saving.load_model(model_file)
    expected = shifted(lambda x: model.predict(x, verbose=0), 1)(rows)
    for (_, _, scores), p in zip(parse(out), expected, strict=True):
        assert dict(scores) == pytest.approx(dict(enumerate(p)), abs=6e-4)  # 3 decimals
    # the same model in one view gives other probabilities: the shifts were applied
    plain = model.predict(rows, verbose=0)
    assert np.abs(plain - expected).max() > 0.01


def test_bad_files_are_named_and_the_rest_predicted(
    tmp_path: Path, model_file: Path, capsys
) -> None:
    (tmp_path / "notes.png").write_text("shopping: eggs, milk\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (64, 48), 255).save(tmp_path / "blank.png")
    np.save(tmp_path / "odd.npy", np.zeros((3, 5), np.uint8))
    (tmp_path / "fake.npy").write_text("not numpy")
    png = io.BytesIO()
    Image.fromarray(glyph(5)).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:200])  # truncated download
    Image.fromarray(255 - glyph(2, 150, 4, canvas=(300, 200))).save(tmp_path / "two.png")
    np.save(tmp_path / "good.npy", np.stack([to_mnist(glyph(8)), to_mnist(glyph(1))]))
    bad = {
        "notes.png": "not an image",
        "empty.png": "empty file",
        "blank.png": "no ink",
        "missing.png": "no such file",
        "odd.npy": r"wrong shape \(3, 5\)",
        "fake.npy": r"not a readable \.npy",
        "cut.png": "unreadable image",
    }
    names = ["notes.png", "two.png", "empty.png", "blank.png", "missing.png", "odd.npy"]
    names += ["good.npy", "fake.npy", "cut.png"]
    argv = ["--model", str(model_file), "--trust-model"]
    assert run([str(tmp_path / n) for n in names] + argv) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for name, defect in bad.items():
        assert any(
            re.match(rf"error: {re.escape(str(tmp_path / name))}: {defect}", e) for e in errors
        )
    check_lines(out, {"two.png": 2, "good.npy[0]": 8, "good.npy[1]": 1}, tmp_path)


def test_missing_model_says_how_to_get_one(tmp_path: Path, capsys) -> None:
    Image.fromarray(glyph(1)).save(tmp_path / "one.png")
    code = run([str(tmp_path / "one.png"), "--model", str(tmp_path / "none.keras")])
    assert code == 1
    _, err = capsys.readouterr()
    assert f"error: {tmp_path / 'none.keras'}: no such model file" in err
    assert "make repro" in err and "--model" in err


def test_a_hostile_model_name_is_escaped_in_the_error(tmp_path: Path, capsys) -> None:
    """--model is shown like a file name: a newline or a terminal escape in it is not obeyed."""
    Image.fromarray(glyph(1)).save(tmp_path / "one.png")
    hostile = str(tmp_path / "evil\n\x1b[2Jerror: fake.keras")
    assert run([str(tmp_path / "one.png"), "--model", hostile]) == 1
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "\x1b" not in err, err
    assert "evil\\n\\x1b[2Jerror: fake.keras: no such model file" in err


@pytest.mark.parametrize("argv", [[], ["x.png", "--top", "0"], ["x.png", "--top", "11"]])
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    assert run(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_is_quick_and_imports_no_tensorflow() -> None:
    code = (
        "import sys\n"
        "from digits.tools import predict\n"
        "try:\n"
        "    predict.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "--top" in done.stdout
    assert done.stdout.strip().endswith("[]")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_template: Path):
    """An empty SQLite tracking store in tmp_path, named by $MLFLOW_TRACKING_URI."""
    import mlflow

    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{fresh_store(tmp_path, store_template)}")
    yield tmp_path
    mlflow.set_tracking_uri(None)


def log_own_model(store: Path, model_file: Path, name: str = "digits-test") -> str:
    """`model_file` logged as training logs a model, registered as `name`@champion; its run id."""
    import keras
    import mlflow

    from digits.lib.config import MLflowConfig
    from digits.lib.environment import Environment
    from digits.lib.tracking import logged_model, runs
    from digits.lib.tracking.store import setup

    setup(MLflowConfig(), store, Environment.read())
    x, _ = training_digits(5, seed=4)
    with runs.tracked_run() as run_:
        logged_model.log_keras_model(keras.saving.load_model(model_file), x)
    version = mlflow.register_model(f"runs:/{run_.info.run_id}/model", name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return run_.info.run_id


def minimal_params(folder: Path) -> Path:
    """A params.yaml in `folder` with only what validation requires (the store: the default)."""
    params = {
        "download": {
            "mirrors": ["https://example.invalid/"],
            "files": {f"{s}-{k}": "0" * 64 for s in ("train", "t10k") for k in IDX_KINDS},
        }
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


def test_mlflow_model_uris(
    mlflow_store: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The project's own logged model loads without --trust-model from a run, the registry and
    a folder, through Keras in safe mode (never pyfunc), and predicts as the .keras file does."""
    import keras
    import mlflow

    run_id = log_own_model(mlflow_store, model_file)
    capsys.readouterr()  # MLflow's own output while logging
    folder = mlflow_store / "inputs"
    folder.mkdir()
    truth = write_inputs(folder)
    files = list(dict.fromkeys(str(folder / n.split("[")[0]) for n in truth))
    assert run([*files, "--model", str(model_file), "--trust-model"]) == 0
    local = capsys.readouterr().out
    check_lines(local, truth, folder)

    safe_modes = []
    real_load = keras.saving.load_model

    def spy(path, *args, **kwargs):
        safe_modes.append(kwargs.get("safe_mode"))
        return real_load(path, *args, **kwargs)

    def no_pyfunc(*args, **kwargs):
        raise AssertionError("loaded through pyfunc")

    monkeypatch.setattr(keras.saving, "load_model", spy)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_pyfunc)
    # runs:/ through $MLFLOW_TRACKING_URI, with no params.yaml
    assert run([*files, "--model", f"runs:/{run_id}/model", "--params", "absent.yaml"]) == 0
    assert parse(capsys.readouterr().out) == parse(local)

    # models:/name@alias through params.yaml's store, as `make repro` sets it up
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    params = minimal_params(mlflow_store)
    argv = [*files, "--model", "models:/digits-test@champion"]
    assert run([*argv, "--params", str(params)]) == 0
    assert parse(capsys.readouterr().out) == parse(local)
    # a folder inside the project holding the logged model
    own = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/model", dst_path=str(mlflow_store / "models")
    )
    capsys.readouterr()
    assert run([*files, "--model", own, "--params", str(params)]) == 0
    assert parse(capsys.readouterr().out) == parse(local)
    assert safe_modes == [True, True, True]
    # an unknown model: a clear error, exit 1
    argv = [*files[:1], "--model", "models:/nope@champion", "--params", str(params)]
    assert run(argv) == 1
    assert "error: models:/nope@champion: cannot load the model" in capsys.readouterr().err


def planted_pyfunc(marker: Path):
    """A pyfunc model whose unpickling writes `marker`: proof that loading ran its code."""
    import mlflow

    class Planted(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return np.zeros((len(model_input), 10))

        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('unpickled')",))

    return Planted()


def test_a_model_holding_code_is_refused_before_anything_is_unpickled(
    mlflow_store: Path, capsys
) -> None:
    """A pyfunc model (a pickle and code paths) from the registry, a run or a folder inside the
    project: one `error:` line naming what it holds, and nothing of it runs; --trust-model
    does run it (so the marker would show a load)."""
    import mlflow

    from digits.lib.config import MLflowConfig
    from digits.lib.environment import Environment
    from digits.lib.tracking import runs
    from digits.lib.tracking.store import setup

    marker = mlflow_store / "unpickled"
    (mlflow_store / "helper.py").write_text("VALUE = 1\n")
    setup(MLflowConfig(), mlflow_store, Environment.read())
    with runs.tracked_run() as run_:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=planted_pyfunc(marker),
            pip_requirements=["numpy"],  # inferring them would load the model
            code_paths=[str(mlflow_store / "helper.py")],
        )
    run_id = run_.info.run_id
    version = mlflow.register_model(f"runs:/{run_id}/model", "planted").version
    mlflow.MlflowClient().set_registered_model_alias("planted", "champion", version)
    folder = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/model", dst_path=str(mlflow_store / "models")
    )
    (mlflow_store / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    Image.fromarray(glyph(3)).save(mlflow_store / "three.png")
    assert not marker.exists()
    capsys.readouterr()
    argv = [str(mlflow_store / "three.png"), "--params", str(mlflow_store / "params.yaml")]
    for model in ("models:/planted@champion", f"runs:/{run_id}/model", folder):
        assert run([*argv, "--model", model]) == 1
        out, err = capsys.readouterr()
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert line.startswith(
            f"error: {model}: refused: it holds flavours python_function (loader "
            "mlflow.pyfunc.model, python_model.pkl, code paths: code"
        )
        assert "--trust-model" in line and "Traceback" not in err and out == ""
        assert not marker.exists()
    assert run([*argv, "--model", "models:/planted@champion", "--trust-model"]) == 1
    assert marker.exists()


def test_a_keras_model_with_a_pickle_or_an_export_is_refused(
    mlflow_store: Path, model_file: Path, capsys
) -> None:
    import shutil

    import mlflow

    run_id = log_own_model(mlflow_store, model_file)
    own = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    params = minimal_params(mlflow_store)
    Image.fromarray(glyph(3)).save(mlflow_store / "three.png")
    argv = [str(mlflow_store / "three.png"), "--params", str(params), "--model"]
    pickled = shutil.copytree(own, mlflow_store / "models" / "pickled")
    (pickled / "data" / "custom_objects.cloudpickle").write_bytes(b"\x80\x05N.")
    exported = shutil.copytree(own, mlflow_store / "models" / "exported")
    manifest = yaml.safe_load((exported / "MLmodel").read_text())
    manifest["flavors"]["keras"]["save_exported_model"] = True
    manifest["flavors"]["sklearn"] = {"pickled_model": "model.pkl"}
    (exported / "MLmodel").write_text(yaml.safe_dump(manifest))
    capsys.readouterr()
    assert run([*argv, str(pickled)]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: {pickled}: refused: it holds files data/custom_objects.cloudpickle,"
    )
    assert run([*argv, str(exported)]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: {exported}: refused: it holds flavours keras (a TensorFlow SavedModel "
        "export), python_function, sklearn (a flavour predict does not load safely),"
    )


def test_models_uris_resolve_against_the_registry_uri(
    mlflow_store: Path, model_file: Path, store_template: Path, monkeypatch, capsys
) -> None:
    """$MLFLOW_REGISTRY_URI, when set, is where `models:/` is looked up: a registry elsewhere
    serves the model; one that is down is one `error:` line within seconds."""
    import time

    import mlflow

    from helpers import free_port

    registry = f"sqlite:///{fresh_store(mlflow_store / 'registry', store_template)}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)
    try:
        log_own_model(mlflow_store, model_file, name="elsewhere")
        Image.fromarray(255 - glyph(2, 150, 4, canvas=(300, 200))).save(mlflow_store / "two.png")
        argv = [str(mlflow_store / "two.png"), "--params", "absent.yaml", "--model"]
        capsys.readouterr()
        assert run([*argv, "models:/elsewhere@champion"]) == 0
        check_lines(capsys.readouterr().out, {"two.png": 2}, mlflow_store)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        assert run([*argv, "models:/elsewhere@champion"]) == 1
        assert time.monotonic() - started < 30
        err = capsys.readouterr().err
        assert err.startswith("error: model registry: MLflow tracking server http://127.0.0.1")
    finally:
        mlflow.set_registry_uri(None)


# --- hostile input and untrusted models (issue 18) --------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (CRC fixed up): a
    decompression bomb as far as any check after the header is concerned."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(glyph(3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length and type of the first chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def npy_claiming(shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"\0" * 100) -> bytes:
    """A `.npy` whose header claims `shape` but holds only `payload`."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload


def hostile_files(folder: Path) -> dict[str, str]:
    """Files each of which must get its own error: {name: the defect's pattern}."""
    (folder / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (folder / "ps.png").write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    )
    Image.fromarray(glyph(1)).save(folder / "icon.png", format="ICO")
    Image.fromarray(glyph(1)).save(folder / "pcx.bmp", format="PCX")
    frames = [Image.fromarray(glyph(d)) for d in (1, 2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "pages.tiff", save_all=True, append_images=frames[1:])
    (folder / "huge.npy").write_bytes(npy_claiming((10**12, 784)))
    (folder / "liar.npy").write_bytes(npy_claiming((2, 784), payload=b"\0" * 10))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "complex.npy", np.zeros((1, 784), np.complex64))
    (folder / "zip.npy").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (folder / "folder.png").mkdir()
    os.mkfifo(folder / "fifo.png")
    (folder / "device.png").symlink_to("/dev/null")
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    return {
        "bomb.png": r"image too large: 100000 x 100000 = 10,000,000,000 pixels "
        r"\(limit predict.max_pixels = 50,000,000\)",
        "ps.png": r"not an image in an accepted format \(PNG, JPEG, BMP, TIFF, GIF, WebP\)",
        "icon.png": "not an image in an accepted format",
        "pcx.bmp": "not an image in an accepted format",
        "anim.gif": "a GIF with several frames",
        "pages.tiff": "a TIFF with several frames",
        "huge.npy": r"not a readable \.npy array: its header says shape "
        r"\(1000000000000, 784\) of float32 \(3,136,000,000,000,000 bytes\) but 100 bytes follow",
        "liar.npy": r"not a readable \.npy array: its header says shape \(2, 784\)",
        "objects.npy": "unsupported dtype object",
        "complex.npy": "unsupported dtype complex64",
        "zip.npy": r"not a \.npy array \(an \.npz archive",
        "folder.png": "is a directory",
        "fifo.png": r"is a FIFO \(named pipe\)",
        "device.png": "is a device file",
        "loop_a.png": "a symbolic link loop",
        "dangling.png": "a symbolic link to nothing",
    }


def test_each_hostile_file_gets_its_own_error_and_the_rest_are_read(tmp_path: Path) -> None:
    bad = hostile_files(tmp_path)
    Image.fromarray(255 - glyph(7)).save(tmp_path / "seven.png")
    png = io.BytesIO()
    Image.fromarray(glyph(4)).save(png, "PNG")
    (tmp_path / "png_named.jpg").write_bytes(png.getvalue())  # content, not name, decides
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.eye(28, dtype=np.uint8) * 255))
    names = [*bad, "seven.png", "png_named.jpg", "fortran.npy"]
    rows, errors = read_all([tmp_path / n for n in names])
    assert [name for name, _ in rows] == [str(tmp_path / n) for n in names[-3:]]
    assert len(errors) == len(bad), errors
    for (name, defect), error in zip(bad.items(), errors, strict=True):
        assert re.match(rf"{re.escape(str(tmp_path / name))}: {defect}", error), error
    np.testing.assert_array_equal(rows[2][1].reshape(28, 28), np.eye(28))  # Fortran order kept


def test_limits_come_from_params_and_are_named(tmp_path: Path) -> None:
    Image.fromarray(glyph(3, canvas=(100, 80))).save(tmp_path / "three.png")
    np.save(tmp_path / "batch.npy", np.zeros((5, 784), np.uint8))
    size = (tmp_path / "batch.npy").stat().st_size
    _, errors = read_all(
        [tmp_path / "three.png", tmp_path / "batch.npy"],
        PredictConfig(max_pixels=7_999, max_bytes=size - 1),
    )
    assert errors[0].endswith(
        "image too large: 100 x 80 = 8,000 pixels (limit predict.max_pixels = 7,999)"
    )
    assert errors[1].endswith(
        f"file too large: {size:,} bytes (limit predict.max_bytes = {size - 1:,})"
    )


def test_unreadable_files_and_memory_errors_are_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissions cannot be tested as root (root reads anything), so os.open is made to refuse
    as it would; MemoryError raised inside Pillow's decoder and in the normalisation."""
    from PIL import ImageFile

    from digits.lib import inputs as tool

    Image.fromarray(glyph(6)).save(tmp_path / "locked.png")
    Image.new("L", (1, 1)).save(tmp_path / "decoder.png")  # 1x1: the fake decoder's victim
    Image.fromarray(glyph(6, canvas=(123, 77))).save(tmp_path / "normalise.png")
    Image.fromarray(glyph(6)).save(tmp_path / "ok.png")
    real_open, real_load, real_to_mnist = os.open, ImageFile.ImageFile.load, tool.to_mnist

    def fake_open(path, flags, *args):
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    def fake_load(self):
        if self.size == (1, 1):
            raise MemoryError
        return real_load(self)

    def fake_to_mnist(image):
        if image.shape == (77, 123):
            raise MemoryError
        return real_to_mnist(image)

    monkeypatch.setattr(tool.os, "open", fake_open)
    monkeypatch.setattr(tool, "to_mnist", fake_to_mnist)
    monkeypatch.setattr(ImageFile.ImageFile, "load", fake_load)
    paths = [tmp_path / n for n in ("locked.png", "decoder.png", "normalise.png", "ok.png")]
    rows, errors = read_all(paths)
    assert errors == [
        f"{paths[0]}: permission denied (unreadable)",
        f"{paths[1]}: out of memory decoding the image",
        f"{paths[2]}: out of memory reading it",
    ]
    assert [name for name, _ in rows] == [str(paths[3])]


def test_devices_and_fifos_are_refused_before_they_are_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a device can have side effects, and a FIFO blocks without O_NONBLOCK: neither is
    opened at all, each gets its own line, and the regular file is still read."""
    import time

    from digits.lib import inputs

    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "null.png").symlink_to("/dev/null")
    Image.fromarray(255 - glyph(7)).save(tmp_path / "seven.png")
    opened = []
    real_open = os.open

    def spy(path, flags, *args):
        opened.append(str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(inputs.os, "open", spy)
    paths = [tmp_path / "fifo.png", Path("/dev/zero"), Path("/dev/null"), tmp_path / "null.png"]
    started = time.monotonic()
    rows, errors = read_all([*paths, tmp_path / "seven.png"])
    assert time.monotonic() - started < 10
    assert errors == [
        f"{paths[0]}: is a FIFO (named pipe), not a regular file",
        "/dev/zero: is a device file, not a regular file",
        "/dev/null: is a device file, not a regular file",
        f"{paths[3]}: is a device file, not a regular file",
    ]
    assert [name for name, _ in rows] == [str(tmp_path / "seven.png")]
    assert opened == [str(tmp_path / "seven.png")]


@pytest.mark.parametrize("swap", ["file", "link"])
def test_a_file_swapped_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """Another file, or a link to a device, put in the checked file's place just before it is
    opened is not read: the file opened must be the one checked."""
    from digits.lib import inputs

    Image.fromarray(255 - glyph(7)).save(tmp_path / "seven.png")
    Image.fromarray(255 - glyph(1)).save(tmp_path / "other.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    real_open = os.open

    def swapping(path, flags, *args):
        os.replace(tmp_path / ("other.png" if swap == "file" else "zero.png"), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(inputs.os, "open", swapping)
    rows, errors = read_all([tmp_path / "seven.png"])
    assert rows == []
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'seven.png'}: changed while being opened (")


def test_display_name_escapes_what_a_terminal_would_obey() -> None:
    from digits.lib.inputs import display_name

    assert display_name("plain name é 七.png") == "plain name é 七.png"
    assert display_name("a\nb\r\t\x1b[31m\x7f.png") == "a\\nb\\r\\t\\x1b[31m\\x7f.png"
    assert display_name("back\\slash") == "back\\\\slash"
    assert display_name(os.fsdecode(b"\xff\xfe.png")) == "\\xff\\xfe.png"
    assert display_name("\u202eevil\u2028.png") == "\\u202eevil\\u2028.png"


@pytest.mark.integration  # a predict process per locale, ~11 s: `make test-integration`
def test_hostile_names_give_one_escaped_line_each_in_any_locale(
    tmp_path: Path, model_file: Path
) -> None:
    """Names with newlines, terminal escapes and bytes that are not UTF-8, under LC_ALL=C with
    an ASCII stdout: one line per input, escaped, and no UnicodeEncodeError."""
    folder = bytes(tmp_path)
    names = [b"two\nlines.png", b"\x1b[31mred.png", b"\xff\xfe.png", "café.png".encode()]
    for name in names:
        Image.fromarray(255 - glyph(2, 150, 4, canvas=(300, 200))).save(
            os.path.join(folder, name), format="PNG"
        )
    bad = os.path.join(folder, b"bad\n\x1b[0m\xff.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    paths = [os.path.join(folder, name) for name in names] + [bad]
    cmd = [sys.executable.encode(), b"-m", b"digits.tools.predict", *paths]
    cmd += [b"--model", bytes(model_file), b"--trust-model"]
    env = {**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    err = done.stderr.decode("ascii")  # every byte of both streams is ASCII
    assert done.returncode == 1, err
    shown = ["two\\nlines.png", "\\x1b[31mred.png", "\\xff\\xfe.png", "caf\\xe9.png"]
    lines = done.stdout.decode("ascii").splitlines()
    assert [line.split(": 2  (")[0] for line in lines] == [f"{tmp_path}/{s}" for s in shown]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    defect = "not an image in an accepted format (PNG, JPEG, BMP, TIFF, GIF, WebP)"
    assert errors == [
        f"error: {tmp_path}/bad\\n\\x1b[0m\\xff.png: {defect}, judged by its first bytes"
    ]


def test_hostile_batch_through_the_cli(tmp_path: Path, model_file: Path, capsys) -> None:
    bad = hostile_files(tmp_path)
    Image.fromarray(255 - glyph(2, 150, 4, canvas=(300, 200))).save(tmp_path / "two.png")
    names = [*bad, "two.png"]
    argv = [str(tmp_path / n) for n in names] + ["--model", str(model_file), "--trust-model"]
    assert run(argv) == 1
    out, err = capsys.readouterr()
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == len(bad)
    check_lines(out, {"two.png": 2}, tmp_path)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("outside", "a file outside the project"),
        ("folder", "a folder outside the project"),
        ("link", "a file outside the project"),
        ("s3://bucket/model", "a model URI outside the project's tracking store"),
        ("models://user@other-server/mnist/1", "a model URI outside"),
        ("http://evil.example/model", "a model URI outside"),
    ],
)
def test_a_model_from_outside_the_project_needs_trust(
    tmp_path: Path, model: str, reason: str, capsys
) -> None:
    """Refused before any file is read or TensorFlow loaded, with what to do."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "models").mkdir(parents=True)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    elsewhere.mkdir()
    (elsewhere / "model.keras").write_bytes(b"not loaded")
    (elsewhere / "mlflow_model").mkdir()
    (project / "models" / "link.keras").symlink_to(elsewhere / "model.keras")
    model = {
        "outside": str(elsewhere / "model.keras"),
        "folder": str(elsewhere / "mlflow_model"),
        "link": str(project / "models" / "link.keras"),
    }.get(model, model)
    argv = ["x.png", "--model", model, "--params", str(project / "params.yaml")]
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model}: refused: {reason}")
    assert "--trust-model" in err and "unpickles" in err


def lambda_model(path: Path) -> None:
    """A softmax model with a Lambda layer (Python code inside the .keras file)."""
    import keras

    inputs = keras.Input((784,))
    x = keras.layers.Lambda(lambda t: t * 1.0)(inputs)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)


def test_keras_models_load_in_safe_mode_and_lambda_layers_need_trust(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import shutil

    import keras

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "models").mkdir()
    shutil.copy(model_file, tmp_path / "models" / "model.keras")
    lambda_model(tmp_path / "models" / "lambda.keras")
    Image.fromarray(255 - glyph(2, 150, 4, canvas=(300, 200))).save(tmp_path / "two.png")
    params = ["--params", str(tmp_path / "params.yaml")]
    seen = []
    real_load = keras.saving.load_model

    def spy(path, *args, **kwargs):
        seen.append(kwargs.get("safe_mode"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    # the project's own model: no flag needed, loaded with safe_mode=True said explicitly
    own = str(tmp_path / "models" / "model.keras")
    assert run([str(tmp_path / "two.png"), "--model", own, *params]) == 0
    assert seen == [True]
    check_lines(capsys.readouterr().out, {"two.png": 2}, tmp_path)
    # a Lambda layer inside the project is still refused, with what to do
    with_code = str(tmp_path / "models" / "lambda.keras")
    assert run([str(tmp_path / "two.png"), "--model", with_code, *params]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {with_code}: refused: the model holds Python code (a Lambda")
    assert "--trust-model" in err
    # trusted: safe mode off, and it predicts
    assert run([str(tmp_path / "two.png"), "--model", with_code, *params, "--trust-model"]) == 0
    assert seen[-1] is False
    assert len(parse(capsys.readouterr().out)) == 1


@pytest.mark.slow
def test_a_thousand_files_ten_hostile_stay_under_2_gib(tmp_path: Path) -> None:
    """The memory target, measured by the benchmark (`python bench/predict_memory.py`): peak
    RSS of the predict process on 990 ordinary files and 10 hostile ones (~1.5 min)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import predict_memory

    result = predict_memory.measure(tmp_path)
    assert result["exit_code"] == 1
    assert len(result["error_lines"]) == 6  # bomb, lying header, over max_bytes, GIF, EPS, cut
    assert result["prediction_lines"] == 330 + 330 + 330 * 16 + 3 + 121_000
    assert result["peak_rss_bytes"] < predict_memory.TARGET, result
