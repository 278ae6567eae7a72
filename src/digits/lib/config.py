"""The one schema for `params.yaml`, validated before any stage does work.

Importing this module is cheap (no TensorFlow), so a typo in `params.yaml` fails in well under a
second with one message that lists every problem.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from digits import PipelineError

Activation = Literal["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish"]
OptimizerName = Literal["sgd", "momentum", "rmsprop", "adagrad", "adadelta", "adam"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
KernelSize = Annotated[int, Field(ge=1, le=7)]
IDX_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")


class Strict(BaseModel):
    """Base for every section: unknown keys (typos) are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadConfig(Strict):
    """Where the four IDX files come from and what their decompressed content must hash to."""

    mirrors: list[str] = Field(min_length=1)
    local_mirror: str | None = None
    files: dict[str, Sha256] = Field(min_length=4, max_length=4)
    retries: int = Field(default=2, ge=0, le=10)
    timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _canonical_names(self) -> DownloadConfig:
        expected = {f"{split}-{kind}" for split in ("train", "t10k") for kind in IDX_KINDS}
        if set(self.files) != expected:
            raise ValueError(f"files must name exactly {sorted(expected)}")
        return self


class DataConfig(Strict):
    """The validation split carved off the training set (the test set is never used to select)."""

    val_size: int = Field(default=10_000, gt=0)
    seed: int = 42


class SoftmaxConfig(Strict):
    """Multinomial logistic regression: one dense softmax layer on the 784 pixels."""


class MLPConfig(Strict):
    """Dense hidden layers; `width` is one size for all layers or one size per layer."""

    depth: int = Field(default=2, ge=0, le=16)
    width: Annotated[int, Field(gt=0)] | list[Annotated[int, Field(gt=0)]] = 512
    activation: Activation = "relu"
    dropout: Probability = 0.3
    batch_norm: bool = False

    @model_validator(mode="after")
    def _width_matches_depth(self) -> MLPConfig:
        if isinstance(self.width, list) and len(self.width) != self.depth:
            raise ValueError(
                f"width lists {len(self.width)} layer sizes but depth is {self.depth}; "
                "give one size per hidden layer or a single int"
            )
        return self

    @property
    def units(self) -> list[int]:
        """Hidden layer sizes, first to last."""
        return list(self.width) if isinstance(self.width, list) else [self.width] * self.depth


class CNNConfig(Strict):
    """Conv blocks (each `convs_per_block` convolutions then pooling), a dense head, dropout.
    `kernel_size` is one size for every block or one per block; `padding: valid` shrinks each
    map by kernel_size - 1 (fewer FLOPs); `pool_first` pools the last convolution of a block
    before its activation (the same result for max pooling and ReLU, a quarter of the work)."""

    filters: list[Annotated[int, Field(gt=0)]] = Field(default=[32, 64], min_length=1, max_length=4)
    kernel_size: KernelSize | list[KernelSize] = 3
    convs_per_block: int = Field(default=1, ge=1, le=3)
    padding: Literal["same", "valid"] = "same"
    pooling: Literal["max", "avg"] = "max"
    pool_first: bool = False
    dense: int = Field(default=128, ge=0)
    activation: Activation = "relu"
    dropout: Probability = 0.25
    batch_norm: bool = False

    @model_validator(mode="after")
    def _kernels_match_blocks(self) -> CNNConfig:
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.filters):
            raise ValueError(
                f"kernel_size lists {len(self.kernel_size)} sizes but filters has "
                f"{len(self.filters)} blocks; give one size per block or a single int"
            )
        return self

    @property
    def kernels(self) -> list[int]:
        """Kernel size of each block, first to last."""
        k = self.kernel_size
        return list(k) if isinstance(k, list) else [k] * len(self.filters)


