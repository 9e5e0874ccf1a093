"""The workload shape on a real kube-apiserver: each new field admitted (and its rendered
children admitted under `restricted` PodSecurity), each override of what the product owns
refused naming the field, `cpu: lots` refused by `kubectl apply`, the HPA example accepted.

No operator here: the children are rendered by the operator's own functions and created as
an admin would, so the API server's validation of the Deployment and the PodDisruptionBudget
(and PodSecurity's of a pod from the template, with the downwardAPI volume of TF Serving's
monitoring config) is what is tested.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import models, names, workload
from model_poller_operator import children
from model_poller_operator.apply import Api
from model_poller_operator.render import ownership

from local_services import operator_kit as kit

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
NAME = "faster-rcnn"
SOURCE = {"uri": "gs://ml-models/faster_rcnn/"}


def _create(cluster: kit.Cluster, namespace: str, spec: dict[str, Any], name: str = NAME) -> dict[str, Any]:
    return cluster.create_md(namespace, name, spec)


def _ignore_conflict(create: Any, body: dict[str, Any]) -> None:
    try:
        create(body)
    except ApiException as error:
        if error.status != 409:
            raise


def _scheduling_classes(cluster: kit.Cluster) -> None:
    """The PriorityClass and RuntimeClass the gpu case names (admission checks they exist)."""
    _ignore_conflict(
        client.SchedulingV1Api(cluster.api).create_priority_class,
        {"metadata": {"name": "model-serving"}, "value": 1000, "description": "model servers"},
    )
    _ignore_conflict(
        client.NodeV1Api(cluster.api).create_runtime_class, {"metadata": {"name": "nvidia"}, "handler": "nvidia"}
    )


def test_every_new_field_is_admitted_and_stored_as_given(
    cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]]
) -> None:
    spec = copy.deepcopy(cases["gpu"])
    stored = _create(cluster, namespace, spec)["spec"]
    # Nothing pruned: every field of the shape is part of the schema.
    for field in ("podTemplate", "serviceAccount", "disruptionBudget", "poller"):
        assert stored[field] == spec[field], field
    assert stored["serving"] == {**spec["serving"], "monitoring": True}


def _enforce_restricted(cluster: kit.Cluster, namespace: str) -> None:
    cluster.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )


def _apply_children(cluster: kit.Cluster, namespace: str, name: str, spec: dict[str, Any]) -> set[str]:
    """Create the ModelDeployment and apply its rendered children as the operator does (the
    API server validates each: affinity, spread...); the kinds applied."""
    md = _create(cluster, namespace, spec, name=name)
    owner = ownership.Owner(name, namespace, md["metadata"]["uid"])
    desired = children.desired_children(owner, models.ModelDeploymentSpec.from_object(name, md["spec"]))
    outcome = Api(cluster.api).converge_all(desired)
    assert not outcome.conflicts
    return {c.kind for c in outcome.changes}


def _pod_of(cluster: kit.Cluster, namespace: str, name: str, pod_name: str) -> dict[str, Any]:
    """A Pod as the ReplicaSet controller makes it from the live Deployment's template: its
    labels, its annotations (the template's, which PodSecurity checks too) and its spec."""
    live = cluster.child("Deployment", namespace, name)
    assert live is not None
    template = live["spec"]["template"]
    metadata = {k: template["metadata"][k] for k in ("labels", "annotations") if k in template["metadata"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**metadata, "name": pod_name}, "spec": template["spec"]}


def test_the_rendered_children_are_accepted_and_the_pods_admitted_under_restricted(
    cluster: kit.Cluster, namespace: str, cases: dict[str, dict[str, Any]]
) -> None:
    _enforce_restricted(cluster, namespace)
    _scheduling_classes(cluster)
    assert _apply_children(cluster, namespace, NAME, cases["gpu"]) == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    }
    pod = _pod_of(cluster, namespace, NAME, f"{NAME}-abc12")
    # The user's annotations reach the pods (and PodSecurity sees them).
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
    created = cluster.core.create_namespaced_pod(namespace, pod)
    assert created.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    # spec.serving.monitoring: the API server accepts the downwardAPI projection of the
    # operator's annotation (a fieldPath it did not know would be refused).
    (monitoring,) = [v for v in created.spec.volumes if v.name == workload.MONITORING_VOLUME]
    assert [(i.path, i.field_ref.field_path) for i in monitoring.downward_api.items] == [
        (workload.MONITORING_CONFIG_FILE, f"metadata.annotations['{workload.MONITORING_CONFIG_ANNOTATION}']")
    ]
    assert created.metadata.annotations[workload.MONITORING_CONFIG_ANNOTATION].startswith("prometheus_config {")
    assert created.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert created.metadata.annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "true"
    # The control: the namespace really enforces "restricted" (the same pod without the
    # serving container's security context is refused by PodSecurity).
    bare = copy.deepcopy(pod)
    bare["metadata"]["name"] = "bare"
    del bare["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as error:
        cluster.core.create_namespaced_pod(namespace, bare)
    assert error.value.status == 403 and "PodSecurity" in str(error.value.body)


def _template(pod_spec: dict[str, Any] | None = None, **template: Any) -> dict[str, Any]:
    if pod_spec is not None:
        template["spec"] = pod_spec
    return {"source": SOURCE, "podTemplate": template}


def _serving(**override: Any) -> dict[str, Any]:
    return _template({"containers": [{"name": "serving", **override}]})


def _poller(**override: Any) -> dict[str, Any]:
    return _template({"containers": [{"name": "poller", **override}]})


CONTAINER = "spec.podTemplate.spec.containers[0]"
VOLUME = "spec.podTemplate.spec.volumes[0]"
EXTERNAL = {"source": SOURCE, "workload": names.WORKLOAD_EXTERNAL}

# (id, spec, the field the API server's message names, words of the message)
REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    ("model-volume-name", _template({"volumes": [{"name": "models", "emptyDir": {}}]}), f"{VOLUME}.name", "volume name models is the operator's"),
    ("token-volume-name", _template({"volumes": [{"name": "kube-api-access", "emptyDir": {}}]}), f"{VOLUME}.name", "operator's"),
    # TF Serving's monitoring config: neither its volume shadowed nor its annotation replaced.
    ("monitoring-volume-name", _template({"volumes": [{"name": workload.MONITORING_VOLUME, "emptyDir": {}}]}), f"{VOLUME}.name", "operator's"),
    ("secret-volume", _template({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]}), f"{VOLUME}.secret", "credentialsSecret"),
    ("hostpath-volume", _template({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}), f"{VOLUME}.hostPath", "restricted"),
    (
        "projected-token",
        _template({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
        f"{VOLUME}.projected.sources[0].serviceAccountToken",
        "the poller's alone",
    ),
    ("mount-at-model-path", _serving(volumeMounts=[{"name": "x", "mountPath": "/models"}]), f"{CONTAINER}.volumeMounts[0].mountPath", "/models"),
    ("mount-under-model-path", _serving(volumeMounts=[{"name": "x", "mountPath": "/models/other"}]), f"{CONTAINER}.volumeMounts[0].mountPath", "/models"),
    ("mount-model-volume", _serving(volumeMounts=[{"name": "models", "mountPath": "/data"}]), f"{CONTAINER}.volumeMounts[0].name", "operator's"),
    ("poller-flag-env", _poller(env=[{"name": "MODEL_POLLER_SOURCE", "value": "gs://x/"}]), f"{CONTAINER}.env", "MODEL_POLLER_SOURCE"),
    ("poller-pod-name-env", _poller(env=[{"name": "POD_NAME", "value": "x"}]), f"{CONTAINER}.env", "POD_NAME"),
    # Where the poller's credentials go: the API server, proxies (any case), emulators, the metadata server.
    ("poller-api-server-env", _poller(env=[{"name": "KUBERNETES_SERVICE_HOST", "value": "10.0.0.1"}]), f"{CONTAINER}.env", "KUBERNETES_SERVICE_HOST is the operator's"),
    ("poller-proxy-env", _poller(env=[{"name": "HTTPS_PROXY", "value": "http://x:3128"}]), f"{CONTAINER}.env", "HTTPS_PROXY"),
    ("poller-lower-proxy-env", _poller(env=[{"name": "https_proxy", "value": "http://x:3128"}]), f"{CONTAINER}.env", "https_proxy"),
    ("poller-emulator-env", _poller(env=[{"name": "STORAGE_EMULATOR_HOST", "value": "http://x"}]), f"{CONTAINER}.env", "STORAGE_EMULATOR_HOST"),
    ("poller-metadata-env", _poller(env=[{"name": "GCE_METADATA_HOST", "value": "x"}]), f"{CONTAINER}.env", "GCE_METADATA_HOST"),
    ("poller-credentials-env", _poller(env=[{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/x"}]), f"{CONTAINER}.env", "GOOGLE_APPLICATION_CREDENTIALS"),
    ("poller-pythonpath-env", _poller(env=[{"name": "PYTHONPATH", "value": "/x"}]), f"{CONTAINER}.env", "PYTHONPATH"),
    (
        "secret-env",
        _serving(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        f"{CONTAINER}.env[0].valueFrom.secretKeyRef",
        "credentialsSecret",
    ),
    ("selector-label", _template(metadata={"labels": {names.LABEL_INSTANCE: "x"}}), "spec.podTemplate.metadata.labels", names.LABEL_INSTANCE),
    ("managed-by-label", _template(metadata={"labels": {names.LABEL_MANAGED_BY: "x"}}), "spec.podTemplate.metadata.labels", names.LABEL_MANAGED_BY),
    ("injection-label", _template(metadata={"labels": {names.LABEL_MODEL_DEPLOYMENT: "x"}}), "spec.podTemplate.metadata.labels", names.LABEL_MODEL_DEPLOYMENT),
    ("owned-annotation", _template(metadata={"annotations": {"modelpoller.dev/x": "y"}}), "spec.podTemplate.metadata.annotations", "modelpoller.dev/x"),
    ("monitoring-annotation", _template(metadata={"annotations": {workload.MONITORING_CONFIG_ANNOTATION: "y"}}), "spec.podTemplate.metadata.annotations", workload.MONITORING_CONFIG_ANNOTATION),
    ("apparmor-unconfined", _template(metadata={"annotations": {"container.apparmor.security.beta.kubernetes.io/serving": "unconfined"}}), "spec.podTemplate.metadata.annotations", "container.apparmor.security.beta.kubernetes.io/serving is the operator's"),
    ("seccomp-pod-unconfined", _template(metadata={"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}), "spec.podTemplate.metadata.annotations", "seccomp.security.alpha.kubernetes.io/pod is the operator's"),
    ("seccomp-container-unconfined", _template(metadata={"annotations": {"container.seccomp.security.alpha.kubernetes.io/poller": "unconfined"}}), "spec.podTemplate.metadata.annotations", "container.seccomp.security.alpha.kubernetes.io/poller"),
    ("other-container", _template({"containers": [{"name": "sidecar"}]}), f"{CONTAINER}.name", 'supported values: "serving", "poller"'),
    ("pod-security-context", _template({"securityContext": {"runAsUser": 0}}), "spec.podTemplate.spec.securityContext", "restricted"),
    ("container-security-context", _serving(securityContext={"privileged": True}), f"{CONTAINER}.securityContext", "restricted"),
    ("service-account-name", _template({"serviceAccountName": "default"}), "spec.podTemplate.spec.serviceAccountName", "NAME-poller"),
    ("automount-token", _template({"automountServiceAccountToken": True}), "spec.podTemplate.spec.automountServiceAccountToken", "poller"),
    ("init-containers", _template({"initContainers": [{"name": "x", "image": "busybox"}]}), "spec.podTemplate.spec.initContainers", "sidecar"),
    ("poller-args", _poller(args=["--once"]), f"{CONTAINER}.args", "the poller takes no args"),
    ("model-name-flag", {"source": SOURCE, "serving": {"args": ["--model_name=other"]}}, "spec.serving.args", "--model_name=other"),
    ("base-path-flag", {"source": SOURCE, "serving": {"args": ["--model_base_path=/x"]}}, "spec.serving.args", "--model_base_path"),
    ("config-file-flag", {"source": SOURCE, "serving": {"args": ["--model_config_file=/x"]}}, "spec.serving.args", "--model_config_file"),
    ("rest-port-flag", {"source": SOURCE, "serving": {"args": ["--rest_api_port", "9000"]}}, "spec.serving.args", "--rest_api_port"),
    ("template-port-flag", _serving(args=["--port=9"]), f"{CONTAINER}.args", "--port=9"),
    ("budget-both", {"source": SOURCE, "disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "spec.disruptionBudget", "exactly one"),
    ("budget-neither", {"source": SOURCE, "disruptionBudget": {}}, "spec.disruptionBudget", "exactly one"),
    ("budget-over-100", {"source": SOURCE, "disruptionBudget": {"maxUnavailable": "150%"}}, "spec.disruptionBudget.maxUnavailable", "percentage"),
    ("budget-negative", {"source": SOURCE, "disruptionBudget": {"minAvailable": -1}}, "spec.disruptionBudget.minAvailable", "0 or more"),
    ("external-budget", {**EXTERNAL, "disruptionBudget": {"minAvailable": 1}}, "spec.disruptionBudget", "operator mode only"),
    ("external-template", {**EXTERNAL, "podTemplate": {"metadata": {"labels": {"a": "b"}}}}, "spec.podTemplate", "operator mode only"),
    ("external-args", {**EXTERNAL, "serving": {"args": ["--enable_batching"]}}, "spec.serving.args", "operator mode only"),
    ("external-monitoring", {**EXTERNAL, "serving": {"monitoring": True}}, "spec.serving.monitoring", "operator mode only"),
    ("owned-sa-annotation", {"source": SOURCE, "serviceAccount": {"annotations": {"modelpoller.dev/applied-hash": "x"}}}, "spec.serviceAccount.annotations", "operator's"),
    ("cpu-lots", {"source": SOURCE, "serving": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.serving.resources.limits.cpu", "should match"),
    ("poller-memory-lots", {"source": SOURCE, "poller": {"resources": {"requests": {"memory": "lots"}}}}, "spec.poller.resources.requests.memory", "should match"),
    ("template-gpu-lots", _serving(resources={"limits": {"nvidia.com/gpu": "many"}}), f"{CONTAINER}.resources.limits.nvidia.com/gpu", "should match"),
    ("request-over-limit", {"source": SOURCE, "serving": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}, "spec.serving.resources", "must not exceed"),
    (
        "toleration-exists-with-value",
        _template({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.podTemplate.spec.tolerations[0].value",
        "must be empty",
    ),
    ("toleration-bad-effect", _template({"tolerations": [{"key": "k", "effect": "Sometimes"}]}), "spec.podTemplate.spec.tolerations[0].effect", "supported values"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "field", "words"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_an_override_of_what_the_product_owns_is_rejected_naming_the_field(
    cluster: kit.Cluster, namespace: str, spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ApiException) as error:
        _create(cluster, namespace, spec)
    assert error.value.status == 422, error.value.body
    message = json.loads(error.value.body)["message"]
    assert f"{field}:" in message and words in message, message


def _kubectl_apply(kube: Any, namespace: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", str(path)],
        env=kube.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kubectl_apply_of_cpu_lots_is_refused_naming_the_field(kube: Any, namespace: str, tmp_path: Path) -> None:
    """What a user sees: one line naming spec.serving.resources.limits.cpu (before the
    schema, the operator failed later with Synced=False and no field named)."""
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": NAME},
        "spec": {"source": SOURCE, "serving": {"resources": {"limits": {"cpu": "lots"}}}},
    }
    path = tmp_path / "lots.yaml"
    path.write_text(yaml.safe_dump(body))
    done = _kubectl_apply(kube, namespace, path)
    assert done.returncode != 0
    assert 'spec.serving.resources.limits.cpu: Invalid value: "lots"' in done.stderr, done.stderr


def test_the_gpu_example_is_admitted_and_its_pods_run_under_restricted(cluster: kit.Cluster, namespace: str) -> None:
    """deploy/examples/gpu.yaml as written: stored, its children applied, and a pod of its
    rendered Deployment admitted by a namespace that enforces `restricted`."""
    doc = yaml.safe_load((EXAMPLES / "gpu.yaml").read_text())
    name = doc["metadata"]["name"]
    _enforce_restricted(cluster, namespace)
    assert _apply_children(cluster, namespace, name, doc["spec"]) == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    }
    stored = cluster.get_md(namespace, name)["spec"]
    pod_spec = stored["podTemplate"]["spec"]
    assert pod_spec["tolerations"] and pod_spec["nodeSelector"]
    assert stored["serving"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    created = cluster.core.create_namespaced_pod(namespace, _pod_of(cluster, namespace, name, f"{name}-abc12"))
    serving = created.spec.containers[0]
    assert serving.resources.limits["nvidia.com/gpu"] == "1"
    assert [m.mount_path for m in serving.volume_mounts if m.name in ("shm", "batching")] == [
        "/dev/shm",
        "/etc/batching",
    ]
    assert created.spec.node_selector == pod_spec["nodeSelector"]


def test_the_hpa_example_targets_the_model_deployments_scale_subresource(
    cluster: kit.Cluster, kube: Any, namespace: str
) -> None:
    """There is no HPA controller here (no kube-controller-manager's autoscaler, no metrics
    server): this checks that the API server accepts the example and that its target is the
    ModelDeployment's scale subresource, which answers with spec.replicas."""
    md = yaml.safe_load((EXAMPLES / "faster-rcnn.yaml").read_text())
    hpa = yaml.safe_load((EXAMPLES / "hpa.yaml").read_text())
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": md["metadata"]["name"],
    }
    _create(cluster, namespace, md["spec"], name=md["metadata"]["name"])
    hpa["metadata"]["namespace"] = namespace
    created = client.AutoscalingV2Api(cluster.api).create_namespaced_horizontal_pod_autoscaler(namespace, hpa)
    target = created.spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == (names.API_VERSION, names.KIND, md["metadata"]["name"])
    scale = cluster.custom.get_namespaced_custom_object_scale(
        names.GROUP, names.VERSION, namespace, names.PLURAL, target.name
    )
    assert scale["spec"]["replicas"] == md["spec"]["replicas"]
    # What the autoscaler writes is a scale of that subresource: spec.replicas follows.
    cluster.custom.patch_namespaced_custom_object_scale(
        names.GROUP,
        names.VERSION,
        namespace,
        names.PLURAL,
        target.name,
        {"spec": {"replicas": hpa["spec"]["maxReplicas"]}},
    )
    assert cluster.get_md(namespace, target.name)["spec"]["replicas"] == hpa["spec"]["maxReplicas"]
