"""The operator against a real kube-apiserver: children, convergence, writes, RBAC, PodSecurity.

The operator runs as a subprocess (the ``model-poller-operator`` console script, cluster
wide) under its own ServiceAccount bound to the chart's ClusterRole, so the chart's RBAC
is exercised too. There is no kubelet or controller-manager: Deployments never make pods,
so the tests create pods from the rendered template and write Deployment status by hand.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube

GOLDEN_NAMESPACE = "ml"
GOLDEN_UID = "00000000-0000-4000-8000-000000000000"
KINDS = ["ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"]


def _child_names(name: str) -> dict[str, str]:
    return {kind: (f"{name}-poller" if kind in ("ServiceAccount", "Role", "RoleBinding") else name) for kind in KINDS}


def wait_children(cluster: kit.Cluster, namespace: str, name: str, timeout: float = 30) -> dict[str, dict[str, Any]]:
    def probe() -> dict[str, dict[str, Any]] | None:
        found = {kind: cluster.child(kind, namespace, child) for kind, child in _child_names(name).items()}
        return {k: v for k, v in found.items() if v is not None} if all(found.values()) else None

    found: dict[str, dict[str, Any]] = kit.wait_for(f"children of {namespace}/{name}", probe, timeout)
    return found


def contains(expected: Any, live: Any, path: str = "") -> list[str]:
    """Differences where ``live`` lacks or changes something of ``expected`` (defaults may be added)."""
    if isinstance(expected, dict):
        if not isinstance(live, dict):
            return [f"{path}: expected a map, got {live!r}"]
        return [d for k, v in expected.items() for d in contains(v, live.get(k), f"{path}.{k}")]
    if isinstance(expected, list):
        if not isinstance(live, list) or len(live) != len(expected):
            return [f"{path}: expected {expected!r}, got {live!r}"]
        return [
            d for i, (e, lv) in enumerate(zip(expected, live, strict=False)) for d in contains(e, lv, f"{path}[{i}]")
        ]
    if expected == live or (not isinstance(expected, bool) and str(expected) == str(live)):
        return []
    return [f"{path}: expected {expected!r}, got {live!r}"]


def for_owner(doc: dict[str, Any], namespace: str, uid: str) -> dict[str, Any]:
    """A golden document rendered for ns "ml" and a fixed uid, moved to ``namespace``/``uid``."""
    text = json.dumps(doc).replace(f'"{GOLDEN_UID}"', f'"{uid}"')
    text = text.replace(f'"namespace": "{GOLDEN_NAMESPACE}"', f'"namespace": "{namespace}"')
    text = text.replace(f'"value": "{GOLDEN_NAMESPACE}/', f'"value": "{namespace}/')
    moved: dict[str, Any] = json.loads(text)
    return moved


def template_hash(deployment: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(deployment["spec"]["template"], sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("case", ["minimal", "full"])
def test_create_makes_children_that_match_the_goldens(
    case: str,
    operator: kit.OperatorProcess,
    cluster: kit.Cluster,
    namespace: str,
    cases: dict[str, dict[str, Any]],
    golden: Callable[[str], list[dict[str, Any]]],
) -> None:
    md = cluster.create_md(namespace, "faster-rcnn", cases[case])
    uid = md["metadata"]["uid"]
    children = wait_children(cluster, namespace, "faster-rcnn")
    for doc in golden(case):
        expected = for_owner(doc, namespace, uid)
        live = children[doc["kind"]]
        assert contains(expected, live) == [], f"{doc['kind']} differs from golden/{case}.yaml"
        assert live["metadata"]["ownerReferences"] == [
            {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": "faster-rcnn",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        managers = {m["manager"] for m in live["metadata"]["managedFields"]}
        assert names.MANAGER in managers
    observed = cluster.wait_observed(namespace, "faster-rcnn")
    status = observed["status"]
    assert status["modelName"] == cases[case].get("modelName", "faster-rcnn")
    assert status["selector"] == "app.kubernetes.io/instance=faster-rcnn,app.kubernetes.io/name=model-poller"
    synced = cluster.condition(namespace, "faster-rcnn", "Synced")
    assert (synced["status"], synced["reason"]) == ("True", "ChildrenApplied")


def test_spec_edit_updates_the_children(operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str) -> None:
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/"}})
    cluster.wait_observed(namespace, "m")
    cluster.patch_md(
        namespace,
        "m",
        {"spec": {"replicas": 3, "serving": {"image": "tensorflow/serving:2.18.0"}, "source": {"pollInterval": "2m"}}},
    )

    def updated() -> dict[str, Any] | None:
        d = cluster.child("Deployment", namespace, "m")
        pod = d["spec"]["template"]["spec"] if d else {}
        env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]} if d else {}
        ok = (
            d is not None
            and d["spec"]["replicas"] == 3
            and pod["containers"][0]["image"] == "tensorflow/serving:2.18.0"
            and env.get(names.env_name("--poll-interval")) == "120"
        )
        return d if ok else None

    kit.wait_for("the Deployment to follow the spec", updated)
    assert cluster.wait_observed(namespace, "m")["status"]["observedGeneration"] == 2
    # Removing an override removes it from the child (server-side apply drops the field).
    cluster.patch_md(namespace, "m", {"spec": {"serving": None}})
    kit.wait_for(
        "the default image back",
        lambda: (
            (cluster.child("Deployment", namespace, "m") or {})["spec"]["template"]["spec"]["containers"][0]["image"]
            == models.DEFAULT_SERVING_IMAGE
        ),
    )


def test_children_deleted_or_edited_by_hand_come_back(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/"}})
    before = wait_children(cluster, namespace, "m")
    cluster.core.delete_namespaced_service("m", namespace)
    cluster.rbac.delete_namespaced_role_binding("m-poller", namespace)
    cluster.core.delete_namespaced_service_account("m-poller", namespace)
    cluster.apps.delete_namespaced_deployment("m", namespace)
    after = wait_children(cluster, namespace, "m")
    for kind in KINDS:
        if kind != "Role":
            assert after[kind]["metadata"]["uid"] != before[kind]["metadata"]["uid"], f"{kind} was not recreated"
    # Hand edits of managed fields are taken back.
    cluster.apps.patch_namespaced_deployment(
        "m", namespace, {"spec": {"template": {"spec": {"containers": [{"name": "serving", "image": "evil:1"}]}}}}
    )
    cluster.rbac.patch_namespaced_role(
        "m-poller",
        namespace,
        [{"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}}],
    )
    kit.wait_for(
        "the image to be restored",
        lambda: (
            (cluster.child("Deployment", namespace, "m") or {})["spec"]["template"]["spec"]["containers"][0]["image"]
            == models.DEFAULT_SERVING_IMAGE
        ),
    )
    kit.wait_for(
        "the Role to be restored", lambda: len((cluster.child("Role", namespace, "m-poller") or {})["rules"]) == 2
    )


def test_versions_change_does_not_touch_the_pod_template(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.create_md(namespace, "m", {"replicas": 2, "source": {"uri": "gs://bkt/m/"}, "versions": {"keep": 2}})
    cluster.wait_observed(namespace, "m")
    deployment = wait_children(cluster, namespace, "m")["Deployment"]
    for generation, versions in ((2, {"keep": 5}), (3, {"keep": None, "pinned": [3, 1]})):
        cluster.patch_md(namespace, "m", {"spec": {"versions": versions}})
        md = cluster.wait_observed(namespace, "m")
        assert md["status"]["observedGeneration"] == generation
        now = cluster.child("Deployment", namespace, "m")
        assert now is not None
        assert template_hash(now) == template_hash(deployment)
        # Not even a no-op write: the Deployment was not touched at all.
        assert now["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]


def test_steady_state_makes_zero_writes(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, kube: Any
) -> None:
    count = 20
    created = kit.audit_offset(kube.audit_log)
    for i in range(count):
        cluster.create_md(namespace, f"m{i:02d}", {"replicas": 1 + i % 3, "source": {"uri": f"gs://bkt/m{i}/"}})
    for i in range(count):
        cluster.wait_observed(namespace, f"m{i:02d}")
    time.sleep(3)  # let in-flight events (our own writes coming back) settle
    start = kit.audit_offset(kube.audit_log)

    # This namespace's 20 ModelDeployments and their children only: the whole suite shares
    # one API server, and earlier tests leave ModelDeployments behind (some in a deliberate
    # NameConflict, which the operator keeps retrying with backoff, as it should).
    def ours(writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [w for w in writes if w.get("objectRef", {}).get("namespace") == namespace]

    # Creation: 5 children, kopf's last-handled annotation, one status write (+ an Event at most).
    creation = ours(kit.audit_writes(kube.audit_log, created, end=start))
    assert len(creation) / count <= 8, kit.describe_writes(creation)
    time.sleep(30)
    writes = ours(kit.audit_writes(kube.audit_log, start))
    assert kit.describe_writes(writes) == [], "an idle operator must not write"


def test_poller_identity_can_patch_only_its_own_status(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, kube: Any
) -> None:
    cluster.create_md(namespace, "a", {"source": {"uri": "gs://bkt/a/"}})
    cluster.create_md(namespace, "b", {"source": {"uri": "gs://bkt/b/"}})
    wait_children(cluster, namespace, "a")
    wait_children(cluster, namespace, "b")
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "gcs-key"}, "stringData": {"key.json": "{}"}}
    )
    token = kit.service_account_token(kube, namespace, "a-poller")
    poller = client.CustomObjectsApi(kube.api_client(token))
    entry = {
        "status": {
            "pollers": {
                "a-pod": {"versions": [1], "serving": 1, "latest": 1, "lastSync": "2026-01-01T00:00:00Z", "error": None}
            }
        }
    }

    # Allowed: read its own ModelDeployment, watch it by name, patch its status.
    own = poller.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, "a")
    assert isinstance(own, dict) and own["spec"]
    poller.patch_namespaced_custom_object_status(names.GROUP, names.VERSION, namespace, names.PLURAL, "a", entry)
    stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
        poller.list_namespaced_custom_object,
        names.GROUP,
        names.VERSION,
        namespace,
        names.PLURAL,
        field_selector="metadata.name=a",
        timeout_seconds=1,
    )
    assert {e["object"]["metadata"]["name"] for e in stream} == {"a"}

    def denied(call: Callable[[], Any]) -> None:
        with pytest.raises(ApiException) as error:
            call()
        assert error.value.status == 403

    denied(
        lambda: poller.patch_namespaced_custom_object_status(
            names.GROUP, names.VERSION, namespace, names.PLURAL, "b", entry
        )
    )
    denied(
        lambda: poller.patch_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL, "a", {"spec": {"replicas": 5}}
        )
    )
    denied(lambda: poller.get_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, "b"))
    denied(lambda: poller.list_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL))
    denied(lambda: poller.delete_namespaced_custom_object(names.GROUP, names.VERSION, namespace, names.PLURAL, "a"))
    poller_core = client.CoreV1Api(kube.api_client(token))
    denied(lambda: poller_core.read_namespaced_secret("gcs-key", namespace))
    denied(lambda: poller_core.list_namespaced_pod(namespace))
    # The same answers from the authorizer, as a SubjectAccessReview.
    authz = client.AuthorizationV1Api(cluster.api)
    user = f"system:serviceaccount:{namespace}:a-poller"

    def allowed(verb: str, resource: str, name: str, subresource: str = "", group: str = names.GROUP) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource, name=name
                ),
            )
        )
        status = authz.create_subject_access_review(review).status
        return bool(status and status.allowed)

    assert allowed("patch", names.PLURAL, "a", "status")
    assert not allowed("patch", names.PLURAL, "b", "status")
    assert not allowed("update", names.PLURAL, "a")
    assert not allowed("get", "secrets", "gcs-key", group="")


def test_pod_from_the_template_is_admitted_by_pod_security_restricted(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]]
) -> None:
    cluster.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    cluster.create_md(namespace, "faster-rcnn", cases["full"])
    deployment = wait_children(cluster, namespace, "faster-rcnn")["Deployment"]
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "faster-rcnn-abc12", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    created = cluster.core.create_namespaced_pod(namespace, pod)
    assert created.metadata.name == "faster-rcnn-abc12"
    # The control: the namespace really enforces "restricted" (a bare pod is refused).
    with pytest.raises(ApiException) as error:
        cluster.core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "bare"},
                "spec": {
                    "serviceAccountName": "faster-rcnn-poller",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "c", "image": "busybox"}],
                },
            },
        )
    assert error.value.status == 403 and "PodSecurity" in str(error.value.body)


def _pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": copy.deepcopy(template["spec"]),
    }


def _mark_ready(cluster: kit.Cluster, namespace: str, pod: str) -> None:
    now = "2026-01-01T00:00:00Z"
    cluster.core.patch_namespaced_pod_status(
        pod,
        namespace,
        {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }
        },
    )


def test_status_aggregates_poller_reports_and_prunes_deleted_pods(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, kube: Any
) -> None:
    cluster.create_md(namespace, "m", {"replicas": 2, "source": {"uri": "gs://bkt/m/"}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    assert cluster.condition(namespace, "m", "Ready")["reason"] == "WaitingForInitialSync"
    for pod in ("m-aaaaa", "m-bbbbb", "m-ccccc"):
        cluster.core.create_namespaced_pod(namespace, _pod(template, pod))
    _mark_ready(cluster, namespace, "m-aaaaa")
    _mark_ready(cluster, namespace, "m-bbbbb")
    cluster.apps.patch_namespaced_deployment_status(
        "m", namespace, {"status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}}
    )
    # Each poller writes its own entry with its own identity (a merge patch of its key only).
    token = kit.service_account_token(kube, namespace, "m-poller")
    poller = client.CustomObjectsApi(kube.api_client(token))
    reports = {
        "m-aaaaa": models.PollerReport(versions=(2, 3), serving=3, latest=3, last_sync="2026-01-01T00:00:00Z"),
        "m-bbbbb": models.PollerReport(versions=(1, 2), serving=2, latest=3, last_sync="2026-01-01T00:00:00Z"),
        "m-ccccc": models.PollerReport(versions=(), serving=None, latest=4, last_sync="2026-01-01T00:00:00Z"),
    }
    for pod, report in reports.items():
        poller.patch_namespaced_custom_object_status(
            names.GROUP, names.VERSION, namespace, names.PLURAL, "m", {"status": {"pollers": {pod: report.to_status()}}}
        )

    def aggregated() -> dict[str, Any] | None:
        status = cluster.get_md(namespace, "m").get("status") or {}
        ok = status.get("latestVersion") == 4 and status.get("servingVersion") == 2 and status.get("readyReplicas") == 2
        return status if ok else None

    status = kit.wait_for("the aggregate", aggregated)
    assert status["replicas"] == 3
    ready = cluster.condition(namespace, "m", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AllReplicasServing"), ready
    # Printer columns, as a user sees them.
    out = subprocess.run(
        ["kubectl", "get", "md", "m", "-n", namespace, "--no-headers"],
        env=kube.env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out[:7] == ["m", "m", "gs://bkt/m/", "2", "2", "4", "2"], out
    # Events follow the status write: wait for them, not race them.
    kit.wait_for("the NewVersion and ServingVersionChanged Events", lambda: {"NewVersion", "ServingVersionChanged"}
                 <= {e["reason"] for e in cluster.events(namespace, "m")})  # fmt: skip

    # A pod goes away: its entry is pruned, and the aggregate follows the pods that remain.
    cluster.core.delete_namespaced_pod("m-bbbbb", namespace)
    cluster.core.delete_namespaced_pod("m-ccccc", namespace)
    cluster.apps.patch_namespaced_deployment_status(
        "m", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}}
    )

    def pruned() -> dict[str, Any] | None:
        status = cluster.get_md(namespace, "m").get("status") or {}
        return status if set(status.get("pollers") or {}) == {"m-aaaaa"} and status.get("servingVersion") == 3 else None

    status = kit.wait_for("the entries of deleted pods to be pruned", pruned)
    assert status["latestVersion"] == 3
    assert cluster.condition(namespace, "m", "Ready")["reason"] == "ReplicasNotReady"


def _kubelet_status(cluster: kit.Cluster, namespace: str, pod: str, status: dict[str, Any]) -> None:
    """Write a pod's status as the kubelet would (there is no kubelet here)."""
    cluster.core.patch_namespaced_pod_status(pod, namespace, {"status": status})


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def _container_status(name: str, state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    return {"name": name, "ready": ready, "restartCount": 0, "image": "img", "imageID": "", "state": state}


def _failed_mount_event(cluster: kit.Cluster, namespace: str, pod: dict[str, Any], secret: str) -> None:
    """The Event a kubelet posts when a pod's Secret volume cannot be mounted."""
    now = "2026-01-01T00:00:00Z"
    cluster.core.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": f"{pod['metadata']['name']}.failedmount"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "namespace": namespace,
                "uid": pod["metadata"]["uid"],
            },
            "type": "Warning",
            "reason": "FailedMount",
            "message": f'MountVolume.SetUp failed for volume "gcs-credentials" : secret "{secret}" not found',
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 3,
        },
    )


