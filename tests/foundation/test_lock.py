"""The hash-locked requirement sets (requirements/*.txt) agree with pyproject.toml.

pyproject.toml keeps `>=` ranges (the library's contract); `make lock` pins them for CPython
3.11 on Linux x86_64. These checks need no network: they read both files with `packaging`.
A failure names the requirement, the lock and the pin; `make lock` is the usual fix.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.foundation.locks import LOCK_DIR, read_lock

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Which pyproject requirements each lock must satisfy (hack/lock.py writes them so).
LOCK_EXTRAS: dict[str, tuple[str, ...]] = {
    "poller.txt": (),
    "operator.txt": ("operator",),
    "test.txt": ("operator", "test"),
}
BUILD_LOCK = "build.txt"

# The platform the locks are resolved for (their header says so): markers are evaluated here.
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.15",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}


def required(name: str) -> list[Requirement]:
    """What pyproject.toml asks of one lock, on the target platform."""
    if name == BUILD_LOCK:
        return [Requirement("pip"), *map(Requirement, PYPROJECT["build-system"]["requires"])]
    project = PYPROJECT["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for extra in LOCK_EXTRAS[name]:
        wanted += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return [r for r in wanted if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]


@pytest.mark.parametrize("name", [*LOCK_EXTRAS, BUILD_LOCK])
def test_every_line_of_the_lock_is_an_exact_pin_with_hashes(name: str) -> None:
    pins = read_lock(name)
    assert pins, f"requirements/{name} pins nothing"


@pytest.mark.parametrize("name", [*LOCK_EXTRAS, BUILD_LOCK])
def test_the_lock_satisfies_every_requirement_of_pyproject(name: str) -> None:
    pins = read_lock(name)
    problems = []
    for requirement in required(name):
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not pinned")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} is pinned at {pin.version}")
    assert not problems, f"requirements/{name} disagrees with pyproject.toml (run `make lock`): {problems}"


@pytest.mark.parametrize("name", list(LOCK_EXTRAS))
def test_the_lock_pins_no_direct_requirement_pyproject_has_dropped(name: str) -> None:
    # uv marks a package pyproject asks for directly with "model-poller (pyproject.toml)".
    direct = {pin.name for pin in read_lock(name).values() if pin.via_pyproject}
    assert direct, f"requirements/{name}: no pin is annotated as coming from pyproject.toml (uv's format changed?)"
    wanted = {canonicalize_name(r.name) for r in required(name)}
    stale = sorted(direct - wanted)
    assert not stale, f"requirements/{name} still pins {stale} for pyproject.toml, which no longer asks (make lock)"


def test_a_package_has_one_version_in_every_lock() -> None:
    # The images (poller.txt, operator.txt) run the versions the tests ran (test.txt), and
    # build.txt installs into the same venv as test.txt.
    seen: dict[NormalizedName, tuple[str, str]] = {}
    problems = []
    for name in [*LOCK_EXTRAS, BUILD_LOCK]:
        for pin in read_lock(name).values():
            first = seen.setdefault(pin.name, (name, pin.version))
            if first[1] != pin.version:
                problems.append(f"{pin.name}: {first[1]} in {first[0]}, {pin.version} in {name}")
    assert not problems, f"the locks disagree (run `make lock`): {problems}"


def test_the_runtime_locks_nest_inside_the_test_lock() -> None:
    test_pins = set(read_lock("test.txt"))
    operator_pins = set(read_lock("operator.txt"))
    poller_pins = set(read_lock("poller.txt"))
    assert operator_pins - test_pins == set(), "the operator image would run packages the tests never installed"
    assert poller_pins <= operator_pins, "the poller image would run packages the operator's lock does not have"


def test_the_poller_lock_leaves_kopf_to_the_operator() -> None:
    # kopf (and what only kopf needs) is the operator's; aiohttp is in both because the
    # kubernetes client (>= 36) requires it.
    assert "kopf" in read_lock("operator.txt")
    assert "kopf" not in read_lock("poller.txt")


def test_each_lock_says_what_it_is_for() -> None:
    for name in [*LOCK_EXTRAS, BUILD_LOCK]:
        header = (LOCK_DIR / name).read_text().split("\n", 1)[0]
        assert "CPython 3.11 on Linux x86_64" in header, f"requirements/{name} does not name its platform: {header!r}"
