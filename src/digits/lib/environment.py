"""The environment variables the project obeys, read once by each entry point (a stage's or a
tool's `main`) into a typed value that is passed down, so no library function reads
`os.environ` behind its caller's back."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Environment:
    """What the environment says; None where a variable is unset or empty."""

    dvc_root: Path | None = None  # $DVC_ROOT: DVC sets it for every stage, also in --temp runs
    tracking_uri: str | None = None  # $MLFLOW_TRACKING_URI: the MLflow store, over params.yaml
    exp_name: str | None = None  # $DVC_EXP_NAME: the DVC experiment a stage runs in
    baseline_rev: str | None = None  # $DVC_EXP_BASELINE_REV: the commit it was made from
    mnist_mirror: str | None = None  # $MNIST_MIRROR: a folder `download` tries first

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """The variables of `environ` (this process's environment by default)."""
        env = os.environ if environ is None else environ
        root = env.get("DVC_ROOT")
        return cls(
            dvc_root=Path(root) if root else None,
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            exp_name=env.get("DVC_EXP_NAME") or None,
            baseline_rev=env.get("DVC_EXP_BASELINE_REV") or None,
            mnist_mirror=env.get("MNIST_MIRROR") or None,
        )

    def project_root(self, params_path: Path) -> Path:
        """The project's root that relative paths are anchored at: $DVC_ROOT (the main
        workspace even for `dvc exp run --temp` and queued runs), else params.yaml's folder."""
        return self.dvc_root or params_path.resolve().parent
