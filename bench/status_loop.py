"""Issue 8: the status loop under load. Three measurements against real services:

1. latency: upload -> ``status.servingVersion`` of a ModelDeployment with 3 replicas in topic
   mode. Each pod is run by the kubelet stand-in (local_services/kubelet.py): its poller with a
   bound token and the TF Serving stand-in (local_services/tf_serving.py) with the rendered
   args (``--file_system_poll_wait_seconds=1``, default ``--load_seconds`` 0.2). Versions are
   uploaded one at a time; each is timed from the upload call returning to the moment a watch
   on the ModelDeployment delivers ``status.servingVersion == v``.
2. writes (same run as 1): status writes per pod per version change, from the API server's
   audit log: patches of ``modeldeployments/<name>/status`` by the pollers' ServiceAccount,
   divided by pods x versions; the operator's own writes per version change beside them.
3. idle: N ModelDeployments x 3 pods whose pollers run as real processes (bench/bare_pollers.py:
   rendered env, bound tokens, no TF Serving), settled, then every write in the audit log over
   a window, per second. As many pollers run as fit in memory (leaving --min-free-gib free);
   the output says how many ran.

    MODEL_POLLER_TEST_BIN="$(bash hack/build-test-binaries.sh)" \\
        .venv/bin/python bench/status_loop.py [--part all|latency|writes|idle] [--uploads 20] \\
        [--mds 100] [--window 600]

``--part latency`` and ``--part writes`` run the same upload run (both results come from
it). Every process the benchmark starts is stopped at the end, on an error, on Ctrl-C and
on SIGTERM. Prints a Markdown table of results beside targets and writes
bench/results/status_loop.json after each part.

It measures the code its interpreter imports; PYTHONPATH is passed on to every process it
starts (operator, pods), so a snapshot of one commit can be measured while the work tree
changes: ``git archive <commit> | tar -x -C /tmp/snap``, copy bench/ in, then run it from
/tmp/snap with ``PYTHONPATH=/tmp/snap/api:/tmp/snap/poller:/tmp/snap/operator``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import bare_pollers  # noqa: E402
import kubernetes  # noqa: E402
from kubernetes import client  # noqa: E402
from model_poller_api import names  # noqa: E402
from operator_scale import apply_crd  # noqa: E402
from poller_services import percentile  # noqa: E402

from local_services import operator_kit as kit  # noqa: E402
from local_services.archives import model_files, zip_bytes  # noqa: E402
from local_services.gcs import FakeGcs  # noqa: E402
from local_services.kube import KubeControlPlane  # noqa: E402
from local_services.kubelet import PASSTHROUGH_ENV, Kubelet  # noqa: E402
from local_services.process import wait_for  # noqa: E402
from local_services.pubsub import PubSubEmulator  # noqa: E402

STANDIN = REPO / "local_services" / "tf_serving.py"
CRD_FILE = REPO / "crds" / "modeldeployments.modelpoller.dev.yaml"
RESULTS = REPO / "bench" / "results"
REPLICAS = 3
# The operator's production settings (its dataclass defaults), not the tests' 1 s intervals.
OPERATOR_ENV = {
    "MODEL_POLLER_OPERATOR_STATUS_INTERVAL": "10",
    "MODEL_POLLER_OPERATOR_POD_EVENTS_INTERVAL": "30",
    "MODEL_POLLER_OPERATOR_RETRY_DELAY": "15",
}
TARGET_P50, TARGET_P99, TARGET_WRITES, TARGET_IDLE = 1.2, 2.0, 2.0, 0.1
DEFAULT_HEARTBEAT = 3600.0
# The API server's own writes (its identity lease, the `kubernetes` Service's endpoints), every
# 10 s in any cluster whatever runs in it: listed, not counted against the idle target.
HOUSEKEEPING = "system:apiserver"
RESERVE_GIB = 1.0
# An idle poller is serving-ready ~1 s after its start; 2 minutes means something is wrong.
START_TIMEOUT = 120.0

Status = dict[str, Any]


# --- shared: control plane, operator, storage, audit log ------------------------------------


@dataclass
class Stack:
    plane: KubeControlPlane
    cluster: kit.Cluster
    gcs: FakeGcs
    operator: kit.OperatorProcess
    workdir: Path


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """etcd + kube-apiserver (CRD applied), the Deployment/ReplicaSet/GC controllers, the
    operator under its chart identity with production intervals, the Pub/Sub emulator and
    fake-gcs-server publishing to it. Everything stops when the block ends."""
    from google.cloud import pubsub_v1

    with contextlib.ExitStack() as stop:
        plane = KubeControlPlane(workdir / "kube").start()
        stop.callback(plane.stop)
        apply_crd(plane)
        stop.callback(plane.start_controllers().stop)
        emulator = PubSubEmulator(workdir / "pubsub").start()
        stop.callback(emulator.stop)
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        gcs = FakeGcs(workdir / "gcs", pubsub_host=emulator.host, project=emulator.project)
        pubsub_v1.PublisherClient().create_topic(name=gcs.notification_topic)
        gcs.start()
        stop.callback(gcs.stop)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        kubeconfig = kit.install_operator_identity(plane, workdir)
        operator = stop.enter_context(kit.run_operator(kubeconfig, workdir, env=OPERATOR_ENV))
        yield Stack(plane, kit.Cluster(plane), gcs, operator, workdir)


def create_namespace(cluster: kit.Cluster, name: str) -> None:
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def version_zip(version: int) -> bytes:
    return zip_bytes(model_files(version), top=f"{version:04d}")


def audit_entries(audit_log: Path, start: int, end: int) -> list[dict[str, Any]]:
    """Every completed write request between two byte offsets of the audit log (any user)."""
    with open(audit_log, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    entries = [json.loads(line) for line in data.splitlines() if line.strip()]
    return [e for e in entries if e.get("stage") == "ResponseComplete" and e.get("verb") in kit.WRITE_VERBS]


def who(entry: dict[str, Any], namespace: str) -> str:
    """The writer's role: a poller (its ServiceAccount in the benchmark's namespace), the
    operator, or admin (kube-controller-manager and the benchmark itself use admin)."""
    user = entry.get("user", {}).get("username", "")
    if user.startswith(f"system:serviceaccount:{namespace}:"):
        return "pollers"
    if user == kit.OPERATOR_USER:
        return "operator"
    return "admin (controllers, benchmark)" if user == "admin" else user


def what(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef", {})
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{entry['verb']} {ref.get('resource')}{sub}"


def stamp(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def pod_of(entry: dict[str, Any]) -> str:
    """The pod a bound ServiceAccount token belongs to (the API server records it)."""
    extra = entry.get("user", {}).get("extra", {})
    return str((extra.get("authentication.kubernetes.io/pod-name") or ["?"])[0])


# --- part 1 and 2: upload -> servingVersion, writes per pod per version -----------------------


class StatusWatch:
    """Every status of one ModelDeployment as a watch delivers it, stamped on arrival
    (monotonic clock), so a measurement has no sampling delay."""

    def __init__(self, plane: KubeControlPlane, namespace: str, name: str) -> None:
        self.api = client.CustomObjectsApi(plane.api_client())
        self.namespace, self.name = namespace, name
        self.events: list[tuple[float, Status]] = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def __enter__(self) -> StatusWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(15)

    def _run(self) -> None:
        current = cast(
            dict[str, Any],
            self.api.get_namespaced_custom_object(names.GROUP, names.VERSION, self.namespace, names.PLURAL, self.name),
        )
        version = current["metadata"]["resourceVersion"]
        while not self.stopping.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            stream = watch.stream(  # type: ignore[no-untyped-call]
                self.api.list_namespaced_custom_object, names.GROUP, names.VERSION, self.namespace, names.PLURAL,
                field_selector=f"metadata.name={self.name}", resource_version=version, timeout_seconds=5,
            )  # fmt: skip
            for event in stream:
                arrived = time.monotonic()
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                with self.cond:
                    self.events.append((arrived, dict(obj.get("status") or {})))
                    self.cond.notify_all()
                if self.stopping.is_set():
                    watch.stop()  # type: ignore[no-untyped-call]

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def first(self, since: int, check: Callable[[Status], bool], timeout: float) -> float:
        """Arrival time of the first status after event ``since`` that passes ``check``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for arrived, status in self.events[since:]:
                    if check(status):
                        return arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.events[-1][1] if self.events else {}
                    raise TimeoutError(
                        f"no matching status of {self.namespace}/{self.name} in {timeout}s; last: {last}"
                    )
                self.cond.wait(left)

    def first_or_none(self, since: int, check: Callable[[Status], bool]) -> float | None:
        with self.cond:
            return next((t for t, s in self.events[since:] if check(s)), None)


