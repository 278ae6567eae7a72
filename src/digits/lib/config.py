"""The one schema for `params.yaml`, validated before any stage does work.

Importing this module is cheap (no TensorFlow), so a typo in `params.yaml` fails in well under a
second with one message that lists every problem.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from digits import PipelineError
from digits.lib.vocab import OBJECTIVES, direction

Activation = Literal["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish"]
OptimizerName = Literal["sgd", "momentum", "rmsprop", "adagrad", "adadelta", "adam"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
# numpy's legacy RandomState and TensorFlow's seeds take 0 .. 2**32 - 1; outside it they fail
# inside numpy after TensorFlow has loaded
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Upper bounds on sizes: far above anything MNIST needs, low enough that a typo (an extra zero
# or three) is caught here instead of by the kernel's out-of-memory killer
MAX_UNITS = 65_536
MAX_FILTERS = 4_096
MAX_BATCH = 65_536
MAX_EPOCHS = 10_000
# A network above this many parameters is refused before TensorFlow loads: 4 bytes per weight,
# x4 when training with Adam (weights, gradients, two moments): 16 GB at this ceiling
MAX_PARAMS = 1_000_000_000
Units = Annotated[int, Field(gt=0, le=MAX_UNITS)]
Direction = Literal["maximize", "minimize"]
KernelSize = Annotated[int, Field(ge=1, le=7)]
IDX_KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")
# Real MNIST's decompressed sizes in bytes: the download is capped at these plus a margin
MNIST_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}


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
    # expected decompressed size of each file (bytes): a download, or its decompression, that
    # runs past size x (1 + size_margin) is aborted
    sizes: dict[str, Annotated[int, Field(gt=0, le=2**40)]] = dict(MNIST_SIZES)
    size_margin: float = Field(default=0.1, ge=0, le=10)

    @model_validator(mode="after")
    def _canonical_names(self) -> DownloadConfig:
        expected = {f"{split}-{kind}" for split in ("train", "t10k") for kind in IDX_KINDS}
        if set(self.files) != expected:
            raise ValueError(f"files must name exactly {sorted(expected)}")
        if set(self.sizes) != expected:
            raise ValueError(f"sizes must name exactly {sorted(expected)}")
        return self

    def cap(self, name: str) -> int:
        """The most bytes `name` may take, downloaded or decompressed."""
        return int(self.sizes[name] * (1 + self.size_margin)) + 4096  # + gzip's own header


class DataConfig(Strict):
    """The validation split carved off the training set (the test set is never used to select)."""

    val_size: int = Field(default=10_000, gt=0, le=100_000_000)
    seed: Seed = 42


class SoftmaxConfig(Strict):
    """Multinomial logistic regression: one dense softmax layer on the 784 pixels."""


class MLPConfig(Strict):
    """Dense hidden layers; `width` is one size for all layers or one size per layer."""

    depth: int = Field(default=2, ge=0, le=16)
    width: Units | list[Units] = 512
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

    filters: list[Annotated[int, Field(gt=0, le=MAX_FILTERS)]] = Field(
        default=[32, 64], min_length=1, max_length=4
    )
    kernel_size: KernelSize | list[KernelSize] = 3
    convs_per_block: int = Field(default=1, ge=1, le=3)
    padding: Literal["same", "valid"] = "same"
    pooling: Literal["max", "avg"] = "max"
    pool_first: bool = False
    dense: int = Field(default=128, ge=0, le=MAX_UNITS)
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

    hidden: list[Units] = Field(default=[30], min_length=1, max_length=4)
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
    batch_size: int = Field(default=128, gt=0, le=MAX_BATCH)
    epochs: int = Field(default=25, gt=0, le=MAX_EPOCHS)
    monitor: Literal["val/loss", "val/accuracy"] = "val/accuracy"
    patience: int = Field(default=10, ge=0, le=MAX_EPOCHS)
    seed: Seed = 42
    # `make repeat`: seeds train.seed, train.seed + 1, ...; the train stage trains train.seed only
    repeats: int = Field(default=5, gt=0, le=1_000)
    resume: bool = True  # a killed train stage continues from its last epoch's checkpoint

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> TrainConfig:
        if self.warmup and self.lr_schedule != "cosine":
            raise ValueError(
                f"warmup {self.warmup} needs lr_schedule: cosine (got {self.lr_schedule!r})"
            )
        return self


class EvaluateConfig(Strict):
    """How `evaluate` and `predict` turn a trained model into predictions."""

    # test-time shifts: each image is also predicted moved by every whole-pixel offset up to
    # this far along each axis ((2n + 1)^2 views) and the probabilities averaged (0: off)
    shifts: int = Field(default=0, ge=0, le=2)


class PredictConfig(Strict):
    """Limits on each file given to `predict`, checked before it is decoded: every input is
    treated as hostile (a decompression bomb, a `.npy` header that lies)."""

    max_bytes: int = Field(default=100_000_000, gt=0, le=2**40)  # per file, image or .npy
    max_pixels: int = Field(default=50_000_000, gt=0, le=2**40)  # width x height of an image


class MLflowConfig(Strict):
    """Where runs go when MLFLOW_TRACKING_URI is not set."""

    experiment: str = Field(default="mnist", min_length=1)
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    registered_model: str = Field(default="mnist-digits", min_length=1)  # evaluate registers
    champion_alias: str = Field(default="champion", pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]*$")
    # McNemar's exact test on paired test predictions: the level a challenger must beat
    significance: float = Field(default=0.05, gt=0, lt=1)


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


class PromoteRule(Strict):
    """How `make promote` picks one trial of a Pareto front (several objectives): among the
    front's trials within `tolerance` of the best `metric`, the one best in `then`."""

    metric: str = "val/accuracy"
    tolerance: float = Field(default=0.001, ge=0)  # in `metric`'s units: 0.001 = 0.1 point
    then: str = "model.n_params"


