"""`make demo`: the whole loop on this machine, until `kubectl get md` tells the truth.

1. Starts the services the tests use (etcd + kube-apiserver, the Pub/Sub emulator,
   fake-gcs-server), the real kube-controller-manager (Deployment, ReplicaSet and garbage
   collector controllers) and the operator under the Helm chart's own ServiceAccount,
   ClusterRole and admission policy (never the admin credentials).
2. Applies a two-replica ModelDeployment in topic mode. There is no kubelet here: the
   kubelet stand-in (local_services/kubelet.py) runs each pod the ReplicaSet creates as local
   processes, the poller sidecar with its pod's env and a ServiceAccount token bound to the
   pod, and the TF Serving stand-in (local_services/tf_serving.py) as the serving container.
3. Walks through uploads, a hostile archive, a live rollback with `kubectl patch` and a
   version TF Serving cannot load, printing `kubectl get md` and the Ready/Degraded
   conditions after each step.

Everything runs under .demo/ and is stopped at the end, on Ctrl-C and on SIGTERM. A step
that does not happen in time ends the demo with a non-zero exit and says which step.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
# The services and the kubelet stand-in live under tests/; the operator's test kit (its
# identity from the chart, run_operator) under tests/operator, as tests/e2e/conftest.py uses it.
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from model_poller_api import names  # noqa: E402

from local_services import operator_kit as kit  # noqa: E402
from local_services.gcs import FakeGcs  # noqa: E402
from local_services.kube import KubeControlPlane  # noqa: E402
from local_services.kubelet import Kubelet, PodRecord  # noqa: E402
from local_services.pubsub import PubSubEmulator  # noqa: E402

WORK = REPO / ".demo"
STANDIN = REPO / "local_services" / "tf_serving.py"
NAMESPACE = "ml"
NAME = "faster-rcnn"
MODEL = "faster_rcnn"
BUCKET = "ml-models"
PREFIX = "faster_rcnn/"
# Condition lines shown after each step: the summary and the one that carries the errors.
SHOWN_CONDITIONS = ("Ready", "Degraded")
CONDITIONS_JSONPATH = '{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\\n"}{end}'

T = TypeVar("T")


class DemoError(Exception):
    """A step did not happen (in time, or as promised): the message says which and where to look."""


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def show(text: str) -> None:
    print("    " + text.rstrip().replace("\n", "\n    "), flush=True)


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float, state: Callable[[], str] | None = None
) -> tuple[T, float]:
    """Poll ``check`` until it returns something truthy: (that value, seconds taken).
    On timeout, ``state`` says what was seen instead (the place to start looking)."""
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            seen = f"; last seen: {state()}" if state else ""
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(0.2)


def version_zip(version: int, *, hostile: bool = False, unloadable: bool = False) -> bytes:
    """A small SavedModel-shaped export, zipped the proof of concept's way (`0003/saved_model.pb`).

    ``hostile`` adds a path-traversal entry; ``unloadable`` makes saved_model.pb a proto TF
    Serving cannot parse (the stand-in fails any that starts with INVALID), valid for the poller.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        top = f"{version:04d}/"
        model = b"INVALID proto" if unloadable else f"saved model v{version}".encode() * 1000
        zf.writestr(top + "saved_model.pb", model)
        zf.writestr(top + "variables/variables.index", b"index")
        zf.writestr(top + "variables/variables.data-00000-of-00001", os.urandom(64 * 1024))
        if hostile:
            zf.writestr("../../escaped.txt", b"this must never be written")
    return buf.getvalue()


