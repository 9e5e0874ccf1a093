"""The workload shape (spec.podTemplate, serviceAccount, disruptionBudget, serving args and
monitoring), rendered: merges by name, what is owned, the typed InvalidOverride (no cluster).

The API server refuses most overrides of what the product owns (CEL, see
test_workload_shape_kube.py); the renderer checks the same lists again for what CEL cannot
express (a path spelled differently, a mount of a volume that does not exist) and for objects
stored before a rule existed. The specs below are such objects: they reach the renderer as
they would from the API server's storage.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from model_poller_api import models, names, workload
from model_poller_operator import children, degradation, inject, overrides, pod_states, refusals, status_reasons
from model_poller_operator.render import monitoring, ownership, pod_containers, spec_paths
from model_poller_operator.render.budget import render_disruption_budget

OWNER = ownership.Owner("faster-rcnn", "ml", "00000000-0000-4000-8000-000000000000")
SOURCE = {"uri": "gs://ml-models/faster_rcnn/"}


def _spec(body: dict[str, Any]) -> models.ModelDeploymentSpec:
    return models.ModelDeploymentSpec.from_object(OWNER.name, body)


def _kinds(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children.render_children(OWNER, _spec(body))}


def _pod(body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = _kinds(body)["Deployment"]["spec"]["template"]
    return pod


def _container(body: dict[str, Any], name: str) -> dict[str, Any]:
    spec = _pod(body)["spec"]
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


def _with_template(pod_spec: dict[str, Any] | None = None, **template: Any) -> dict[str, Any]:
    if pod_spec is not None:
        template["spec"] = pod_spec
    return {"source": SOURCE, "podTemplate": template}


def test_no_optional_children_and_no_metrics_port_without_their_fields() -> None:
    kinds = _kinds({"source": SOURCE})
    assert sorted(kinds) == ["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert [p["name"] for p in kinds["Service"]["spec"]["ports"]] == ["grpc", "http"]
    assert not any("monitoring" in a for a in _container({"source": SOURCE}, "serving")["args"])
    assert render_disruption_budget(OWNER, _spec({"source": SOURCE})) is None
    # No monitoring: no annotation, no volume, no mount.
    pod = _pod({"source": SOURCE})
    assert workload.MONITORING_CONFIG_ANNOTATION not in pod["metadata"]["annotations"]
    assert workload.MONITORING_VOLUME not in [v["name"] for v in pod["spec"]["volumes"]]
    assert workload.MONITORING_VOLUME not in [
        m["name"] for m in _container({"source": SOURCE}, "serving")["volumeMounts"]
    ]


def test_external_mode_renders_no_budget_or_monitoring_but_the_identity_annotations() -> None:
    body = {
        "source": SOURCE,
        "workload": names.WORKLOAD_EXTERNAL,
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "p@x.iam.gserviceaccount.com"}},
    }
    kinds = _kinds(body)
    assert sorted(kinds) == ["Role", "RoleBinding", "ServiceAccount"]
    assert kinds["ServiceAccount"]["metadata"]["annotations"] == body["serviceAccount"]["annotations"]
    # Stored before the CEL rule refusing them in external mode: still nothing rendered.
    stale = _spec({**body, "disruptionBudget": {"minAvailable": 1}, "serving": {"monitoring": True}})
    assert render_disruption_budget(OWNER, stale) is None
    assert sorted(c["kind"] for c in children.render_children(OWNER, stale)) == sorted(kinds)


def test_monitoring_renders_the_annotation_its_volume_the_flag_the_mount_and_the_service_port() -> None:
    """No ConfigMap child (the operator would have to read every ConfigMap of the cluster): the
    config is a pod-template annotation, projected into TF Serving's file by a downwardAPI volume."""
    body = {"source": SOURCE, "serving": {"monitoring": True}}
    kinds = _kinds(body)
    assert sorted(kinds) == ["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    pod = _pod(body)
    config = pod["metadata"]["annotations"][workload.MONITORING_CONFIG_ANNOTATION]
    assert config == 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }'
    assert config == monitoring.monitoring_config()
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tf-serving-monitoring")
    assert volume == {
        "name": "tf-serving-monitoring",
        "downwardAPI": {
            "items": [
                {
                    "path": "monitoring_config.txt",
                    "fieldRef": {
                        "apiVersion": "v1",
                        "fieldPath": "metadata.annotations['modelpoller.dev/monitoring-config']",
                    },
                }
            ]
        },
    }
    serving = _container(body, "serving")
    assert "--monitoring_config_file=/etc/tf-serving/monitoring_config.txt" in serving["args"]
    assert monitoring.CONFIG_PATH == "/etc/tf-serving/monitoring_config.txt"
    assert {"name": "tf-serving-monitoring", "mountPath": "/etc/tf-serving", "readOnly": True} in serving[
        "volumeMounts"
    ]
    # Only TF Serving reads it: the poller does not mount it.
    assert "tf-serving-monitoring" not in [m["name"] for m in _container(body, "poller")["volumeMounts"]]
    # TF Serving serves the metrics on its REST port: the Service's metrics port goes there.
    metrics = next(p for p in kinds["Service"]["spec"]["ports"] if p["name"] == "metrics")
    assert metrics["targetPort"] == "http"
    assert serving["ports"][1] == {"name": "http", "containerPort": names.SERVING_REST_PORT, "protocol": "TCP"}


