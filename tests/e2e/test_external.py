"""External mode end to end: a team's own tensorflow/serving Deployment gets the poller injected.

Real services only: kube-apiserver + etcd, kube-controller-manager (the user's Deployment
gets a ReplicaSet, which creates the pods through the API), the API server calling the
operator's admission webhook over TLS on loopback for each of those pods, the operator
under the chart's identity, admission policy and webhook settings, fake-gcs-server
publishing notifications to the Pub/Sub emulator. The kubelet stand-in
(local_services/kubelet.py) runs each injected pod: the poller with exactly the injected
container's env and a token of the ServiceAccount the webhook set, TF Serving's stand-in
with the args the webhook completed; readiness from the probe the webhook added.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_poller_api import names

from local_services import operator_kit as kit
from local_services import webhook_kit as wk
from local_services.archives import model_files, zip_bytes
from local_services.kubelet import Kubelet, container_env
from local_services.process import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.slow]

STANDIN = Path(__file__).resolve().parents[2] / "local_services" / "tf_serving.py"
NAME = "resnet"
MODEL = "resnet_v2"
PREFIX = "models/resnet_v2/"


def good_zip(version: int) -> bytes:
    return zip_bytes(model_files(version), top=f"{version:04d}")


def kubectl(kube: Any, *args: str) -> str:
    done = subprocess.run(["kubectl", *args], env=kube.env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def conditions(md: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (md.get("status") or {}).get("conditions") or ()}


@pytest.fixture(scope="module")
def webhook_operator(
    kube: Any, controllers: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[kit.OperatorProcess]:
    with wk.run(kube, tmp_path_factory.mktemp("e2e-webhook")) as running:
        yield running
        assert running.process.poll() is None, f"the operator died:\n{running.log()[-5000:]}"
        assert "Traceback" not in running.log(), running.log()[-5000:]


def user_deployment(replicas: int) -> dict[str, Any]:
    """What a team writes: their own Deployment, labelled for the ModelDeployment, nothing else."""
    template = wk.user_pod(None, NAME)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "team-tf-serving"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "tf"}},
            "template": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": template["spec"]},
        },
    }


def md_row(kube: Any, namespace: str) -> dict[str, str]:
    header, row = kubectl(kube, "-n", namespace, "get", "md", NAME).splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    return {
        header[start : (starts[n + 1] if n + 1 < len(starts) else None)].strip(): row[
            start : (starts[n + 1] if n + 1 < len(starts) else None)
        ].strip()
        for n, start in enumerate(starts)
    }


def test_user_deployment_in_external_mode_serves_version_2_after_two_uploads(
    kube: Any, webhook_operator: kit.OperatorProcess, cluster: kit.Cluster, fake_gcs: Any, bucket: Any,
    namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    wk.ensure_default_service_account(kube, namespace)
    wk.create_external_md(cluster, namespace, NAME, modelName=MODEL, source={
        "uri": f"gs://{bucket.name}/{PREFIX}", "pubsub": {"topic": fake_gcs.notification_topic}, "pollInterval": "60s"})  # fmt: skip
    cluster.apps.create_namespaced_deployment(namespace, user_deployment(2))

    selector = f"{names.LABEL_MODEL_DEPLOYMENT}={NAME}"
    with Kubelet(kube, namespace, selector, tmp_path / "kubelet", STANDIN) as kubelet:
        pods = wait_for("two injected pods running their poller", lambda: len(p := kubelet.pods()) == 2
                    and all(r.poller_pid for r in p.values()) and p, 60)  # fmt: skip
        for name, record in pods.items():
            pod = cluster.api.sanitize_for_serialization(cluster.core.read_namespaced_pod(name, namespace))
            (poller,) = pod["spec"]["initContainers"]
            assert record.kubeconfig is not None, "the poller runs with its own token"
            user = yaml.safe_load(record.kubeconfig.read_text())["users"][0]["name"]
            assert user == f"system:serviceaccount:{namespace}:{NAME}-poller"
            env = container_env(pod, poller)
            assert env[names.env_name("--report-to")] == f"{namespace}/{NAME}"
            assert env[names.env_name("--model-dir")] == f"/models/{MODEL}"
            assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet", "the user's workload owns the pod"

        bucket.blob(PREFIX + "1.zip").upload_from_string(good_zip(1))
        bucket.blob(PREFIX + "2.zip").upload_from_string(good_zip(2))
        wait_for("LATEST 2, SERVING 2, READY 2", lambda: (row := md_row(kube, namespace))["LATEST"] == "2"
             and row["SERVING"] == "2" and row["READY"] == "2", 90)  # fmt: skip

        md = cluster.get_md(namespace, NAME)
        assert conditions(md) == {
            "Ready": ("True", "AllReplicasServing"),
            "Synced": ("True", "ChildrenApplied"),
            "Degraded": ("False", "AsExpected"),
        }
        status = md["status"]
        assert (status["replicas"], status["readyReplicas"]) == (2, 2)
        assert status["selector"] == selector
        assert set(status["pollers"]) == set(pods)
        for entry in status["pollers"].values():
            assert (entry["versions"], entry["serving"], entry["latest"]) == ([1, 2], 2, 2)
        for record in kubelet.pods().values():
            assert sorted(p.name for p in record.model_dir.iterdir() if not p.name.startswith(".")) == ["1", "2"]
        # The operator rendered no workload of its own.
        assert cluster.child("Deployment", namespace, NAME) is None
        assert cluster.child("Service", namespace, NAME) is None

        # The team scales its own Deployment: the status follows, the gone pod's entry is pruned.
        cluster.apps.patch_namespaced_deployment_scale("team-tf-serving", namespace, {"spec": {"replicas": 1}})
        wait_for("one replica in the status", lambda: (s := cluster.get_md(namespace, NAME)["status"])["replicas"] == 1
             and len(s.get("pollers") or {}) == 1 and s["readyReplicas"] == 1, 60)  # fmt: skip
        assert conditions(cluster.get_md(namespace, NAME))["Ready"] == ("True", "AllReplicasServing")