class Demo:
    """The running pieces and the commands a user would type against them."""

    def __init__(self, kube: KubeControlPlane, cluster: kit.Cluster, bucket: Any, kubelet: Kubelet) -> None:
        self.kube = kube
        self.cluster = cluster
        self.bucket = bucket
        self.kubelet = kubelet

    def kubectl(self, *args: str, echo: bool = False) -> str:
        argv = ["kubectl", "-n", NAMESPACE, *args]
        if echo:
            show("$ " + " ".join(_quote(a) for a in argv))
        done = subprocess.run(argv, env=self.kube.env(), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise DemoError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def show_md(self) -> None:
        """`kubectl get md`, then one line per shown condition."""
        show(f"$ kubectl -n {NAMESPACE} get md    (then .status.conditions, Ready and Degraded)")
        show(self.kubectl("get", "md"))
        lines = self.kubectl("get", "md", NAME, "-o", f"jsonpath={CONDITIONS_JSONPATH}").splitlines()
        for line in lines:
            if line.split("=", 1)[0] in SHOWN_CONDITIONS:
                show("  " + line.rstrip(": "))

    def show_pollers(self) -> None:
        md = yaml.safe_load(self.kubectl("get", "md", NAME, "-o", "yaml"))
        show(f"$ kubectl -n {NAMESPACE} get md {NAME} -o yaml    (status.pollers only: one entry per pod)")
        pollers = md.get("status", {}).get("pollers") or {}
        show(yaml.safe_dump({"status": {"pollers": pollers}}, sort_keys=False))

    def upload(self, version: int, data: bytes) -> None:
        blob = self.bucket.blob(f"{PREFIX}{version:04d}.zip")
        blob.upload_from_string(data)
        show(f"uploaded gs://{BUCKET}/{blob.name} ({len(data)} bytes)")

    def md(self) -> dict[str, Any]:
        return dict(self.cluster.get_md(NAMESPACE, NAME))

    def status(self) -> dict[str, Any]:
        return dict(self.md().get("status") or {})

    def condition(self, type_: str) -> tuple[str, str, str]:
        for c in self.status().get("conditions") or ():
            if c["type"] == type_:
                return c["status"], c["reason"], c.get("message", "")
        return "", "", ""

    def columns(self) -> tuple[Any, Any, Any]:
        """What LATEST, SERVING and READY show."""
        status = self.status()
        return status.get("latestVersion"), status.get("servingVersion"), status.get("readyReplicas")

    def summary(self) -> str:
        """The status in one line, for a timeout message."""
        latest, serving, ready = self.columns()
        shown = []
        for type_ in SHOWN_CONDITIONS:
            status_, reason, message = self.condition(type_)
            shown.append(f"{type_}={status_ or 'unset'} {reason}: {message}".rstrip(": "))
        conditions = "; ".join(shown)
        entries = {name: {k: e.get(k) for k in ("versions", "serving", "reason")} for name, e in self.entries().items()}
        return f"LATEST {latest} SERVING {serving} READY {ready}; {conditions}; status.pollers {entries}"

    def entries(self) -> dict[str, Any]:
        return dict(self.status().get("pollers") or {})

    def all_entries(self, check: Callable[[dict[str, Any]], bool]) -> bool:
        """``check`` holds for the entry of every pod the kubelet stand-in runs (two of them)."""
        entries, pods = self.entries(), self.kubelet.pods()
        return len(pods) == 2 and all(name in entries and check(entries[name]) for name in pods)

    def pods(self) -> dict[str, PodRecord]:
        return dict(self.kubelet.pods())


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in ' {}"') else arg


def versions_on_disk(record: PodRecord) -> list[int]:
    if record.model_dir is None or not record.model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in record.model_dir.iterdir() if p.name.isdigit())


def start_services(stack: contextlib.ExitStack) -> tuple[KubeControlPlane, FakeGcs]:
    """etcd + kube-apiserver and the Pub/Sub emulator start side by side (both take seconds),
    then fake-gcs-server, whose bucket notifications go to the emulator's topic."""
    kube = KubeControlPlane(WORK / "kube")
    pubsub = PubSubEmulator(WORK / "pubsub")
    # Registered before they start: a failure or Ctrl-C stops whatever did start.
    stack.callback(kube.stop)
    stack.callback(pubsub.stop)
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(kube.start), pool.submit(pubsub.start)]
    for future in started:
        future.result()
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
    from google.cloud import pubsub_v1

    gcs = FakeGcs(WORK / "gcs", pubsub_host=pubsub.host, project=pubsub.project)
    pubsub_v1.PublisherClient().create_topic(name=gcs.notification_topic)
    stack.callback(gcs.stop)
    gcs.start()
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    show(f"kube-apiserver {kube.url}  (KUBECONFIG={kube.kubeconfig})")
    show(f"Pub/Sub emulator {pubsub.host}; fake-gcs-server {gcs.url}, notifications -> {gcs.notification_topic}")
    return kube, gcs


def start_control_plane(stack: contextlib.ExitStack, kube: KubeControlPlane) -> None:
    """The CRD, the real controllers, and the operator under the chart's identity."""
    show(kube_ctl(kube, "apply", "-f", str(REPO / "crds" / f"{names.CRD_NAME}.yaml")))
    kube_ctl(kube, "wait", "--for=condition=Established", f"crd/{names.CRD_NAME}")
    show(kube_ctl(kube, "create", "namespace", NAMESPACE))
    controllers = kube.start_controllers()
    stack.callback(controllers.stop)
    show("kube-controller-manager: deployment, replicaset, garbagecollector controllers")
    workdir = WORK / "operator"
    workdir.mkdir()
    kubeconfig = kit.install_operator_identity(kube, workdir)
    running = stack.enter_context(kit.run_operator(kubeconfig, workdir))
    show(f"operator as {kit.OPERATOR_USER} (the chart's ClusterRole and admission policy), log {running.log_path}")


