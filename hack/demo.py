"""`make demo`: the main job end to end, on this machine, against real local services.

1. Starts etcd + kube-apiserver, the Pub/Sub emulator and fake-gcs-server (the same
   services the tests use), applies the CRD, and runs the operator.
2. Uploads two model versions to gs://ml-models/faster_rcnn/ and applies a ModelDeployment
   with two replicas in topic mode.
3. There is no kubelet here, so each replica's poller runs as a local process with the env
   of the pod template the operator rendered (POD_NAME from the downward API filled in).
4. Shows a new upload reaching both replicas within seconds, a hostile archive refused with
   the old versions still in place, and a rollback by deleting a version at the source.

Everything runs under .demo/ and stops at the end (or on Ctrl-C).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from model_poller_api import names  # noqa: E402
from services.gcs import FakeGcs  # noqa: E402
from services.kube import KubeControlPlane  # noqa: E402
from services.process import Service, free_port  # noqa: E402
from services.pubsub import PubSubEmulator  # noqa: E402

WORK = REPO / ".demo"
BIN = Path(sys.executable).parent
NAMESPACE = "ml"
NAME = "faster-rcnn"
MODEL = "faster_rcnn"
BUCKET = "ml-models"
PREFIX = "faster_rcnn/"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(text: str) -> None:
    print("    " + text.rstrip().replace("\n", "\n    "), flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def saved_model_zip(version: int, *, hostile: bool = False) -> bytes:
    """A small stand-in for a SavedModel export, zipped the proof of concept's way."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        top = f"{version:04d}/"
        zf.writestr(top + "saved_model.pb", f"saved model v{version}".encode() * 1000)
        zf.writestr(top + "variables/variables.index", b"index")
        zf.writestr(top + "variables/variables.data-00000-of-00001", os.urandom(256 * 1024))
        if hostile:
            zf.writestr("../../escaped.txt", b"this must never be written")
    return buf.getvalue()


def kubectl(kube: KubeControlPlane, *args: str) -> str:
    done = subprocess.run(["kubectl", *args], env=kube.env(), capture_output=True, text=True)
    return done.stdout + done.stderr


def pod_env(template: dict[str, Any], pod_name: str, model_dir: Path, http_port: int) -> dict[str, str]:
    """The poller container's env as the kubelet would give it, pointed at local paths."""
    container = next(c for c in template["spec"]["initContainers"] if c["name"] == "poller")
    field_values = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = field_values[var["valueFrom"]["fieldRef"]["fieldPath"]]
    env[names.env_name("--model-dir")] = str(model_dir)
    env[names.env_name("--http-port")] = str(http_port)
    # No TF Serving runs here to confirm versions.
    env.pop(names.env_name("--serving-url"), None)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


