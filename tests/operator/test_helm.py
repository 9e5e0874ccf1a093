"""The Helm chart with a real `helm` (built from its Go module) against the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from model_poller_api import names
from services.binaries import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "chart"
MANIFESTS = REPO / "deploy" / "manifests" / "model-poller-operator.yaml"

VALUE_SETS = {
    "defaults": [],
    "namespaced-with-peering": ["--set", "watch.namespaces={ml,team-*}", "--set", "peering.enabled=true", "--set", "replicaCount=2"],
    "no-rbac-no-secret-check": ["--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "rbac.secretCheck=false"],
}


def helm(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints(values: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out


def test_plain_manifests_are_the_chart_rendered_with_defaults() -> None:
    rendered = [d for d in yaml.safe_load_all(helm("template", "model-poller-operator", str(CHART), "--namespace", "model-poller-system")) if d]
    committed = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    assert committed == rendered, "deploy/manifests is stale: run `HELM=<helm> bash deploy/render-manifests.sh`"


@pytest.mark.kube
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_chart_is_accepted_by_the_api_server(kube: Any, namespace: str, tmp_path: Path, values: list[str]) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(helm("template", "mp", str(CHART), "--namespace", namespace, *values))
    done = subprocess.run(
        ["kubectl", "apply", "--dry-run=server", "-n", namespace, "-f", str(out)],
        env=kube.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.kube
def test_one_helm_install(kube: Any, namespace: str) -> None:
    """One `helm install`, as the README has a user type; the CRD (already there) is left alone.

    The release has its own name: other tests apply the plain manifests, whose
    cluster-scoped ClusterRole `model-poller-operator` helm would refuse to take over."""
    release = "mp-helm"
    helm("install", release, str(CHART), "--namespace", namespace, "--kubeconfig", str(kube.kubeconfig))
    api = kube.api_client()
    deployments = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    assert [d.metadata.name for d in deployments] == [f"{release}-model-poller-operator"]
    container = deployments[0].spec.template.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.liveness_probe.http_get.path == "/healthz"
    sa = deployments[0].spec.template.spec.service_account_name
    assert client.CoreV1Api(api).read_namespaced_service_account(sa, namespace)
    bindings = client.RbacAuthorizationV1Api(api).list_cluster_role_binding().items
    assert any(s.name == sa and s.namespace == namespace for b in bindings for s in (b.subjects or []))
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(names.CRD_NAME)
    assert crd.spec.group == names.GROUP
    assert release in helm("list", "--namespace", namespace, "--kubeconfig", str(kube.kubeconfig), "-q")
