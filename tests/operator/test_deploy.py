"""The Helm chart and plain manifests: consistent with the CRD, valid on a real API server."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from model_poller_operator import children, main

from local_services import operator_kit as kit

REPO = Path(__file__).resolve().parents[2]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_holds_a_copy_of_the_crd() -> None:
    crd = (REPO / "crds" / "modeldeployments.modelpoller.dev.yaml").read_text()
    assert (REPO / "deploy" / "chart" / "crds" / "modeldeployments.modelpoller.dev.yaml").read_text() == crd


def test_every_value_is_documented() -> None:
    """Every leaf value has a `# --` comment (helm-docs style), on itself or on a parent."""
    lines = (REPO / "deploy" / "chart" / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    comment: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        if not stripped or stripped.startswith("-"):
            comment = [] if not stripped else comment
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = any(c.startswith("# --") for c in comment) or any(d for _, d in stack)
        key, _, value = stripped.partition(":")
        if value.strip() in ("", "|", ">"):
            stack.append((indent, documented))
        else:
            assert documented, f"values.yaml: {key} has no '# --' comment"
        comment = []


def test_manifests_grant_what_the_operator_needs() -> None:
    docs = {d["kind"]: d for d in _docs(kit.MANIFESTS)}
    assert set(docs) == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        # The admission webhook (webhook.enabled): its configuration, Service, certificate
        # Secret, and the Role that reaches that one Secret.
        "MutatingWebhookConfiguration", "Service", "Secret", "Role", "RoleBinding",
    }  # fmt: skip
    rules = docs["ClusterRole"]["rules"]
    verbs = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("modelpoller.dev", "modeldeployments/status")] == {"get", "patch"}
    assert {"create", "patch"} <= verbs[("apps", "deployments")]
    assert verbs[("", "events")] == {"create", "list"}
    # Owner references delete the children; the operator itself deletes only an optional
    # child that must no longer exist (children.py), so only those kinds get "delete".
    optional = {(c.group, c.plural) for c in children.CHILDREN if c.optional}
    deletable = {resource for resource, granted in verbs.items() if "delete" in granted}
    assert deletable == optional == {("policy", "poddisruptionbudgets")}, "delete: the optional child kinds only"
    # TF Serving's monitoring config is a projected pod annotation: no ConfigMap rights at all.
    assert not [r for r in rules if "configmaps" in r["resources"]], "the ClusterRole grants nothing on configmaps"
    assert ("", "secrets") not in verbs, "the operator has no access to Secrets at all"
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_console_script_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_POLLER_OPERATOR_NAMESPACES", raising=False)
    assert main.parse_args([]).namespace == []
    assert main.parse_args(["-n", "a", "--namespace", "b*"]).namespace == ["a", "b*"]
    monkeypatch.setenv("MODEL_POLLER_OPERATOR_NAMESPACES", "x, y")
    assert main.parse_args([]).namespace == ["x", "y"]
    assert main.parse_args(["-A"]).namespace == []
    with pytest.raises(SystemExit):
        main.parse_args(["-A", "-n", "a"])


@pytest.mark.kube
def test_manifests_apply_and_the_operator_pod_is_restricted(
    kube: Any, cluster: kit.Cluster, namespace: str, operator_kubeconfig: Path
) -> None:
    subprocess.run(
        ["kubectl", "apply", "--dry-run=server", "-f", str(kit.MANIFESTS)],
        env=kube.env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    cluster.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "model-poller-operator"}})
    deployment = next(d for d in _docs(kit.MANIFESTS) if d["kind"] == "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    pod = {"metadata": {"name": "operator-pod", "labels": template["metadata"]["labels"]}, "spec": template["spec"]}
    try:
        cluster.core.create_namespaced_pod(namespace, pod)
    except ApiException as error:  # pragma: no cover - the message is the point
        raise AssertionError(f"the operator's own pod is not 'restricted': {error.body}") from error


def test_operator_settings_from_the_environment() -> None:
    from model_poller_operator.config import OperatorConfig

    assert OperatorConfig.from_env({}) == OperatorConfig()
    config = OperatorConfig.from_env(
        {
            "MODEL_POLLER_OPERATOR_STATUS_INTERVAL": "2.5",
            "MODEL_POLLER_OPERATOR_WORKERS": "3",
            "MODEL_POLLER_OPERATOR_RETRY_DELAY": "",
        }
    )
    assert (config.status_interval, config.workers, config.retry_delay) == (2.5, 3, OperatorConfig().retry_delay)
    assert isinstance(config.workers, int)
    with pytest.raises(ValueError, match="MODEL_POLLER_OPERATOR_WORKERS"):
        OperatorConfig.from_env({"MODEL_POLLER_OPERATOR_WORKERS": "many"})
