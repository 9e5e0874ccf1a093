"""Resume: an operator restarted after changes made while it was down converges, and
an operator restarted with nothing to do writes nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from model_poller_api import models

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube


def test_restart_converges_what_changed_while_down_and_writes_nothing_else(
    kube: Any, operator_kubeconfig: Path, cluster: kit.Cluster, namespace: str, tmp_path: Path
) -> None:
    with kit.run_operator(operator_kubeconfig, tmp_path):
        for name in ("a", "b", "c"):
            cluster.create_md(namespace, name, {"source": {"uri": f"gs://bkt/{name}/"}})
        for name in ("a", "b", "c"):
            cluster.wait_observed(namespace, name)
            kit.wait_for("children", lambda: cluster.child("Deployment", namespace, name))

    # While the operator is down: a child is deleted, another edited, a spec changed.
    cluster.core.delete_namespaced_service("a", namespace)
    cluster.apps.patch_namespaced_deployment("b", namespace, {"spec": {"replicas": 7}})
    cluster.patch_md(namespace, "c", {"spec": {"replicas": 2}})

    start = kit.audit_offset(kube.audit_log)
    with kit.run_operator(operator_kubeconfig, tmp_path) as running:
        kit.wait_for("the Service back", lambda: cluster.child("Service", namespace, "a"))
        kit.wait_for(
            "replicas restored", lambda: (cluster.child("Deployment", namespace, "b") or {})["spec"]["replicas"] == 1
        )
        md = cluster.wait_observed(namespace, "c")
        assert md["status"]["observedGeneration"] == 2
        assert (cluster.child("Deployment", namespace, "c") or {})["spec"]["replicas"] == 2
        time.sleep(3)
        writes = [w for w in kit.audit_writes(kube.audit_log, start) if w["objectRef"].get("namespace") == namespace]
        assert running.process.poll() is None
    described = sorted(kit.describe_writes(writes))
    # Exactly the repairs and the spec change, nothing for what did not change.
    assert described == sorted(
        [
            f"patch services {namespace}/a",
            f"patch deployments {namespace}/b",
            f"patch deployments {namespace}/c",
            f"patch modeldeployments {namespace}/c",  # kopf's last-handled-configuration
            f"patch modeldeployments/status {namespace}/c",  # observedGeneration 2
        ]
    ), described
    assert models.STATUS_OBSERVED_GENERATION in cluster.get_md(namespace, "a")["status"]
