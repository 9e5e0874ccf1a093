"""Helpers of the poller tests: the dirs a test writes to, the engine factory's type, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_poller.sync import Engine


@dataclass
class Dirs:
    root: Path  # everything a test writes lives under here
    src: Path
    models: Path

    @property
    def uri(self) -> str:
        return f"file://{self.src}/"


EngineFactory = Callable[..., Engine]


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
