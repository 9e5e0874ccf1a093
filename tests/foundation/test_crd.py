"""The ModelDeployment CRD on a real kube-apiserver: schema, CEL rules, printer columns, scale."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from model_poller_api import crd, names

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "apiVersion": names.API_VERSION,
    "kind": names.KIND,
    "metadata": {"name": "faster-rcnn"},
    "spec": {
        "modelName": "faster_rcnn",
        "replicas": 2,
        "source": {
            "uri": "gs://ml-models/faster_rcnn/",
            "pubsub": {"topic": "projects/p/topics/models"},
            "pollInterval": "60s",
            "credentialsSecret": "gcs-key",
        },
        "versions": {"keep": 2},
        "serving": {"image": "tensorflow/serving:2.19.0", "resources": {"limits": {"memory": "4Gi"}}},
        "poller": {"image": "registry.example/model-poller:0.1.0"},
        "storage": {"sizeLimit": "20Gi"},
    },
}


def _custom(kube: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def _create(kube: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = _custom(kube).create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PLURAL, body
    )
    return result


def _kubectl(kube: Any, *args: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, (
        "kubectl is not on PATH: install the Debian package kubectl (google-cloud-cli) or any kubectl >= 1.29"
    )
    done = subprocess.run([kubectl, *args], env=kube.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("folder", ["crds", "deploy/chart/crds"])
def test_committed_crd_is_generated_from_the_api_module(folder: str) -> None:
    committed = (REPO / folder / f"{names.CRD_NAME}.yaml").read_text()
    assert committed == crd.render_crd_yaml(), "the CRD is generated: run `make crd`"


def test_valid_object_is_stored_with_defaults(kube: Any, namespace: str) -> None:
    body = copy.deepcopy(VALID)
    del body["spec"]["replicas"], body["spec"]["source"]["pollInterval"]
    stored = _create(kube, namespace, body)
    assert stored["spec"]["source"]["uri"] == "gs://ml-models/faster_rcnn/"
    assert stored["spec"]["replicas"] == 1  # schema default
    assert stored["spec"]["source"]["pollInterval"] == "60s"
    assert stored["metadata"]["generation"] == 1


def test_minimal_file_source_is_valid(kube: Any, namespace: str) -> None:
    body = {**VALID, "metadata": {"name": "laptop"}, "spec": {"source": {"uri": "file:///srv/models/"}}}
    assert _create(kube, namespace, body)["spec"]["source"]["uri"] == "file:///srv/models/"


def _spec_with(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = body["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (_spec_with(source=None), "spec.source", "Required value"),
        (_spec_with(source__uri="s3://bucket/models/"), "spec.source.uri", "must start with gs:// or file:///"),
        (_spec_with(source__uri="http://example.com/m/"), "spec.source.uri", "must start with gs:// or file:///"),
        (_spec_with(source__uri="gs:///no-bucket"), "spec.source.uri", "must name a bucket"),
        (_spec_with(versions={"keep": 2, "pinned": [3]}), "spec.versions", "mutually exclusive"),
        (_spec_with(versions={"keep": 0}), "spec.versions.keep", "greater than or equal to 1"),
        (_spec_with(versions={"pinned": []}), "spec.versions.pinned", "at least 1 items"),
        (_spec_with(source__pubsub={"topic": "models"}), "spec.source.pubsub.topic", "should match"),
        (
            _spec_with(source__pubsub={"topic": "projects/p/topics/t", "subscription": "projects/p/subscriptions/s"}),
            "spec.source.pubsub",
            "exactly one of topic or subscription",
        ),
        (_spec_with(source__pollInterval="soon"), "spec.source.pollInterval", "should match"),
        (_spec_with(replicas=-1), "spec.replicas", "greater than or equal to 0"),
        (_spec_with(modelName="../etc"), "spec.modelName", "should match"),
    ],
    ids=[
        "no-source",
        "s3-scheme",
        "http-scheme",
        "no-bucket",
        "keep-and-pinned",
        "keep-0",
        "pinned-empty",
        "bad-topic",
        "topic-and-subscription",
        "bad-interval",
        "negative-replicas",
        "bad-model-name",
    ],
)
def test_invalid_spec_is_rejected_naming_the_field(
    kube: Any, namespace: str, body: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ApiException) as err:
        _create(kube, namespace, body)
    assert err.value.status == 422
    assert field in err.value.body, err.value.body
    assert words in err.value.body, err.value.body


@pytest.mark.parametrize("name", ["my.model", "1model", "m" * 64])
def test_a_name_that_cannot_name_a_service_is_rejected(kube: Any, namespace: str, name: str) -> None:
    with pytest.raises(ApiException) as err:
        _create(kube, namespace, {**VALID, "metadata": {"name": name}})
    assert err.value.status == 422
    assert "metadata.name" in err.value.body and "DNS-1035 label" in err.value.body, err.value.body


def test_printer_columns_come_from_the_server(kube: Any, namespace: str) -> None:
    _create(kube, namespace, VALID)
    status = {"modelName": "faster_rcnn", "readyReplicas": 2, "latestVersion": 3, "servingVersion": 3, "replicas": 2}
    _custom(kube).patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, namespace, names.PLURAL, "faster-rcnn", {"status": status}
    )
    # `kubectl get md` renders the server's Table; both short names resolve.
    out = _kubectl(kube, "get", "md", "-n", namespace)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "MODEL", "SOURCE", "REPLICAS", "READY", "LATEST", "SERVING", "AGE"]
    assert row.split()[:7] == ["faster-rcnn", "faster_rcnn", "gs://ml-models/faster_rcnn/", "2", "2", "3", "3"]
    assert (
        _kubectl(kube, "get", "mdep", "-n", namespace, "-o", "name") == "modeldeployment.modelpoller.dev/faster-rcnn\n"
    )


def test_kubectl_scale_changes_spec_replicas(kube: Any, namespace: str) -> None:
    _create(kube, namespace, VALID)
    _kubectl(kube, "scale", "md/faster-rcnn", "--replicas=3", "-n", namespace)
    stored = _custom(kube).get_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PLURAL, "faster-rcnn"
    )
    assert stored["spec"]["replicas"] == 3
    scale = _custom(kube).get_namespaced_custom_object_scale(
        names.GROUP, names.VERSION, namespace, names.PLURAL, "faster-rcnn"
    )
    assert scale["spec"]["replicas"] == 3


def test_status_is_a_subresource(kube: Any, namespace: str) -> None:
    """A write to the main resource cannot change status, and a status write leaves spec alone."""
    stored = _create(kube, namespace, {**VALID, "status": {"latestVersion": 9}})
    assert "status" not in stored or "latestVersion" not in stored["status"]
    _custom(kube).patch_namespaced_custom_object_status(
        names.GROUP,
        names.VERSION,
        namespace,
        names.PLURAL,
        "faster-rcnn",
        {"status": {"latestVersion": 4}, "spec": {"replicas": 7}},
    )
    stored = _custom(kube).get_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.PLURAL, "faster-rcnn"
    )
    assert stored["status"]["latestVersion"] == 4
    assert stored["spec"]["replicas"] == 2
    assert stored["metadata"]["generation"] == 1


def test_rejected_yaml_example_names_field(kube: Any, namespace: str, tmp_path: Path) -> None:
    """What a user sees from `kubectl apply` of a bad spec: one line that names the field."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_spec_with(versions={"keep": 2, "pinned": [3]})))
    kubectl = shutil.which("kubectl")
    assert kubectl
    done = subprocess.run(
        [kubectl, "apply", "-n", namespace, "-f", str(path)], env=kube.env(), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "spec.versions: Invalid value" in done.stderr
    assert "versions.keep and versions.pinned are mutually exclusive" in done.stderr