def test_missing_credentials_secret_is_degraded_from_what_the_pod_says(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """The operator may not read Secrets: it learns of a missing one from the pod (its
    FailedMount Event while it waits to start), until the pod starts."""
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/", "credentialsSecret": "gcs-key"}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    created = cluster.core.create_namespaced_pod(namespace, _pod(template, "m-aaaaa"))
    pod = cluster.api.sanitize_for_serialization(created)
    waiting = {
        "phase": "Pending",
        "initContainerStatuses": [_container_status("poller", _waiting("PodInitializing"))],
        "containerStatuses": [_container_status("serving", _waiting("PodInitializing"))],
    }
    _kubelet_status(cluster, namespace, "m-aaaaa", waiting)
    time.sleep(2)
    assert cluster.condition(namespace, "m", "Degraded").get("status") == "False", "no evidence yet"
    _failed_mount_event(cluster, namespace, pod, "gcs-key")
    degraded = kit.wait_for(
        "Degraded", lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("status") == "True" and c
    )
    assert degraded["reason"] == "CredentialsSecretMissing"
    assert "spec.source.credentialsSecret" in degraded["message"] and "m-aaaaa" in degraded["message"]
    assert f"kubectl -n {namespace} create secret generic gcs-key" in degraded["message"]
    # The Event follows the status write that set the condition: wait for it, not race it.
    kit.wait_for(
        "the CredentialsSecretMissing Event",
        lambda: "CredentialsSecretMissing" in {e["reason"] for e in cluster.events(namespace, "m")},
    )
    # The Secret is created and the kubelet starts the pod: the old Event is history.
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "gcs-key"}, "stringData": {"key.json": "{}"}}
    )
    running = {
        "phase": "Running",
        "initContainerStatuses": [_container_status("poller", {"running": {"startedAt": "2026-01-01T00:00:01Z"}})],
        "containerStatuses": [_container_status("serving", _waiting("PodInitializing"))],
    }
    _kubelet_status(cluster, namespace, "m-aaaaa", running)
    kit.wait_for("Degraded to clear", lambda: cluster.condition(namespace, "m", "Degraded").get("status") == "False")


