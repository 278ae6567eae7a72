"""`make setup` installs requirements.lock, not pyproject.toml: a dependency added, dropped or
re-pinned in pyproject.toml without `make lock` would never reach a fresh clone, so the two
must agree. Offline: the lock names what pyproject.toml asked for (`# via digits
(pyproject.toml)`), and every pin carries its sha256."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
DIRECT = "digits (pyproject.toml)"


def direct_requirements(pyproject: str) -> dict[str, Requirement]:
    """pyproject.toml's dependencies and dev extras, by normalised name."""
    project = tomllib.loads(pyproject)["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def locked(lock: str) -> dict[str, tuple[str, list[str]]]:
    """The lock's pins: name -> (version, the lines below the pin: hashes and `# via`)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in lock.splitlines():
        found = PIN.match(line)
        if found:
            current = []
            pins[canonicalize_name(found[1])] = (found[2], current)
        elif line.startswith(" "):
            current.append(line.strip())
    return pins


def disagreements(pyproject: str, lock: str) -> list[str]:
    """What keeps the lock from being pyproject.toml's: each with the fix."""
    wanted, pins = direct_requirements(pyproject), locked(lock)
    problems = []
    for name, requirement in sorted(wanted.items()):
        if name not in pins:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{requirement}: requirements.lock pins {name}=={pins[name][0]}")
    asked = {name for name, (_, lines) in pins.items() if any(DIRECT in x for x in lines)}
    problems += [f"{name} is no longer in pyproject.toml" for name in sorted(asked - set(wanted))]
    return [f"{p}: run `make lock`" for p in problems]


def test_the_lock_pins_what_pyproject_asks_for() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert disagreements(pyproject, (ROOT / "requirements.lock").read_text()) == []


def test_every_pin_is_checked_by_its_hash() -> None:
    pins = locked((ROOT / "requirements.lock").read_text())
    unhashed = [n for n, (_, lines) in pins.items() if not any("--hash=" in x for x in lines)]
    assert len(pins) > 100 and unhashed == []


def test_an_edit_of_pyproject_without_make_lock_is_caught() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = (ROOT / "requirements.lock").read_text()
    edited = pyproject.replace('"keras==3.15.1"', '"keras==3.15.0"')
    edited = edited.replace('"pooch==1.9.0",', "").replace('dev = ["', 'dev = ["mkdocs-x==1.0", "')
    assert disagreements(edited, lock) == [
        "keras==3.15.0: requirements.lock pins keras==3.15.1: run `make lock`",
        "mkdocs-x==1.0 is not in requirements.lock: run `make lock`",
        "pooch is no longer in pyproject.toml: run `make lock`",
    ]
