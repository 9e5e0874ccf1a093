"""What the operator refuses in the workload shape when the API server did not (objects stored
before a CEL rule existed, or what CEL cannot see: two layers of resources merged into one
container), and the annotations and env it owns. Pure: no cluster (the CEL side of the same
lists is test_workload_shape_kube.py)."""

from __future__ import annotations

from typing import Any

import pytest
from model_poller_api import models, names, workload
from model_poller_operator import overrides

NAME = "faster-rcnn"
SOURCE = {"uri": "gs://ml-models/faster_rcnn/"}
CONTAINERS = "spec.podTemplate.spec.containers"


def _problems(body: dict[str, Any]) -> list[tuple[str, str]]:
    spec = models.ModelDeploymentSpec.from_object(NAME, body)
    return [(p.field, str(p)) for p in overrides.problems(spec)]


@pytest.mark.parametrize(
    "key",
    [
        "container.apparmor.security.beta.kubernetes.io/serving",
        "seccomp.security.alpha.kubernetes.io/pod",
        "container.seccomp.security.alpha.kubernetes.io/poller",
        "modelpoller.dev/anything",
        "kubectl.kubernetes.io/default-container",
    ],
)
def test_security_profile_annotations_are_the_operators(key: str) -> None:
    found = _problems({"source": SOURCE, "podTemplate": {"metadata": {"annotations": {key: "unconfined"}}}})
    assert len(found) == 1
    field, message = found[0]
    assert field == "spec.podTemplate.metadata.annotations"
    assert f"annotation {key} is the operator's" in message


def test_other_annotations_are_the_users() -> None:
    annotations = {"prometheus.io/scrape": "true", "cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}
    assert _problems({"source": SOURCE, "podTemplate": {"metadata": {"annotations": annotations}}}) == []


@pytest.mark.parametrize(
    "env",
    [
        "MODEL_POLLER_SOURCE",
        "POD_NAME",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "STORAGE_EMULATOR_HOST",
        "PUBSUB_EMULATOR_HOST",
        "GCE_METADATA_HOST",
        "GCE_METADATA_IP",
        "PYTHONPATH",
        "PYTHONSTARTUP",
    ],
)
def test_the_pollers_env_that_redirects_its_credentials_is_refused(env: str) -> None:
    assert workload.owned_env(env)
    container = {"name": "poller", "env": [{"name": "GRPC_VERBOSITY", "value": "ERROR"}, {"name": env, "value": "x"}]}
    found = _problems({"source": SOURCE, "podTemplate": {"spec": {"containers": [container]}}})
    assert [f for f, _ in found] == [f"{CONTAINERS}[0].env[1].name"]
    assert f"{env} is the operator's" in found[0][1]


@pytest.mark.parametrize("env", ["GRPC_VERBOSITY", "TZ", "LOG_FORMAT", "KUBERNETES_NAMESPACE_HINT"])
def test_other_poller_env_is_the_users(env: str) -> None:
    assert not workload.owned_env(env)


def test_the_serving_containers_env_is_not_restricted_to_the_pollers_list() -> None:
    """TF Serving holds no credentials: a proxy for it is the user's business."""
    container = {"name": "serving", "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}
    assert _problems({"source": SOURCE, "podTemplate": {"spec": {"containers": [container]}}}) == []


def test_owned_service_account_annotations_are_refused_in_external_mode_too() -> None:
    """The poller's ServiceAccount is rendered in both modes."""
    body = {
        "source": SOURCE,
        "workload": names.WORKLOAD_EXTERNAL,
        "serviceAccount": {"annotations": {"modelpoller.dev/applied-hash": "x"}},
    }
    found = _problems(body)
    assert [f for f, _ in found] == ["spec.serviceAccount.annotations"]
    with pytest.raises(overrides.InvalidOverride):
        overrides.check(models.ModelDeploymentSpec.from_object(NAME, body))


@pytest.mark.parametrize(
    ("body", "request_field", "limit_field"),
    [
        (
            {
                "serving": {"resources": {"requests": {"memory": "2Gi"}}},
                "podTemplate": {
                    "spec": {"containers": [{"name": "serving", "resources": {"limits": {"memory": "1Gi"}}}]}
                },
            },
            "spec.serving.resources.requests.memory",
            f"{CONTAINERS}[0].resources.limits.memory",
        ),
        (
            {
                "poller": {"resources": {"limits": {"cpu": "100m"}}},
                "podTemplate": {
                    "spec": {
                        "containers": [
                            {"name": "serving"},
                            {"name": "poller", "resources": {"requests": {"cpu": "1"}}},
                        ]
                    }
                },
            },
            f"{CONTAINERS}[1].resources.requests.cpu",
            "spec.poller.resources.limits.cpu",
        ),
    ],
    ids=["serving", "poller"],
)
def test_a_request_above_the_merged_limit_is_an_invalid_override_naming_both_fields(
    body: dict[str, Any], request_field: str, limit_field: str
) -> None:
    found = _problems({"source": SOURCE, **body})
    assert len(found) == 1, found
    field, message = found[0]
    assert field == request_field
    assert message.startswith(f"{request_field}: ") and limit_field in message


def test_an_override_that_raises_the_limit_is_fine() -> None:
    body = {
        "source": SOURCE,
        "serving": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}}},
        "podTemplate": {"spec": {"containers": [{"name": "serving", "resources": {"limits": {"memory": "4Gi"}}}]}},
    }
    assert _problems(body) == []
