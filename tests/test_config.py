"""params.yaml validation: the real file passes; every problem is named, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from digits.lib.config import ParamsError, load_params, parse_params, run_params

from conftest import ROOT, real_params


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


def test_invalid_params_fail_fast_without_tensorflow(tmp_path: Path) -> None:
    """A stage given a bad params.yaml exits with the message, before TensorFlow loads."""
    raw = real_params()
    raw["train"]["batch_size"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    code = (
        "import sys\n"
        "from digits.stages.train import main\n"
        "try:\n"
        "    main(['--params', 'params.yaml', '--data', 'd', '--model', 'm.keras',"
        " '--run-info', 'r', '--metrics', 'x', '--history', 'h'])\n"
        "except SystemExit as e:\n"
        "    print('tensorflow' in sys.modules, e.code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False 1"
    assert "train.batch_size: Input should be greater than 0" in out.stderr


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