def test_missing_secret_in_a_containers_waiting_message_is_degraded(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/", "credentialsSecret": "gcs-key"}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    cluster.core.create_namespaced_pod(namespace, _pod(template, "m-aaaaa"))
    config_error = _waiting("CreateContainerConfigError", 'secret "gcs-key" not found')
    _kubelet_status(
        cluster,
        namespace,
        "m-aaaaa",
        {"phase": "Pending", "initContainerStatuses": [_container_status("poller", config_error)]},
    )
    degraded = kit.wait_for(
        "Degraded", lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("status") == "True" and c
    )
    assert degraded["reason"] == "CredentialsSecretMissing"
    assert "CreateContainerConfigError" in degraded["message"]


def test_poller_errors_become_degraded_conditions(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, kube: Any
) -> None:
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/"}, "versions": {"pinned": [7]}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    cluster.core.create_namespaced_pod(namespace, _pod(template, "m-aaaaa"))
    poller = client.CustomObjectsApi(kube.api_client(kit.service_account_token(kube, namespace, "m-poller")))
    report = models.PollerReport(
        versions=(3,),
        serving=3,
        latest=3,
        error="pinned version 7 is not a valid version at gs://bkt/m/",
        reason=models.ReportReason.PINNED_VERSION_MISSING,
    )
    poller.patch_namespaced_custom_object_status(
        names.GROUP,
        names.VERSION,
        namespace,
        names.PLURAL,
        "m",
        {"status": {"pollers": {"m-aaaaa": report.to_status()}}},
    )
    degraded = kit.wait_for(
        "Degraded", lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("status") == "True" and c
    )
    assert degraded["reason"] == "PinnedVersionMissing"
    assert "spec.versions.pinned" in degraded["message"]
    denied = models.PollerReport(
        versions=(3,),
        serving=3,
        latest=3,
        error="listing gs://bkt/m/: access denied (403)",
        reason=models.ReportReason.ACCESS_DENIED,
    )
    poller.patch_namespaced_custom_object_status(
        names.GROUP,
        names.VERSION,
        namespace,
        names.PLURAL,
        "m",
        {"status": {"pollers": {"m-aaaaa": denied.to_status()}}},
    )
    kit.wait_for("AccessDenied", lambda: cluster.condition(namespace, "m", "Degraded").get("reason") == "AccessDenied")
    assert operator.process.poll() is None


def test_examples_are_valid(operator: kit.OperatorProcess, kube: Any, namespace: str) -> None:
    examples = sorted((Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            doc["metadata"]["namespace"] = namespace
            subprocess.run(
                ["kubectl", "apply", "--dry-run=server", "-f", "-"],
                input=yaml.safe_dump(doc), env=kube.env(), text=True, capture_output=True, check=True,
            )  # fmt: skip


# --- Ready before any report: what the pod itself says ------------------------------------

POD_NAME = "m-7d9c5f6b8-aaaaa"
STARTED = "2026-01-01T00:00:00Z"


def _image_pull_backoff(cluster: kit.Cluster, namespace: str, pod: dict[str, Any]) -> None:
    """The kubelet cannot pull the serving image: the poller (a sidecar) runs, serving waits."""
    _kubelet_status(cluster, namespace, POD_NAME, {
        "phase": "Pending",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                        "message": "containers with unready status: [serving]", "lastTransitionTime": STARTED}],
        "initContainerStatuses": [_container_status("poller", {"running": {"startedAt": STARTED}})],
        "containerStatuses": [_container_status("serving", _waiting(
            "ImagePullBackOff", 'Back-off pulling image "tensorflow/serving:nope"'))],
    })  # fmt: skip


def _crash_loop(cluster: kit.Cluster, namespace: str, pod: dict[str, Any]) -> None:
    """The poller exits at start (e.g. a bad flag) and the kubelet backs off restarting it."""
    crashing = _container_status("poller", _waiting(
        "CrashLoopBackOff", f"back-off 40s restarting failed container=poller pod={POD_NAME}_{namespace}"))  # fmt: skip
    crashing.update(restartCount=3, lastState={"terminated": {"reason": "Error", "exitCode": 2}})
    _kubelet_status(cluster, namespace, POD_NAME, {
        "phase": "Pending",
        "initContainerStatuses": [crashing],
        "containerStatuses": [_container_status("serving", _waiting("PodInitializing"))],
    })  # fmt: skip


def _secret_volume_missing(cluster: kit.Cluster, namespace: str, pod: dict[str, Any]) -> None:
    """The credentials Secret volume cannot be mounted: the containers wait, and only the
    pod's FailedMount Event says why."""
    _kubelet_status(cluster, namespace, POD_NAME, {
        "phase": "Pending",
        "initContainerStatuses": [_container_status("poller", _waiting("PodInitializing"))],
        "containerStatuses": [_container_status("serving", _waiting("PodInitializing"))],
    })  # fmt: skip
    _failed_mount_event(cluster, namespace, pod, "gcs-key")


def _refused_by_admission(cluster: kit.Cluster, namespace: str, template: dict[str, Any]) -> str:
    """A ResourceQuota refuses the ReplicaSet's pods: the API server's real refusal of a pod
    from the template, written into the Deployment's status as the Deployment controller
    copies its ReplicaSet's ReplicaFailure condition (no controller-manager runs here)."""
    cluster.core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    )
    cluster.core.patch_namespaced_resource_quota_status(
        "no-pods", namespace, {"status": {"hard": {"pods": "0"}, "used": {"pods": "0"}}}
    )
    pod = _pod(template, "unused")
    pod["metadata"] = {"generateName": "m-7d9c5f6b8-", "labels": template["metadata"]["labels"]}
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(namespace, pod)
    assert refused.value.status == 403
    message = str(json.loads(refused.value.body)["message"])
    cluster.apps.patch_namespaced_deployment_status("m", namespace, {"status": {
        "replicas": 0, "unavailableReplicas": 1, "observedGeneration": 1,
        "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message,
                        "lastUpdateTime": STARTED, "lastTransitionTime": STARTED}],
    }})  # fmt: skip
    return message