class SearchSpace(Strict):
    """Another study over another space, `make sweep SPACE=<name>`: it replaces the study name,
    `fixed` and `space` of `sweep:` (and `n_trials` and `timeout`, when given); the rest is
    shared."""

    study: str = Field(min_length=1)
    n_trials: int | None = Field(default=None, gt=0)
    timeout: float | None = Field(default=None, gt=0)  # seconds; in place of sweep.timeout
    fixed: dict[str, Any]
    space: dict[str, Dimension] = Field(min_length=1)


class SweepConfig(Strict):
    """The Optuna search (`make sweep`): the space is data, keyed by dotted param names."""

    study: str = Field(default="mnist-mlp", min_length=1)
    storage: str | None = None  # None: sweeps/optuna-journal.log; or any SQLAlchemy URL
    n_trials: int = Field(default=30, gt=0)  # finished (complete or pruned) trials to reach
    timeout: float | None = Field(default=None, gt=0)  # seconds per `make sweep`
    sampler: Literal["tpe", "random"] = "tpe"
    seed: Seed = 42
    pruner: Literal["median", "hyperband", "none"] = "hyperband"
    startup_trials: int = Field(default=5, ge=0)  # trials before the median pruner prunes
    warmup_epochs: int = Field(default=1, ge=0)  # epochs every trial runs before it can be pruned
    heartbeat: float = Field(default=30.0, gt=0)  # seconds; stale-trial detection, RDB storages
    # metric -> maximize | minimize; two or more make a Pareto front (and turn pruning off)
    objectives: dict[str, Direction] = Field(
        default_factory=lambda: {"val/accuracy": "maximize"}, min_length=1
    )
    repeats: int = Field(default=1, gt=0)  # seeds per trial; each objective is their mean
    promote: PromoteRule = PromoteRule()
    workers: int = Field(default=2, ge=1, le=256)  # processes on this machine (--workers wins)
    # TensorFlow threads per worker (0: cores / workers); workers x threads above the cores
    # makes the workers' thread pools fight over them
    threads: int = Field(default=0, ge=0, le=1024)
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
        if chosen.timeout:
            update["timeout"] = chosen.timeout
        return self.model_copy(update=update)


class Params(Strict):
    """All of `params.yaml`."""

    download: DownloadConfig
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mlflow: MLflowConfig = MLflowConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    predict: PredictConfig = PredictConfig()
    sweep: SweepConfig | None = None

    @model_validator(mode="after")
    def _network_fits(self) -> Params:
        n = estimate_params(self.model)
        if n > MAX_PARAMS:
            raise ValueError(
                f"model.{self.model.type}: the network would have ~{n:,} parameters "
                f"(~{training_bytes(n) / 1e9:,.0f} GB to train); the limit is {MAX_PARAMS:,}: "
                "make it smaller"
            )
        return self

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
    def _sweep_objectives_are_known(self) -> Params:
        if self.sweep is not None and (problems := objective_problems(self.sweep)):
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


