"""A stand-in for the kubelet, for tests, the demo and benchmarks only: runs pods as local processes.

The control plane here (``services.kube``) has no kubelet and no container runtime. With
``KubeControlPlane.start_controllers()`` the real Deployment and ReplicaSet controllers create
Pods through the API; :class:`Kubelet` then runs each selected Pod of a namespace as two local
processes and reports on it through the API the way a kubelet does, so the Deployment's
``readyReplicas`` and the pods' Ready conditions come from the real controllers.

What it imitates:
- binding: an unbound pod is bound to the node ``node_name`` (the binding subresource, as the
  scheduler does), so deleting it is graceful as in a cluster (a deletionTimestamp first);
- the pod's ``poller`` native sidecar (an init container with restartPolicy Always) runs as
  ``python -m model_poller`` with the container's args (passed as they are) and its env
  resolved as the kubelet resolves it (``value`` with ``$(VAR)`` expansion, ``fieldRef``); the
  ``serving`` container runs as the TF Serving stand-in script (``serving_script``) with the
  container's args instead of its command; the sidecar starts first and the serving container
  only once the sidecar's startupProbe passes;
- emptyDir volumes are directories under the pod's directory (``<pod dir>/<volume name>``), and
  container paths under their mounts (``--model_base_path``, ``MODEL_POLLER_MODEL_DIR``,
  ``/tmp`` as TMPDIR) are mapped there; container ports are mapped to free loopback ports,
  in env values that name them (``MODEL_POLLER_HTTP_PORT``, ``MODEL_POLLER_SERVING_URL``), in
  the serving args (``--port``, ``--rest_api_port``) and in probes;
- a projected serviceAccountToken volume mounted by a container becomes a kubeconfig for that
  container (``KUBECONFIG``), holding a token from the TokenRequest API bound to the pod (kind
  Pod, name, uid), with the volume's expirationSeconds and audience; a container without such
  a mount gets no credentials at all. No process ever sees the admin credentials;
- startupProbe and readinessProbe (httpGet, tcpSocket; failureThreshold honoured; every probe
  runs each ``probe_period`` seconds instead of its periodSeconds); container and pod status
  through the pods/status subresource (phase, podIP 127.0.0.1, started/ready/state/lastState/
  restartCount, conditions PodScheduled, PodReadyToStartContainers, Initialized,
  ContainersReady, Ready), written only when it changes;
- restartPolicy Always: a process that exits is started again after ``restart_delay``;
- deletion: on a deletionTimestamp, SIGTERM to the serving container then the sidecar,
  SIGKILL after the grace period (at most 30 s), then the final delete with
  gracePeriodSeconds=0. A pod that vanishes at once (a forced delete) just has its processes
  stopped. Pods still bound to the node when the stand-in stops stay in the API (Terminating
  forever once deleted), like the pods of a node whose kubelet went away.

A process's environment is only what the container would have: PATH, HOSTNAME (the pod's
name), HOME (an empty folder of the pod), PYTHONUNBUFFERED=1, the emulator variables below,
the container's resolved env, TMPDIR and KUBECONFIG; never the caller's KUBECONFIG, never
KUBERNETES_SERVICE_HOST (so the Kubernetes client reads the kubeconfig, not in-cluster files).

What it does not: images, users, security contexts, resource limits, sizeLimit, volumes
other than emptyDir (projected token volumes become a kubeconfig, nothing else is mounted),
network namespaces (everything shares 127.0.0.1), service environment variables
(KUBERNETES_SERVICE_HOST, enableServiceLinks), liveness probes, regular (run-to-completion)
init containers, containers other than ``poller`` and ``serving``, ``envFrom``,
``secretKeyRef``/``configMapKeyRef``/``resourceFieldRef`` (these make the pod fail with
CreateContainerConfigError naming the variable), token rotation (tokens are valid for their
expirationSeconds, longer than any test), crash-loop backoff growth, node objects and node
status. GOOGLE_APPLICATION_CREDENTIALS is dropped (no key file exists here; the emulators need
none) and kept in the pod's record; STORAGE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST are passed
through from the caller's environment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, TypeVar

import requests
import yaml

from local_services.kube import KubeControlPlane
from local_services.process import free_port, port_open

log = logging.getLogger("services.kubelet")

T = TypeVar("T")

Obj = dict[str, Any]

# The container names operator/model_poller_operator/render/pod_containers.py gives the pod's two containers.
POLLER = "poller"
SERVING = "serving"

# The poller's env the stand-in maps (names.env_name() of --model-dir, --http-port, --serving-url).
MODEL_DIR_ENV = "MODEL_POLLER_MODEL_DIR"
HTTP_PORT_ENV = "MODEL_POLLER_HTTP_PORT"
SERVING_URL_ENV = "MODEL_POLLER_SERVING_URL"
DEFAULT_POLLER_PORT = 8080
# TF Serving's defaults for --port and --rest_api_port.
SERVING_GRPC_PORT = 8500
SERVING_REST_PORT = 8501
NOT_READY_REASONS = {
    "Initialized": "ContainersNotInitialized",
    "ContainersReady": "ContainersNotReady",
    "Ready": "ContainersNotReady",
}
# What a projected serviceAccountToken source defaults to when it names no expiry (the API's default).
DEFAULT_TOKEN_SECONDS = 3600
# The caller's variables every process gets (besides PATH): the emulators' addresses.
PASSTHROUGH_ENV = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")
DROPPED_ENV = ("GOOGLE_APPLICATION_CREDENTIALS",)
# Kubernetes' own grace period default, and an upper bound so a stuck test never hangs long.
DEFAULT_GRACE_SECONDS = 30
MAX_GRACE_SECONDS = 30
POD_IP = "127.0.0.1"
# Files of the stand-in itself live under this folder of the pod dir; the dot keeps it apart
# from volume folders (a volume name is a DNS label: it never holds a dot).
OWN_DIR = ".kubelet"


class PodSpecError(Exception):
    """The pod asks for something this stand-in does not do; the message names the field."""


class ApiUnavailable(Exception):
    """The API server did not answer (down, restarting) or answered 5xx/429: try again later."""


class ApiError(Exception):
    """The API server refused a request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- the kubelet's own API calls (admin token; the pods' processes never see it) ---------------