@pytest.mark.parametrize(
    ("case", "reason", "says"),
    [
        ("image-pull", "ImagePullBackOff", f"pod {POD_NAME}, container serving: ImagePullBackOff: Back-off pulling"),
        ("crash-loop", "CrashLoopBackOff", f"pod {POD_NAME}, container poller: CrashLoopBackOff: back-off 40s"),
        ("secret-volume", "CredentialsSecretMissing", f'pod {POD_NAME}: FailedMount: MountVolume.SetUp failed'),
        ("secret-env", "CreateContainerConfigError", f'pod {POD_NAME}, container poller: CreateContainerConfigError: secret "gcs-key" not found'),
        ("refused", "PodsRefused", 'pods not created: FailedCreate: pods "m-7d9c5f6b8-'),
    ],
    ids=["image-pull", "crash-loop", "secret-volume", "secret-env", "refused"],
)  # fmt: skip
def test_ready_says_what_a_pod_that_has_not_reported_says(
    case: str, reason: str, says: str, operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str
) -> None:
    """No poller has reported: Ready's reason and message come from the pod itself (or from
    the refusal of its creation), never a bare WaitingForInitialSync."""
    cluster.create_md(namespace, "m", {"source": {"uri": "gs://bkt/m/", "credentialsSecret": "gcs-key"}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    assert cluster.condition(namespace, "m", "Ready")["reason"] == "WaitingForInitialSync"
    if case == "refused":
        refusal = _refused_by_admission(cluster, namespace, template)
    else:
        created = cluster.core.create_namespaced_pod(namespace, _pod(template, POD_NAME))
        pod = cluster.api.sanitize_for_serialization(created)
        if case == "image-pull":
            _image_pull_backoff(cluster, namespace, pod)
        elif case == "crash-loop":
            _crash_loop(cluster, namespace, pod)
        elif case == "secret-volume":
            _secret_volume_missing(cluster, namespace, pod)
        else:
            config_error = _waiting("CreateContainerConfigError", 'secret "gcs-key" not found')
            _kubelet_status(cluster, namespace, POD_NAME, {
                "phase": "Pending", "initContainerStatuses": [_container_status("poller", config_error)]})  # fmt: skip
    ready = kit.wait_for(
        f"Ready={reason}", lambda: (c := cluster.condition(namespace, "m", "Ready")).get("reason") == reason and c
    )
    assert ready["status"] == "False"
    assert ready["message"].startswith("0/1 replicas ready; "), ready
    assert says in ready["message"], ready
    if case == "refused":
        assert refusal in ready["message"]
    assert not (cluster.get_md(namespace, "m").get("status") or {}).get("pollers")


def _report(poller: client.CustomObjectsApi, namespace: str, pod: str, report: models.PollerReport, *more: str) -> None:
    """A pod's entry as its poller writes it (entry_writer: a merge patch of its own key);
    with ``more`` pods, theirs in the same patch."""
    entries = {name: report.to_status() for name in (pod, *more)}
    poller.patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, namespace, names.PLURAL, "m", {"status": {"pollers": entries}}
    )


def test_degraded_follows_the_pollers_errors_with_an_event_on_each_change(
    operator: kit.OperatorProcess, cluster: kit.Cluster, namespace: str, kube: Any
) -> None:
    cluster.create_md(namespace, "m", {"replicas": 2, "source": {"uri": "gs://bkt/m/"}})
    template = wait_children(cluster, namespace, "m")["Deployment"]["spec"]["template"]
    cluster.wait_observed(namespace, "m")
    for pod in ("m-aaaaa", "m-bbbbb"):
        cluster.core.create_namespaced_pod(namespace, _pod(template, pod))
        _mark_ready(cluster, namespace, pod)
    cluster.apps.patch_namespaced_deployment_status(
        "m", namespace, {"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    )
    poller = client.CustomObjectsApi(kube.api_client(kit.service_account_token(kube, namespace, "m-poller")))
    sync = "2026-01-01T00:00:00Z"
    clean = models.PollerReport(versions=(1,), serving=1, latest=1, last_sync=sync)
    rejected = models.PollerReport(
        versions=(1,),
        serving=1,
        latest=1,
        last_sync=sync,
        error="version 3 (gs://bkt/m/3.zip) rejected: unsafe_path: ../../escaped.txt",
        reason=models.ReportReason.VERSION_REJECTED,
    )
    for pod in ("m-aaaaa", "m-bbbbb"):
        _report(poller, namespace, pod, clean)
    kit.wait_for("Ready", lambda: cluster.condition(namespace, "m", "Ready").get("status") == "True")

    def warnings() -> list[dict[str, Any]]:
        return [e for e in cluster.events(namespace, "m") if e["type"] == "Warning"]

    # One poller reports the rejection: Degraded=True, one Warning Event.
    _report(poller, namespace, "m-aaaaa", rejected)
    first = kit.wait_for(
        "Degraded=True", lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("status") == "True" and c
    )
    assert first["reason"] == "VersionRejected"
    assert first["message"].startswith("poller of pod m-aaaaa: version 3 (gs://bkt/m/3.zip) rejected: unsafe_path")
    kit.wait_for(
        "the first VersionRejected Event", lambda: sorted(e["message"] for e in warnings()) == [first["message"]]
    )
    # The other poller reports it too: same status and reason, a new message, a new Event.
    _report(poller, namespace, "m-bbbbb", rejected)
    second = kit.wait_for("Degraded naming both pods", lambda: (c := cluster.condition(namespace, "m", "Degraded"))
                          ["message"].startswith("poller of pod m-aaaaa, m-bbbbb: version 3") and c)  # fmt: skip
    assert (second["status"], second["reason"]) == ("True", "VersionRejected")
    assert second["lastTransitionTime"] == first["lastTransitionTime"]
    kit.wait_for(
        "a second Warning Event",
        lambda: sorted(e["message"] for e in warnings()) == sorted([first["message"], second["message"]]),
    )
    # Both clear at once (one patch: cleared one by one, the message in between, naming
    # m-bbbbb alone, would be a change of its own, with its own Event): Degraded=False
    # AsExpected and one DegradedResolved Event.
    _report(poller, namespace, "m-aaaaa", clean, "m-bbbbb")
    cleared = kit.wait_for(
        "Degraded=False", lambda: (c := cluster.condition(namespace, "m", "Degraded")).get("status") == "False" and c
    )
    assert (cleared["reason"], cleared["message"]) == ("AsExpected", "")
    kit.wait_for(
        "the DegradedResolved Event",
        lambda: any(e["reason"] == "DegradedResolved" for e in cluster.events(namespace, "m")),
    )
    # Without a change, no more Events (the status loop recomputes every second here).
    time.sleep(3)
    events = cluster.events(namespace, "m")
    assert sorted(e["reason"] for e in events if e["reason"] in ("VersionRejected", "DegradedResolved")) == [
        "DegradedResolved",
        "VersionRejected",
        "VersionRejected",
    ], events
