"""params.yaml validation: the real file passes; every problem is named, all at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from digits.lib.config import (
    Params,
    ParamsError,
    Problem,
    flatten,
    load_params,
    parse_overrides,
    parse_params,
)
from digits.lib.config.runparams import run_params
from digits.lib.config.sweep import SweepParams

from helpers import ROOT, real_params, run_without_tensorflow


def test_real_params_yaml_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.model.type in {"softmax", "mlp", "cnn"}
    assert len(params.download.mirrors) >= 2


def test_every_problem_is_listed_with_its_key() -> None:
    raw = real_params()
    raw["train"]["learning_rate"] = 0
    raw["train"]["epochs"] = -1
    raw["model"]["mlp"]["activation"] = "relux"
    raw["model"]["mlp"]["dropout"] = 1.0
    raw["train"]["optimiser"] = "adam"  # typo of `optimizer`
    raw["train"]["optimizer"] = "adamw"
    raw["train"]["batch_size"] = 0
    raw["model"]["type"] = "rnn"
    raw["model"]["mlp"]["depth"] = -1
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "9 invalid setting(s)" in message
    assert "train.optimizer: Input should be 'sgd', 'momentum'" in message
    assert "train.batch_size: Input should be greater than 0 (got 0)" in message
    assert (
        "model.type: Input should be 'softmax', 'mlp', 'cnn' or 'numpy_mlp' (got 'rnn')" in message
    )
    assert "model.mlp.depth: Input should be greater than or equal to 0 (got -1)" in message
    assert "train.learning_rate: Input should be greater than 0 (got 0)" in message
    assert "train.epochs" in message
    assert "model.mlp.activation" in message and "'relu'" in message  # says what is allowed
    assert "model.mlp.dropout" in message
    assert "train.optimiser: unknown key (typo?)" in message


def test_missing_section_and_wrong_type() -> None:
    raw = real_params()
    del raw["download"]
    raw["train"]["batch_size"] = "big"
    with pytest.raises(ParamsError, match=r"download: Field required(.|\n)*train.batch_size"):
        parse_params(raw)


def test_width_list_must_match_depth() -> None:
    raw = real_params()
    raw["model"]["mlp"].update(depth=3, width=[200, 100])
    with pytest.raises(ParamsError, match="width lists 2 layer sizes but depth is 3"):
        parse_params(raw)
    raw["model"]["mlp"].update(depth=4, width=[200, 100, 60, 30])
    assert parse_params(raw).model.mlp.units == [200, 100, 60, 30]


def test_run_params_are_flat_and_only_the_selected_family() -> None:
    raw = real_params()
    raw["model"]["type"] = "cnn"
    flat = run_params(parse_params(raw))
    assert flat["model.type"] == "cnn"
    assert "model.cnn.filters" in flat
    assert not any(k.startswith("model.mlp") for k in flat)
    assert flat["model.dtype_policy"] == "float32"
    assert flat["train.learning_rate"] == raw["train"]["learning_rate"]


TRAIN_ARGV = ["--params", "params.yaml", "--data", "d", "--model", "m.keras", "--run-info", "r"]
TRAIN_ARGV += ["--metrics", "x", "--history", "h"]


def test_invalid_params_fail_fast_without_tensorflow(tmp_path: Path) -> None:
    """A stage given a bad params.yaml exits with the message, before TensorFlow loads."""
    raw = real_params()
    raw["train"]["batch_size"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stdout, stderr = run_without_tensorflow("digits.stages.train", TRAIN_ARGV, tmp_path)
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert "train.batch_size: Input should be greater than 0" in stderr


# --- strictness: duplicate keys, seeds, sizes (issue 18) ---------------------------------------


def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("learning_rate:"))
    lines.insert(at + 1, "  learning_rate: 0.5")
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "params.yaml")
    assert f"train.learning_rate: lines {at + 1} and {at + 2}" in str(err.value)
    assert "1 duplicate key(s)" in str(err.value)


def test_duplicate_key_in_a_nested_list_item(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("a:\n  - {x: 1, x: 2}\nb: 1\nb: 2\n")
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "p.yaml")
    assert "a.0.x: lines 2 and 2" in str(err.value) and "b: lines 3 and 4" in str(err.value)


@pytest.mark.parametrize(
    ("section", "key"), [("train", "seed"), ("data", "seed"), ("sweep", "seed")]
)
@pytest.mark.parametrize("value", [-1, 2**32])
def test_seeds_are_bounded_to_what_numpy_and_tensorflow_take(
    section: str, key: str, value: int
) -> None:
    schema = SweepParams if section == "sweep" else Params
    raw = real_params()
    raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"{section}\.{key}: Input should be"):
        parse_params(raw, schema=schema)
    raw[section][key] = 2**32 - 1
    parse_params(raw, schema=schema)  # the top of the range is fine
    import numpy as np

    np.random.RandomState(2**32 - 1)  # and numpy agrees it is
    with pytest.raises(ValueError):
        np.random.RandomState(2**32)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("model.mlp.width", 10**6),
        ("model.cnn.filters", [32, 10**5]),
        ("model.cnn.dense", 10**6),
        ("model.numpy_mlp.hidden", [10**6]),
        ("train.batch_size", 10**7),
        ("train.epochs", 10**6),
        ("data.val_size", 10**9),
    ],
)
def test_sizes_have_upper_bounds(path: str, value) -> None:
    raw = real_params()
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ParamsError, match=rf"{path}.*less than or equal"):
        parse_params(raw)


def test_a_network_too_big_is_refused_with_its_parameter_count(tmp_path: Path) -> None:
    """Every width within its bound, but 16 layers of 65,536 units: ~68.7 billion weights."""
    from digits.lib.architecture import count_params
    from digits.lib.config import MAX_PARAMS, MLPConfig, ModelConfig

    raw = real_params()
    raw["model"]["mlp"].update(depth=16, width=65_536)
    expected = count_params(ModelConfig(mlp=MLPConfig(depth=16, width=65_536)))
    assert expected > MAX_PARAMS
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert f"model.mlp: the network would have ~{expected:,} parameters" in str(err.value)
    # the same through the train stage: refused before TensorFlow loads
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stdout, stderr = run_without_tensorflow("digits.stages.train", TRAIN_ARGV, tmp_path)
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert "parameters" in stderr and "make it smaller" in stderr


def test_a_network_bigger_than_this_machine_is_refused_before_tensorflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digits.lib.architecture import count_params
    from digits.lib.config import ModelConfig
    from digits.stages import train

    params = parse_params(real_params())
    n = count_params(params.model)
    monkeypatch.setattr(train, "physical_memory", lambda: 16 * n // 2)  # half what it needs
    with pytest.raises(ParamsError, match=rf"~{n:,} parameters.*GB of memory to train"):
        train.check_fits_memory(params.model)
    monkeypatch.setattr(train, "physical_memory", lambda: 16 * n * 4)
    train.check_fits_memory(params.model)
    assert count_params(ModelConfig(type="softmax")) == 7850


def test_download_sizes_default_to_real_mnist_and_params_yaml() -> None:
    from digits.lib.config import MNIST_SIZES, DownloadConfig, PredictConfig

    params = load_params(ROOT / "params.yaml")
    assert params.download.sizes == MNIST_SIZES
    assert params.download.size_margin == DownloadConfig.model_fields["size_margin"].default
    assert params.predict == PredictConfig()  # the schema's defaults are params.yaml's


def test_speed_options_are_checked() -> None:
    raw = real_params()
    raw["model"]["cnn"]["padding"] = "full"
    raw["model"]["augment"]["crop"] = -1
    raw["train"].update(beta_1=1.0, label_smoothing=1.5)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "model.cnn.padding: Input should be 'same' or 'valid' (got 'full')" in message
    assert "model.augment.crop" in message
    assert "train.beta_1" in message and "train.label_smoothing" in message
    # rules across keys, checked once every key is valid on its own
    raw = real_params()
    raw["model"]["cnn"].update(filters=[8, 16], kernel_size=[5])
    raw["train"].update(lr_schedule="constant", warmup=0.2)
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert "kernel_size lists 1 sizes but filters has 2 blocks" in str(err.value)
    assert "warmup 0.2 needs lr_schedule: cosine" in str(err.value)


def test_valid_padding_that_shrinks_the_image_to_nothing_is_refused() -> None:
    raw = real_params()
    raw["model"].update(type="cnn")
    raw["model"]["cnn"].update(filters=[8, 8, 8], kernel_size=7, padding="valid")
    with pytest.raises(ParamsError, match=r"shrink to nothing by block 3.*padding: same"):
        parse_params(raw)
    raw["model"]["cnn"]["padding"] = "same"
    parse_params(raw)


# --- strict YAML: anchors and aliases, non-finite floats, lines (issue 26 item 7) -------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "line"), [("x: &a [*a]\n", 1), ("train: {}\n" + ALIAS_BOMB, 2)], ids=["self", "bomb"]
)
def test_anchors_and_aliases_are_refused_at_once_with_their_line(
    tmp_path: Path, text: str, line: int
) -> None:
    (tmp_path / "params.yaml").write_text(text)
    started = time.perf_counter()
    with pytest.raises(ParamsError, match=rf"params.yaml: line {line}: YAML anchors and aliases"):
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - started < 1.0


def test_a_stage_given_an_alias_bomb_answers_with_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(ALIAS_BOMB)
    stdout, stderr = run_without_tensorflow("digits.stages.train", TRAIN_ARGV, tmp_path)
    assert stdout.splitlines()[-2:] == ["exit 1", "[]"], stderr
    assert stderr.startswith("error: params.yaml: line 1: YAML anchors"), stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr


def test_edit_params_refuses_an_alias_and_changes_nothing(tmp_path: Path) -> None:
    from digits.lib.config.edit import edit_params

    text = (ROOT / "params.yaml").read_text().replace("seed: 42\n", "seed: &s 42\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="anchors and aliases"):
        edit_params(tmp_path / "params.yaml", {"train.epochs": 3})
    assert (tmp_path / "params.yaml").read_text() == text


@pytest.mark.parametrize(
    ("key", "value"),
    [("sweep.heartbeat", ".inf"), ("train.learning_rate", ".nan"), ("download.timeout", ".inf")],
)
def test_every_float_is_finite(tmp_path: Path, key: str, value: str) -> None:
    section, leaf = key.split(".")
    lines = (ROOT / "params.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    at = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(f"{leaf}:"))
    lines[at] = f"  {leaf}: {value}"
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "params.yaml", SweepParams)
    assert f"line {at + 1}: {key}: Input should be a finite number" in str(err.value)


def test_problems_are_values_with_their_full_key() -> None:
    """Built from pydantic's structured errors: a rule across keys names each key it blames."""
    raw = real_params()
    raw["model"]["type"] = "numpy_mlp"
    raw["model"]["mlp"]["width"] = [8]  # depth 2: a rule of the section, at its own key
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert (
        Problem(
            "model.mlp",
            "width lists 1 layer sizes but depth is 2; give one size per "
            "hidden layer or a single int",
        )
        in err.value.problems
    )
    raw["model"].update(dtype_policy="mixed_bfloat16")
    raw["model"]["mlp"]["width"] = 8
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    keys = [p.key for p in err.value.problems]
    assert keys == ["train.optimizer", "train.lr_schedule", "model.dtype_policy"]
    assert "Value error" not in str(err.value)