def entries(status: Status) -> dict[str, dict[str, Any]]:
    return dict(status.get("pollers") or {})


def all_serving(status: Status, version: int, pods: int) -> bool:
    found = entries(status)
    return len(found) == pods and all(e.get("serving") == version for e in found.values())


@dataclass
class Upload:
    version: int
    started_wall: float
    latency: float
    install: float  # until the last pod's entry lists the version (as written and watched)
    pods_serving: float  # until the last pod's entry says it serves the version
    latest: float | None  # until status.latestVersion says the version


def upload_and_time(bucket: Any, prefix: str, watch: StatusWatch, version: int, pods: list[str]) -> Upload:
    data = version_zip(version)
    # A random phase against TF Serving's 1 s filesystem poll, as real uploads have: without
    # it the fixed rhythm of this loop would lock onto one phase and hide the spread.
    time.sleep(random.uniform(0, 1))
    since = watch.mark()
    started_wall = time.time()
    bucket.blob(f"{prefix}{version}.zip").upload_from_string(data)
    t0 = time.monotonic()
    served = watch.first(since, lambda s: s.get("servingVersion") == version, 60)

    def last_pod(check: Callable[[dict[str, Any]], bool]) -> float:
        def pod_check(pod: str) -> Callable[[Status], bool]:
            return lambda status: check(entries(status).get(pod) or {})

        return max(watch.first(since, pod_check(p), 30) for p in pods) - t0

    pods_serving = last_pod(lambda e: e.get("serving") == version)
    install = last_pod(lambda e: version in (e.get("versions") or ()))
    latest = watch.first_or_none(since, lambda s: s.get("latestVersion") == version)
    return Upload(version, started_wall, served - t0, install, pods_serving, None if latest is None else latest - t0)


