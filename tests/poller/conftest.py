"""Fixtures for the poller tests: a source dir, a model dir, an engine, the CLI."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from model_poller.extract import Limits
from model_poller.metrics import Metrics
from model_poller.model_dir import ModelDir
from model_poller.policy import Policy
from model_poller.stores import Store, open_store
from model_poller.sync import Engine

from tests.poller.kit import Dirs, EngineFactory, run_cli


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    src = tmp_path / "src"
    src.mkdir()
    return Dirs(root=tmp_path, src=src, models=tmp_path / "models")


@pytest.fixture
def make_engine(dirs: Dirs) -> EngineFactory:
    def make(
        policy: Policy | None = None,
        limits: Limits | None = None,
        store: Store | None = None,
        uri: str | None = None,
    ) -> Engine:
        model_dir = ModelDir(dirs.models)
        model_dir.prepare()
        return Engine(
            store or open_store(uri or dirs.uri),
            model_dir,
            policy or Policy(keep=2),
            limits or Limits(),
            threading.Event(),
            Metrics(),
        )

    return make


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
