"""The shipped DVC remote between two clones, as docs/team.md tells a team to use it: Alice runs
the pipeline and `make push`es; Bob clones (no MNIST mirror, no network) and `make pull`s, and
has nothing left to run; experiments travel with `dvc exp push` / `dvc exp pull` through the
team's git remote."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import GIT_IDENTITY, make_command, project_copy, real_params, shrink, stage_env

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
OUTPUTS = ["data/processed/train.npz", "data/processed/test.npz", "models/model.keras"]


def run(cmd: list[str], cwd: Path, env: dict[str, str], network: bool = True) -> str:
    if not network:  # a network namespace with nothing in it (root only: see `offline`)
        cmd = ["unshare", "--net", "--", *cmd]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def offline() -> bool:
    """Whether Bob's commands can run with no network at all (`unshare --net` needs root)."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return True
    print("not root: Bob's clone runs with the network, but with no MNIST source it can reach")
    return False


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, mirror):
    """Alice's clone after `dvc repro` and `make push`, the team's bare git remote, and Bob's
    fresh clone of it; all beside each other, so the default remote ../digits-dvc-storage is
    one folder for both."""
    folder, hashes = mirror
    top = tmp_path_factory.mktemp("team")
    private_mirror = top / "mirror"
    shutil.copytree(folder, private_mirror)
    env = stage_env(**GIT_IDENTITY)
    alice = project_copy(top / "alice", shrink(real_params(), hashes, [str(private_mirror)]))
    first = run([str(BIN / "dvc"), "repro"], alice, env)
    assert stages_run(first) >= {"download", "preprocess", "train"}
    run(["git", "add", "-A"], alice, env)
    run(["git", "commit", "-qm", "pipeline run"], alice, env)
    run(["git", "clone", "-q", "--bare", str(alice), str(top / "hub.git")], top, env)
    run(["git", "remote", "add", "origin", str(top / "hub.git")], alice, env)
    run(["git", "fetch", "-q", "origin"], alice, env)
    pushed = run(make_command("push"), alice, env)
    shutil.rmtree(private_mirror)  # from here on, no MNIST source exists anywhere
    run(["git", "clone", "-q", str(top / "hub.git"), str(top / "bob")], top, env)
    return top, alice, top / "bob", env, pushed


def test_default_remote_is_a_folder_beside_the_clone(team) -> None:
    top, _, _, _, pushed = team
    storage = top / "digits-dvc-storage"
    assert storage.is_dir() and any(storage.rglob("*")), pushed
    assert "pushed" in pushed


def test_second_clone_pulls_data_and_model_then_has_nothing_to_run(team) -> None:
    _, alice, bob, env, _ = team
    network = not offline()
    assert not (bob / "models/model.keras").exists()
    run(make_command("pull"), bob, env, network=network)
    for name in OUTPUTS:
        assert (bob / name).read_bytes() == (alice / name).read_bytes(), name
    status = run([str(BIN / "dvc"), "status"], bob, env, network=network)
    assert "Data and pipelines are up to date" in status, status
    again = run([str(BIN / "dvc"), "repro"], bob, env, network=network)
    assert stages_run(again) == set(), again
    assert not (bob / "mlflow.db").exists(), "repro trained nothing"


def test_experiment_travels_between_clones(team) -> None:
    _, alice, bob, env, _ = team
    run(
        [str(BIN / "dvc"), "exp", "run", "-n", "lr2", "-S", "train.learning_rate=0.002"], alice, env
    )
    model = (alice / "models/model.keras").read_bytes()
    run([str(BIN / "dvc"), "exp", "push", "origin", "lr2"], alice, env)

    run([str(BIN / "dvc"), "exp", "pull", "origin", "lr2"], bob, env)
    listed = run([str(BIN / "dvc"), "exp", "list", "--name-only"], bob, env)
    assert "lr2" in listed.split(), listed
    run([str(BIN / "dvc"), "exp", "apply", "lr2"], bob, env, network=not offline())
    assert (bob / "models/model.keras").read_bytes() == model
    assert "learning_rate: 0.002" in (bob / "params.yaml").read_text()
    status = run([str(BIN / "dvc"), "status"], bob, env)
    assert "Data and pipelines are up to date" in status, status