def at_version(cluster: kit.Cluster, namespace: str, name: str, version: int) -> bool:
    """Every entry serves ``version`` and lists exactly the two kept versions."""
    found = entries(cluster.get_md(namespace, name).get("status") or {})
    return all(e.get("serving") == version and e.get("versions") == [version - 1, version] for e in found.values())


def run_latency(work: Path, uploads: int) -> dict[str, Any]:
    with stack(work) as s:
        namespace, name, prefix = "bench-latency", "bench-model", "models/bench_model/"
        create_namespace(s.cluster, namespace)
        bucket = s.gcs.client().create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        bucket.blob(f"{prefix}1.zip").upload_from_string(version_zip(1))
        s.cluster.create_md(namespace, name, {
            "modelName": "bench_model",
            "replicas": REPLICAS,
            "source": {"uri": f"gs://{bucket.name}/{prefix}", "pubsub": {"topic": s.gcs.notification_topic},
                       "pollInterval": "60s"},
        })  # fmt: skip
        selector = f"{names.LABEL_INSTANCE}={name}"
        # PYTHONPATH too: the pods run the same code as the benchmark (e.g. a snapshot of a commit).
        passthrough = (*PASSTHROUGH_ENV, "PYTHONPATH")
        with Kubelet(s.plane, namespace, selector, work / "kubelet", STANDIN, passthrough_env=passthrough) as kubelet:
            pods = sorted(kubelet.wait_ready(REPLICAS, timeout=180))
            wait_for("servingVersion 1 on every replica", lambda: all_serving(
                (s.cluster.get_md(namespace, name).get("status") or {}), 1, REPLICAS)
                and s.cluster.get_md(namespace, name)["status"].get("servingVersion") == 1, 60)  # fmt: skip
            time.sleep(3)  # let the first syncs' writes land before counting
            with StatusWatch(s.plane, namespace, name) as watch:
                time.sleep(1)
                start = kit.audit_offset(s.plane.audit_log)
                results: list[Upload] = []
                loads: list[float] = []  # other work on this 2-core machine shows in the latencies
                for version in range(2, uploads + 2):
                    results.append(upload_and_time(bucket, prefix, watch, version, pods))
                    loads.append(round(os.getloadavg()[0], 2))
                    # Settle: every entry serves it and lists exactly the kept versions, then quiet.
                    wait_for(
                        f"every entry at version {version}", lambda: at_version(s.cluster, namespace, name, version), 30
                    )
                    time.sleep(1.0)
                    print(f"  version {version}: servingVersion after {results[-1].latency:.3f} s", flush=True)
                time.sleep(5)  # trailing writes (heartbeats are an hour apart: none here)
                end = kit.audit_offset(s.plane.audit_log)
            writes = audit_entries(s.plane.audit_log, start, end)
            exits = {p: r.poller_exits for p, r in kubelet.pods().items()}
            events = collections.Counter(f"{e['type']} {e['reason']}" for e in s.cluster.events(namespace, name))
        result = summarize_latency(results, writes, namespace, name, pods, exits)
        result["operator_events_on_the_md"] = dict(sorted(events.items()))
        result["loadavg_1min_during_uploads"] = [min(loads), max(loads)]
        return result


