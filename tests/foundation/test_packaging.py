"""The wheel that the Dockerfiles install: both components, typed, no `operator` package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_holds_both_components_and_the_console_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("model_poller-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in files if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"model_poller_api", "model_poller", "model_poller_operator"}
    assert "operator" not in top_level, "a top-level `operator` package would shadow the standard library"
    for package in top_level:
        assert f"{package}/py.typed" in files
    entry_points = next(n for n in files if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "model-poller = model_poller.cli:main" in text
    assert "model-poller-operator = model_poller_operator.main:main" in text


def test_python_dash_m_runs_the_poller() -> None:
    done = subprocess.run([sys.executable, "-m", "model_poller", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "MODEL_POLLER_SOURCE" in done.stdout
