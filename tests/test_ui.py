"""The MLflow UI in a real browser: Debian's Chromium, driven by Playwright, against `mlflow ui`
on a loopback port and a store filled by the real stages (two tiny runs) and a tiny sweep.

Skips, saying why, where Chromium or Playwright is missing; REQUIRE_BROWSER=1 (set by .ci/run)
makes that a failure. On a failed assertion it saves a screenshot and prints its path."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from digits.tools.server import serving

from helpers import free_port, real_params, shrink, stage_env

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# what a sandboxed root (a container, CI) needs: no user namespaces for Chromium's sandbox,
# a small /dev/shm, no GPU
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
SLOW = 180_000  # ms: the UI's bundle loads slowly on a busy 2-core machine


def require_browser() -> None:
    """Skip (or fail under REQUIRE_BROWSER=1) without Chromium or Playwright."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        reason = f"Playwright is not installed ({err}); pip install -e '.[dev]'"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM}; apt-get install chromium (or set CHROMIUM=)"
    if reason is None:
        return
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(reason + "; REQUIRE_BROWSER=1 makes the browser test mandatory")
    print(reason)
    pytest.skip(reason)


def flags(**paths: Path) -> list[str]:
    """`--per-class x` for per_class=x."""
    args = []
    for key, value in paths.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def filled(tmp_path_factory, mirror, processed: Path) -> Path:
    """A project whose store holds two tiny pipeline runs and a two-trial sweep."""
    require_browser()
    from digits.stages import evaluate, train

    _, hashes = mirror
    root = tmp_path_factory.mktemp("ui")
    raw = shrink(real_params(), hashes, ["x"])
    raw["sweep"].update(n_trials=2, startup_trials=1)
    raw["sweep"]["fixed"]["train.epochs"] = 1
    params = root / "params.yaml"
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("DVC_EXP_NAME", raising=False)
    try:
        for i, epochs in enumerate((1, 3)):
            raw["train"]["epochs"] = epochs
            params.write_text(yaml.safe_dump(raw))
            out = root / f"out{i}"
            stage = {"params": params, "run_info": out / "run.json", "data": processed}
            stage |= {"model": out / "model.keras", "history": out / "history.csv"}
            train.main(flags(**stage, metrics=out / "train.json"))
            evaluate.main(
                flags(**stage, metrics=out / "metrics.json", confusion=out / "confusion.csv")
                + flags(per_class=out / "pc.csv", figures=out / "figures")
                + flags(registry=out / "registry.json")
            )
    finally:
        mp.undo()
    cmd = [str(BIN / "python"), "-m", "digits.tools.sweep", "--params", str(params), "run"]
    cmd += flags(data=processed, out=root / "sweep")
    done = subprocess.run(cmd, cwd=root, env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture(scope="module")
def ui(filled: Path) -> Iterator[str]:
    """`mlflow ui` on the filled store, on a free loopback port; yields its base URL."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{filled / 'mlflow.db'}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # its own process group (`serving`): `mlflow ui` runs the server in child processes
    with serving(cmd, f"http://127.0.0.1:{port}", filled / "ui.log", env=stage_env()) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request) -> Iterator[object]:
    """A fresh page: no UI settings remembered from another test."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(SLOW)
    yield page
    context.close()


@contextlib.contextmanager
def screenshot_on_failure(page, name: str) -> Iterator[None]:
    """Save what the browser shows when an assertion (or a wait) fails, and say where."""
    try:
        yield
    except BaseException:
        folder = Path(os.environ.get("BROWSER_SCREENSHOTS", "browser-screenshots")).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failed page: {path}")
        raise


def store(filled: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{filled / 'mlflow.db'}")


def experiment_id(filled: Path) -> str:
    return store(filled).get_experiment_by_name("mnist").experiment_id


def pipeline_run(filled: Path, index: int = 1):
    run_id = json.loads((filled / f"out{index}" / "run.json").read_text())["run_id"]
    return store(filled).get_run(run_id)


def open_page(page, url: str, shows: str) -> None:
    """Go to `url` and wait until the UI has drawn `shows` (the bundle takes a while)."""
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text(shows, exact=False).first.wait_for(state="visible")


def test_experiment_opens_in_the_model_training_view(page, ui, filled) -> None:
    exp = experiment_id(filled)
    assert store(filled).get_experiment(exp).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    name = pipeline_run(filled).info.run_name
    with screenshot_on_failure(page, "experiment"):
        # the address `make ui` prints: the UI's global switch set to model training
        open_page(page, f"{ui}/#/experiments/{exp}?workflowType=machine_learning", name)
        assert re.search(rf"/experiments/{exp}/runs\b", page.url), page.url
        body = page.inner_text("body")
        # the model training navigation (Runs, Models, Model registry), not GenAI's
        assert "Model registry" in body and "Judges" not in body and "Sessions" not in body
        assert "Run Name" in body and "sweep-mnist-mlp" in body


def test_make_ui_address_opens_the_experiment_in_model_training(page, ui, filled) -> None:
    """The address `make ui` prints opens the experiment's runs in the model training view."""
    from digits.lib.config import load_params
    from digits.lib.environment import Environment
    from digits.lib.tracking.store import ui_address

    address = ui_address(load_params(filled / "params.yaml").mlflow, filled, Environment.read(), ui)
    name = pipeline_run(filled).info.run_name
    with screenshot_on_failure(page, "make-ui"):
        open_page(page, address, name)
        assert re.search(rf"/experiments/{experiment_id(filled)}/runs\b", page.url), page.url
        body = page.inner_text("body")
        assert "Model registry" in body and "Judges" not in body


def test_run_page_shows_name_description_and_test_accuracy(page, ui, filled) -> None:
    run = pipeline_run(filled)
    note = run.data.tags["mlflow.note.content"]
    with screenshot_on_failure(page, "run"):
        url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        open_page(page, f"{url}?workflowType=machine_learning", run.info.run_name)
        page.get_by_text("test/accuracy").first.wait_for(state="visible")
        page.get_by_text("Description").first.wait_for(state="visible")
        # the description's headline, markdown rendered (the run name in bold)
        page.get_by_text(note.split("**: ")[1][:30]).first.wait_for(state="visible")
        body = page.inner_text("body")
        assert run.info.run_name in body and "test/accuracy" in body


def test_confusion_matrix_artifact_renders_as_an_image(page, ui, filled) -> None:
    run = pipeline_run(filled)
    with screenshot_on_failure(page, "artifact"):
        url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        artifact = "plots/confusion_matrix.png"
        open_page(page, f"{url}/artifacts/{artifact}?workflowType=machine_learning", artifact)
        # the UI fetches the file and shows it from a blob: URL
        image = page.locator("img[src^='blob:']").first
        image.wait_for(state="visible")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 100", arg=image.element_handle()
        )
        size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size[0] > 300 and size[1] > 300, size


def test_sweep_parent_run_lists_its_child_trials(page, ui, filled) -> None:
    client = store(filled)
    exp = experiment_id(filled)
    (parent,) = client.search_runs([exp], "tags.mlflow.runName = 'sweep-mnist-mlp'")
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(c.info.run_name for c in children)
    assert len(names) == 2 and all(name.startswith("mnist-mlp-") for name in names), names
    with screenshot_on_failure(page, "sweep"):
        open_page(page, f"{ui}/#/experiments/{exp}/runs?workflowType=machine_learning", "sweep")
        row = page.get_by_role("row").filter(has_text="sweep-mnist-mlp")
        row.get_by_role("button").first.click()  # expand the parent's children
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for(state="visible")