def summarize_latency(
    results: list[Upload],
    writes: list[dict[str, Any]],
    namespace: str,
    name: str,
    pods: list[str],
    exits: dict[str, list[int]],
) -> dict[str, Any]:
    latencies = [r.latency for r in results]
    md_writes = [
        w for w in writes if w["objectRef"].get("resource") == names.PLURAL and w["objectRef"].get("name") == name
    ]
    poller_status = [
        w for w in md_writes if who(w, namespace) == "pollers" and what(w) == "patch modeldeployments/status"
    ]
    per_pod = collections.Counter(pod_of(w) for w in poller_status)
    # Writes of each pod attributed to the upload they followed (uploads are sequential).
    bounds = [r.started_wall for r in results] + [float("inf")]
    per_pod_version: collections.Counter[tuple[str, int]] = collections.Counter()
    for w in poller_status:
        t = stamp(w)
        for i, r in enumerate(results):
            if bounds[i] <= t < bounds[i + 1]:
                per_pod_version[(pod_of(w), r.version)] += 1
    shape = collections.Counter(per_pod_version.get((p, r.version), 0) for p in pods for r in results)
    by_writer = collections.Counter(f"{who(w, namespace)}: {what(w)}" for w in writes)
    operator_writes = [w for w in writes if who(w, namespace) == "operator"]
    versions = len(results)
    return {
        "uploads": versions,
        "replicas": len(pods),
        "latency_s": [round(x, 3) for x in latencies],
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies), 3),
        "breakdown_p50_s": {
            "every pod lists the version (installed, written, watched)": round(
                percentile([r.install for r in results], 0.5), 3
            ),
            "every pod serves it (TF Serving AVAILABLE, written, watched)": round(
                percentile([r.pods_serving for r in results], 0.5), 3
            ),
            "status.servingVersion (operator's aggregate)": round(percentile(latencies, 0.5), 3),
            "status.latestVersion": round(percentile([r.latest for r in results if r.latest is not None], 0.5), 3),
        },
        "poller_status_writes": len(poller_status),
        "poller_status_writes_per_pod": dict(sorted(per_pod.items())),
        "status_writes_per_pod_per_version": round(len(poller_status) / (len(pods) * versions), 3),
        "writes_per_pod_per_version_histogram": {str(k): v for k, v in sorted(shape.items())},
        "operator_writes": len(operator_writes),
        "operator_writes_per_version": round(len(operator_writes) / versions, 3),
        "all_writes_by_writer": dict(sorted(by_writer.items())),
        "poller_exits": exits,
    }