def test_the_monitoring_annotation_and_volume_are_the_operators() -> None:
    """A user can neither replace the config (the annotation is under the API group) nor
    shadow its volume (an owned volume name): the renderer refuses both, as CEL does."""
    annotation = _with_template(metadata={"annotations": {workload.MONITORING_CONFIG_ANNOTATION: "evil"}})
    assert workload.owned_annotation(workload.MONITORING_CONFIG_ANNOTATION)
    assert workload.MONITORING_VOLUME in workload.OWNED_VOLUMES
    for body in (annotation, _with_template({"volumes": [{"name": workload.MONITORING_VOLUME, "emptyDir": {}}]})):
        body["serving"] = {"monitoring": True}
        with pytest.raises(overrides.InvalidOverride):
            _kinds(body)


@pytest.mark.parametrize("budget", [{"minAvailable": 1}, {"maxUnavailable": "25%"}])
def test_the_disruption_budget_selects_exactly_the_deployments_pods(budget: dict[str, Any]) -> None:
    kinds = _kinds({"source": SOURCE, "disruptionBudget": budget})
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["metadata"]["name"] == OWNER.name
    assert pdb["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]
    assert {k: v for k, v in pdb["spec"].items() if k in budget} == budget
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_serving_args_come_after_the_operators_in_spec_then_template_order() -> None:
    body = _with_template(
        {"containers": [{"name": "serving", "args": ["--c=3"]}]},
    )
    body["serving"] = {"args": ["--a=1", "--b=2"], "monitoring": True}
    args = _container(body, "serving")["args"]
    assert args[:4] == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=faster-rcnn",
        "--model_base_path=/models/faster-rcnn",
    ]
    assert args[-4:] == ["--monitoring_config_file=/etc/tf-serving/monitoring_config.txt", "--a=1", "--b=2", "--c=3"]


