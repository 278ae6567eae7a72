"""Speed to accuracy: ladder rungs through the pipeline against keras-io's mnist_convnet
(bench/keras_convnet.py), with the FLOPs each run did."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits.lib.config import load_params
from digits.tools.bench.timing import SCRIPTS, timed
from digits.tools.provenance import machine

if TYPE_CHECKING:
    from digits.lib.config import Params
    from digits.tools.ladder import Rung

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flops:
    """A training run's arithmetic: one image forward, one image trained, the whole run."""

    forward_mflop: float
    train_mflop_per_image: float
    run_tflop: float


@dataclass(frozen=True)
class Convnet:
    """keras-io's example CNN: fit seconds to 99.0% test (None if never), each epoch, wall."""

    seconds_to_target: float | None
    epochs: list[dict[str, float]]
    wall: float


@dataclass(frozen=True)
class RungSpeed:
    """One rung's figures as the ladder records them, with its FLOPs, the convnet ratio and
    the machine's load around it."""

    rung: str
    figures: dict[str, Any]  # `ladder.measure`'s result
    flops: Flops
    gflop_per_s: float
    convnet_ratio: float | None  # convnet seconds / ours; None when the convnet never got there
    load_before: float
    load_after: float

    def as_json(self) -> dict[str, Any]:
        """One entry of speed.json's `rungs`: every figure at the top level."""
        return {
            "rung": self.rung,
            **self.figures,
            **asdict(self.flops),
            "gflop_per_s": self.gflop_per_s,
            "convnet_ratio": self.convnet_ratio,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RungSpeed:
        """Read back what `as_json` wrote."""
        own = {f.name for f in fields(cls)} | {f.name for f in fields(Flops)}
        flops = Flops(**{f.name: data[f.name] for f in fields(Flops)})
        figures = {k: v for k, v in data.items() if k not in own}
        rest = {k: data[k] for k in ("gflop_per_s", "convnet_ratio", "load_before", "load_after")}
        return cls(data["rung"], figures, flops, **rest)


@dataclass(frozen=True)
class Speed:
    """The convnet's run, then each selected rung's."""

    convnet: Convnet
    rungs: list[RungSpeed]

    def as_json(self) -> dict[str, Any]:
        """The results file's layout (reports/bench/speed.json, read by `benchpage`)."""
        return {"convnet": asdict(self.convnet), "rungs": [r.as_json() for r in self.rungs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Speed:
        """Read back what `as_json` wrote."""
        return cls(Convnet(**data["convnet"]), [RungSpeed.from_json(r) for r in data["rungs"]])


def forward_flops(model: Any) -> int:
    """FLOPs (2 per multiply-add) of one image through the model's convolutions and dense
    layers, the work that matters; pooling, activations and normalisation are left out."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            rows, cols, out = layer.output.shape[1:]
            k_rows, k_cols = layer.kernel_size
            flops += 2 * rows * cols * out * k_rows * k_cols * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return flops


def run_flops(params: Params, n_train: int, n_val: int, epochs: int) -> Flops:
    """FLOPs of a training run: per training image forward and backward (the backward pass
    about twice the forward), per run with each epoch's validation pass."""
    from digits.lib.models import build_model

    forward = forward_flops(build_model(params.model))
    return Flops(
        forward_mflop=forward / 1e6,
        train_mflop_per_image=3 * forward / 1e6,
        run_tflop=epochs * (3 * forward * n_train + forward * n_val) / 1e12,
    )


def convnet_seconds(data: Path, env: dict[str, str]) -> Convnet:
    """Run keras-io's mnist_convnet (bench/keras_convnet.py) until it reaches 99.0% test."""
    script = SCRIPTS / "keras_convnet.py"
    wall, stdout = timed([sys.executable, str(script), "--data", str(data)], env)
    return Convnet(**json.loads(stdout.strip().splitlines()[-1]), wall=wall)


def rung_speed(
    rung: Rung, every: Sequence[Rung], params: Params, sizes: tuple[int, int], convnet: Convnet
) -> RungSpeed:
    """One rung through the pipeline (`ladder.measure`), recorded in the ladder's results
    too; `sizes` = (training images, validation images)."""
    from digits.tools import ladder

    load = os.getloadavg()[0]
    ours = ladder.measure(rung, params)
    ladder.record(every, {rung.name: ours})
    flops = run_flops(params.with_overrides(rung.set), *sizes, ours["epochs"])
    to_target = convnet.seconds_to_target
    return RungSpeed(
        rung=rung.name,
        figures=ours,
        flops=flops,
        gflop_per_s=1000 * flops.run_tflop / ours["seconds"],
        convnet_ratio=to_target / ours["seconds"] if to_target else None,
        load_before=load,
        load_after=os.getloadavg()[0],
    )


def measure_speed(params_path: Path, data: Path, rungs_path: Path, only: Sequence[str]) -> Speed:
    """The selected ladder rungs through the pipeline (`dvc exp run`, every seed of a repeated
    rung), after keras-io's example CNN in the same run, so the ratio compares runs on the same
    machine minutes apart. The rungs' figures also go to the ladder's results and table."""
    from digits.lib.data import load_split
    from digits.lib.environment import Environment
    from digits.lib.tracking.store import setup
    from digits.tools import ladder

    params = load_params(params_path)
    every = ladder.load_rungs(rungs_path, params)
    rungs = [r for r in every if any(o in r.name for o in only)]
    environment = Environment.read()
    setup(params.mlflow, environment.project_root(params_path), environment)
    sizes = len(load_split(data / "train.npz")), len(load_split(data / "val.npz"))
    convnet = convnet_seconds(data, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    log.info("keras-io mnist_convnet: %s", convnet)
    results = []
    for rung in rungs:
        results.append(rung_speed(rung, every, params, sizes, convnet))
        log.info("%s: %s", rung.name, results[-1].as_json())
    return Speed(convnet, results)


def speed_markdown(result: Speed) -> str:
    """The speed figures as a Markdown section."""
    rows = []
    convnet = result.convnet.seconds_to_target
    for r in result.rungs:
        f = r.figures
        ratio = f"**{r.convnet_ratio:.1f}x**" if r.convnet_ratio else "-"
        test, seconds = f"{f['accuracy']:.2f}%", f"{f['seconds']:.1f} s"
        if "seeds" in f:
            test += f" (min {f['accuracy_min']:.2f}%, {len(f['seeds'])} seeds)"
            seconds += f" ({min(f['seconds_all']):.1f}-{max(f['seconds_all']):.1f})"
        rows.append(
            f"| {r.rung} | {test} | {seconds} | {f['epochs']} "
            f"| {r.flops.train_mflop_per_image:.1f} | {r.flops.run_tflop:.2f} "
            f"| {r.gflop_per_s:.0f} | {f.get('peak_memory_mb') or '-'} | {convnet or 0:.1f} s "
            f"| {ratio} | {r.load_before:.1f} / {r.load_after:.1f} |"
        )
    convnet_epochs = len(result.convnet.epochs)
    return f"""## Speed to accuracy: the rungs against keras-io's mnist_convnet

On {machine()}, {date.today().isoformat()}. Training = `train/seconds`; MFLOP per training
image = 3x the forward pass of the convolutions and dense layers; GFLOP/s = the run's FLOPs
(training and each epoch's validation pass) / training seconds; peak memory = the train
stage's peak resident memory (`train/peak_memory_mb`). Convnet = seconds of fit keras-io's
`mnist_convnet` needed to reach 99.0% test on the same split ({convnet_epochs} epochs), run
once right before the rungs; ratio = its seconds / ours. A repeated rung shows its median run
(test: median, and the worst seed; training: median and range). Load = 1-minute load average
before / after the rung.

| rung | test | training | epochs | MFLOP/image | TFLOP/run | GFLOP/s | peak MiB \
| convnet to 99.0% | ratio | load |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