# --- part 3: idle writes -----------------------------------------------------------------------


@dataclass
class IdleRun:
    mds_requested: int
    pollers: list[bare_pollers.BarePoller] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def md_spec(bucket: str, i: int) -> dict[str, Any]:
    return {"replicas": REPLICAS, "source": {"uri": f"gs://{bucket}/model-{i:03d}/", "pollInterval": "60s"}}


def pods_of(cluster: kit.Cluster, namespace: str, md: str | None = None) -> list[dict[str, Any]]:
    selector = f"{names.LABEL_INSTANCE}={md}" if md else f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
    listed = cluster.raw_get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}") or {}
    return [p for p in listed.get("items") or [] if not p["metadata"].get("deletionTimestamp")]


def launch(s: Stack, pod: dict[str, Any], run: IdleRun, env: dict[str, str]) -> bare_pollers.BarePoller:
    bare_pollers.bind(s.cluster.core, pod)
    poller = bare_pollers.start(s.plane, s.cluster.core, pod, s.workdir / "pods", env)
    run.pollers.append(poller)
    return poller


def serving_ready(poller: bare_pollers.BarePoller) -> bool:
    """The rendered readiness probe (the poller's /serving-ready); a poller that died ends the run."""
    if poller.proc.poll() is not None:
        _died(poller)
    return poller.http_ok(names.PATH_SERVING_READY)


def wait_ready(poller: bare_pollers.BarePoller, timeout: float) -> None:
    wait_for(f"poller of {poller.name} serving-ready", lambda: serving_ready(poller), timeout, 0.5)


def _died(poller: bare_pollers.BarePoller) -> None:
    tail = poller.log_path.read_text()[-3000:]
    raise RuntimeError(f"poller of {poller.name} exited {poller.proc.returncode}:\n{tail}")


def measure_one(s: Stack, namespace: str, run: IdleRun, env: dict[str, str]) -> dict[str, float]:
    """Start the first poller alone, let it idle, and read its memory."""
    pod = wait_for("the first ModelDeployment's pods", lambda: pods_of(s.cluster, namespace, "idle-000"), 60)[0]
    poller = launch(s, pod, run, env)
    wait_ready(poller, 120)
    bare_pollers.mark_ready(s.cluster.core, poller)
    time.sleep(15)  # idle: first listing, watch and status write done
    return {
        "rss_mib": poller.proc_status("VmRSS") / 1024,
        "pss_mib": poller.proc_status("Pss") / 1024,
        "private_mib": (poller.proc_status("Private_Dirty") + poller.proc_status("Private_Clean")) / 1024,
    }


def start_pollers(s: Stack, namespace: str, run: IdleRun, env: dict[str, str], count: int, min_free: float) -> None:
    """Start the pollers of the first ``count`` pods, a few at a time (2 cores), each marked
    Ready once its /serving-ready answers; stop early if free memory runs low."""
    started = {p.name for p in run.pollers}
    pods = sorted(pods_of(s.cluster, namespace), key=lambda p: str(p["metadata"]["name"]))
    todo = [p for p in pods if p["metadata"]["name"] not in started]
    todo = todo[: max(0, count - len(run.pollers))]
    pending: list[bare_pollers.BarePoller] = []
    began = time.monotonic()
    printed = len(run.pollers)
    while todo or pending:
        for poller in list(pending):
            if serving_ready(poller):
                bare_pollers.mark_ready(s.cluster.core, poller)
                pending.remove(poller)
            elif time.monotonic() - poller.started > START_TIMEOUT:
                tail = poller.log_path.read_text()[-2000:]
                raise RuntimeError(f"poller of {poller.name} not serving-ready after {START_TIMEOUT:g} s:\n{tail}")
        while todo and len(pending) < 6:
            free = bare_pollers.mem_available_gib()
            if free < min_free + 0.5:
                run.notes.append(f"stopped starting pollers at {len(run.pollers)}: {free:.1f} GiB available")
                todo.clear()
                break
            pending.append(launch(s, todo.pop(0), run, env))
        if len(run.pollers) >= printed + 30:
            printed = len(run.pollers)
            print(f"  {printed} pollers started ({time.monotonic() - began:.0f} s)", flush=True)
        time.sleep(0.3)