class NumpyMLPConfig(Strict):
    """The course notes' from-scratch network in NumPy: sigmoid layers, mini-batch SGD with
    `train.learning_rate` (eta) and `train.batch_size`; e.g. sizes [784, 30, 10]."""

    hidden: list[Annotated[int, Field(gt=0)]] = Field(default=[30], min_length=1, max_length=4)
    cost: Literal["quadratic", "cross_entropy"] = "quadratic"


class AugmentConfig(Strict):
    """Random distortions of each training batch (Keras preprocessing layers at the model's
    input: active in `fit` only, identity at evaluation and prediction). All 0: off."""

    rotation: float = Field(default=0.0, ge=0, le=45)  # degrees, either way
    shift: float = Field(default=0.0, ge=0, le=0.3)  # fraction of the image side, each axis
    zoom: float = Field(default=0.0, ge=0, le=0.3)  # fraction, in or out
    # whole pixels, each axis: pad-and-crop translation (no resampling, so no blur)
    crop: int = Field(default=0, ge=0, le=8)

    @property
    def enabled(self) -> bool:
        """Whether any distortion is on."""
        return bool(self.rotation or self.shift or self.zoom or self.crop)


class ModelConfig(Strict):
    """Which family to build, the settings of each family, and training-time augmentation."""

    type: Literal["softmax", "mlp", "cnn", "numpy_mlp"] = "mlp"
    softmax: SoftmaxConfig = SoftmaxConfig()
    mlp: MLPConfig = MLPConfig()
    cnn: CNNConfig = CNNConfig()
    numpy_mlp: NumpyMLPConfig = NumpyMLPConfig()
    augment: AugmentConfig = AugmentConfig()
    # Keras dtype policy of every layer but the float32 softmax output. mixed_bfloat16 computes
    # in bfloat16 with float32 weights: faster convolutions on CPUs with AVX512-BF16 or AMX.
    dtype_policy: Literal["float32", "mixed_bfloat16"] = "float32"