def test_containers_merge_by_name_over_the_rendered_ones() -> None:
    body = _with_template(
        {
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
            "containers": [
                {
                    "name": "serving",
                    "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "1"}],
                    "resources": {"limits": {"nvidia.com/gpu": 2}},
                    "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                },
                {
                    "name": "poller",
                    "env": [{"name": "GRPC_VERBOSITY", "value": "ERROR"}],
                    "resources": {"requests": {"cpu": "100m"}},
                },
            ],
        }
    )
    body["serving"] = {"resources": {"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}}}
    base = _spec({"source": SOURCE, "serving": body["serving"]})
    serving, poller = _container(body, "serving"), _container(body, "poller")
    # resources: by resource name, the template's over spec.serving.resources.
    assert serving["resources"] == {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"}}
    # env and mounts: appended after the operator's own.
    assert serving["env"] == [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "1"}]
    assert (
        serving["volumeMounts"][: len(pod_containers.serving_container(base)["volumeMounts"])]
        == pod_containers.serving_container(base)["volumeMounts"]
    )
    assert serving["volumeMounts"][-1] == {"name": "shm", "mountPath": "/dev/shm"}
    rendered_env = pod_containers.poller_env(OWNER, base)
    assert poller["env"] == [*rendered_env, {"name": "GRPC_VERBOSITY", "value": "ERROR"}]
    # The poller keeps its memory limit under a cpu-only override.
    assert poller["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}
    # What the product owns is the operator's whatever the template says.
    assert serving["securityContext"] == poller["securityContext"] == pod_containers.restricted_security_context()


def test_template_metadata_and_pod_fields_are_added_and_the_owned_ones_kept() -> None:
    body = _with_template(
        {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "model-serving",
            "runtimeClassName": "nvidia",
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [{"name": "batching", "configMap": {"name": "b"}}],
        },
        metadata={"labels": {"team": "vision"}, "annotations": {"prometheus.io/scrape": "true"}},
    )
    pod = _pod(body)
    plain = _pod({"source": SOURCE})
    assert pod["metadata"]["labels"] == {"team": "vision", **plain["metadata"]["labels"]}
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", **plain["metadata"]["annotations"]}
    for field in ("nodeSelector", "tolerations", "priorityClassName", "runtimeClassName", "imagePullSecrets"):
        assert pod["spec"][field] == body["podTemplate"]["spec"][field]
    assert pod["spec"]["volumes"] == plain["spec"]["volumes"] + body["podTemplate"]["spec"]["volumes"]
    for owned in ("serviceAccountName", "automountServiceAccountToken", "securityContext", "initContainers"):
        assert pod["spec"][owned] == plain["spec"][owned]


def _volume_mount(path: str, name: str = "extra") -> dict[str, Any]:
    return _with_template(
        {
            "volumes": [{"name": "extra", "emptyDir": {}}],
            "containers": [{"name": "serving", "volumeMounts": [{"name": name, "mountPath": path}]}],
        }
    )


MOUNT = "spec.podTemplate.spec.containers[0].volumeMounts[0]"

# Specs the renderer refuses: (spec, field the error names, words of its message).
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("mount-path-spelled-otherwise", _volume_mount("/models/../models/faster-rcnn"), f"{MOUNT}.mountPath", "/models"),
    ("mount-path-double-slash", _volume_mount("//tmp"), f"{MOUNT}.mountPath", "/tmp"),
    ("mount-of-no-volume", _volume_mount("/data", name="nowhere"), f"{MOUNT}.name", "no volume 'nowhere'"),
    ("mount-of-the-token", _volume_mount("/data", name="kube-api-access"), f"{MOUNT}.name", "operator's"),
    (
        "owned-volume-name",
        _with_template({"volumes": [{"name": "models", "emptyDir": {}}]}),
        "spec.podTemplate.spec.volumes[0].name",
        "operator's",
    ),
    (
        "secret-volume",
        _with_template({"volumes": [{"name": "s", "secret": {"secretName": "x"}}]}),
        "spec.podTemplate.spec.volumes[0]",
        "exactly one of emptyDir",
    ),
    (
        "nfs-volume",
        _with_template({"volumes": [{"name": "s", "nfs": {"server": "x", "path": "/"}}]}),
        "spec.podTemplate.spec.volumes[0]",
        "exactly one of emptyDir",
    ),
    (
        "projected-token",
        _with_template(
            {"volumes": [{"name": "s", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}
        ),
        "spec.podTemplate.spec.volumes[0].projected.sources[0]",
        "serviceAccountToken",
    ),
    (
        "pod-security-context",
        _with_template({"securityContext": {"runAsUser": 0}}),
        "spec.podTemplate.spec.securityContext",
        "restricted",
    ),
    (
        "service-account",
        _with_template({"serviceAccountName": "default"}),
        "spec.podTemplate.spec.serviceAccountName",
        "NAME-poller",
    ),
    ("host-network", _with_template({"hostNetwork": True}), "spec.podTemplate.spec.hostNetwork", "not a field"),
    (
        "container-security-context",
        _with_template({"containers": [{"name": "serving", "securityContext": {"privileged": True}}]}),
        "spec.podTemplate.spec.containers[0].securityContext",
        "security context",
    ),
    (
        "other-container",
        _with_template({"containers": [{"name": "sidecar", "args": ["x"]}]}),
        "spec.podTemplate.spec.containers[0].name",
        "serving, poller",
    ),
    (
        "poller-args",
        _with_template({"containers": [{"name": "poller", "args": ["--once"]}]}),
        "spec.podTemplate.spec.containers[0].args",
        "takes only env, resources",
    ),
    (
        "poller-flag-env",
        _with_template(
            {"containers": [{"name": "poller", "env": [{"name": "MODEL_POLLER_SOURCE", "value": "gs://x/"}]}]}
        ),
        "spec.podTemplate.spec.containers[0].env[0].name",
        "MODEL_POLLER_SOURCE",
    ),
    (
        "poller-pod-name-env",
        _with_template({"containers": [{"name": "poller", "env": [{"name": "POD_NAME", "value": "other"}]}]}),
        "spec.podTemplate.spec.containers[0].env[0].name",
        "POD_NAME",
    ),
    (
        "secret-env",
        _with_template(
            {
                "containers": [
                    {
                        "name": "serving",
                        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    }
                ]
            }
        ),
        "spec.podTemplate.spec.containers[0].env[0].valueFrom.secretKeyRef",
        "credentialsSecret",
    ),
    (
        "selector-label",
        _with_template(metadata={"labels": {names.LABEL_INSTANCE: "other"}}),
        "spec.podTemplate.metadata.labels",
        names.LABEL_INSTANCE,
    ),
    (
        "injection-label",
        _with_template(metadata={"labels": {names.LABEL_MODEL_DEPLOYMENT: "faster-rcnn"}}),
        "spec.podTemplate.metadata.labels",
        names.LABEL_MODEL_DEPLOYMENT,
    ),
    (
        "model-name-flag",
        {"source": SOURCE, "serving": {"args": ["--model_name=other"]}},
        "spec.serving.args",
        "--model_name",
    ),
    (
        "rest-port-flag",
        {"source": SOURCE, "serving": {"args": ["--rest_api_port", "9000"]}},
        "spec.serving.args",
        "--rest_api_port",
    ),
    (
        "template-base-path-flag",
        _with_template({"containers": [{"name": "serving", "args": ["-model_base_path=/elsewhere"]}]}),
        "spec.podTemplate.spec.containers[0].args",
        "-model_base_path",
    ),
    (
        "extra-volume-size-lots",
        _with_template({"volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "lots"}}]}),
        "spec.podTemplate.spec.volumes[0].emptyDir.sizeLimit",
        "not a quantity",
    ),
    (
        "cpu-lots",
        {"source": SOURCE, "serving": {"resources": {"limits": {"cpu": "lots"}}}},
        "spec.serving.resources.limits.cpu",
        "not a quantity",
    ),
    (
        "service-account-annotation",
        {"source": SOURCE, "serviceAccount": {"annotations": {"modelpoller.dev/applied-hash": "x"}}},
        "spec.serviceAccount.annotations",
        "operator's",
    ),
]


@pytest.mark.parametrize(("spec", "field", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_an_override_of_what_the_product_owns_is_refused_naming_the_field(
    spec: dict[str, Any], field: str, words: str
) -> None:
    parsed = _spec(copy.deepcopy(spec))
    with pytest.raises(overrides.InvalidOverride) as error:
        children.render_children(OWNER, parsed)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ") and words in str(error.value), str(error.value)
    # The status says it too: Degraded=True InvalidOverride, the field first.
    observed = pod_states.Observed(name=OWNER.name, namespace=OWNER.namespace, spec=parsed, deployment=None, pods=())
    degraded = degradation.degraded_condition(degradation.problems(observed, {}))
    assert (degraded.status, degraded.reason) == ("True", status_reasons.REASON_INVALID_OVERRIDE)
    assert degraded.message.startswith(f"{field}: ")


def test_a_valid_spec_has_no_override_problems(cases: dict[str, dict[str, Any]]) -> None:
    for case, body in cases.items():
        assert overrides.problems(_spec(body)) == [], case


@pytest.mark.parametrize(
    ("arg", "owned"),
    [
        ("--model_name=x", True),
        ("--model_name", True),
        ("-port=1", True),
        ("--rest_api_port=0", True),
        ("--model_config_file=/x", True),
        ("--monitoring_config_file=/x", True),
        ("--model_config_file_poll_wait_seconds=60", False),
        ("--port_x=1", False),
        ("--enable_batching=true", False),
        ("--rest_api_timeout_in_ms=5000", False),
        ("--file_system_poll_wait_seconds=5", False),
    ],
)
def test_owned_flags(arg: str, owned: bool) -> None:
    assert workload.owned_flag(arg) == owned


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (
            "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
            "spec.podTemplate.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        ),
        (
            "spec.template.spec.topologySpreadConstraints[0].maxSkew",
            "spec.podTemplate.spec.topologySpreadConstraints[0].maxSkew",
        ),
        ("spec.template.metadata.labels", "spec.podTemplate.metadata.labels"),
        # The operator's own three volumes come first: the user's first is the pod's fourth.
        ("spec.template.spec.volumes[3].configMap.items", "spec.podTemplate.spec.volumes[0].configMap.items"),
        (
            "spec.template.spec.containers[0].volumeMounts[3].mountPath",
            "the serving container's volumeMounts.mountPath (spec.serving or spec.podTemplate.spec.containers[serving])",
        ),
        ("spec.template.spec.volumes[0].emptyDir.sizeLimit", None),  # the operator's own model volume
        ("spec.template.spec.serviceAccountName", None),
        ("spec.replicas", None),
    ],
)
def test_a_refused_rendered_field_is_named_by_its_spec_field(field: str, expected: str | None) -> None:
    spec = _spec(_with_template({"volumes": [{"name": "extra", "configMap": {"name": "c"}}]}))
    assert spec_paths.spec_field(OWNER, spec, "Deployment", field) == expected
    assert spec_paths.spec_field(OWNER, spec, "Service", field) is None


def _external_md(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid},
        "spec": {"workload": names.WORKLOAD_EXTERNAL, "source": SOURCE, **spec},
    }


def test_the_injected_poller_keeps_its_memory_limit_under_a_cpu_override() -> None:
    """External mode renders the poller with the same function: the merge applies there too."""
    target = inject.target_of(
        _external_md(poller={"resources": {"requests": {"cpu": "200m"}}}), OWNER.namespace, OWNER.name
    )
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "serving", "image": "tensorflow/serving:2.19.0"}]},
    }
    (poller,) = inject.inject(pod, target)["spec"]["initContainers"]
    assert poller["resources"] == {"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}


def test_injection_refuses_a_model_deployment_whose_poller_resources_are_no_quantity() -> None:
    """Stored before resources had a schema: the webhook refuses the pod naming the field."""
    with pytest.raises(refusals.Refused) as caught:
        inject.target_of(
            _external_md(poller={"resources": {"limits": {"memory": "lots"}}}), OWNER.namespace, OWNER.name
        )
    assert caught.value.reason == refusals.RefusalReason.INVALID_MODEL_DEPLOYMENT
    assert "spec.poller.resources.limits.memory: 'lots' is not a quantity" in str(caught.value)
