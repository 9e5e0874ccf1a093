"""The pure injection (operator/model_poller_operator/inject.py): a labelled pod and its
ModelDeployment -> the JSON patch of the injected pod, or a refusal naming the problem.
No cluster here; tests/operator/test_webhook_kube.py has the real API server call it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from model_poller_api import models, names
from model_poller_operator import inject, json_patch, refusals
from model_poller_operator.render import deployment, ownership, pod_containers

NS = "ml"
NAME = "resnet"
UID = "11111111-2222-4333-8444-555555555555"
IDENTITY = f"{NAME}-poller"
AUTO_TOKEN = "kube-api-access-x7k2p"


def md(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": NAME, "namespace": NS, "uid": UID},
        "spec": {"workload": "external", "modelName": "resnet_v2", "source": {"uri": "gs://b/resnet/"}, **spec},
    }


def target(**spec: Any) -> inject.Target:
    return inject.target_of(md(**spec), NS, NAME)


def user_pod(**spec: Any) -> dict[str, Any]:
    """A user's pod as the webhook receives it: the ServiceAccount admission plugin has set
    the default ServiceAccount and mounted its token into every container."""
    token_mount = {"name": AUTO_TOKEN, "mountPath": pod_containers.TOKEN_DIR, "readOnly": True}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "tf-", "namespace": NS, "labels": {names.LABEL_MODEL_DEPLOYMENT: NAME}},
        "spec": {
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "containers": [
                {
                    "name": "tf",
                    "image": "tensorflow/serving:2.19.0-gpu",
                    "ports": [{"containerPort": 8501, "protocol": "TCP"}],
                    "volumeMounts": [token_mount],
                }
            ],
            "volumes": [
                {
                    "name": AUTO_TOKEN,
                    "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]},
                }
            ],
            **spec,
        },
    }


def refusal(pod: dict[str, Any], tgt: inject.Target | None = None) -> refusals.Refused:
    with pytest.raises(refusals.Refused) as caught:
        inject.mutation(pod, tgt or target())
    return caught.value


def test_injected_pod_has_the_poller_volumes_mounts_flags_and_identity() -> None:
    tgt = target()
    pod = inject.inject(user_pod(), tgt)
    spec = pod["spec"]
    (poller,) = spec["initContainers"]
    assert poller == pod_containers.poller_container(tgt.owner, tgt.spec, inject.INJECTED_VOLUMES)
    (tf,) = spec["containers"]
    assert tf["args"] == ["--model_name=resnet_v2", "--model_base_path=/models/resnet_v2", "--rest_api_port=8501"]
    assert tf["volumeMounts"] == [{"name": "model-poller-models", "mountPath": "/models", "readOnly": True}]
    assert tf["readinessProbe"] == pod_containers.serving_readiness_probe()
    assert spec["volumes"] == [
        deployment.models_volume(tgt.spec, "model-poller-models"),
        deployment.tmp_volume("model-poller-tmp"),
        deployment.token_volume("model-poller-token"),
    ]
    assert (spec["serviceAccountName"], spec["serviceAccount"]) == (IDENTITY, IDENTITY)
    assert spec["automountServiceAccountToken"] is False


def test_injected_poller_is_the_operators_poller_under_other_volume_names() -> None:
    """The same function renders both: env, probes, ports, resources, security context."""
    tgt = target(storage={"sizeLimit": "10Gi"}, source={"uri": "gs://b/r/", "credentialsSecret": "gcs-key"})
    (poller,) = inject.inject(user_pod(), tgt)["spec"]["initContainers"]
    (operator_poller,) = deployment.render_deployment(tgt.owner, tgt.spec)["spec"]["template"]["spec"]["initContainers"]
    renamed = {
        pod_containers.MODELS_VOLUME: "model-poller-models",
        pod_containers.TMP_VOLUME: "model-poller-tmp",
        pod_containers.TOKEN_VOLUME: "model-poller-token",
        pod_containers.CREDENTIALS_VOLUME: "model-poller-gcs-credentials",
    }
    expected = copy.deepcopy(operator_poller)
    for mount in expected["volumeMounts"]:
        mount["name"] = renamed[mount["name"]]
    assert poller == expected
    volumes = {v["name"]: v for v in inject.inject(user_pod(), tgt)["spec"]["volumes"]}
    assert volumes["model-poller-gcs-credentials"]["secret"]["secretName"] == "gcs-key"
    assert volumes["model-poller-models"]["emptyDir"] == {"sizeLimit": "10Gi"}


def test_injected_credentials_are_readable_by_the_poller_in_a_pod_without_fs_group() -> None:
    """The operator's pods read the GCS key (0440) through their fsGroup; the user's pod has
    none and keeps its securityContext, so the injected Secret volume is 0444 (only the
    poller mounts it)."""
    tgt = target(source={"uri": "gs://b/r/", "credentialsSecret": "gcs-key"})
    own_context = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    spec = inject.inject(user_pod(securityContext=copy.deepcopy(own_context)), tgt)["spec"]
    assert spec["securityContext"] == own_context  # no fsGroup (nor anything else) added
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-poller-gcs-credentials"]["secret"] == {"secretName": "gcs-key", "defaultMode": 0o444}
    mounts = {
        c["name"] for c in spec["containers"] + spec["initContainers"]
        for m in c.get("volumeMounts") or () if m["name"] == "model-poller-gcs-credentials"
    }  # fmt: skip
    assert mounts == {pod_containers.POLLER_CONTAINER}
    # The operator's own pods keep 0440 (their fsGroup makes it readable to the poller).
    operator_pod = deployment.render_deployment(tgt.owner, tgt.spec)["spec"]["template"]["spec"]
    assert operator_pod["securityContext"]["fsGroup"] == deployment.RUN_AS_USER
    assert deployment.credentials_volume(tgt.spec) == {
        "name": pod_containers.CREDENTIALS_VOLUME,
        "secret": {"secretName": "gcs-key", "defaultMode": 0o440},
    }


def test_patch_turns_the_pod_into_the_injected_one_and_is_empty_once_injected() -> None:
    tgt = target()
    pod = user_pod()
    patch = inject.mutation(pod, tgt)
    assert patch and all(op["op"] in ("add", "remove", "replace") for op in patch)
    injected = json_patch.apply_patch(pod, patch)
    assert injected == inject.inject(pod, tgt)
    assert inject.mutation(injected, tgt) == []
    assert inject.inject(injected, tgt) == injected


def test_the_plugin_token_is_removed_from_every_container() -> None:
    pod = user_pod()
    pod["spec"]["initContainers"] = [
        {
            "name": "warmup",
            "image": "busybox",
            "volumeMounts": [{"name": AUTO_TOKEN, "mountPath": pod_containers.TOKEN_DIR}],
        }
    ]
    spec = inject.inject(pod, target())["spec"]
    assert AUTO_TOKEN not in {v["name"] for v in spec["volumes"]}
    for container in spec["containers"] + spec["initContainers"]:
        assert AUTO_TOKEN not in {m["name"] for m in container.get("volumeMounts") or ()}
    # The pod's own init containers run first; the poller comes last of them.
    assert [c["name"] for c in spec["initContainers"]] == ["warmup", "poller"]


def test_a_volume_already_mounted_at_the_models_path_is_shared_read_only() -> None:
    pod = user_pod()
    pod["spec"]["volumes"].append({"name": "models", "emptyDir": {"medium": "Memory"}})
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": "/models/", "subPath": "m"})
    spec = inject.inject(pod, target())["spec"]
    (tf,) = spec["containers"]
    assert tf["volumeMounts"] == [{"name": "models", "mountPath": "/models/", "subPath": "m", "readOnly": True}]
    (poller,) = spec["initContainers"]
    assert poller["volumeMounts"][0] == {"name": "models", "mountPath": "/models", "subPath": "m"}
    assert "model-poller-models" not in {v["name"] for v in spec["volumes"]}
    assert {"name": "models", "emptyDir": {"medium": "Memory"}} in spec["volumes"]


def test_what_the_user_set_is_kept() -> None:
    """Flags that agree, a readiness probe, the poller's ServiceAccount: left as they are."""
    probe = {"httpGet": {"path": "/v1/models/resnet_v2", "port": 8501}}
    pod = user_pod(serviceAccountName=IDENTITY)
    del pod["spec"]["serviceAccount"]
    pod["spec"]["containers"][0].update(
        command=["/usr/bin/tensorflow_model_server"],
        args=["--port=8500", "--model_base_path=/models/resnet_v2/", "--rest_api_port=8501"],
        readinessProbe=probe,
    )
    (tf,) = inject.inject(pod, target())["spec"]["containers"]
    assert tf["args"] == ["--port=8500", "--model_base_path=/models/resnet_v2/", "--rest_api_port=8501",
                          "--model_name=resnet_v2"]  # fmt: skip
    assert tf["readinessProbe"] == probe
    assert inject.inject(pod, target())["spec"]["serviceAccountName"] == IDENTITY