def versions_on_disk(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def metric(port: int, name: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    return "\n".join(line for line in lines if line.startswith(name))


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    stack: list[Any] = []
    try:
        say("Starting local services (the same ones the tests use)")
        kube = KubeControlPlane(WORK / "kube").start()
        stack.append(kube)
        pubsub = PubSubEmulator(WORK / "pubsub").start()
        stack.append(pubsub)
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        from google.cloud import pubsub_v1

        gcs = FakeGcs(WORK / "gcs", pubsub_host=pubsub.host, project=pubsub.project)
        pubsub_v1.PublisherClient().create_topic(name=gcs.notification_topic)
        gcs.start()
        stack.append(gcs)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        show(f"kube-apiserver {kube.url}  (KUBECONFIG={kube.kubeconfig})")
        show(f"Pub/Sub emulator {pubsub.host}, fake-gcs-server {gcs.url}, bucket notifications -> {gcs.notification_topic}")

        say("Applying the CRD and starting the operator")
        show(kubectl(kube, "apply", "-f", str(REPO / "crds" / f"{names.CRD_NAME}.yaml")))
        kubectl(kube, "wait", "--for=condition=Established", f"crd/{names.CRD_NAME}")
        show(kubectl(kube, "create", "namespace", NAMESPACE))
        operator = Service(
            "operator",
            [str(BIN / "model-poller-operator"), "--namespace", NAMESPACE, "--liveness", ""],
            WORK / "operator.log",
            env=kube.env(),
        )
        stack.append(operator)

        say(f"Uploading versions 1 and 2 to gs://{BUCKET}/{PREFIX}")
        bucket = gcs.client().create_bucket(BUCKET)
        for version in (1, 2):
            bucket.blob(f"{PREFIX}{version:04d}.zip").upload_from_string(saved_model_zip(version))
        show("\n".join(f"gs://{BUCKET}/{b.name}  {b.size} bytes" for b in bucket.list_blobs(prefix=PREFIX)))

        say("Applying a ModelDeployment (2 replicas, topic mode)")
        md = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "modelName": MODEL,
                "replicas": 2,
                "source": {"uri": f"gs://{BUCKET}/{PREFIX}", "pubsub": {"topic": gcs.notification_topic}, "pollInterval": "30s"},
                "versions": {"keep": 2},
            },
        }
        (WORK / "md.yaml").write_text(yaml.safe_dump(md))
        applied = time.monotonic()
        show(kubectl(kube, "apply", "-f", str(WORK / "md.yaml")))
        apps = client.AppsV1Api(kube.api_client())

        def deployment_exists() -> bool:
            return any(d.metadata.name == NAME for d in apps.list_namespaced_deployment(NAMESPACE).items)

        wait_for("the operator to create the Deployment", deployment_exists)
        show(f"the operator applied its children {time.monotonic() - applied:.1f}s after kubectl apply:")
        show(kubectl(kube, "get", "deploy,svc,sa,role,rolebinding", "-n", NAMESPACE))

        say("No kubelet here: running each replica's poller as a local process with its pod's env")
        template = kube.api_client().sanitize_for_serialization(apps.read_namespaced_deployment(NAME, NAMESPACE).spec.template)
        replicas = []
        for i in range(2):
            pod = f"{NAME}-demo-{i}"
            model_dir = WORK / "pods" / pod / "models" / MODEL
            port = free_port()
            env = pod_env(template, pod, model_dir, port)
            poller = Service(f"poller {pod}", [str(BIN / "model-poller")], WORK / f"{pod}.log", env=env)
            stack.append(poller)
            replicas.append((pod, model_dir, port))
            show(f"{pod}: model dir {model_dir}, http :{port}")
        for pod, model_dir, port in replicas:
            took = wait_for(f"{pod} /readyz", lambda: _ready(port), 120)
            show(f"{pod} ready after the initial sync ({took:.1f}s): versions on disk {versions_on_disk(model_dir)}")

        say("Uploading version 3: every replica hears of it through its own subscription")
        started = time.monotonic()
        bucket.blob(f"{PREFIX}0003.zip").upload_from_string(saved_model_zip(3))
        for pod, model_dir, _ in replicas:
            wait_for(f"{pod} to install version 3", lambda: versions_on_disk(model_dir) == [2, 3], 30)
            show(f"{pod}: {versions_on_disk(model_dir)} after {time.monotonic() - started:.2f}s (keep: 2, so 1 is gone)")

        say("Uploading a hostile version 4 (a zip entry ../../escaped.txt): refused, 2 and 3 keep serving")
        bucket.blob(f"{PREFIX}0004.zip").upload_from_string(saved_model_zip(4, hostile=True))
        pod, model_dir, port = replicas[0]
        wait_for("the rejection", lambda: "model_poller_rejections_total{" in metric(port, "model_poller_rejections_total"), 30)
        for pod, model_dir, port in replicas:
            show(f"{pod}: {versions_on_disk(model_dir)}")
        show(metric(replicas[0][2], "model_poller_rejections_total"))
        show(f"{_log_lines(replicas[0][0], '0004')}")
        escaped = [p for p in WORK.rglob("escaped.txt")]
        show(f"files named escaped.txt anywhere under .demo/: {len(escaped)}")

        say("Deleting versions 3 and 4 at the source: a rollback to 1 and 2")
        bucket.blob(f"{PREFIX}0004.zip").delete()
        bucket.blob(f"{PREFIX}0003.zip").delete()
        for pod, model_dir, _ in replicas:
            wait_for(f"{pod} to roll back", lambda: versions_on_disk(model_dir) == [1, 2], 60)
            show(f"{pod}: {versions_on_disk(model_dir)}")

        say("kubectl get md")
        show(kubectl(kube, "get", "md", "-n", NAMESPACE))
        show("(LATEST/SERVING/READY fill in once pollers report status: --report-to, a later issue)")
        say("Done. Logs are in .demo/; stopping everything.")
        return 0
    finally:
        for item in reversed(stack):
            item.stop()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _log_tail(pod: str) -> str:
    return (WORK / f"{pod}.log").read_text(errors="replace")[-4000:]


def _log_lines(pod: str, needle: str) -> str:
    lines = [line for line in _log_tail(pod).splitlines() if needle in line]
    return "\n".join(lines[-3:])


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130)
    except json.JSONDecodeError as exc:  # pragma: no cover - a service answered garbage
        raise SystemExit(f"demo: {exc}")
