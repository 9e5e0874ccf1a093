"""Locate the Go-built test binaries (etcd, kube-apiserver, fake-gcs-server).

`hack/build-test-binaries.sh` builds them once into ~/.cache/model-poller/bin/...; it is
cheap when they are cached, so every test session calls it and uses the directory it prints.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "hack" / "build-test-binaries.sh"


class MissingServiceError(RuntimeError):
    """A service a test needs cannot be started; the message says how to get it."""


@functools.cache
def binary_dir() -> Path:
    override = os.environ.get("MODEL_POLLER_TEST_BIN")
    if override:
        return Path(override)
    try:
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True, timeout=3600
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise MissingServiceError(
            f"building the test binaries failed (exit {exc.returncode}); run `bash {BUILD_SCRIPT}` "
            "to see why (it needs Go >= 1.26 and the Go module proxy)"
        ) from exc
    return Path(out.strip().splitlines()[-1])


def binary(name: str) -> Path:
    path = binary_dir() / name
    if not os.access(path, os.X_OK):
        raise MissingServiceError(f"{path} is missing; run `bash {BUILD_SCRIPT}` to build it")
    return path