def test_the_serving_container_is_found_by_annotation_or_image() -> None:
    pod = user_pod()
    pod["spec"]["containers"].insert(0, {"name": "proxy", "image": "envoyproxy/envoy:v1.30"})
    assert "args" in inject.inject(pod, target())["spec"]["containers"][1]
    pod["spec"]["containers"][1]["image"] = "registry.example/mirror/tf-serving@sha256:" + "a" * 64
    assert refusal(pod).reason == refusals.RefusalReason.NO_SERVING_CONTAINER
    pod["metadata"]["annotations"] = {names.ANNOTATION_SERVING_CONTAINER: "tf"}
    assert "args" in inject.inject(pod, target())["spec"]["containers"][1]
    pod["metadata"]["annotations"] = {names.ANNOTATION_SERVING_CONTAINER: "nope"}
    error = refusal(pod)
    assert "names no container" in str(error) and "proxy, tf" in str(error)


@pytest.mark.parametrize(
    "image",
    ["tensorflow/serving", "tensorflow/serving:2.19.0", "docker.io/tensorflow/serving:latest-gpu",
     "index.docker.io/tensorflow/serving@sha256:" + "0" * 64, "tensorflow/serving:2.19.0@sha256:" + "0" * 64],
)  # fmt: skip
def test_tensorflow_serving_images_are_recognised(image: str) -> None:
    assert inject.image_repository(image) == inject.SERVING_IMAGE


