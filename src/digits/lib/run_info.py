"""`models/run.json`: which MLflow run trained the model, written by `train` and read, through
`RunInfo` only, by `evaluate` and `report`. Loads neither MLflow nor Keras."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from digits import PipelineError
from digits.lib.files import write_json


class RunInfoError(PipelineError):
    """run.json is missing or is not what `train` writes."""


@dataclass(frozen=True)
class RunInfo:
    """The training run: its MLflow run id, its experiment and the model it logged
    (`models:/m-...`)."""

    run_id: str
    experiment_id: str | None
    model_uri: str

    @property
    def model_id(self) -> str:
        """The logged model's id (`m-...`)."""
        return self.model_uri.removeprefix("models:/")

    def write(self, path: Path) -> None:
        """Atomically, as JSON."""
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunInfo:
        """Parse and check `path`; a missing or malformed file is a RunInfoError that says
        what to do."""
        redo = "run `dvc repro train` (or `make pull` for a teammate's) to write it"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunInfoError(f"{path}: not found; {redo}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunInfoError(f"{path}: unreadable ({err}); {redo}") from None
        if not isinstance(raw, dict):
            raise RunInfoError(f"{path}: not a JSON object; {redo}")
        problems = [
            f"{key} must be a non-empty string"
            for key in ("run_id", "model_uri")
            if not isinstance(raw.get(key), str) or not raw[key]
        ]
        experiment = raw.get("experiment_id")
        if experiment is not None and not isinstance(experiment, str):
            problems.append("experiment_id must be a string or null")
        if isinstance(raw.get("model_uri"), str) and not raw["model_uri"].startswith("models:/"):
            problems.append("model_uri must be a models:/ URI")
        if problems:
            raise RunInfoError(f"{path}: {'; '.join(problems)}; {redo}")
        return cls(raw["run_id"], experiment, raw["model_uri"])
