"""External mode (spec.workload: external) in the pure parts: what the operator renders, and
the status computed from the user's labelled pods (no Deployment of the operator's)."""

from __future__ import annotations

from typing import Any

from model_poller_api import models, names
from model_poller_api.conditions import find_condition
from model_poller_operator import children, pod_states, poller_entries, status_reasons
from model_poller_operator import status as st
from model_poller_operator.external import deployment_state
from model_poller_operator.render import ownership

NOW = "2026-01-01T00:00:00Z"
OWNER = ownership.Owner("m", "ml", "00000000-0000-4000-8000-000000000000")


def spec(**overrides: Any) -> models.ModelDeploymentSpec:
    raw: dict[str, Any] = {"workload": "external", "source": {"uri": "gs://b/m/"}, **overrides}
    return models.ModelDeploymentSpec.from_object("m", raw)


def observed(pods: tuple[pod_states.PodState, ...], **overrides: Any) -> pod_states.Observed:
    return pod_states.Observed(
        name="m", namespace="ml", spec=spec(**overrides), deployment=deployment_state(list(pods)), pods=pods
    )


def report(serving: int | None, versions: list[int]) -> dict[str, Any]:
    return models.PollerReport(
        versions=tuple(versions), serving=serving, latest=max(versions), last_sync=NOW
    ).to_status()


def ready(status: dict[str, Any]) -> tuple[str, str, str]:
    found = find_condition(status[models.STATUS_CONDITIONS], "Ready") or {}
    return str(found.get("status")), str(found.get("reason")), str(found.get("message"))


def selector() -> str:
    return ownership.pod_selector(OWNER, spec())


def test_external_mode_renders_only_the_pollers_identity() -> None:
    kinds = [c["kind"] for c in children.render_children(OWNER, spec(replicas=3))]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding"]
    operator_mode = models.ModelDeploymentSpec.from_object("m", {"source": {"uri": "gs://b/m/"}})
    assert len(children.render_children(OWNER, operator_mode)) == 5


def test_selector_is_the_injection_label() -> None:
    assert selector() == f"{names.LABEL_MODEL_DEPLOYMENT}=m"


def test_no_labelled_pod_yet_says_what_to_label() -> None:
    desired = st.desired_status({}, observed(()), now=NOW, selector=selector())
    status, reason, message = ready(desired)
    assert (status, reason) == ("False", status_reasons.REASON_NO_PODS)
    assert f"{names.LABEL_MODEL_DEPLOYMENT}=m" in message and "namespace ml" in message
    assert (desired[models.STATUS_REPLICAS], desired[models.STATUS_READY_REPLICAS]) == (0, 0)


def test_every_labelled_pod_is_a_desired_replica_whatever_spec_replicas_says() -> None:
    pods = (
        pod_states.PodState("tf-a", ready=True),
        pod_states.PodState("tf-b", ready=True),
        pod_states.PodState("tf-c", ready=False),
    )
    current = {"pollers": {"tf-a": report(2, [1, 2]), "tf-b": report(2, [1, 2]), "tf-gone": report(1, [1])}}
    desired = st.desired_status(current, observed(pods, replicas=1), now=NOW, selector=selector())
    assert (desired[models.STATUS_REPLICAS], desired[models.STATUS_READY_REPLICAS]) == (3, 2)
    status, reason, message = ready(desired)
    assert (status, reason) == ("False", status_reasons.REASON_NOT_READY)
    assert f"kubectl -n ml get pods -l {names.LABEL_MODEL_DEPLOYMENT}=m" in message
    assert poller_entries.stale_pollers(current, pods) == ["tf-gone"]

    pods = pods[:2]
    desired = st.desired_status(current, observed(pods, replicas=1), now=NOW, selector=selector())
    assert ready(desired)[:2] == ("True", status_reasons.REASON_ALL_SERVING)
    assert desired[models.STATUS_SERVING_VERSION] == 2
    assert desired[models.STATUS_SELECTOR] == f"{names.LABEL_MODEL_DEPLOYMENT}=m"


def test_deployment_state_from_pods() -> None:
    pods = [pod_states.PodState("a", ready=True), pod_states.PodState("b")]
    assert deployment_state(pods) == pod_states.DeploymentState(replicas=2, ready_replicas=1, updated_replicas=2)
