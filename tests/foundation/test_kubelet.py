"""The kubelet stand-in (local_services/kubelet.py) runs a real Deployment's pod end to end.

The real Deployment and ReplicaSet controllers (kube-controller-manager) create the pod from
the template; the stand-in runs the poller and the TF Serving stand-in for it, writes its
status, and the Deployment's readyReplicas comes from the real deployment controller.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from local_services.kube import KubeControlPlane
from local_services.kubelet import Kubelet, PodRecord, PodSpecError, container_env, expand
from local_services.process import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVING_STANDIN = REPO / "local_services" / "tf_serving.py"
NAME = "kubelet-test"
SELECTOR = f"app.kubernetes.io/instance={NAME}"
ACCOUNT = f"{NAME}-poller"
GCS_KEY = "/var/run/secrets/model-poller/gcs/key.json"

T = TypeVar("T")


@pytest.fixture(scope="module")
def controllers(kube: KubeControlPlane) -> Iterator[None]:
    service = kube.start_controllers()
    try:
        yield
    finally:
        service.stop()


class Api:
    """The test's own admin calls (creating objects, reading what the controllers wrote)."""

    def __init__(self, kube: KubeControlPlane) -> None:
        self.url = kube.url
        self.session = requests.Session()
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
        self.session.verify = str(kube.ca_file)
        self.session.headers["Authorization"] = f"Bearer {kube.token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(method, self.url + path, json=body, timeout=10)
        assert response.status_code < 400, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def pod_uids(self, namespace: str) -> set[str]:
        return {p["metadata"]["uid"] for p in self.call("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]}

    def token_review(self, token: str) -> Any:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        return self.call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)["status"]


@pytest.fixture
def api(kube: KubeControlPlane) -> Api:
    return Api(kube)


def _source(tmp_path: Path) -> Path:
    """A file:// source holding version 1 (what the poller installs and the stand-in loads)."""
    source = tmp_path / "source"
    source.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("1/saved_model.pb", b"a saved model")
    (source / "1.zip").write_bytes(buf.getvalue())
    return source


def _deployment(source: Path) -> dict[str, Any]:
    """A one-replica Deployment shaped like the operator's: native sidecar poller + serving."""
    probe = {"periodSeconds": 2, "timeoutSeconds": 2}
    poller = {
        "name": "poller",
        "image": "model-poller:test",
        "restartPolicy": "Always",
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MODEL_POLLER_SOURCE", "value": f"file://{source}/"},
            {"name": "MODEL_POLLER_MODEL_DIR", "value": "/models/m"},
            {"name": "MODEL_POLLER_HTTP_PORT", "value": "8080"},
            {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": GCS_KEY},
        ],
        "ports": [{"name": "poller-http", "containerPort": 8080}],
        "startupProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "failureThreshold": 1800, **probe},
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
        ],
    }
    serving = {
        "name": "serving",
        "image": "tensorflow/serving:test",
        "command": ["/usr/bin/tensorflow_model_server"],
        "args": [
            "--port=8500",
            "--rest_api_port=8501",
            "--model_name=m",
            "--model_base_path=/models/m",
            "--file_system_poll_wait_seconds=1",
        ],  # fmt: skip
        "ports": [{"name": "grpc", "containerPort": 8500}, {"name": "http", "containerPort": 8501}],
        "readinessProbe": {"httpGet": {"path": "/serving-ready", "port": 8080}, "failureThreshold": 2, **probe},
        "startupProbe": {"tcpSocket": {"port": 8501}, "periodSeconds": 5, "failureThreshold": 360},
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }
    token_volume = {
        "name": "kube-api-access",
        "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": NAME}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": NAME}},
                "spec": {
                    "serviceAccountName": ACCOUNT,
                    "automountServiceAccountToken": False,
                    "initContainers": [poller],
                    "containers": [serving],
                    "volumes": [{"name": "models", "emptyDir": {}}, token_volume],
                },
            },
        },
    }


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _get_json(url: str) -> Any:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as resp:
        return json.loads(resp.read())


def _conditions(pod: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}


