"""The chart's admission policy as a backstop of the workload shape: with the operator's own
token (as a thief of it would), a Deployment whose pods leave the restricted baseline through
a pod-level field or a security-profile annotation is refused, and so is a child named as
another kind's child (a PodDisruptionBudget NAME-poller). The control each time: exactly the
rendered object is admitted. The real operator's reconciles pass the same policy in every
operator integration test (tests/operator/test_workload_shape_operator.py among them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names, workload
from model_poller_operator import children
from model_poller_operator.render import ownership

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube

NAME = "victim"
FAKE_UID = "00000000-0000-4000-8000-00000000cafe"
SPEC = {"source": {"uri": "gs://bkt/victim/"}, "disruptionBudget": {"minAvailable": 1}}


@pytest.fixture(scope="module")
def operator_token(kube: Any, operator_kubeconfig: Any) -> str:
    """A token of the chart's ServiceAccount (the fixture installed its RBAC and the policy)."""
    return kit.service_account_token(kube, kit.OPERATOR_NAMESPACE, kit.OPERATOR_SA)


def _rendered(namespace: str) -> dict[str, dict[str, Any]]:
    owner = ownership.Owner(name=NAME, namespace=namespace, uid=FAKE_UID)
    spec = models.ModelDeploymentSpec.from_object(NAME, SPEC)
    return {child["kind"]: child for child in children.render_children(owner, spec)}


def _refused_by_policy(call: Callable[[], Any], *words: str) -> None:
    with pytest.raises(ApiException) as caught:
        call()
    body = str(caught.value.body)
    assert caught.value.status == 403 and "ValidatingAdmissionPolicy" in body, body
    for word in words:
        assert word in body, body


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _annotation(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(deployment: dict[str, Any]) -> None:
        deployment["spec"]["template"]["metadata"].setdefault("annotations", {})[key] = value

    return mutate


def _root_pod(deployment: dict[str, Any]) -> None:
    _pod(deployment)["securityContext"]["runAsNonRoot"] = False


def _no_pod_security_context(deployment: dict[str, Any]) -> None:
    del _pod(deployment)["securityContext"]


def _uid_zero(deployment: dict[str, Any]) -> None:
    _pod(deployment)["securityContext"]["runAsUser"] = 0


def _root_container(deployment: dict[str, Any]) -> None:
    _pod(deployment)["containers"][0]["securityContext"]["runAsNonRoot"] = False


def _unconfined_seccomp(deployment: dict[str, Any]) -> None:
    _pod(deployment)["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Unconfined"}


def _unconfined_apparmor(deployment: dict[str, Any]) -> None:
    _pod(deployment)["securityContext"]["appArmorProfile"] = {"type": "Unconfined"}


def _host_pid(deployment: dict[str, Any]) -> None:
    _pod(deployment)["hostPID"] = True


APPARMOR, SECCOMP_POD, SECCOMP_CONTAINER = workload.SECURITY_PROFILE_ANNOTATION_PREFIXES
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("apparmor-annotation", _annotation(f"{APPARMOR}serving", "unconfined"), "AppArmor"),
    # The API server itself refuses a seccomp annotation that contradicts the field: the
    # policy refuses even one that agrees with it (the annotations are the product's).
    ("seccomp-pod-annotation", _annotation(f"{SECCOMP_POD}pod", "runtime/default"), "seccomp"),
    ("seccomp-container-annotation", _annotation(f"{SECCOMP_CONTAINER}poller", "runtime/default"), "seccomp"),
    ("run-as-root", _root_pod, "runAsNonRoot"),
    ("no-pod-security-context", _no_pod_security_context, "runAsNonRoot"),
    ("uid-0", _uid_zero, "runAsUser 0"),
    ("container-as-root", _root_container, "runAsNonRoot false"),
    ("seccomp-unconfined", _unconfined_seccomp, "Unconfined"),
    ("apparmor-unconfined", _unconfined_apparmor, "Unconfined"),
    ("host-pid", _host_pid, "hostPID"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "words"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_a_deployment_out_of_the_restricted_baseline_is_refused(
    kube: Any, operator_token: str, namespace: str, mutate: Callable[[dict[str, Any]], None], words: str
) -> None:
    apps = client.AppsV1Api(kube.api_client(operator_token))
    deployment = copy.deepcopy(_rendered(namespace)["Deployment"])
    mutate(deployment)
    _refused_by_policy(lambda: apps.create_namespaced_deployment(namespace, deployment, dry_run="All"), words)
    # The control: exactly the rendered Deployment is admitted.
    apps.create_namespaced_deployment(namespace, _rendered(namespace)["Deployment"], dry_run="All")


def test_a_disruption_budget_is_named_exactly_after_its_model_deployment(
    kube: Any, operator_token: str, namespace: str
) -> None:
    """A budget NAME-poller (the identity's name) selecting the pods of NAME-poller, owned by
    NAME: it would hold the node drains of another ModelDeployment NAME-poller's pods."""
    policy = client.PolicyV1Api(kube.api_client(operator_token))
    budget = copy.deepcopy(_rendered(namespace)["PodDisruptionBudget"])
    budget["metadata"]["name"] = f"{NAME}-poller"
    budget["spec"]["selector"]["matchLabels"][names.LABEL_INSTANCE] = f"{NAME}-poller"
    _refused_by_policy(
        lambda: policy.create_namespaced_pod_disruption_budget(namespace, budget, dry_run="All"),
        "controlled by the ModelDeployment they are named after",
    )
    policy.create_namespaced_pod_disruption_budget(
        namespace, _rendered(namespace)["PodDisruptionBudget"], dry_run="All"
    )
