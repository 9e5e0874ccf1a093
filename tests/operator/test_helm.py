"""The Helm chart with a real `helm` (built from its Go module) against the real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from model_poller_api import names

from local_services.binaries import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "chart"
MANIFESTS = REPO / "deploy" / "manifests" / "model-poller-operator.yaml"

# "NS" stands for the watched namespace: "ml" when linting, the test's own namespace when
# the API server has to accept the namespaced Roles.
VALUE_SETS = {
    "defaults": [],
    "namespaced-with-peering": ["--set", "watch.namespaces={NS}", "--set", "peering.enabled=true", "--set", "replicaCount=2"],
    "no-rbac-no-policy-patterns": [
        "--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "admissionPolicy.enabled=false",
        "--set", "watch.namespaces={ml-*}",
    ],
}  # fmt: skip


def values_for(values: list[str], namespace: str) -> list[str]:
    return [v.replace("NS", namespace) for v in values]


def helm(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(binary("helm")), *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints(values: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *values_for(values, "ml"))
    assert "0 chart(s) failed" in out


def test_namespace_patterns_are_refused_when_the_rbac_is_namespaced() -> None:
    done = subprocess.run(
        [str(binary("helm")), "template", "mp", str(CHART), "--set", "watch.namespaces={ml,team-*}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert 'watch.namespaces: "team-*" is a pattern' in done.stderr and "rbac.create=false" in done.stderr


def _rendered(*values: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm("template", "mp", str(CHART), "--namespace", "ops", *values)) if d]


def test_watched_namespaces_get_roles_not_a_cluster_wide_grant() -> None:
    docs = _rendered("--set", "watch.namespaces={ml,team-a}")
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    # The webhook's Role in the release namespace: its certificate Secret only (test_no_rule_mentions_secrets).
    webhook = {("Role", "ops"), ("RoleBinding", "ops")}
    assert roles == {("Role", "ml"), ("RoleBinding", "ml"), ("Role", "team-a"), ("RoleBinding", "team-a")} | webhook
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    # Besides what kopf needs: the caBundle of the webhook's own configuration, by name.
    by_name = [rule for rule in cluster_role["rules"] if rule.get("resourceNames")]
    assert by_name == [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
                        "resourceNames": ["mp-model-poller-operator"], "verbs": ["get", "patch"]}]  # fmt: skip
    rules = [rule for rule in cluster_role["rules"] if not rule.get("resourceNames")]
    cluster_wide = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert cluster_wide == {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in rules)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--namespace=team-a" in args and "--all-namespaces" not in args


@pytest.mark.parametrize("values", [[], ["--set", "watch.namespaces={ml}"]], ids=["cluster-wide", "namespaced"])
def test_no_rule_mentions_secrets(values: list[str]) -> None:
    """Except one: the webhook's own certificate Secret, by name, in the release namespace."""
    for doc in _rendered(*values):
        for rule in doc.get("rules") or ():
            assert "*" not in rule["resources"] and "*" not in rule["verbs"] and "*" not in rule["apiGroups"]
            if "secrets" not in rule["resources"]:
                continue
            assert (doc["kind"], doc["metadata"]["namespace"]) == ("Role", "ops"), doc["metadata"]["name"]
            assert rule == {"apiGroups": [""], "resources": ["secrets"],
                            "resourceNames": ["mp-model-poller-operator-webhook-tls"], "verbs": ["get", "update"]}  # fmt: skip


@pytest.mark.parametrize("values", [[], ["--set", "watch.namespaces={ml}"]], ids=["cluster-wide", "namespaced"])
def test_no_rule_grants_anything_on_config_maps(values: list[str]) -> None:
    """TF Serving's monitoring config is a downwardAPI projection of a pod annotation, not a
    ConfigMap child: the operator reads no ConfigMap, neither cluster-wide nor in a namespace."""
    rules = [rule for doc in _rendered(*values) if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]]
    assert rules and not [rule for rule in rules if "configmaps" in rule["resources"]]
    (policy,) = [doc for doc in _rendered(*values) if doc["kind"] == "ValidatingAdmissionPolicy"]
    assert not [r for r in policy["spec"]["matchConstraints"]["resourceRules"] if "configmaps" in r["resources"]]


def test_admission_policy_names_the_operator_and_its_labels() -> None:
    docs = {d["kind"]: d for d in _rendered()}
    policy = docs["ValidatingAdmissionPolicy"]
    assert docs["ValidatingAdmissionPolicyBinding"]["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (condition,) = policy["spec"]["matchConditions"]
    assert (
        condition["expression"] == "request.userInfo.username == 'system:serviceaccount:ops:mp-model-poller-operator'"
    )
    text = yaml.safe_dump(policy)
    # The same names as the operator's own (api/model_poller_api/names.py).
    assert f"'{names.LABEL_MANAGED_BY}'" in text and f"'{names.MANAGER}'" in text
    assert f"'{names.KIND}'" in text and f"'{names.GROUP}/'" in text
    assert "ValidatingAdmissionPolicy" not in {d["kind"] for d in _rendered("--set", "admissionPolicy.enabled=false")}


def test_plain_manifests_are_the_chart_rendered_with_defaults() -> None:
    rendered = [
        d
        for d in yaml.safe_load_all(
            helm("template", "model-poller-operator", str(CHART), "--namespace", "model-poller-system")
        )
        if d
    ]
    committed = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    assert committed == rendered, "deploy/manifests is stale: run `HELM=<helm> bash deploy/render-manifests.sh`"


@pytest.mark.kube
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_chart_is_accepted_by_the_api_server(
    kube: Any, namespace: str, tmp_path: Path, values: list[str]
) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(helm("template", "mp", str(CHART), "--namespace", namespace, *values_for(values, namespace)))
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
    try:
        _check_install(kube, namespace, release)
    finally:
        # Its MutatingWebhookConfiguration would refuse the labelled pods of other tests
        # (no operator runs behind it here).
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(kube.kubeconfig))


def _check_install(kube: Any, namespace: str, release: str) -> None:
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