def objective_problems(sweep: SweepConfig) -> list[str]:
    """Why `sweep.objectives` or `sweep.promote` cannot be run, one message per key: names
    outside the vocabulary, a direction that would seek the worst models, a promotion rule on a
    metric the study does not optimise."""
    known = ", ".join(OBJECTIVES)
    problems = []
    for name, way in sweep.objectives.items():
        key = f"sweep.objectives.{name}"
        if name.startswith("test/"):
            problems.append(f"{key}: the test set never selects models; use val/ (one of {known})")
        elif name not in OBJECTIVES:
            problems.append(f"{key}: unknown objective; one of {known}")
        elif way != direction(name):
            problems.append(f"{key}: {name} is to {direction(name)}, not {way}")
    rule = sweep.promote
    for field in ("metric", "then"):
        name = getattr(rule, field)
        if name not in OBJECTIVES:
            problems.append(f"sweep.promote.{field}: unknown metric {name!r}; one of {known}")
        elif len(sweep.objectives) > 1 and name not in sweep.objectives:
            problems.append(
                f"sweep.promote.{field}: {name} is not in sweep.objectives "
                f"({', '.join(sweep.objectives)}), so the Pareto front says nothing about it"
            )
    if rule.metric == rule.then:
        problems.append("sweep.promote.then: must differ from sweep.promote.metric")
    return problems


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


def estimate_params(model: ModelConfig, image_shape: tuple[int, int] = (28, 28)) -> int:
    """The parameter count of the network `build_model` (or numpy_mlp) would build, weights,
    biases and batch-norm statistics included, computed without TensorFlow."""
    features = image_shape[0] * image_shape[1]
    if model.type == "softmax":
        sizes = [features]
    elif model.type == "numpy_mlp":
        sizes = [features, *model.numpy_mlp.hidden]
    elif model.type == "mlp":
        sizes = [features, *model.mlp.units]
    else:
        cnn = model.cnn
        total, channels, (rows, cols) = 0, 1, image_shape
        shrink = cnn.padding == "valid"  # each convolution trims kernel - 1 rows and columns
        for filters, kernel in zip(cnn.filters, cnn.kernels, strict=True):
            for _ in range(cnn.convs_per_block):
                total += kernel**2 * channels * filters
                total += 4 * filters if cnn.batch_norm else filters  # gamma, beta, mean, var
                channels = filters
                rows, cols = (rows - kernel + 1, cols - kernel + 1) if shrink else (rows, cols)
            rows, cols = rows // 2, cols // 2
            if rows < 1 or cols < 1:
                raise ValueError(
                    f"model.cnn: the {image_shape[0]}x{image_shape[1]} images shrink to nothing "
                    f"by block {len(cnn.filters)} of kernels {cnn.kernels} "
                    f"(padding {cnn.padding}); use fewer blocks, smaller kernels or padding: same"
                )
        flat = rows * cols * channels
        if cnn.dense:
            total += flat * cnn.dense + cnn.dense
            flat = cnn.dense
        return total + flat * 10 + 10
    total = 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        total += fan_in * fan_out + fan_out
        if model.type == "mlp" and model.mlp.batch_norm:
            total += 4 * fan_out
    return total + sizes[-1] * 10 + 10


def training_bytes(n_params: int) -> int:
    """Memory to train `n_params` float32 weights with Adam: weights, gradients, two moments."""
    return 16 * n_params


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


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[str]:
    """Every key given twice in the same mapping of a composed YAML document, as
    `dotted.key: lines A and B`. (PyYAML, like most loaders, silently keeps the last one.)"""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            name = f"{path}{key}"
            if key in seen:
                problems.append(f"{name}: lines {seen[key]} and {line}")
            else:
                seen[key] = line
            problems += duplicate_keys(value_node, f"{name}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}{i}.")
    return problems


def load_yaml(path: Path) -> Any:
    """A YAML file's content, refusing a key given twice in one mapping."""
    text = path.read_text()
    duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    if duplicates:
        raise ParamsError(
            f"{path}: {len(duplicates)} duplicate key(s); YAML would silently keep the last, "
            "delete the one you do not mean:\n" + "\n".join(f"  {d}" for d in duplicates)
        )
    return yaml.safe_load(text)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    try:
        raw = load_yaml(path)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
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
        "train": params.train.model_dump(exclude={"repeats"}),  # how many runs, not what each is
    }
    return flatten(tree)