class _Api:
    """The few calls a kubelet makes: list its pods, bind, TokenRequest, pod status, final delete."""

    def __init__(self, plane: KubeControlPlane) -> None:
        self.url = plane.url
        self.ca_file = str(plane.ca_file)
        self.admin_token = plane.token
        self.local = threading.local()  # a Session per thread: one slow call never blocks another pod

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self.local, "session", None)
        if session is None:
            session = requests.Session()
            # Not the environment's CA bundle or proxies (requests lets REQUESTS_CA_BUNDLE
            # override session.verify): only this API server's CA, straight to loopback.
            session.trust_env = False
            session.verify = self.ca_file
            session.headers["Authorization"] = f"Bearer {self.admin_token}"
            self.local.session = session
        return session

    def request(self, method: str, path: str, body: Obj | None = None, content_type: str = "application/json") -> Obj:
        try:
            resp = self._session().request(
                method, self.url + path, json=body, headers={"Content-Type": content_type}, timeout=(2, 10)
            )
        except requests.RequestException as exc:
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise ApiUnavailable(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, f"{method} {path}: {resp.status_code} {_message(resp)}")
        result: Obj = resp.json()
        return result

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        items: list[Obj] = self.request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
        return items

    def bind(self, pod: Obj, node: str) -> None:
        meta = pod["metadata"]
        self.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
            {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            },
        )

    def token(self, pod: Obj, expiration: int, audiences: list[str]) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if audiences:  # none: the API server's own audience, as for a source without `audience`
            spec["audiences"] = audiences
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        token: str = answer["status"]["token"]
        return token

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        # A JSON merge patch replaces lists whole: the container statuses and conditions
        # written are exactly the computed ones.
        self.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    def confirm_deletion(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does once a deleted pod's containers are gone."""
        try:
            self.request(
                "DELETE",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or a new pod of the same name
                raise


def _message(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.text[:200])
    except ValueError:
        return resp.text[:200]


# -- pure helpers: env, paths, ports, probes ---------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined VAR is replaced, ``$$`` is ``$``, the rest stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def field_value(pod: Obj, path: str, where: str) -> str:
    """The value of a downward-API ``fieldRef``, as the kubelet gives it to a container."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path])
    for prefix, mapping in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(mapping) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise PodSpecError(f"{where}: fieldRef.fieldPath {path!r} is not a downward-API field the kubelet supports")


def container_env(pod: Obj, container: Obj) -> dict[str, str]:
    """The container's env as the kubelet resolves it, in order (later ``$(VAR)`` see earlier)."""
    where = f"pod {pod['metadata']['name']}: container {container['name']}"
    if container.get("envFrom"):
        raise PodSpecError(f"{where}: envFrom is not supported by the kubelet stand-in")
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], f"{where}: env {name}")
        else:
            kind = next(iter(source), "valueFrom")
            raise PodSpecError(f"{where}: env {name}: valueFrom.{kind} is not supported by the kubelet stand-in")
    return env


