"""Shared by the fault tests: a poller process, versions in a bucket, timings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for


def versions_in(models: Path) -> list[int]:
    if not models.exists():
        return []
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def upload(bucket: Any, prefix: str, version: int, size: int = 2048) -> float:
    """Upload ``<prefix><version>.zip``; returns the monotonic time the upload finished."""
    bucket.blob(f"{prefix}{version}.zip").upload_from_string(zip_bytes(model_files(version, size=size)))
    return time.monotonic()


def wait_installed(models: Path, version: int, timeout: float, what: str) -> float:
    """Wait for ``<models>/<version>/``; returns the monotonic time it was seen."""
    wait_for(what, lambda: version in versions_in(models), timeout)
    return time.monotonic()


def assert_intact(models: Path, version: int) -> None:
    """The version dir holds exactly the files of ``model_files(version)``, byte for byte."""
    want = model_files(version)
    root = models / str(version)
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == want, f"version {version} differs from its upload"


def no_staging(models: Path) -> list[str]:
    """Names in the model dir that are neither versions nor the bookkeeping dir."""
    return sorted(p.name for p in models.iterdir() if not p.name.isdigit() and p.name != ".model-poller")


def kubeconfig_via(kubeconfig: Path, proxy_listen: str) -> Path:
    """Point ``kubeconfig``'s cluster at a proxy in front of the API server (same CA: the
    serving certificate names 127.0.0.1, where the proxy listens)."""
    import yaml

    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{proxy_listen}"
    kubeconfig.write_text(yaml.safe_dump(config))
    return kubeconfig
