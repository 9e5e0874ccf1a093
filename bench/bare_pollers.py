"""Run the poller sidecars of real Pods as bare processes, for the idle-writes benchmark.

The kubelet stand-in (local_services/kubelet.py) runs a TF Serving stand-in beside every
poller and probes both every half second: fine for 3 pods, too heavy for 300 on 2 cores.
Here only the ``poller`` container of each Pod runs, the way the stand-in runs it:

- its env is the container's env as the kubelet resolves it (``container_env``), with the
  model dir (an emptyDir) mapped to a local folder and the HTTP port to a free loopback port;
- its credentials are a TokenRequest token of the rendered ServiceAccount bound to the Pod,
  in a kubeconfig (``KUBECONFIG``), with the rendered token lifetime; never admin's;
- ``MODEL_POLLER_SERVING_URL`` is dropped (no TF Serving runs): the pod's entry then reports
  the newest version inside the policy on disk as serving, and the poller does not poll a
  port nobody listens on (it would poll it every 0.1 s for half an hour after an install).

What a kubelet writes is written once per pod before any measurement: the binding and one
pod status (Running, Ready) once the poller's ``/serving-ready`` answers 200.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from model_poller_api import names

from local_services.kube import KubeControlPlane
from local_services.kubelet import PodLayout, container_env
from local_services.process import free_port

POLLER = "poller"
DROPPED = (names.env_name("--serving-url"), "GOOGLE_APPLICATION_CREDENTIALS")
# The emulators' addresses, and PYTHONPATH so the pollers run the benchmark's code (a snapshot of a commit).
PASSTHROUGH = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "PYTHONPATH")
NODE = "bench-node"
# Loopback straight away, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class BarePoller:
    pod: dict[str, Any]
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    marked_ready: bool = False

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    def http_ok(self, path: str) -> bool:
        try:
            with _DIRECT.open(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError):
            return False

    def proc_status(self, key: str) -> int:
        """A field of /proc/<pid>/status or smaps_rollup in KiB (0 once the process is gone)."""
        for source in ("status", "smaps_rollup"):
            try:
                for line in Path(f"/proc/{self.proc.pid}/{source}").read_text().splitlines():
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
            except OSError:
                return 0
        return 0

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def bind(core: client.CoreV1Api, pod: dict[str, Any]) -> None:
    meta = pod["metadata"]
    body = client.V1Binding(
        metadata=client.V1ObjectMeta(name=meta["name"], uid=meta["uid"]),
        target=client.V1ObjectReference(api_version="v1", kind="Node", name=NODE),
    )
    # _preload_content=False: the client cannot deserialize the Status a binding returns.
    core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body, _preload_content=False)


def bound_token(core: client.CoreV1Api, pod: dict[str, Any]) -> str:
    """What the projected serviceAccountToken volume holds: a token bound to this Pod."""
    meta = pod["metadata"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    seconds = 3600
    for volume in volumes.values():
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "serviceAccountToken" in source:
                seconds = int(source["serviceAccountToken"].get("expirationSeconds", seconds))
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[],
            expiration_seconds=seconds,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
            ),
        )
    )
    answer = core.create_namespaced_service_account_token(pod["spec"]["serviceAccountName"], meta["namespace"], request)
    assert answer.status is not None
    return str(answer.status.token)


def poller_container(pod: dict[str, Any]) -> dict[str, Any]:
    for container in pod["spec"].get("initContainers") or []:
        if container["name"] == POLLER:
            return dict(container)
    raise ValueError(f"pod {pod['metadata']['name']}: no init container {POLLER!r} (the rendered native sidecar)")


def start(
    plane: KubeControlPlane,
    core: client.CoreV1Api,
    pod: dict[str, Any],
    workdir: Path,
    extra_env: dict[str, str],
) -> BarePoller:
    """Start the pod's poller container as a local process (see the module docstring)."""
    name = pod["metadata"]["name"]
    container = poller_container(pod)
    layout = PodLayout(pod, workdir / name)
    own = workdir / name / ".bench"
    own.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in container_env(pod, container).items() if k not in DROPPED}
    model_dir = layout.path(container, env[names.env_name("--model-dir")], "--model-dir")
    tmp = layout.path(container, "/tmp", "/tmp")
    for folder in (model_dir, tmp, own / "home"):
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    kubeconfig = own / "kubeconfig"
    user = f"system:serviceaccount:{pod['metadata']['namespace']}:{pod['spec']['serviceAccountName']}"
    kubeconfig.write_text(yaml.safe_dump(plane.kubeconfig_for(user, bound_token(core, pod))))
    env.update(
        {
            names.env_name("--model-dir"): str(model_dir),
            names.env_name("--http-port"): str(port),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": name,
            "HOME": str(own / "home"),
            "TMPDIR": str(tmp),
            "KUBECONFIG": str(kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **{k: os.environ[k] for k in PASSTHROUGH if k in os.environ},
            **extra_env,
        }
    )
    log_path = own / "poller.log"
    with open(log_path, "ab") as out:
        # A session of its own: a Ctrl-C on the terminal reaches the benchmark only, which
        # then stops every poller itself (SIGTERM, then SIGKILL).
        proc = subprocess.Popen(
            [sys.executable, "-m", "model_poller", *(container.get("args") or [])],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=own, start_new_session=True,
        )  # fmt: skip
    return BarePoller(pod, proc, port, log_path)


def mark_ready(core: client.CoreV1Api, poller: BarePoller) -> None:
    """The one pod status a kubelet writes once the containers run and the readiness probe passes."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pod = poller.pod
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
    ]

    def running(container: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": True,
            "started": True, "restartCount": 0, "state": {"running": {"startedAt": now}},
        }  # fmt: skip

    status = {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": conditions,
        "initContainerStatuses": [running(c) for c in pod["spec"].get("initContainers") or []],
        "containerStatuses": [running(c) for c in pod["spec"].get("containers") or []],
    }
    core.patch_namespaced_pod_status(poller.name, pod["metadata"]["namespace"], {"status": status})
    poller.marked_ready = True


def stop_all(pollers: list[BarePoller], grace: float = 20) -> list[int]:
    """SIGTERM every poller at once, SIGKILL what is left after ``grace``; their exit codes."""
    for poller in pollers:
        with contextlib.suppress(ProcessLookupError):
            if poller.proc.poll() is None:
                os.killpg(poller.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    codes = []
    for poller in pollers:
        try:
            codes.append(poller.proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(poller.proc.pid, signal.SIGKILL)
            codes.append(poller.proc.wait())
    return codes


@contextlib.contextmanager
def running(pollers: list[BarePoller]) -> Iterator[list[BarePoller]]:
    """Every poller appended to ``pollers`` inside the block is stopped when it ends, also on Ctrl-C."""
    try:
        yield pollers
    finally:
        stop_all(pollers)