@dataclass
class PodLayout:
    """Where a pod's container paths and ports are on this machine."""

    pod: Obj
    dir: Path
    ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every declared port of every container first, so the numbers are stable.
        for container in _all_containers(self.pod):
            for port in container.get("ports") or []:
                self.port(int(port["containerPort"]))

    def port(self, container_port: int) -> int:
        """The loopback port standing for ``container_port`` (the pod's network namespace)."""
        if container_port not in self.ports:
            self.ports[container_port] = free_port()
        return self.ports[container_port]

    def named_port(self, container: Obj, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return self.port(int(port))
        for declared in _all_containers(self.pod):
            for item in declared.get("ports") or []:
                if item.get("name") == port:
                    return self.port(int(item["containerPort"]))
        raise PodSpecError(f"pod {self.pod['metadata']['name']}: container {container['name']}: no port named {port!r}")

    def path(self, container: Obj, container_path: str, what: str) -> Path:
        """The local path of ``container_path`` through the container's emptyDir mounts."""
        target = PurePosixPath(container_path)
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        mounts = sorted(container.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]), reverse=True)
        for mount in mounts:
            mount_path = PurePosixPath(mount["mountPath"])
            if target != mount_path and mount_path not in target.parents:
                continue
            volume = volumes.get(mount["name"], {})
            if "emptyDir" not in volume:
                raise PodSpecError(
                    f"pod {self.pod['metadata']['name']}: container {container['name']}: {what} {container_path} is on "
                    f"volume {mount['name']!r}, not an emptyDir; the kubelet stand-in maps only emptyDir volumes"
                )
            return self.dir / str(mount["name"]) / str(mount.get("subPath", "")) / target.relative_to(mount_path)
        raise PodSpecError(
            f"pod {self.pod['metadata']['name']}: container {container['name']}: {what} {container_path} is not under "
            "any volumeMount of the container (it would be on the image's read-only filesystem)"
        )

    def own(self, *parts: str) -> Path:
        """A file of the stand-in itself for this pod (logs, kubeconfigs)."""
        return self.dir.joinpath(OWN_DIR, *parts)


def _all_containers(pod: Obj) -> list[Obj]:
    return [*(pod["spec"].get("initContainers") or []), *(pod["spec"].get("containers") or [])]


def serving_args(layout: PodLayout, container: Obj, env: Mapping[str, str]) -> list[str]:
    """The serving container's args with its ports and base path mapped, everything else as is."""
    args: list[str] = []
    for arg in container.get("args") or []:
        arg = expand(arg, env)
        flag, sep, value = arg.partition("=")
        if sep and flag in ("--port", "--rest_api_port") and value.isdigit():
            arg = f"{flag}={layout.port(int(value))}"
        elif sep and flag == "--model_base_path":
            arg = f"{flag}={layout.path(container, value, flag)}"
        args.append(arg)
    return args


