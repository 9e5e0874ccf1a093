"""Fixtures of the operator tests: golden files and the sample specs they are rendered from."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"

# The owner every golden file is rendered for; integration tests substitute their own.
GOLDEN_NAMESPACE = "ml"
GOLDEN_UID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="session")
def cases() -> dict[str, dict[str, Any]]:
    """ModelDeployment specs by case name (tests/operator/cases.yaml)."""
    with open(HERE / "cases.yaml", encoding="utf-8") as fh:
        loaded: dict[str, dict[str, Any]] = yaml.safe_load(fh)
    return loaded


@pytest.fixture(scope="session")
def golden() -> Callable[[str], list[dict[str, Any]]]:
    """Load golden/<case>.yaml: the rendered children of that case, in apply order."""

    def load(case: str) -> list[dict[str, Any]]:
        with open(GOLDEN / f"{case}.yaml", encoding="utf-8") as fh:
            return [doc for doc in yaml.safe_load_all(fh) if doc is not None]

    return load


@pytest.fixture(scope="session")
def update_golden() -> bool:
    return os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")


# --- integration fixtures (real kube-apiserver from tests/services) -------------------------

from collections.abc import Iterator  # noqa: E402

from local_services import operator_kit as kit  # noqa: E402


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the operator's own ServiceAccount, bound to the chart's ClusterRole."""
    path: Path = kit.install_operator_identity(kube, tmp_path_factory.mktemp("operator-identity"))
    return path


@pytest.fixture(scope="module")
def operator(
    kube: Any, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[kit.OperatorProcess]:
    """The operator (console script, cluster-wide) as a subprocess, for one test module."""
    with kit.run_operator(operator_kubeconfig, tmp_path_factory.mktemp("operator")) as running:
        yield running
        assert running.process.poll() is None, f"the operator died:\n{running.log()[-5000:]}"
        assert "Traceback" not in running.log(), running.log()[-5000:]


@pytest.fixture(scope="session")
def cluster(kube: Any) -> kit.Cluster:
    return kit.Cluster(kube)
