"""Deleting a ModelDeployment deletes its children, through a real garbage collector.

The session's control plane has no controller-manager; this module starts one that runs
only the garbage collector and stops it afterwards, so other tests keep the envtest setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from model_poller_api import names

from local_services import operator_kit as kit

pytestmark = [pytest.mark.kube, pytest.mark.slow]

KINDS = {"Deployment": "", "Service": "", "ServiceAccount": "-poller", "Role": "-poller", "RoleBinding": "-poller"}


@pytest.fixture(scope="module")
def garbage_collector(kube: Any) -> Iterator[None]:
    gc = kube.start_garbage_collector()
    try:
        yield
    finally:
        gc.stop()


def _children(cluster: kit.Cluster, namespace: str, name: str) -> dict[str, Any]:
    return {kind: cluster.child(kind, namespace, name + suffix) for kind, suffix in KINDS.items()}


def test_deleting_a_model_deployment_deletes_its_children(
    garbage_collector: None, operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.create_md(namespace, "doomed", {"source": {"uri": "gs://bkt/doomed/"}})
    cluster.create_md(namespace, "kept", {"source": {"uri": "gs://bkt/kept/"}})
    kit.wait_for("children of both", lambda: all(_children(cluster, namespace, "doomed").values())
                 and all(_children(cluster, namespace, "kept").values()), 30)  # fmt: skip

    cluster.custom.delete_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, "doomed")

    kit.wait_for("the garbage collector to delete every child",
                 lambda: not any(_children(cluster, namespace, "doomed").values()), 60)  # fmt: skip
    assert all(_children(cluster, namespace, "kept").values()), "another ModelDeployment's children must stay"
    assert operator.healthy()