@pytest.mark.parametrize("image", ["tensorflow/serving-proxy:1", "example.com/tensorflow/serving:1", "serving:1"])
def test_other_images_are_not(image: str) -> None:
    assert inject.image_repository(image) != inject.SERVING_IMAGE


# --- refusals: each names the field, the object and what to do -----------------------------


def test_missing_model_deployment_is_refused() -> None:
    with pytest.raises(refusals.Refused) as caught:
        inject.target_of(None, NS, NAME)
    assert caught.value.reason == refusals.RefusalReason.MODEL_DEPLOYMENT_NOT_FOUND
    assert f"no ModelDeployment '{NAME}' in namespace '{NS}'" in str(caught.value)
    assert names.LABEL_MODEL_DEPLOYMENT in str(caught.value)


def test_operator_mode_model_deployment_is_refused() -> None:
    obj = md()
    obj["spec"]["workload"] = "operator"
    with pytest.raises(refusals.Refused) as caught:
        inject.target_of(obj, NS, NAME)
    assert caught.value.reason == refusals.RefusalReason.NOT_EXTERNAL
    assert "spec.workload: operator" in str(caught.value) and "spec.workload: external" in str(caught.value)
    del obj["spec"]["workload"]  # the default
    with pytest.raises(refusals.Refused):
        inject.target_of(obj, NS, NAME)


def test_unrenderable_spec_is_refused() -> None:
    with pytest.raises(refusals.Refused) as caught:
        inject.target_of(md(storage={"sizeLimit": "lots"}), NS, NAME)
    assert caught.value.reason == refusals.RefusalReason.INVALID_MODEL_DEPLOYMENT
    assert "spec.storage.sizeLimit" in str(caught.value)


def test_identity_must_exist_and_be_controlled_by_the_model_deployment() -> None:
    tgt = target()
    owned = {"metadata": {"name": IDENTITY, "ownerReferences": [ownership.owner_reference(tgt.owner)]}}
    inject.check_identity(owned, tgt)
    with pytest.raises(refusals.Refused) as caught:
        inject.check_identity(None, tgt)
    assert caught.value.reason == refusals.RefusalReason.IDENTITY_NOT_READY and IDENTITY in str(caught.value)
    foreign = {
        "metadata": {"name": IDENTITY, "ownerReferences": [{**ownership.owner_reference(tgt.owner), "uid": "x"}]}
    }
    with pytest.raises(refusals.Refused) as caught:
        inject.check_identity(foreign, tgt)
    assert caught.value.reason == refusals.RefusalReason.IDENTITY_CONFLICT


