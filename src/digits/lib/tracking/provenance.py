"""What a run records about where it came from: the code's commit, the DVC experiment, and the
data as MLflow dataset inputs identified by their sha256."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow

from digits.lib.environment import Environment

DATA_DIGEST = "data.sha256"  # the tag of the sha256 of the training and validation files
# the two runs of `train.refit` name each other
REFIT_OF = "refit.of"  # on the refit: the validation run that chose its epochs
REFIT_BY = "refit.by"  # on that validation run: the refit trained after it


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with `-dirty` when the work tree has changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def context_tags(root: Path, data_digest: str, env: Environment) -> dict[str, str]:
    """Tags that tie a run to its code, data and DVC experiment."""
    tags = {DATA_DIGEST: data_digest}
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        tags["git.commit"] = commit
    if env.exp_name:
        tags["dvc.exp_name"] = env.exp_name
    if env.baseline_rev:
        tags["dvc.baseline_rev"] = env.baseline_rev
    return tags


def numpy_dataset(x: Any, y: Any, path: Path, digest: str) -> mlflow.data.Dataset:
    """A split as an MLflow dataset named after its file, identified by `digest` (its first 8
    digits, the length MLflow's own have). (MLflow's own digest would hash the first 10,000
    values only, after copying the whole array.)"""
    with warnings.catch_warnings():  # a local path matches two equivalent source resolvers
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(
            x, targets=y, name=path.name, source=str(path.resolve()), digest=digest[:8]
        )


def log_dataset(x: Any, y: Any, path: Path, digest: str, context: str) -> None:
    """Record a split as the run's dataset input (shown in the UI's Datasets column), identified
    by `digest`, the sha256 of the data files, all of it in the input's tag `sha256`."""
    mlflow.log_input(numpy_dataset(x, y, path, digest), context=context, tags={"sha256": digest})
