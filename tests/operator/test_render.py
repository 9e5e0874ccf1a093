"""Golden-file tests of the pure renders (no cluster).

Regenerate the goldens after an intended change, then review the diff:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_render.py
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from model_poller_api import models, names
from model_poller_operator import children
from model_poller_operator.render import ownership, pod_containers

NAMESPACE = "ml"
UID = "00000000-0000-4000-8000-000000000000"
CASES = ["minimal", "full", "pinned-subscription", "gpu", "budget-percent", "external-identity"]


def _owner(case: str) -> ownership.Owner:
    return ownership.Owner(
        name="faster-rcnn" if case != "pinned-subscription" else "resnet", namespace=NAMESPACE, uid=UID
    )


def _render(case: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    owner = _owner(case)
    return children.render_children(owner, models.ModelDeploymentSpec.from_object(owner.name, spec))


@pytest.mark.parametrize("case", CASES)
def test_children_match_golden(
    case: str,
    cases: dict[str, dict[str, Any]],
    golden: Callable[[str], list[dict[str, Any]]],
    update_golden: bool,
) -> None:
    rendered = _render(case, cases[case])
    if update_golden:
        from pathlib import Path

        path = Path(__file__).parent / "golden" / f"{case}.yaml"
        header = f"# Rendered children of tests/operator/cases.yaml:{case} (UPDATE_GOLDEN=1 regenerates).\n"
        path.write_text(header + yaml.safe_dump_all(rendered, sort_keys=False, width=120), encoding="utf-8")
    assert rendered == golden(case)


@pytest.mark.parametrize("case", CASES)
def test_render_is_a_pure_function(case: str, cases: dict[str, dict[str, Any]]) -> None:
    spec = copy.deepcopy(cases[case])
    first = _render(case, spec)
    assert spec == cases[case], "rendering must not modify the spec"
    assert _render(case, spec) == first


@pytest.mark.parametrize("case", ["full", "gpu"])
def test_every_child_is_owned_by_the_model_deployment(case: str, cases: dict[str, dict[str, Any]]) -> None:
    for child in _render(case, cases[case]):
        assert child["metadata"]["namespace"] == NAMESPACE
        assert child["metadata"]["ownerReferences"] == [
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": "faster-rcnn",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert child["metadata"]["labels"][names.LABEL_MANAGED_BY] == names.MANAGER
    kinds = [c["kind"] for c in _render(case, cases[case])]
    # The poller's identity exists before the pods that use it.
    before = ("ServiceAccount", "Role", "RoleBinding")
    assert all(kinds.index(k) < kinds.index("Deployment") for k in before)


def test_versions_change_leaves_the_pod_template_alone(cases: dict[str, dict[str, Any]]) -> None:
    """The version policy is not in the pod template at all, with or without a sizeLimit:
    a rollback never restarts pods."""
    for base in (cases["full"], {k: v for k, v in cases["full"].items() if k != "storage"}):
        pinned = {**copy.deepcopy(base), "versions": {"pinned": [1, 2]}}
        keep1 = {**copy.deepcopy(base), "versions": {"keep": 1}}
        unset = {k: v for k, v in base.items() if k != "versions"}
        renders = [_render("full", s) for s in (base, pinned, keep1, unset)]
        assert all(r == renders[0] for r in renders)
        text = yaml.safe_dump(renders[0])
        assert "KEEP" not in text and "PINNED" not in text and "MAX_BYTES" not in text


def _poller_env(children: list[dict[str, Any]]) -> dict[str, Any]:
    (poller,) = children[-1]["spec"]["template"]["spec"]["initContainers"]
    return {e["name"]: e.get("value") for e in poller["env"]}


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({"sizeLimit": "20Gi"}, 20 << 30),
        ({"sizeLimit": 5000000000}, 5000000000),
        ({"sizeLimit": "6G"}, 6000000000),
        ({"medium": "Memory"}, None),  # no sizeLimit: the poller's own --max-bytes default
    ],
)
def test_the_size_limit_reaches_the_poller_as_its_storage_limit(storage: dict[str, Any], expected: int | None) -> None:
    spec = models.ModelDeploymentSpec.from_object("m", {"source": {"uri": "gs://b/m/"}, "storage": storage})
    assert pod_containers.storage_limit(spec) == expected
    env = _poller_env(children.render_children(ownership.Owner("m", "ml", UID), spec))
    assert env.get(names.env_name("--storage-limit")) == (None if expected is None else str(expected))
    assert names.env_name("--max-bytes") not in env


def test_a_size_limit_that_is_not_a_quantity_is_named() -> None:
    spec = models.ModelDeploymentSpec.from_object(
        "m", {"source": {"uri": "gs://b/m/"}, "storage": {"sizeLimit": "lots"}}
    )
    with pytest.raises(ValueError, match="spec.storage.sizeLimit"):
        pod_containers.storage_limit(spec)


def test_poller_has_a_memory_limit_unless_the_user_sets_one(cases: dict[str, dict[str, Any]]) -> None:
    (poller,) = _render("minimal", cases["minimal"])[-1]["spec"]["template"]["spec"]["initContainers"]
    assert poller["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}
    (poller,) = _render("full", cases["full"])[-1]["spec"]["template"]["spec"]["initContainers"]
    assert poller["resources"] == cases["full"]["poller"]["resources"]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        # The leftover of issue 10: a cpu request alone used to drop the memory limit.
        ({"requests": {"cpu": "200m"}}, {"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}),
        # A memory request above the default limit takes the limit up with it (never invalid).
        ({"requests": {"memory": "1Gi"}}, {"requests": {"cpu": "50m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}),
        # A cpu limit below the default request takes the request down with it.
        (
            {"limits": {"cpu": "20m"}},
            {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "384Mi", "cpu": "20m"}},
        ),
        # The user's own memory limit wins.
        ({"limits": {"memory": "2Gi"}}, {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "2Gi"}}),
    ],
)
def test_poller_resources_merge_over_the_defaults(resources: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = models.ModelDeploymentSpec.from_object(
        "m", {"source": {"uri": "gs://b/m/"}, "poller": {"resources": resources}}
    )
    assert pod_containers.poller_resources(spec) == expected


def test_secret_is_mounted_into_the_poller_only(cases: dict[str, dict[str, Any]]) -> None:
    deployment = _render("full", cases["full"])[-1]
    pod = deployment["spec"]["template"]["spec"]
    (poller,) = pod["initContainers"]
    (serving,) = pod["containers"]
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/model-poller/gcs/key.json"} in poller[
        "env"
    ]
    assert any(m["name"] == pod_containers.CREDENTIALS_VOLUME and m["readOnly"] for m in poller["volumeMounts"])
    assert all(
        m["name"] not in (pod_containers.CREDENTIALS_VOLUME, pod_containers.TOKEN_VOLUME)
        for m in serving["volumeMounts"]
    )
    assert all(e["name"] != "GOOGLE_APPLICATION_CREDENTIALS" for e in serving.get("env", []))
    assert pod["automountServiceAccountToken"] is False
    minimal = _render("minimal", cases["minimal"])[-1]["spec"]["template"]["spec"]
    assert all(v["name"] != pod_containers.CREDENTIALS_VOLUME for v in minimal["volumes"])


def test_pod_contract_with_the_poller_and_tf_serving(cases: dict[str, dict[str, Any]]) -> None:
    pod = _render("full", cases["full"])[-1]["spec"]["template"]["spec"]
    (poller,) = pod["initContainers"]
    (serving,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in poller["env"]}
    assert poller["restartPolicy"] == "Always"
    assert poller["startupProbe"]["httpGet"] == {"path": names.PATH_READYZ, "port": names.POLLER_HTTP_PORT}
    assert poller["livenessProbe"]["httpGet"] == {"path": names.PATH_HEALTHZ, "port": names.POLLER_HTTP_PORT}
    assert env[names.env_name("--report-to")] == "ml/faster-rcnn"
    assert env[names.env_name("--serving-url")] == "http://localhost:8501"
    assert env[names.env_name("--source")] == "gs://ml-models/faster_rcnn/"
    assert env[names.env_name("--model-dir")] == "/models/faster_rcnn"
    assert env[names.env_name("--poll-interval")] == "300"
    assert env[names.env_name("--topic")] == "projects/p/topics/models"
    assert env["POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert serving["readinessProbe"]["httpGet"] == {"path": names.PATH_SERVING_READY, "port": names.POLLER_HTTP_PORT}
    assert "--model_base_path=/models/faster_rcnn" in serving["args"]
    assert "--file_system_poll_wait_seconds=1" in serving["args"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in serving["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in poller["volumeMounts"]
    assert pod["volumes"][0] == {"name": "models", "emptyDir": {"medium": "Memory", "sizeLimit": "20Gi"}}
    for container in (poller, serving):
        assert container["securityContext"] == pod_containers.restricted_security_context()


def test_role_grants_only_its_own_model_deployment(cases: dict[str, dict[str, Any]]) -> None:
    role = _render("minimal", cases["minimal"])[1]
    assert role["kind"] == "Role"
    assert role["rules"] == [
        {
            "apiGroups": [names.GROUP],
            "resources": [names.PLURAL],
            "resourceNames": ["faster-rcnn"],
            "verbs": ["get", "watch"],
        },
        {
            "apiGroups": [names.GROUP],
            "resources": [f"{names.PLURAL}/status"],
            "resourceNames": ["faster-rcnn"],
            "verbs": ["patch"],
        },
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("faster-rcnn", True),
        ("a", True),
        ("my.model", False),
        ("Model", False),
        ("1model", False),
        ("x" * 63, True),
        ("x" * 64, False),
    ],
)
def test_name_problem(name: str, ok: bool) -> None:
    problem = ownership.name_problem(name)
    assert (problem is None) == ok
    if problem:
        assert name[:10] in problem


def test_selector_string_matches_the_deployment_selector() -> None:
    owner = ownership.Owner("faster-rcnn", "ml", UID)
    assert (
        ownership.selector_string(owner) == "app.kubernetes.io/instance=faster-rcnn,app.kubernetes.io/name=model-poller"
    )
