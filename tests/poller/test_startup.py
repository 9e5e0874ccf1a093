"""Process start: ``--once`` without ``--report-to`` never imports the Kubernetes client
(a third of a second of every start, issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from local_services.archives import model_files, zip_bytes
from tests.poller.kit import Dirs


def imported_modules(*args: str, env: dict[str, str] | None = None) -> tuple[int, set[str]]:
    """Run ``python -X importtime -m model_poller ARGS``: its exit code and every module it
    imported (importtime writes one stderr line per module, at the end of its import)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_POLLER_")}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "model_poller", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result.returncode, modules


def kubernetes_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "kubernetes" or m.startswith("kubernetes.")}


def test_once_does_not_import_the_kubernetes_client(dirs: Dirs) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    code, modules = imported_modules("--once", "--source", dirs.uri, "--model-dir", str(dirs.models))
    assert code == 0
    assert (dirs.models / "1" / "saved_model.pb").is_file()
    assert "model_poller.sync" in modules  # the sync ran in this process
    assert kubernetes_modules(modules) == set()


def test_report_to_imports_the_kubernetes_client(dirs: Dirs, tmp_path: Path) -> None:
    """The other side: the check above would see the client if it were imported."""
    env = {"KUBECONFIG": str(tmp_path / "no-kubeconfig"), "POD_NAME": "p"}
    code, modules = imported_modules(
        "--source", dirs.uri, "--model-dir", str(dirs.models), "--report-to", "ns/m", env=env
    )
    assert code == 2  # no credentials: one line, exit 2
    assert "kubernetes" in kubernetes_modules(modules)
