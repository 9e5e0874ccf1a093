"""Namespaced operation: ``--namespace NS`` serves only NS, and with the chart's
``watch.namespaces`` the operator needs (and gets) Roles in those namespaces only."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from local_services import operator_kit as kit
from local_services.binaries import binary

pytestmark = pytest.mark.kube


def test_kopf_run_with_a_namespace_serves_only_that_namespace(
    kube: Any, operator_kubeconfig: Path, cluster: kit.Cluster, tmp_path: Path
) -> None:
    served, ignored = f"ns-{uuid.uuid4().hex[:8]}", f"ns-{uuid.uuid4().hex[:8]}"
    for ns in (served, ignored):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    kopf = str(Path(sys.executable).parent / "kopf")
    command = [kopf, "run", "-m", "model_poller_operator.handlers", "--namespace", served, "--standalone"]
    with kit.run_operator(operator_kubeconfig, tmp_path, command=command) as running:
        cluster.create_md(served, "m", {"source": {"uri": "gs://bkt/m/"}})
        cluster.create_md(ignored, "m", {"source": {"uri": "gs://bkt/m/"}})
        cluster.wait_observed(served, "m")
        kit.wait_for("the Deployment", lambda: cluster.child("Deployment", served, "m"))
        time.sleep(3)
        assert cluster.child("Deployment", ignored, "m") is None
        assert "status" not in cluster.get_md(ignored, "m")
        assert running.process.poll() is None, running.log()[-3000:]


def _allowed(cluster: kit.Cluster, user: str, verb: str, resource: str, namespace: str | None, group: str = "") -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=resource
            ),
        )
    )
    status = client.AuthorizationV1Api(cluster.api).create_subject_access_review(review).status
    return bool(status and status.allowed)


def test_operator_runs_under_the_charts_namespaced_rbac(kube: Any, cluster: kit.Cluster, tmp_path: Path) -> None:
    """`helm template --set watch.namespaces={NS}`: Roles in NS only, a minimal ClusterRole, and
    the operator (console script, as the chart's Deployment runs it) converges there."""
    suffix = uuid.uuid4().hex[:6]
    release, system, served, other = f"mp{suffix}", f"ops-{suffix}", f"ml-{suffix}", f"other-{suffix}"
    for ns in (system, served, other):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    chart = Path(__file__).resolve().parents[2] / "deploy" / "chart"
    rendered = subprocess.run(
        [str(binary("helm")), "template", release, str(chart), "--namespace", system, "--set", f"watch.namespaces={{{served}}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] != "Deployment"]  # no image to run here
    assert {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding")} == {
        ("Role", served), ("RoleBinding", served),
        ("Role", system), ("RoleBinding", system),  # the webhook's: its own certificate Secret only
    }  # fmt: skip
    manifest = tmp_path / "namespaced.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    subprocess.run(
        ["kubectl", "apply", "-f", str(manifest)], env=kube.env(), capture_output=True, text=True, check=True
    )
    account = f"{release}-model-poller-operator"
    user = f"system:serviceaccount:{system}:{account}"
    token = kit.service_account_token(kube, system, account)
    kit.wait_for_policy(kube, token, served)
    kubeconfig = tmp_path / "namespaced.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kube.kubeconfig_for(user, token)))

    # Nothing outside the watched namespace, nothing cluster-wide beyond CRDs and namespaces.
    assert _allowed(cluster, user, "create", "deployments", served, "apps")
    assert not _allowed(cluster, user, "create", "deployments", other, "apps")
    assert not _allowed(cluster, user, "list", "pods", None)
    assert not _allowed(cluster, user, "get", "secrets", served)

    command = [str(Path(sys.executable).parent / "model-poller-operator"), "--namespace", served]
    with kit.run_operator(kubeconfig, tmp_path, command=command) as running:
        cluster.create_md(served, "m", {"source": {"uri": "gs://bkt/m/"}})
        cluster.create_md(other, "m", {"source": {"uri": "gs://bkt/m/"}})
        md = cluster.wait_observed(served, "m")
        kit.wait_for("the Deployment", lambda: cluster.child("Deployment", served, "m"))
        synced = cluster.condition(served, "m", "Synced")
        assert (synced["status"], synced["reason"]) == ("True", "ChildrenApplied"), synced
        assert md["status"]["selector"]
        # A hand edit is repaired (watches and server-side apply work under the Role).
        cluster.core.delete_namespaced_service("m", served)
        kit.wait_for("the Service back", lambda: cluster.child("Service", served, "m"))
        time.sleep(2)
        assert cluster.child("Deployment", other, "m") is None
        assert "status" not in cluster.get_md(other, "m")
        log = running.log()
        assert running.process.poll() is None, log[-3000:]
        assert "Traceback" not in log and "403" not in log, log[-3000:]