def _serving_url(layout: PodLayout, url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{POD_IP}:{layout.port(port)}{parsed.path}"


def probe(layout: PodLayout, container: Obj, spec: Obj) -> bool:
    """One run of an httpGet or tcpSocket probe against the mapped port."""
    timeout = float(spec.get("timeoutSeconds", 1))
    if "httpGet" in spec:
        get = spec["httpGet"]
        url = f"http://{POD_IP}:{layout.named_port(container, get['port'])}{get.get('path', '/')}"
        try:
            with _DIRECT.open(url, timeout=timeout) as resp:
                return 200 <= int(resp.status) < 400
        except urllib.error.HTTPError as exc:
            return 200 <= int(exc.code) < 400
        except OSError:
            return False
    if "tcpSocket" in spec:
        return bool(port_open(layout.named_port(container, spec["tcpSocket"]["port"])))
    raise PodSpecError(
        f"pod {layout.pod['metadata']['name']}: container {container['name']}: "
        "only httpGet and tcpSocket probes are supported"
    )


# Probes go straight to loopback, whatever proxy the environment names (as the kubelet's do).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- one container's process --------------------------------------------------------------------


@dataclass
class _Container:
    """A container of the pod: its spec, its argv and env, and the process running it."""

    spec: Obj
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    started: bool = False  # the startupProbe passed (or there is none)
    ready: bool = False
    readiness_failures: int = 0
    restart_count: int = 0
    exits: list[int] = field(default_factory=list)
    last_terminated: Obj | None = None
    restart_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            # A session of its own, so a stop signals the process and any children.
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
            )
        self.started_at = _now()
        self.started = "startupProbe" not in self.spec
        self.ready = False
        self.readiness_failures = 0

    def reap(self) -> int | None:
        """The exit code if the process ended since the last call (then it counts as an exit)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        # Killed by signal N: exit code 128 + N, as the container runtime reports it.
        code = int(self.proc.returncode) if self.proc.returncode >= 0 else 128 - int(self.proc.returncode)
        self.exits.append(code)
        self.last_terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": _now(),
        }
        self.proc = None
        self.started = self.ready = False
        return code

    def signal(self, signum: int) -> None:
        if self.running():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, deadline: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def status(self, waiting_reason: str, message: str = "") -> Obj:
        state: Obj
        if self.running():
            state = {"running": {"startedAt": self.started_at}}
        else:
            waiting: Obj = {"reason": waiting_reason}
            if message:
                waiting["message"] = message
            state = {"waiting": waiting}
        result: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.proc is not None:
            result["containerID"] = f"standin://{self.proc.pid}"
        if self.last_terminated is not None:
            result["lastState"] = {"terminated": self.last_terminated}
        return result


# -- what tests see -----------------------------------------------------------------------------


@dataclass
class PodRecord:
    """A pod as the stand-in runs it; ``Kubelet.pods()`` hands out copies."""

    name: str
    uid: str
    dir: Path
    model_dir: Path | None = None  # the poller's MODEL_POLLER_MODEL_DIR, mapped
    poller_port: int = 0  # its /healthz, /readyz, /serving-ready, /metrics
    serving_rest_port: int = 0
    serving_grpc_port: int = 0
    poller_log: Path = Path()
    serving_log: Path = Path()
    kubeconfig: Path | None = None  # the poller's bound-token kubeconfig
    poller_pid: int | None = None
    serving_pid: int | None = None
    poller_exits: list[int] = field(default_factory=list)  # exit codes (128+N: signal N), not the final stop
    serving_exits: list[int] = field(default_factory=list)
    dropped_env: dict[str, str] = field(default_factory=dict)  # e.g. GOOGLE_APPLICATION_CREDENTIALS
    ready: bool = False
    terminated: bool = False  # its processes were stopped (pod deleted, or the stand-in stopped)
    error: str | None = None  # why the pod cannot run (a PodSpecError), or a stand-in failure

    @property
    def poller_exit_count(self) -> int:
        return len(self.poller_exits)


# -- one pod ------------------------------------------------------------------------------------


class _PodRunner(threading.Thread):
    """One pod: prepare it, then one tick per probe period until it is deleted or the stand-in stops."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        super().__init__(name=f"kubelet {pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.layout = PodLayout(pod, kubelet.workdir / "pods" / self.pod_name)
        self.record = PodRecord(self.pod_name, self.uid, self.layout.dir)
        self.poller: _Container | None = None
        self.serving: _Container | None = None
        self.delete_requested = threading.Event()  # a deletionTimestamp: stop, then confirm
        self.vanished = threading.Event()  # gone from the API: stop, nothing to confirm
        self.start_time = _now()
        self.initialized = False  # stays True once the sidecar first started, as in the kubelet
        self.conditions: dict[str, Obj] = {}
        self.written: Obj | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a stand-in bug must show, not end the thread silently
            log.exception("kubelet: pod %s: unexpected failure", self.pod_name)
            self.kubelet.note_failure(f"pod {self.pod_name}: {type(exc).__name__}: {exc}")
            self._set(error=f"{type(exc).__name__}: {exc}")
            self._stop_processes(grace=0)

    def _run(self) -> None:
        try:
            self._prepare()
        except PodSpecError as exc:
            log.error("kubelet: pod %s cannot run: %s", self.pod_name, exc)
            self._set(error=str(exc))
            self._report_config_error(str(exc))
        else:
            while not self._stopping():
                self._tick()
                self._write_status()
                self.kubelet.stopping.wait(self.kubelet.probe_period)
        self._finish()

    def _stopping(self) -> bool:
        return self.kubelet.stopping.is_set() or self.delete_requested.is_set() or self.vanished.is_set()

    def _retry_api(self, what: str, call: Callable[[], T]) -> T | None:
        """Run an API call until it gets an answer (the API server may be down for a while)."""
        while not self._stopping():
            try:
                return call()
            except ApiUnavailable as exc:
                log.debug("kubelet: pod %s: %s: %s (retrying)", self.pod_name, what, exc)
                self.kubelet.stopping.wait(1.0)
        return None

    # -- preparing: bind, directories, env, credentials, argv --------------------------------------

    def _prepare(self) -> None:
        poller_spec, serving_spec = self._containers()
        if not self.pod["spec"].get("nodeName"):
            self._retry_api("bind", self._bind)
        self.layout.dir.mkdir(parents=True, exist_ok=True)
        for volume in self.pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                self.layout.dir.joinpath(volume["name"]).mkdir(exist_ok=True)
        self.poller = self._poller(poller_spec)
        self.serving = self._serving(serving_spec)
        log.info("kubelet: pod %s: running in %s (poller :%d, serving REST :%d)",
                 self.pod_name, self.layout.dir, self.record.poller_port, self.record.serving_rest_port)  # fmt: skip

    def _containers(self) -> tuple[Obj, Obj]:
        """The pod's sidecar and main container; anything else is refused by name."""
        spec = self.pod["spec"]
        init, main = spec.get("initContainers") or [], spec.get("containers") or []
        for container in init:
            if container["name"] != POLLER or container.get("restartPolicy") != "Always":
                raise PodSpecError(
                    f"pod {self.pod_name}: initContainers[{container['name']}]: the kubelet stand-in runs only "
                    f"the {POLLER!r} native sidecar (restartPolicy: Always)"
                )
        for container in main:
            if container["name"] != SERVING:
                raise PodSpecError(
                    f"pod {self.pod_name}: containers[{container['name']}]: the kubelet stand-in runs only {SERVING!r}"
                )
        if len(init) != 1 or len(main) != 1:
            raise PodSpecError(f"pod {self.pod_name}: needs an init container {POLLER!r} and a container {SERVING!r}")
        for container in (init[0], main[0]):
            for kind in ("startupProbe", "readinessProbe"):
                if kind in container:
                    self._check_probe(container, kind)
        return init[0], main[0]

    def _check_probe(self, container: Obj, kind: str) -> None:
        """Refuse, before anything starts, a probe the stand-in cannot run."""
        spec = container[kind]
        action = spec.get("httpGet") or spec.get("tcpSocket")
        if action is None:
            raise PodSpecError(
                f"pod {self.pod_name}: container {container['name']}: {kind}: only httpGet and tcpSocket are supported"
            )
        self.layout.named_port(container, action["port"])  # a port name that names no port fails here

    def _bind(self) -> None:
        try:
            self.kubelet.api.bind(self.pod, self.kubelet.node_name)
        except ApiError as exc:
            if exc.status != 409:  # 409: already bound (the stand-in ran before and was restarted)
                raise
        self.pod["spec"]["nodeName"] = self.kubelet.node_name  # what spec.nodeName fieldRefs see

    def _base_env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": self.pod_name,
            # Lets tests read the logs while the process runs.
            "PYTHONUNBUFFERED": "1",
        }
        for name in self.kubelet.passthrough_env:
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def _sandbox_env(self, container: Obj) -> tuple[dict[str, str], Path | None]:
        """HOME, TMPDIR and KUBECONFIG as the container would see them; and its credentials."""
        home = self.layout.own("home", container["name"])
        home.mkdir(parents=True, exist_ok=True)
        # An empty home: never the caller's ~/.kube/config or any other credentials.
        env = {"HOME": str(home)}
        if any(PurePosixPath(m["mountPath"]) == PurePosixPath("/tmp") for m in container.get("volumeMounts") or []):
            tmp = self.layout.path(container, "/tmp", "volumeMount /tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(tmp)
        kubeconfig = self._credentials(container)
        # No token mounted: a kubeconfig path that does not exist, so the process has no credentials.
        env["KUBECONFIG"] = str(kubeconfig or self.layout.own("no-credentials", container["name"], "kubeconfig"))
        return env, kubeconfig

    def _credentials(self, container: Obj) -> Path | None:
        """A kubeconfig with a pod-bound token, if the container mounts a projected token volume."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            sources = (volumes.get(mount["name"], {}).get("projected") or {}).get("sources") or []
            for source in sources:
                if "serviceAccountToken" in source:
                    return self._write_kubeconfig(container, source["serviceAccountToken"])
        return None

    def _write_kubeconfig(self, container: Obj, source: Obj) -> Path | None:
        expiration = int(source.get("expirationSeconds", DEFAULT_TOKEN_SECONDS))
        audiences = [source["audience"]] if source.get("audience") else []
        account = self.pod["spec"].get("serviceAccountName") or "default"
        try:
            token = self._retry_api("TokenRequest", lambda: self.kubelet.api.token(self.pod, expiration, audiences))
        except ApiError as exc:
            # The kubelet would report FailedMount and keep the pod waiting.
            raise PodSpecError(f"pod {self.pod_name}: token for serviceAccountName {account!r}: {exc}") from None
        if token is None:
            return None
        path = self.layout.own("credentials", container["name"], "kubeconfig")
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self.kubelet.plane.kubeconfig_for(f"system:serviceaccount:{self.namespace}:{account}", token)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _poller(self, spec: Obj) -> _Container:
        declared = container_env(self.pod, spec)
        env = {**self._base_env(), **declared}
        dropped = {name: env.pop(name) for name in DROPPED_ENV if name in env}
        model_dir = None
        if MODEL_DIR_ENV in env:
            model_dir = self.layout.path(spec, env[MODEL_DIR_ENV], MODEL_DIR_ENV)
            env[MODEL_DIR_ENV] = str(model_dir)
        # Without the variable the poller listens on its default port, 8080 of the pod.
        http_port = self.layout.port(int(env.get(HTTP_PORT_ENV, str(DEFAULT_POLLER_PORT))))
        env[HTTP_PORT_ENV] = str(http_port)
        if SERVING_URL_ENV in env:
            env[SERVING_URL_ENV] = _serving_url(self.layout, env[SERVING_URL_ENV])
        sandbox, kubeconfig = self._sandbox_env(spec)
        env.update(sandbox)
        args = [expand(arg, declared) for arg in spec.get("args") or []]
        log_path = self.layout.own("logs", "poller.log")
        self._set(
            model_dir=model_dir, poller_port=http_port, poller_log=log_path, kubeconfig=kubeconfig, dropped_env=dropped
        )
        return _Container(spec, [sys.executable, "-m", "model_poller", *args], env, log_path, self.layout.dir)

    def _serving(self, spec: Obj) -> _Container:
        declared = container_env(self.pod, spec)
        env = {**self._base_env(), **declared}
        for name in DROPPED_ENV:
            env.pop(name, None)
        env.update(self._sandbox_env(spec)[0])
        args = serving_args(self.layout, spec, declared)
        log_path = self.layout.own("logs", "serving.log")
        self._set(
            serving_rest_port=self.layout.port(_flag_value(spec, "--rest_api_port", declared, SERVING_REST_PORT)),
            serving_grpc_port=self.layout.port(_flag_value(spec, "--port", declared, SERVING_GRPC_PORT)),
            serving_log=log_path,
        )
        argv = [sys.executable, str(self.kubelet.serving_script), *args]
        return _Container(spec, argv, env, log_path, self.layout.dir)

    # -- running ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        assert self.poller is not None and self.serving is not None
        poller, serving = self.poller, self.serving
        self._keep_running(poller)
        if not poller.started and poller.running():
            poller.started = probe(self.layout, poller.spec, poller.spec["startupProbe"])
        # A native sidecar without a readinessProbe is ready once started.
        poller.ready = poller.started
        self.initialized = self.initialized or poller.started
        # The main container starts once the sidecar has started; after that it is kept running.
        if self.initialized:
            self._keep_running(serving)
        self._probe_main(serving)
        self._set(
            poller_pid=poller.proc.pid if poller.proc else None,
            serving_pid=serving.proc.pid if serving.proc else None,
            poller_exits=list(poller.exits),
            serving_exits=list(serving.exits),
            ready=poller.ready and serving.ready,
        )

    def _keep_running(self, container: _Container) -> None:
        """restartPolicy Always: start it, and start it again after it exits."""
        code = container.reap()
        if code is not None:
            container.restart_count += 1
            container.restart_at = time.monotonic() + self.kubelet.restart_delay
            log.warning("kubelet: pod %s: container %s exited with %d; restarting it (log: %s)",
                        self.pod_name, container.name, code, container.log_path)  # fmt: skip
        if container.proc is None and time.monotonic() >= container.restart_at:
            container.start()

    def _probe_main(self, container: _Container) -> None:
        """startupProbe until it passes, then readinessProbe with its failureThreshold."""
        if not container.running():
            return
        if not container.started:
            container.started = probe(self.layout, container.spec, container.spec["startupProbe"])
            if not container.started:
                return
        readiness = container.spec.get("readinessProbe")
        if readiness is None:
            container.ready = True
        elif probe(self.layout, container.spec, readiness):
            container.readiness_failures = 0
            container.ready = True
        else:
            container.readiness_failures += 1
            if container.readiness_failures >= int(readiness.get("failureThreshold", 3)):
                container.ready = False

    # -- status -----------------------------------------------------------------------------------

    def _status(self) -> Obj:
        assert self.poller is not None and self.serving is not None
        poller, serving = self.poller, self.serving
        truth = {
            "PodReadyToStartContainers": True,
            "Initialized": self.initialized,
            "Ready": self.initialized and poller.ready and serving.ready,
            "ContainersReady": serving.ready,
            "PodScheduled": True,
        }
        for kind, ok in truth.items():
            self._condition(kind, ok, "" if ok else NOT_READY_REASONS.get(kind, ""))
        return {
            # Pending while the sidecar starts; Running once the main container ran.
            "phase": "Running" if serving.started_at else "Pending",
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "conditions": list(self.conditions.values()),
            "initContainerStatuses": [poller.status("CrashLoopBackOff" if poller.restart_count else "PodInitializing")],
            "containerStatuses": [serving.status("CrashLoopBackOff" if serving.restart_count else "PodInitializing")],
        }

    def _condition(self, kind: str, ok: bool, reason: str) -> None:
        """Set a pod condition; lastTransitionTime changes only when its status does."""
        status = "True" if ok else "False"
        old = self.conditions.get(kind)
        if old is not None and old["status"] == status:
            return
        condition: Obj = {"type": kind, "status": status, "lastTransitionTime": _now()}
        if reason:
            condition["reason"] = reason
        self.conditions[kind] = condition

    def _write_status(self, status: Obj | None = None) -> None:
        """Patch pods/status when it changed; during an API outage, try again next tick."""
        status = status if status is not None else self._status()
        if status == self.written:
            return
        try:
            self.kubelet.api.patch_status(self.namespace, self.pod_name, status)
            self.written = status
        except ApiUnavailable as exc:
            log.debug("kubelet: pod %s: status not written: %s", self.pod_name, exc)
        except ApiError as exc:
            if exc.status != 404:  # 404: deleted meanwhile; the sync loop notices
                raise

    def _report_config_error(self, message: str) -> None:
        """What the kubelet shows for containers it cannot create, until the pod is deleted."""

        def waiting(container: Obj) -> Obj:
            return {
                "name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": False,
                "started": False, "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }  # fmt: skip

        if not self.pod["spec"].get("nodeName"):
            self._retry_api("bind", self._bind)
        self._condition("PodScheduled", True, "")
        for kind in ("Initialized", "ContainersReady", "Ready"):
            self._condition(kind, False, NOT_READY_REASONS[kind])
        status = {
            "phase": "Pending",
            "startTime": self.start_time,
            "conditions": list(self.conditions.values()),
            "initContainerStatuses": [waiting(c) for c in self.pod["spec"].get("initContainers") or []],
            "containerStatuses": [waiting(c) for c in self.pod["spec"].get("containers") or []],
        }
        while not self._stopping():
            self._write_status(status)
            self.kubelet.stopping.wait(self.kubelet.probe_period)

    # -- stopping ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._stop_processes(self._grace())
        if self.delete_requested.is_set() and not self.vanished.is_set():
            self._confirm_deletion()

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        seconds = meta.get("deletionGracePeriodSeconds")
        if seconds is None:
            seconds = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return float(min(int(seconds), MAX_GRACE_SECONDS))

    def _stop_processes(self, grace: float) -> None:
        """SIGTERM the main container first, then the sidecar (native sidecars stop last)."""
        deadline = time.monotonic() + grace
        for container in (self.serving, self.poller):
            if container is None or container.proc is None:
                continue
            container.signal(signal.SIGTERM)
            if not container.wait(deadline):
                log.warning("kubelet: pod %s: %s still running %.0fs after SIGTERM; SIGKILL",
                            self.pod_name, container.name, grace)  # fmt: skip
                container.signal(signal.SIGKILL)
                container.wait(time.monotonic() + 10)
            container.proc = None  # stopped by us: not an exit of its own
        self._set(terminated=True, ready=False, poller_pid=None, serving_pid=None)
        log.info("kubelet: pod %s: processes stopped", self.pod_name)

    def _confirm_deletion(self) -> None:
        while True:
            try:
                self.kubelet.api.confirm_deletion(self.namespace, self.pod_name, self.uid)
                log.info("kubelet: pod %s: deletion confirmed", self.pod_name)
                return
            except ApiUnavailable:
                # The API server is down: keep trying, unless the stand-in itself stops.
                if self.kubelet.stopping.wait(1.0):
                    return

    def _set(self, **changes: Any) -> None:
        with self.kubelet.lock:
            for name, value in changes.items():
                setattr(self.record, name, value)

    def snapshot(self) -> PodRecord:
        with self.kubelet.lock:
            record = self.record
            return dataclasses.replace(
                record,
                poller_exits=list(record.poller_exits),
                serving_exits=list(record.serving_exits),
                dropped_env=dict(record.dropped_env),
            )


def _flag_value(container: Obj, flag: str, env: Mapping[str, str], default: int) -> int:
    """The container port a serving flag (``--port=8500``) names, before mapping."""
    for arg in container.get("args") or []:
        name, sep, value = expand(arg, env).partition("=")
        if sep and name == flag and value.isdigit():
            return int(value)
    return default


# -- the kubelet --------------------------------------------------------------------------------


class Kubelet:
    """Runs the pods of ``namespace`` matching ``selector`` as local processes (see the module docstring).

    ``with Kubelet(kube, ns, "app.kubernetes.io/instance=faster-rcnn", tmp_path, SCRIPT) as kubelet:``
    Everything it starts is stopped on exit; pods stay in the API as they are, like pods of a
    node whose kubelet went away. Pods bound to another ``node_name`` are left alone. A
    failure of the stand-in itself (a bug, not a pod it cannot run) is raised by ``stop()``.
    """

    def __init__(
        self,
        plane: KubeControlPlane,
        namespace: str,
        selector: str,
        workdir: Path,
        serving_script: Path,
        *,
        probe_period: float = 0.5,
        restart_delay: float = 1.0,
        node_name: str = "kubelet-standin",
        passthrough_env: Sequence[str] = PASSTHROUGH_ENV,
    ) -> None:
        if not Path(serving_script).is_file():
            raise FileNotFoundError(f"serving stand-in script {serving_script} does not exist")
        self.plane = plane
        self.namespace = namespace
        self.selector = selector
        self.workdir = Path(workdir).resolve()
        self.serving_script = Path(serving_script).resolve()
        self.probe_period = probe_period
        self.restart_delay = restart_delay
        self.node_name = node_name
        self.passthrough_env = tuple(passthrough_env)
        self.api = _Api(plane)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._runners: dict[str, _PodRunner] = {}  # by uid
        self._failures: list[str] = []
        self._thread = threading.Thread(target=self._loop, name=f"kubelet {namespace}", daemon=True)

    def start(self) -> Kubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        log.info("kubelet stand-in: running pods of %s matching %s (node %s, dir %s)",
                 self.namespace, self.selector, self.node_name, self.workdir)  # fmt: skip
        return self

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop(raise_failures=kind is None)

    def pods(self, include_terminated: bool = False) -> dict[str, PodRecord]:
        """Pod name -> a copy of its record: the pods running now (or every pod ever run)."""
        with self.lock:
            runners = list(self._runners.values())
        records = [runner.snapshot() for runner in runners]
        return {r.name: r for r in records if include_terminated or not r.terminated}

    def wait_ready(self, count: int, timeout: float = 60) -> dict[str, PodRecord]:
        """Wait until exactly ``count`` running pods are ready; returns their records."""
        deadline = time.monotonic() + timeout
        pods: dict[str, PodRecord] = {}
        while time.monotonic() < deadline:
            pods = self.pods()
            if len(pods) == count and all(p.ready for p in pods.values()):
                return pods
            time.sleep(0.1)
        detail = {
            name: {"ready": p.ready, "error": p.error, "poller_exits": p.poller_exits} for name, p in pods.items()
        }
        raise AssertionError(f"{count} ready pod(s) in {self.namespace} not reached after {timeout:.0f}s: {detail}")

    def note_failure(self, text: str) -> None:
        with self.lock:
            self._failures.append(text)

    def stop(self, raise_failures: bool = True) -> None:
        """Stop every process (SIGTERM, then SIGKILL after the grace period); pods stay in the API."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(60)
        with self.lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.join(MAX_GRACE_SECONDS + 15)
        log.info("kubelet stand-in for %s stopped", self.namespace)
        if raise_failures and self._failures:
            raise RuntimeError("kubelet stand-in failed: " + "; ".join(self._failures))

    # The sync loop: list the pods, start new ones, stop deleted ones. A list instead of a
    # watch: an API outage only pauses it, and nothing is missed when the server comes back.
    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._sync(self.api.list_pods(self.namespace, self.selector))
            except ApiUnavailable as exc:
                log.debug("kubelet: list pods: %s", exc)
            except Exception as exc:  # noqa: BLE001 - recorded; stop() raises it
                log.exception("kubelet: sync failed")
                self.note_failure(f"sync: {type(exc).__name__}: {exc}")
            self.stopping.wait(self.probe_period)

    def _sync(self, pods: list[Obj]) -> None:
        seen = set()
        for pod in pods:
            meta = pod["metadata"]
            uid = meta["uid"]
            node = pod["spec"].get("nodeName")
            if node and node != self.node_name:
                continue  # another node's pod
            seen.add(uid)
            runner = self._runners.get(uid)
            if runner is None:
                if meta.get("deletionTimestamp") or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    if meta.get("deletionTimestamp") and node == self.node_name:
                        # Left by an earlier run of the stand-in: nothing runs, confirm the deletion.
                        self.api.confirm_deletion(self.namespace, meta["name"], uid)
                    continue
                runner = _PodRunner(self, pod)
                with self.lock:
                    self._runners[uid] = runner
                runner.start()
            elif meta.get("deletionTimestamp"):
                runner.pod["metadata"] = meta  # its deletionGracePeriodSeconds
                runner.delete_requested.set()
        for uid, runner in list(self._runners.items()):
            if uid not in seen and not runner.delete_requested.is_set():
                runner.vanished.set()


__all__ = ["Kubelet", "PodLayout", "PodRecord", "PodSpecError", "container_env", "expand"]