def test_foreign_service_account_is_refused() -> None:
    error = refusal(user_pod(serviceAccountName="payments", serviceAccount="payments"))
    assert error.reason == refusals.RefusalReason.FOREIGN_SERVICE_ACCOUNT
    assert "'payments'" in str(error) and IDENTITY in str(error)


@pytest.mark.parametrize(
    "container, needle",
    [
        ({"args": ["--model_base_path=/srv/models/resnet_v2"]}, "--model_base_path=/srv/models/resnet_v2"),
        ({"args": ["--model_name=resnet"]}, "--model_name=resnet contradicts"),
        ({"command": ["tensorflow_model_server", "--model_name=other"]}, "--model_name=other"),
        ({"args": ["--rest_api_port=9000"]}, "--rest_api_port=9000"),
        ({"args": ["--model_config_file=/etc/models.config"]}, "--model_config_file"),
        ({"env": [{"name": "MODEL_NAME", "value": "other"}]}, "env MODEL_NAME=other"),
        ({"env": [{"name": "MODEL_BASE_PATH", "value": "/srv"}]}, "env MODEL_BASE_PATH=/srv"),
    ],
)
def test_contradicting_flags_are_refused(container: dict[str, Any], needle: str) -> None:
    pod = user_pod()
    pod["spec"]["containers"][0].update(container)
    error = refusal(pod)
    assert error.reason == refusals.RefusalReason.CONTRADICTING_FLAG
    assert needle in str(error) and "container 'tf'" in str(error)


def test_entrypoint_env_that_agrees_is_fine() -> None:
    pod = user_pod()
    pod["spec"]["containers"][0]["env"] = [{"name": "MODEL_NAME", "value": "resnet_v2"}]
    inject.inject(pod, target())


def test_a_shell_command_is_refused() -> None:
    pod = user_pod()
    pod["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", "tensorflow_model_server --model_name=x"]
    assert refusal(pod).reason == refusals.RefusalReason.UNSUPPORTED_COMMAND


@pytest.mark.parametrize(
    "change",
    [
        lambda spec: spec["containers"].append({"name": "poller", "image": "x"}),
        lambda spec: spec["containers"][0]["ports"].append({"containerPort": 8080}),
        lambda spec: spec["volumes"].append({"name": "model-poller-tmp", "emptyDir": {}}),
        lambda spec: spec["containers"].append(
            {
                "name": "sneak",
                "image": "busybox",
                "volumeMounts": [{"name": "model-poller-gcs-credentials", "mountPath": "/k"}],
            }
        ),
    ],
    ids=["container", "port", "volume", "mount of an injected volume"],
)
def test_names_the_injection_needs_must_be_free(change: Any) -> None:
    pod = user_pod()
    change(pod["spec"])
    assert refusal(pod).reason == refusals.RefusalReason.NAME_TAKEN


@pytest.mark.parametrize(
    "volume, mount_path",
    [
        ({"name": "models", "configMap": {"name": "m"}}, "/models"),
        ({"name": "models", "emptyDir": {}}, "/models/resnet_v2"),
    ],
)
def test_unusable_models_mounts_are_refused(volume: dict[str, Any], mount_path: str) -> None:
    pod = user_pod()
    pod["spec"]["volumes"].append(volume)
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": mount_path})
    assert refusal(pod).reason == refusals.RefusalReason.UNSUPPORTED_VOLUME


def test_root_pod_is_refused() -> None:
    assert refusal(user_pod(securityContext={"runAsUser": 0})).reason == refusals.RefusalReason.ROOT_USER


def test_spec_default_workload_is_operator() -> None:
    assert models.ModelDeploymentSpec.from_object("x", {"source": {"uri": "gs://b/"}}).workload == "operator"


def test_json_patch_escapes_keys_and_replaces_lists_of_another_length() -> None:
    old = {"metadata": {"annotations": {"a/b": "1", "c~d": "2"}}, "l": [1, 2]}
    new = {"metadata": {"annotations": {"a/b": "3"}}, "l": [1, 2, 3]}
    patch = json_patch.json_patch(old, new)
    assert {"op": "remove", "path": "/metadata/annotations/c~0d"} in patch
    assert {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "3"} in patch
    assert {"op": "replace", "path": "/l", "value": [1, 2, 3]} in patch
    assert json_patch.apply_patch(old, patch) == new