class TrainConfig(Strict):
    """The optimiser and fitting loop."""

    optimizer: OptimizerName = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    # fraction of all steps spent raising the rate linearly from 0 before the cosine decay
    # (with it, cosine is a one-cycle schedule)
    warmup: float = Field(default=0.0, ge=0, lt=1)
    beta_1: float = Field(default=0.9, ge=0, lt=1)  # Adam's decay of the mean of gradients
    beta_2: float = Field(default=0.999, ge=0, lt=1)  # ... and of their squares
    label_smoothing: Probability = 0.0  # of the one-hot targets of the loss
    batch_size: int = Field(default=128, gt=0)
    epochs: int = Field(default=25, gt=0)
    monitor: Literal["val/loss", "val/accuracy"] = "val/accuracy"
    patience: int = Field(default=10, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> TrainConfig:
        if self.warmup and self.lr_schedule != "cosine":
            raise ValueError(
                f"warmup {self.warmup} needs lr_schedule: cosine (got {self.lr_schedule!r})"
            )
        return self


class MLflowConfig(Strict):
    """Where runs go when MLFLOW_TRACKING_URI is not set."""

    experiment: str = Field(default="mnist", min_length=1)
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    registered_model: str = Field(default="mnist-digits", min_length=1)  # evaluate registers
    champion_alias: str = Field(default="champion", pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]*$")


class Dimension(Strict):
    """One searched setting: a list of `choices`, or a range `low`..`high` (integers when both
    ends are integers), sampled on a log scale when `log` is true."""

    choices: list[Any] | None = Field(default=None, min_length=1)
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _choices_or_range(self) -> Dimension:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either `choices` or both `low` and `high`")
        if self.choices is None and not self.low < self.high:  # type: ignore[operator]
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.choices is not None or self.low <= 0):  # type: ignore[operator]
            raise ValueError("`log` needs a range with low > 0")
        return self

    @property
    def values(self) -> list[Any]:
        """The values to check against the schema: every choice, or both ends of the range."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class SearchSpace(Strict):
    """Another study over another space, `make sweep SPACE=<name>`: it replaces the study name,
    `fixed` and `space` of `sweep:` (and `n_trials`, when given); the rest is shared."""

    study: str = Field(min_length=1)
    n_trials: int | None = Field(default=None, gt=0)
    fixed: dict[str, Any]
    space: dict[str, Dimension] = Field(min_length=1)


class SweepConfig(Strict):
    """The Optuna search (`make sweep`): the space is data, keyed by dotted param names."""

    study: str = Field(default="mnist-mlp", min_length=1)
    storage: str | None = None  # None: sweeps/optuna-journal.log; or any SQLAlchemy URL
    n_trials: int = Field(default=30, gt=0)  # finished (complete or pruned) trials to reach
    timeout: float | None = Field(default=None, gt=0)  # seconds per `make sweep`
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 42
    pruner: Literal["median", "hyperband", "none"] = "hyperband"
    startup_trials: int = Field(default=5, ge=0)  # trials before the median pruner prunes
    warmup_epochs: int = Field(default=1, ge=0)  # epochs every trial runs before it can be pruned
    heartbeat: float = Field(default=30.0, gt=0)  # seconds; stale-trial detection, RDB storages
    workers: int = Field(default=2, ge=1)  # worker processes on this machine (--workers wins)
    # TensorFlow threads per worker (0: TensorFlow's default, one per core); keep
    # workers x threads <= cores, or the workers' thread pools fight over the cores
    threads: int = Field(default=1, ge=0)
    fixed: dict[str, Any]  # the same for every trial, e.g. `train.epochs: 15`
    space: dict[str, Dimension] = Field(min_length=1)
    spaces: dict[str, SearchSpace]  # other studies, by name: `make sweep SPACE=cnn`

    def choose(self, name: str | None) -> SweepConfig:
        """This sweep with the named space of `spaces` in place of its own (None: as it is)."""
        if name is None:
            return self
        if name not in self.spaces:
            raise ParamsError(f"sweep.spaces: no space {name!r}; there are {sorted(self.spaces)}")
        chosen = self.spaces[name]
        update = {"study": chosen.study, "fixed": chosen.fixed, "space": chosen.space}
        if chosen.n_trials:
            update["n_trials"] = chosen.n_trials
        return self.model_copy(update=update)


class Params(Strict):
    """All of `params.yaml`."""

    download: DownloadConfig
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MLflowConfig = MLflowConfig()
    sweep: SweepConfig | None = None

    @model_validator(mode="after")
    def _numpy_mlp_trains_with_sgd(self) -> Params:
        if self.model.type != "numpy_mlp":
            return self
        problems = []
        if self.train.optimizer != "sgd":
            problems.append(
                "train.optimizer: numpy_mlp trains with plain mini-batch SGD; set it to sgd "
                f"(got {self.train.optimizer!r})"
            )
        if self.train.lr_schedule != "constant":
            problems.append("train.lr_schedule: numpy_mlp keeps eta constant; set it to constant")
        if self.model.augment.enabled:
            problems.append("model.augment: numpy_mlp has no augmentation; set it to 0")
        if self.model.dtype_policy != "float32":
            problems.append("model.dtype_policy: numpy_mlp computes in NumPy; set it to float32")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _sweep_fits_schema(self) -> Params:
        if self.sweep is None:
            return self
        problems = _space_problems(self, self.sweep.fixed, self.sweep.space, "sweep")
        for name, chosen in self.sweep.spaces.items():
            where = f"sweep.spaces.{name}"
            problems += _space_problems(self, chosen.fixed, chosen.space, where)
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> Params:
        """A copy with dotted keys (`train.learning_rate`) replaced, validated like the file."""
        tree = self.model_dump()
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        return parse_params(tree, "overrides")


def _space_problems(
    params: Params, fixed: dict[str, Any], space: dict[str, Dimension], where: str
) -> list[str]:
    """Why a sweep's `fixed` settings or `space` would make invalid trials: every fixed value
    and every end or choice of each dimension, with the other dimensions at their first value
    (what trials will actually combine)."""
    known = flatten(params.model_dump())
    first = {**fixed, **{k: d.values[0] for k, d in space.items()}}
    first = {k: v for k, v in first.items() if k in known}
    problems = []
    for key in fixed:
        problems += _override_problems(params, first, f"{where}.fixed.{key}", key)
    for key, dim in space.items():
        for value in dim.values:
            overrides = {**first, key: value}
            problems += _override_problems(params, overrides, f"{where}.space.{key}", key)
    return problems


def _override_problems(
    params: Params, overrides: dict[str, Any], where: str, key: str
) -> list[str]:
    """Why `overrides` would make `params` invalid, as messages naming `where`: the problems
    of `key` itself and of the section rules it takes part in."""
    if key.split(".")[0] in ("sweep", "download"):
        return [f"{where}: only model, train and data settings can be searched"]
    if key not in flatten(params.model_dump()):
        return [f"{where}: no such setting"]
    try:
        params.model_copy(update={"sweep": None}).with_overrides(overrides)
    except ParamsError as err:
        problems = []
        for line in str(err).splitlines()[1:]:
            loc, _, message = line.strip().partition(": ")
            if key.startswith(loc) or loc.startswith(key):  # this setting, or its section's rule
                problems.append(f"{where}: {message.removeprefix('Value error, ')}")
        return problems
    return []


class ParamsError(PipelineError, ValueError):
    """`params.yaml` is missing, unreadable or invalid; the message lists every problem."""


def format_errors(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key, what was given and what is allowed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (typo?)")
            continue
        if e["type"] == "value_error" and not e["loc"]:  # cross-section checks, one per line
            lines += [f"  {msg}" for msg in e["msg"].removeprefix("Value error, ").splitlines()]
            continue
        given = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {e['msg']}{given}")
    return "\n".join([f"{source}: {len(lines)} invalid setting(s):", *lines])


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping, raising ParamsError that lists every problem."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, str(path))


def set_dotted(tree: MutableMapping[str, Any], key: str, value: Any, create: bool = False) -> None:
    """Set `a.b.c` in a nested mapping (a dict or a ruamel document); a missing key is a
    ParamsError unless `create` makes the sections and the key."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if create:
            node = node.setdefault(part, {})
        elif isinstance(node.get(part), MutableMapping):
            node = node[part]
        else:
            raise ParamsError(f"{key}: no such setting")
    if leaf not in node and not create:
        raise ParamsError(f"{key}: no such setting")
    node[leaf] = value


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value, create=True)
    return tree


def edit_params(path: Path, overrides: Mapping[str, Any]) -> None:
    """Write dotted-key settings into a params file, keeping its comments and layout. The
    result is validated before it replaces the file; an unknown key changes nothing."""
    from ruamel.yaml import YAML

    from digits.lib.files import atomic_path

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never wrap a line
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # lists indented under their key
    yaml_rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = yaml_rt.load(path.read_text())
    for key, value in overrides.items():
        set_dotted(document, key, value)
    with atomic_path(path) as tmp:
        with tmp.open("w") as f:
            yaml_rt.dump(document, f)
        parse_params(yaml.safe_load(tmp.read_text()), str(path))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a.b.c': value}, the names MLflow and `dvc params diff` show."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_params(params: Params) -> dict[str, Any]:
    """The params that define a training run, flattened; only the selected model family."""
    model = params.model
    family = getattr(model, model.type).model_dump()
    tree = {
        "data": params.data.model_dump(),
        "model": {
            "type": model.type,
            model.type: family,
            "augment": model.augment.model_dump(),
            "dtype_policy": model.dtype_policy,
        },
        "train": params.train.model_dump(),
    }
    return flatten(tree)