def _create_deployment(api: Api, namespace: str, tmp_path: Path) -> None:
    api.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
             {"metadata": {"name": ACCOUNT}, "automountServiceAccountToken": False})  # fmt: skip
    api.call("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", _deployment(_source(tmp_path)))


def _kubelet(kube: KubeControlPlane, namespace: str, tmp_path: Path) -> Kubelet:
    return Kubelet(kube, namespace, SELECTOR, tmp_path / "kubelet", SERVING_STANDIN, probe_period=0.2)


def test_a_deployment_pod_runs_ready_with_its_own_bound_token(
    kube: KubeControlPlane, controllers: None, api: Api, namespace: str, tmp_path: Path
) -> None:
    ns = f"/api/v1/namespaces/{namespace}"
    _create_deployment(api, namespace, tmp_path)

    with _kubelet(kube, namespace, tmp_path) as kubelet:
        ((name, record),) = kubelet.wait_ready(1, timeout=30).items()

        # The real deployment controller counts the pod Ready from the status the stand-in wrote.
        deployment_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}"
        wait_for("readyReplicas 1", lambda: api.call("GET", deployment_path)["status"].get("readyReplicas") == 1)
        pod = api.call("GET", f"{ns}/pods/{name}")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["spec"]["nodeName"] == kubelet.node_name
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == "127.0.0.1"
        assert _conditions(pod) == {"PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
                                    "ContainersReady": "True", "Ready": "True"}  # fmt: skip
        (sidecar,) = pod["status"]["initContainerStatuses"]
        (main,) = pod["status"]["containerStatuses"]
        for status, container in ((sidecar, "poller"), (main, "serving")):
            assert status["name"] == container and "running" in status["state"]
            assert status["started"] is True and status["ready"] is True and status["restartCount"] == 0

        # The emptyDir is shared: the poller installed version 1 where the serving stand-in loads it.
        assert record.model_dir == record.dir / "models" / "m"
        assert (record.model_dir / "1" / "saved_model.pb").read_bytes() == b"a saved model"
        status = _get_json(f"http://127.0.0.1:{record.serving_rest_port}/v1/models/m")
        assert status["model_version_status"][0]["state"] == "AVAILABLE"

        # The poller's identity is the pod's ServiceAccount, through a token bound to this pod.
        assert record.poller_pid is not None and record.serving_pid is not None
        env = _environ(record.poller_pid)
        assert env["KUBECONFIG"] == str(record.kubeconfig)
        assert env["POD_NAME"] == name and env["MODEL_POLLER_MODEL_DIR"] == str(record.model_dir)
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
        assert record.dropped_env == {"GOOGLE_APPLICATION_CREDENTIALS": GCS_KEY}
        assert kube.token not in "\0".join(f"{k}={v}" for k, v in env.items())
        assert record.kubeconfig is not None
        token = yaml.safe_load(record.kubeconfig.read_text())["users"][0]["user"]["token"]
        assert token != kube.token
        review = api.token_review(token)
        user = review["user"]
        assert review["authenticated"] is True
        assert user["username"] == f"system:serviceaccount:{namespace}:{ACCOUNT}"
        assert user["extra"]["authentication.kubernetes.io/pod-name"] == [name]
        assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [record.uid]
        # The serving container mounts no token: it gets no credentials at all.
        assert not Path(_environ(record.serving_pid)["KUBECONFIG"]).exists()

        # Deleting the pod stops its processes; the stand-in confirms the deletion.
        pids = (record.poller_pid, record.serving_pid)
        api.call("DELETE", f"{ns}/pods/{name}")
        wait_for("the pod to be gone", lambda: record.uid not in api.pod_uids(namespace))
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        assert kubelet.pods(include_terminated=True)[name].terminated
        assert kubelet.pods(include_terminated=True)[name].poller_exit_count == 0
        # The ReplicaSet replaced it; the stand-in runs the new pod too.
        ((new_name, _),) = kubelet.wait_ready(1, timeout=30).items()
        assert new_name != name


