"""Fixtures of the end-to-end tests: the real controllers, the operator under its own
identity, and the operator tests' helpers (local_services/operator_kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local_services import operator_kit as kit  # noqa: E402


@pytest.fixture(scope="module")
def controllers(kube: Any) -> Iterator[None]:
    """kube-controller-manager with the deployment, replicaset and garbage collector
    controllers: real ReplicaSets create the pods from the rendered template."""
    service = kube.start_controllers()
    try:
        yield
    finally:
        service.stop()


@pytest.fixture(scope="module")
def operator(kube: Any, controllers: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.OperatorProcess]:
    """The operator as a subprocess with the chart's ServiceAccount, ClusterRole and
    admission policy (never the admin credentials)."""
    workdir = tmp_path_factory.mktemp("e2e-operator")
    kubeconfig = kit.install_operator_identity(kube, workdir)
    with kit.run_operator(kubeconfig, workdir) as running:
        yield running
        assert running.process.poll() is None, f"the operator died:\n{running.log()[-5000:]}"
        assert "Traceback" not in running.log(), running.log()[-5000:]


@pytest.fixture(scope="module")
def cluster(kube: Any) -> kit.Cluster:
    return kit.Cluster(kube)
