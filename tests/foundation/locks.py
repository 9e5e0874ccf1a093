"""Reading the hash-locked requirement sets under requirements/ (hack/lock.py writes them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name

LOCK_DIR = Path(__file__).resolve().parents[2] / "requirements"

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)$")
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: str
    hashes: tuple[str, ...]
    via_pyproject: bool  # uv's annotation says pyproject.toml asks for it directly


def _entries(text: str) -> list[tuple[str, str]]:
    """(requirement with its options, the comment lines after it) for each entry of a lock."""
    entries: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            if entries and not logical:
                entries[-1] = (entries[-1][0], entries[-1][1] + stripped + "\n")
            continue
        logical += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            entries.append((logical.strip(), ""))
            logical = ""
    assert not logical, f"the lock ends inside a continued line: {logical!r}"
    return entries


def read_lock(name: str) -> dict[NormalizedName, Pin]:
    pins: dict[NormalizedName, Pin] = {}
    for entry, comments in _entries((LOCK_DIR / name).read_text()):
        requirement, *options = entry.split()
        match = PIN.match(requirement)
        assert match, f"requirements/{name}: {requirement!r} is not pinned with `==` (run `make lock`)"
        package = canonicalize_name(match["name"])
        bad = [option for option in options if not HASH.match(option)]
        assert not bad, f"requirements/{name}: {requirement} carries {bad}; a lock line holds only --hash options"
        assert options, f"requirements/{name}: {requirement} has no --hash (pip --require-hashes would refuse it)"
        assert package not in pins, f"requirements/{name}: {package} is pinned twice"
        pins[package] = Pin(package, match["version"], tuple(options), "(pyproject.toml)" in comments)
    return pins