def kube_ctl(kube: KubeControlPlane, *args: str) -> str:
    done = subprocess.run(["kubectl", *args], env=kube.env(), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def apply_md(kube: KubeControlPlane, topic: str) -> None:
    md = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "modelName": MODEL,
            "replicas": 2,
            "source": {"uri": f"gs://{BUCKET}/{PREFIX}", "pubsub": {"topic": topic}, "pollInterval": "60s"},
            # No spec.versions: the default keeps the newest 2, and a rollback can set
            # `pinned` alone (keep and pinned are exclusive).
        },
    }
    path = WORK / "md.yaml"
    path.write_text(yaml.safe_dump(md, sort_keys=False))
    show(path.read_text())
    show(kube_ctl(kube, "apply", "-f", str(path)))


def step_pods_start(demo: Demo) -> dict[str, PodRecord]:
    say("No kubelet here: the ReplicaSet's pods run as local processes under the kubelet stand-in")
    show("(local_services/kubelet.py: each pod's poller with its own env and a pod-bound ServiceAccount")
    show(" token; the TF Serving stand-in, local_services/tf_serving.py, as its serving container)")
    pods, took = wait_for("the two pods to run their poller", lambda: _two_pollers(demo), 60, lambda: _pods_state(demo))
    for name, record in sorted(pods.items()):
        show(f"{name}: poller pid {record.poller_pid}, model dir {record.model_dir}")
    show(f"both pollers started {took:.1f}s after the kubelet stand-in; nothing uploaded yet:")
    demo.show_md()
    return pods


def _pods_state(demo: Demo) -> str:
    pods = demo.pods()
    detail = {name: {"poller pid": r.poller_pid, "error": r.error} for name, r in pods.items()}
    return f"{len(pods)} pod(s) running {detail} (kubectl -n {NAMESPACE} get deploy,rs,pods)"


def _two_pollers(demo: Demo) -> dict[str, PodRecord] | None:
    pods = demo.pods()
    return pods if len(pods) == 2 and all(r.poller_pid for r in pods.values()) else None


def step_first_versions(demo: Demo) -> None:
    say(f"1. Uploading versions 1 and 2 to gs://{BUCKET}/{PREFIX}")
    start = time.monotonic()
    demo.upload(1, version_zip(1))
    demo.upload(2, version_zip(2))
    wait_for(
        "LATEST 2, SERVING 2, READY 2 and Ready=True AllReplicasServing",
        lambda: demo.columns() == (2, 2, 2) and demo.condition("Ready")[:2] == ("True", "AllReplicasServing"),
        90,
        demo.summary,
    )
    took = time.monotonic() - start
    show(f"every replica installed both and TF Serving serves 2, {took:.1f}s after the uploads began:")
    demo.show_md()
    show("$ kubectl -n ml get deploy,pods    (pod readiness: the poller's /serving-ready, set by the stand-in)")
    show(demo.kubectl("get", "deploy,pods"))
    demo.show_pollers()


def step_new_version(demo: Demo) -> None:
    say("2. Uploading version 3: each replica hears of it through its own subscription")
    start = time.monotonic()
    demo.upload(3, version_zip(3))
    wait_for(
        "both replicas to serve version 3",
        lambda: demo.all_entries(lambda e: e.get("serving") == 3) and demo.columns()[1] == 3,
        30,
        demo.summary,
    )
    took = time.monotonic() - start
    show(f"both replicas serve 3, {took:.1f}s after the upload began (keep defaults to 2, so 1 is gone):")
    for name, record in sorted(demo.pods().items()):
        show(f"{name}: versions on disk {versions_on_disk(record)}")
    demo.show_md()