def settled(s: Stack, namespace: str, mds: list[str], per_md: dict[str, int]) -> bool:
    listed = s.cluster.raw_get(f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.PLURAL}") or {}
    by_name = {md["metadata"]["name"]: md.get("status") or {} for md in listed.get("items") or []}
    return all(
        all_serving(by_name.get(md, {}), 1, per_md[md]) and by_name.get(md, {}).get("servingVersion") == 1
        and by_name.get(md, {}).get("readyReplicas") == per_md[md]
        for md in mds if per_md[md]
    )  # fmt: skip


def run_idle(work: Path, mds: int, window: float, min_free: float, heartbeat: float | None) -> dict[str, Any]:
    namespace = "bench-idle"
    env = {names.env_name("--status-heartbeat"): f"{heartbeat:g}"} if heartbeat else {}
    run = IdleRun(mds)
    with stack(work) as s, bare_pollers.running(run.pollers):
        create_namespace(s.cluster, namespace)
        bucket = s.gcs.client().create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: bucket.blob(f"model-{i:03d}/1.zip").upload_from_string(version_zip(1)), range(mds)))
        s.cluster.create_md(namespace, "idle-000", md_spec(bucket.name, 0))
        free_before = bare_pollers.mem_available_gib()
        one = measure_one(s, namespace, run, env)
        # What fits: a poller's own pages (private), 5% margin; the interpreter's and the
        # libraries' file pages are shared. RESERVE_GIB: growth of the API server and etcd.
        fit = int((free_before - min_free - RESERVE_GIB) * 1024 / (one["private_mib"] * 1.05))
        count = min(mds * REPLICAS, fit)
        md_count = max(1, count // REPLICAS)
        if md_count < mds:
            run.notes.append(
                f"memory: {md_count} of {mds} ModelDeployments fit ({fit} pollers at {one['private_mib']:.0f} MiB)"
            )
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            names_ = [f"idle-{i:03d}" for i in range(md_count)]
            create = lambda i: s.cluster.create_md(namespace, f"idle-{i:03d}", md_spec(bucket.name, i))  # noqa: E731
            list(pool.map(create, range(1, md_count)))
        wait_for(
            f"{md_count * REPLICAS} pods", lambda: len(pods_of(s.cluster, namespace)) >= md_count * REPLICAS, 300, 1
        )
        started_at = time.monotonic()
        start_pollers(s, namespace, run, env, md_count * REPLICAS, min_free)
        startup_s = time.monotonic() - started_at
        per_md = collections.Counter(p.pod["metadata"]["labels"][names.LABEL_INSTANCE] for p in run.pollers)
        wait_for("every ModelDeployment settled", lambda: settled(s, namespace, names_, per_md), 300, 2)
        quiet_since = wait_for_quiet(s.plane.audit_log, namespace, 30, 180)
        start = kit.audit_offset(s.plane.audit_log)
        window_start = time.time()
        cpu_before = sum(p.cpu_seconds() for p in run.pollers)
        load_before = os.getloadavg()[0]
        min_free_seen = observe_window(window, run)
        run.notes.append(
            f"1-min load average {load_before:.2f} at the window's start, {os.getloadavg()[0]:.2f} at its end"
        )
        end = kit.audit_offset(s.plane.audit_log)
        cpu = sum(p.cpu_seconds() for p in run.pollers) - cpu_before
        rss = [p.proc_status("VmRSS") / 1024 for p in run.pollers]
        pss = [p.proc_status("Pss") / 1024 for p in run.pollers]
        alive = sum(1 for p in run.pollers if p.proc.poll() is None)
        writes = audit_entries(s.plane.audit_log, start, end)
        last_writes = last_poller_writes(s.plane.audit_log, start, namespace)
    return summarize_idle(
        run, md_count, writes, window, window_start, namespace, one, startup_s, quiet_since, cpu, rss, pss, alive,
        min_free_seen, heartbeat or DEFAULT_HEARTBEAT, last_writes,
    )  # fmt: skip


def wait_for_quiet(audit_log: Path, namespace: str, quiet: float, timeout: float) -> float:
    """Wait until no write but the API server's own housekeeping was recorded for ``quiet``
    seconds (or ``timeout`` passed); returns how long that took."""
    began = time.monotonic()
    offset, changed = kit.audit_offset(audit_log), time.monotonic()
    while time.monotonic() - changed < quiet and time.monotonic() - began < timeout:
        time.sleep(1)
        end = kit.audit_offset(audit_log)
        if any(who(w, namespace) != HOUSEKEEPING for w in audit_entries(audit_log, offset, end)):
            changed = time.monotonic()
        offset = end
    return time.monotonic() - began


def observe_window(window: float, run: IdleRun) -> float:
    """Sleep through the window, printing progress; the lowest free memory seen."""
    lowest = bare_pollers.mem_available_gib()
    began = time.monotonic()
    next_print = 60.0
    while (elapsed := time.monotonic() - began) < window:
        time.sleep(min(5.0, window - elapsed))
        lowest = min(lowest, bare_pollers.mem_available_gib())
        if elapsed >= next_print:
            print(f"  window: {elapsed:.0f}/{window:.0f} s, {lowest:.1f} GiB free at least", flush=True)
            next_print += 60
    return lowest


def last_poller_writes(audit_log: Path, end: int, namespace: str) -> dict[str, float]:
    """Each poller's last status write before the window (wall clock): its heartbeat is due
    ``heartbeat`` seconds later."""
    last: dict[str, float] = {}
    for w in audit_entries(audit_log, 0, end):
        if who(w, namespace) == "pollers" and what(w) == "patch modeldeployments/status":
            last[pod_of(w)] = max(last.get(pod_of(w), 0.0), stamp(w))
    return last


def summarize_idle(
    run: IdleRun,
    md_count: int,
    writes: list[dict[str, Any]],
    window: float,
    window_start: float,
    namespace: str,
    one: dict[str, float],
    startup_s: float,
    quiet_s: float,
    cpu: float,
    rss: list[float],
    pss: list[float],
    alive: int,
    min_free_seen: float,
    heartbeat: float,
    last_writes: dict[str, float],
) -> dict[str, Any]:
    pollers = len(run.pollers)
    window_end = window_start + window
    due = sum(1 for t in last_writes.values() if t + heartbeat <= window_end)
    by_writer = collections.Counter(f"{who(w, namespace)}: {what(w)}" for w in writes)
    counted = [w for w in writes if who(w, namespace) != HOUSEKEEPING]
    product = [w for w in writes if who(w, namespace) in ("pollers", "operator")]
    return {
        "mds_requested": run.mds_requested,
        "mds": md_count,
        "pollers": pollers,
        "pollers_alive_at_end": alive,
        "notes": run.notes,
        "one_idle_poller_mib": {k: round(v, 1) for k, v in one.items()},
        "startup_seconds": round(startup_s, 1),
        "quiet_wait_seconds": round(quiet_s, 1),
        "window_seconds": window,
        "writes_all": len(writes),
        "writes_counted": len(counted),
        "writes_per_second": round(len(counted) / window, 4),
        "pollers_and_operator_writes_per_second": round(len(product) / window, 4),
        "apiserver_housekeeping_writes_per_second": round((len(writes) - len(counted)) / window, 4),
        "writes_by_writer": dict(sorted(by_writer.items())),
        "counted_write_samples": kit.describe_writes(counted)[:10],
        "heartbeat_seconds": heartbeat,
        "heartbeats_due_in_window": due,
        "analytic_heartbeat_writes_per_second": round(pollers / heartbeat, 4),
        "poller_cpu_cores_during_window": round(cpu / window, 3),
        "poller_rss_mib_mean_max": [round(sum(rss) / max(1, len(rss)), 1), round(max(rss, default=0), 1)],
        "poller_pss_mib_mean_sum": [round(sum(pss) / max(1, len(pss)), 1), round(sum(pss), 1)],
        "mem_available_gib_lowest": round(min_free_seen, 1),
    }


# --- output ------------------------------------------------------------------------------------


def table(latency: dict[str, Any] | None, idle: dict[str, Any] | None) -> list[str]:
    rows = ["| measurement | result | target | result / target | met |", "|---|---|---|---|---|"]

    def row(label: str, value: float, unit: str, target: float) -> None:
        met = "yes" if value <= target else "NO"
        rows.append(f"| {label} | {value:g}{unit} | <= {target:g}{unit} | {value / target:.2f} | {met} |")

    if latency:
        n = f"{latency['uploads']} uploads, {latency['replicas']} replicas"
        row(f"upload -> servingVersion p50 ({n})", latency["p50_s"], " s", TARGET_P50)
        row(f"upload -> servingVersion p99 ({n})", latency["p99_s"], " s", TARGET_P99)
        row("poller status writes per pod per version", latency["status_writes_per_pod_per_version"], "", TARGET_WRITES)
        rows.append(
            f"| operator writes per version change (informative) | {latency['operator_writes_per_version']:g} | | | |"
        )
    if idle:
        label = (
            f"writes/s, {idle['mds']} idle MDs x 3 ({idle['pollers']} pollers), {idle['window_seconds']:g} s window"
            " (all writers but the API server's own housekeeping)"
        )
        row(label, idle["writes_per_second"], "/s", TARGET_IDLE)
        row("analytic steady state (heartbeats only)", idle["analytic_heartbeat_writes_per_second"], "/s", TARGET_IDLE)
    return rows


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the run like Ctrl-C: every `finally` stops what it started.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "latency", "writes", "idle"), default="all")
    parser.add_argument("--uploads", type=int, default=20, help="versions uploaded one at a time (default 20)")
    parser.add_argument("--mds", type=int, default=100, help="idle ModelDeployments, 3 pods each (default 100)")
    parser.add_argument("--window", type=float, default=600, help="idle measurement window in seconds (default 600)")
    parser.add_argument(
        "--min-free-gib", type=float, default=6.0, help="memory left free when starting pollers (default 6)"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        help="idle pollers' --status-heartbeat (default: as rendered, i.e. the poller's 3600 s)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and audit log in the temp dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    result: dict[str, Any] = {
        "latency_and_writes": None,
        "idle": None,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="status-loop-bench-"))
    try:
        if args.part in ("all", "latency", "writes"):
            print(f"latency and writes: {args.uploads} uploads to {REPLICAS} replicas (workdir {work})", flush=True)
            result["latency_and_writes"] = run_latency(work / "latency", args.uploads)
            save(result, began)
        if args.part in ("all", "idle"):
            print(
                f"idle: {args.mds} ModelDeployments x {REPLICAS}, {args.window:g} s window (workdir {work})", flush=True
            )
            result["idle"] = run_idle(work / "idle", args.mds, args.window, args.min_free_gib, args.heartbeat)
            save(result, began)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(result["latency_and_writes"], result["idle"])))
    print(json.dumps(result, indent=2))
    return 0


def save(result: dict[str, Any], began: float) -> None:
    """Write what is measured so far: a later part's failure keeps an earlier part's numbers."""
    result["runtime_seconds"] = round(time.monotonic() - began, 1)
    result["loadavg_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "status_loop.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
