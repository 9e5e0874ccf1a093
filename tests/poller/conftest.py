"""Fixtures for the poller tests: a source dir, a model dir, an engine, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from model_poller.extract import Limits
from model_poller.install import ModelDir
from model_poller.metrics import Metrics
from model_poller.policy import Policy
from model_poller.sources import Source, open_source
from model_poller.sync import Engine


@dataclass
class Dirs:
    root: Path  # everything a test writes lives under here
    src: Path
    models: Path

    @property
    def uri(self) -> str:
        return f"file://{self.src}/"


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    src = tmp_path / "src"
    src.mkdir()
    return Dirs(root=tmp_path, src=src, models=tmp_path / "models")


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(dirs: Dirs) -> EngineFactory:
    def make(
        policy: Policy | None = None,
        limits: Limits | None = None,
        source: Source | None = None,
        uri: str | None = None,
    ) -> Engine:
        model_dir = ModelDir(dirs.models)
        model_dir.prepare()
        return Engine(
            source or open_source(uri or dirs.uri),
            model_dir,
            policy or Policy(keep=2),
            limits or Limits(),
            threading.Event(),
            Metrics(),
        )

    return make


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m model_poller ARGS`` in a child process, output captured."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_POLLER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "model_poller", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