def step_hostile(demo: Demo) -> None:
    say("3. Uploading a hostile version 4 (a zip entry ../../escaped.txt)")
    start = time.monotonic()
    demo.upload(4, version_zip(4, hostile=True))
    wait_for(
        "Degraded=True VersionRejected",
        lambda: demo.condition("Degraded")[:2] == ("True", "VersionRejected"),
        30,
        demo.summary,
    )
    show(f"both pollers rejected it; Degraded {time.monotonic() - start:.1f}s after the upload began, SERVING stays 3:")
    demo.show_md()
    if demo.columns()[1] != 3:
        raise DemoError(f"SERVING is {demo.columns()[1]} after the hostile upload, expected 3")
    escaped = sorted(str(p.relative_to(REPO)) for p in WORK.rglob("escaped.txt"))
    show(f"files named escaped.txt anywhere under .demo/: {len(escaped)} {escaped or ''}".rstrip())
    if escaped:
        raise DemoError(f"the hostile archive wrote outside the model dir: {escaped}")


def step_rollback(demo: Demo, first: dict[str, PodRecord]) -> None:
    say("4. A live rollback to version 2: the pollers follow spec.versions, no pod restarts")
    show(demo.kubectl("patch", "md", NAME, "--type=merge", "-p", '{"spec":{"versions":{"pinned":[2]}}}', echo=True))
    _, took = wait_for(
        "SERVING 2 with both replicas on version 2 only",
        lambda: (
            demo.columns()[1] == 2 and demo.all_entries(lambda e: (e.get("versions"), e.get("serving")) == ([2], 2))
        ),
        30,
        demo.summary,
    )
    show(f"both replicas serve 2 again, {took:.1f}s after the patch:")
    for name, record in sorted(demo.pods().items()):
        before = first[name].poller_pid
        same = record.poller_pid == before and not record.poller_exits and not record.serving_exits
        show(f"{name}: versions on disk {versions_on_disk(record)}, poller pid {before} -> {record.poller_pid}"
             f"{' (no restart)' if same else ' RESTARTED'}")  # fmt: skip
        if not same:
            raise DemoError(f"pod {name} restarted a container during the rollback (exits {record.poller_exits})")
    demo.show_md()


def step_load_failure(demo: Demo) -> None:
    say("5. Version 5 passes every poller check, but TF Serving cannot load it")
    demo.upload(5, version_zip(5, unloadable=True))
    wait_for("LATEST 5 (validated while pinned to 2)", lambda: demo.columns()[0] == 5, 30, demo.summary)
    show(demo.kubectl("patch", "md", NAME, "--type=merge", "-p", '{"spec":{"versions":{"pinned":[2,5]}}}', echo=True))
    _, took = wait_for(
        "Degraded=True LoadFailed", lambda: demo.condition("Degraded")[:2] == ("True", "LoadFailed"), 60, demo.summary
    )
    show(f"TF Serving refused version 5 ({took:.1f}s after the patch); version 2 keeps serving:")
    demo.show_md()
    if demo.columns()[1] != 2:
        raise DemoError(f"SERVING is {demo.columns()[1]} after the failed load, expected 2")


def run(stack: contextlib.ExitStack) -> None:
    say("Starting local services (the same ones the tests use)")
    kube, gcs = start_services(stack)
    say("The CRD, the real controllers and the operator")
    start_control_plane(stack, kube)
    bucket = gcs.client().create_bucket(BUCKET)

    say(f"Applying a ModelDeployment: 2 replicas, topic mode, gs://{BUCKET}/{PREFIX} (still empty)")
    apply_md(kube, gcs.notification_topic)
    kubelet = Kubelet(kube, NAMESPACE, f"{names.LABEL_INSTANCE}={NAME}", WORK / "kubelet", STANDIN)
    stack.callback(kubelet.stop, raise_failures=False)
    kubelet.start()
    demo = Demo(kube, kit.Cluster(kube), bucket, kubelet)

    first = step_pods_start(demo)
    step_first_versions(demo)
    step_new_version(demo)
    step_hostile(demo)
    step_rollback(demo, first)
    step_load_failure(demo)

    say("Done: kubectl get md")
    show(demo.kubectl("get", "md"))
    show("Logs: .demo/kubelet/pods/<pod>/.kubelet/logs/{poller,serving}.log, .demo/operator/, .demo/kube/;")
    show("stopping everything.")


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. `timeout make demo`) cleans up like Ctrl-C does.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            run(stack)
    except (DemoError, RuntimeError, AssertionError, subprocess.TimeoutExpired) as exc:
        # DemoError: a step of ours; RuntimeError/AssertionError: a service or the operator
        # did not start (the message holds the tail of its log); TimeoutExpired: a kubectl hung.
        print(f"\ndemo: FAILED: {exc}\n(logs are under {WORK}; everything started was stopped)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(f"\ndemo: done in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