# --- one job per module: what the stages depend on; the generated reference ------------------


def test_no_stage_depends_on_the_sweep_or_on_editing() -> None:
    """Editing the sweep's schema, its checks or the params editor reruns no stage."""
    import yaml as pyyaml

    from digits.tools import stagedeps

    pipeline = pyyaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage, files in stagedeps.expected_deps(ROOT, pipeline).items():
        code = {f: (ROOT / f).read_text() for f in files}
        for marker in ("class SweepConfig", "def edit_params", "def space_problems"):
            assert not [f for f, text in code.items() if marker in text], (stage, marker)


def test_configuration_reference_is_current_and_complete() -> None:
    from digits.tools import configdoc

    assert configdoc.undocumented() == []
    text = configdoc.render()
    assert text == (ROOT / "docs/configuration.md").read_text(), "run `make docs-config`"
    raw = real_params()
    for key in flatten({k: v for k, v in raw.items() if k != "sweep"}):
        if not key.startswith(("download.files.", "download.sizes.")):
            assert text.count(f"| `{key}` |") == 1, key
    for key in raw["sweep"]:
        assert f"`sweep.{key}" in text, key


def test_a_field_without_a_description_is_named() -> None:
    from pydantic import BaseModel, Field

    from digits.tools import configdoc

    class Section(BaseModel):
        told: int = Field(default=1, description="Said.")
        untold: int = 2

    class Root(BaseModel):
        section: Section = Field(default=Section(), description="A section.")

    assert configdoc.undocumented(Root) == ["section.untold"]


def test_elastic_distortion_needs_a_smoothing_and_all_zero_is_off() -> None:
    raw = real_params()
    raw["model"]["augment"] = {k: 0 for k in raw["model"]["augment"]}
    assert not parse_params(raw).model.augment.enabled  # every distortion 0: off
    raw["model"]["augment"]["elastic"] = 17
    with pytest.raises(ParamsError, match="elastic distortion needs elastic_sigma above 0"):
        parse_params(raw)


def test_key_value_overrides_read_their_values_as_yaml_and_apply_to_the_real_config() -> None:
    overrides = parse_overrides(["train.epochs=12", "model.mlp.width=[200,100]", "x.y=a=b"])
    assert overrides == {"train.epochs": 12, "model.mlp.width": [200, 100], "x.y": "a=b"}
    params = load_params(ROOT / "params.yaml").with_overrides(
        parse_overrides(["train.learning_rate=0.003", "model.mlp.activation=tanh"])
    )
    assert params.train.learning_rate == 0.003 and params.model.mlp.activation == "tanh"
    with pytest.raises(ParamsError, match=r"train\.epochs: expected KEY=VALUE"):
        parse_overrides(["train.epochs"])