def _rendered_deployment(source: Path) -> dict[str, Any]:
    """The operator's rendered Deployment (golden file), pointed at a file:// source.

    Without its owner (no ModelDeployment here: the garbage collector would delete it) and
    without --report-to (status reporting belongs to the end-to-end test with the operator)."""
    docs = yaml.safe_load_all((REPO / "tests" / "operator" / "golden" / "minimal.yaml").read_text())
    deployment: dict[str, Any] = next(d for d in docs if d and d["kind"] == "Deployment")
    deployment["metadata"] = {"name": deployment["metadata"]["name"]}
    (poller,) = deployment["spec"]["template"]["spec"]["initContainers"]
    poller["env"] = [e for e in poller["env"] if e["name"] != "MODEL_POLLER_REPORT_TO"]
    for var in poller["env"]:
        if var["name"] == "MODEL_POLLER_SOURCE":
            var["value"] = f"file://{source}/"
    return deployment


def test_the_operators_rendered_pod_runs_with_paths_and_ports_mapped(
    kube: KubeControlPlane, controllers: None, api: Api, namespace: str, tmp_path: Path
) -> None:
    deployment = _rendered_deployment(_source(tmp_path))
    spec = deployment["spec"]["template"]["spec"]
    account = {"metadata": {"name": spec["serviceAccountName"]}}
    api.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account)
    api.call("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)
    selector = f"app.kubernetes.io/instance={deployment['metadata']['name']}"
    with Kubelet(kube, namespace, selector, tmp_path / "kubelet", SERVING_STANDIN, probe_period=0.2) as kubelet:
        ((name, record),) = kubelet.wait_ready(1, timeout=30).items()
        model = spec["containers"][0]["args"][2].removeprefix("--model_name=")
        assert record.model_dir == record.dir / "models" / model and (record.model_dir / "1").is_dir()
        assert record.poller_pid is not None and record.serving_pid is not None
        env = _environ(record.poller_pid)
        assert env["MODEL_POLLER_SERVING_URL"] == f"http://127.0.0.1:{record.serving_rest_port}"
        assert env["MODEL_POLLER_HTTP_PORT"] == str(record.poller_port)
        assert env["TMPDIR"] == str(record.dir / "tmp" / "poller")
        assert env["POD_NAMESPACE"] == namespace and env["MODEL_POLLER_POLL_INTERVAL"] == "60"
        assert _environ(record.serving_pid)["TMPDIR"] == str(record.dir / "tmp" / "serving")
        status = _get_json(f"http://127.0.0.1:{record.serving_rest_port}/v1/models/{model}")
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        assert record.kubeconfig is not None
        assert api.token_review(yaml.safe_load(record.kubeconfig.read_text())["users"][0]["user"]["token"])["user"][
            "username"] == f"system:serviceaccount:{namespace}:{spec['serviceAccountName']}"  # fmt: skip


def test_a_poller_that_exits_is_restarted_and_counted(
    kube: KubeControlPlane, controllers: None, api: Api, namespace: str, tmp_path: Path
) -> None:
    _create_deployment(api, namespace, tmp_path)
    with _kubelet(kube, namespace, tmp_path) as kubelet:
        ((name, record),) = kubelet.wait_ready(1, timeout=30).items()
        assert record.poller_pid is not None and record.poller_exit_count == 0
        os.kill(record.poller_pid, signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            pod: dict[str, Any] = api.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            (sidecar,) = pod["status"]["initContainerStatuses"]
            return pod if sidecar["restartCount"] == 1 and _conditions(pod)["Ready"] == "True" else None

        pod = wait_for("the poller restarted and the pod Ready again", restarted)
        (sidecar,) = pod["status"]["initContainerStatuses"]
        assert sidecar["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL
        after = kubelet.pods()[name]
        assert after.poller_exits == [128 + signal.SIGKILL] and after.poller_pid not in (None, record.poller_pid)
        assert after.serving_exits == [] and after.serving_pid == record.serving_pid


def test_pods_keep_running_through_an_api_server_outage_and_status_catches_up(
    kube: KubeControlPlane, controllers: None, api: Api, namespace: str, tmp_path: Path
) -> None:
    _create_deployment(api, namespace, tmp_path)
    with _kubelet(kube, namespace, tmp_path) as kubelet:
        ((name, record),) = kubelet.wait_ready(1, timeout=30).items()
        assert record.poller_pid is not None
        kube.stop_apiserver()
        try:
            with pytest.raises(requests.ConnectionError):
                api.call("GET", f"/api/v1/namespaces/{namespace}/pods")
            # The processes need no API server: a poller that dies meanwhile is restarted.
            os.kill(record.poller_pid, signal.SIGKILL)

            def restarted() -> PodRecord | None:
                now = kubelet.pods()[name]
                return now if now.ready and now.poller_exit_count else None

            during = wait_for("the poller restarted", restarted)
            time.sleep(2)  # a few more of the stand-in's list and status rounds fail
        finally:
            kube.start_apiserver()
        assert during.poller_exits == [128 + signal.SIGKILL] and during.serving_pid == record.serving_pid

        # The status write that failed during the outage is made once the server is back.
        def caught_up() -> bool:
            pod = api.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            restarts = pod["status"]["initContainerStatuses"][0]["restartCount"]
            return bool(restarts == 1 and _conditions(pod)["Ready"] == "True")

        wait_for("the pod's status to show the restart", caught_up)
        # Same URL, CA and signing key: the pod's token is still good, and deletion still works.
        assert record.kubeconfig is not None
        token = yaml.safe_load(record.kubeconfig.read_text())["users"][0]["user"]["token"]
        assert api.token_review(token)["authenticated"] is True
        api.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")
        wait_for("the pod to be gone", lambda: record.uid not in api.pod_uids(namespace))
        assert kubelet.pods(include_terminated=True)[name].terminated


def test_an_env_source_it_cannot_resolve_is_a_create_container_config_error(
    kube: KubeControlPlane, api: Api, namespace: str, tmp_path: Path
) -> None:
    template = _deployment(_source(tmp_path))["spec"]["template"]
    template["spec"]["initContainers"][0]["env"].append(
        {"name": "GCS_BUCKET", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "bucket"}}}
    )
    api.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": ACCOUNT}})
    pod = {**template, "metadata": {**template["metadata"], "name": "p"}}
    api.call("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    with _kubelet(kube, namespace, tmp_path) as kubelet:
        error = wait_for("the record's error", lambda: kubelet.pods().get("p", None) and kubelet.pods()["p"].error)
        assert "container poller: env GCS_BUCKET: valueFrom.configMapKeyRef is not supported" in error

        def waiting() -> dict[str, Any] | None:
            statuses = api.call("GET", f"/api/v1/namespaces/{namespace}/pods/p")["status"].get("initContainerStatuses")
            return statuses[0]["state"].get("waiting") if statuses else None

        reason = wait_for("the pod's status", waiting)
        assert reason["reason"] == "CreateContainerConfigError" and "GCS_BUCKET" in reason["message"]
        assert kubelet.pods()["p"].poller_pid is None


def test_env_is_resolved_as_the_kubelet_does() -> None:
    pod = {
        "metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1", "labels": {"tier": "gold"}},
        "spec": {"serviceAccountName": "sa", "nodeName": "n"},
    }
    container = {
        "name": "poller",
        "env": [
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "DIR", "value": "/models/$(NS)/$(UNDEFINED)/$$(NS)/$(LATER)"},
            {"name": "LATER", "value": "x"},
        ],
    }
    assert container_env(pod, container) == {
        "NS": "ns", "TIER": "gold", "DIR": "/models/ns/$(UNDEFINED)/$(NS)/$(LATER)", "LATER": "x",
    }  # fmt: skip
    assert expand("$(A)$(A", {"A": "1"}) == "1$(A"
    for bad, field in (
        ({"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}, "valueFrom.secretKeyRef"),
        ({"valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}, "valueFrom.resourceFieldRef"),
        ({"valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}, "'status.phase'"),
    ):
        with pytest.raises(PodSpecError, match=f"pod p-1: container poller: env V: .*{re.escape(field)}"):
            container_env(pod, {"name": "poller", "env": [{"name": "V", **bad}]})
    with pytest.raises(PodSpecError, match="container poller: envFrom is not supported"):
        container_env(pod, {"name": "poller", "envFrom": [{"configMapRef": {"name": "c"}}]})
