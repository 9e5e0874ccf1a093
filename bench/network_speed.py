"""Download speed on a network with a per-connection cap (issue 12), side by side in one run.

Toxiproxy sits between the downloaders and fake-gcs-server (whose media links point at
the proxy, so rclone goes through it too) and caps every connection at ``--rate-mib``
MiB/s with its ``bandwidth`` toxic, which is how one stream to Cloud Storage behaves.
For a 1 GiB zip archive (shards of 256 MiB, deflate level 1: incompressible, like float
weights) and a 1 GiB folder version of 8 shards, each in a fresh process and a fresh
model dir:
- the poller (``model-poller --once``, ``--download-streams N``);
- the poller with one stream (``--download-streams 1``);
- the poller as a sidecar (folder only): already running, timed from the upload of the
  version's ``_READY`` marker to the rename (no process start; see ``sidecar``);
- rclone with the same budget (``--transfers N --multi-thread-streams N``), followed by
  ``zipfile.extractall`` where the version is an archive (rclone verifies the MD5; no
  fsync, no limits, no atomic rename).
Then, without the toxic: the loopback ceiling through the proxy (rclone with N streams
into /dev/shm: download only), the poller through the proxy, and, straight to
fake-gcs-server (no proxy), the poller vs bench/poller_throughput.py's baseline
(streaming GET + ``zipfile.extractall``), and that baseline writing its archive 64 KiB at a
time as the poller does (``zip_direct_baseline_64k``: see ``BASELINE_64K``).

With ``--reference DIR`` (a folder holding another ``model_poller`` package, e.g. the
``poller/`` of ``git archive <commit>``), the poller's zip runs with N streams (with the
toxic, without, and straight to fake-gcs-server) are repeated right after with that code
(``*_reference``), so a change is measured side by side under the same load.

Wall time includes process start; peak RSS is the child's VmHWM; ``cpu_s`` is the child's
user + system CPU time, ``services_cpu_s`` that of fake-gcs-server and Toxiproxy during the
run (on 2 cores the install is CPU-bound: these say where the cycles went). For the poller,
its debug log gives the time of the last byte received and of the rename into place. The
load average before and after is printed: on a shared machine compare runs of one session.

    .venv/bin/python bench/network_speed.py [--size-gib 1] [--streams 8] [--rate-mib 100] [--rounds 1]
        [--only SCENARIO,...] [--reference DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poller_services import machine
from poller_throughput import BASELINE, build_archive

from local_services.binaries import binary
from local_services.gcs import seed_object
from local_services.process import Service, free_port
from local_services.toxiproxy import Proxy, Toxiproxy

MiB = 1 << 20
GiB = 1 << 30
UNZIP = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
# The same baseline with its archive written 64 KiB at a time, as the poller writes
# (model_poller.durable.WRITE_STEP; zipfile.extractall already copies 64 KiB at a time):
# on a VM with free page reporting, 1 MiB writes cost about 3 s more system CPU per GiB
# (large page-cache folios taken from memory the host reclaimed), which is not the work
# being compared. Both baselines are reported.
BASELINE_64K = BASELINE.replace(
    "        fh.write(chunk)",
    "        view = memoryview(chunk)\n        for at in range(0, len(view), 1 << 16):\n"
    "            fh.write(view[at : at + (1 << 16)])",
)
assert BASELINE_64K != BASELINE
_TIMES = re.compile(r"last byte received at ([0-9.]+)s, in place at ([0-9.]+)s")
# The poller runs repeated with the --reference code, right after this code's.
REFERENCE_RUNS = ("zip_poller", "zip_poller_no_toxic", "zip_direct_poller")
# The long-running services whose CPU time each run also reports (set once they start).
SERVICE_PIDS: list[int] = []


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/PID/stat`` utime, stime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of the children this process has waited for, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def children_sys_cpu_s() -> float:
    """System (kernel) CPU seconds of the children this process has waited for, so far."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def vm_hwm_kib(pid: int) -> int:
    """Peak RSS so far of a live process (``VmHWM``), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def children_faults() -> int:
    """Minor page faults of the children this process has waited for, so far."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


@dataclass
class Gcs:
    """fake-gcs-server whose media links name the proxy (``external``), not itself."""

    workdir: Path
    port: int
    external: str
    service: Service | None = None

    def start(self) -> Gcs:
        self.service = Service(
            "fake-gcs-server",
            [
                str(binary("fake-gcs-server")),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.external,
                "-public-host",
                self.external.removeprefix("http://"),
                "-backend",
                "filesystem",
                "-filesystem-root",
                str(self.workdir / "storage"),
                "-log-level",
                "warn",
            ],
            self.workdir / "fake-gcs-server.log",
        )
        self.service.wait_until(self._ready, 60)
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b?project=bench", timeout=2) as resp:
            return bool(resp.status == 200)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, endpoint: str) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@dataclass
class Run:
    seconds: float
    rss_mib: float
    log: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def run(argv: list[str], env: dict[str, str], log: Path) -> Run:
    """One child process: wall time, peak RSS (VmHWM, sampled), its output in ``log``."""
    os.sync()
    time.sleep(1)
    services_before = sum(process_cpu_s(pid) for pid in SERVICE_PIDS)
    children_before = children_cpu_s()
    faults_before = children_faults()
    sys_before = children_sys_cpu_s()
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_kib = 0
        while proc.poll() is None:
            peak_kib = max(peak_kib, vm_hwm_kib(proc.pid))
            time.sleep(0.02)
        seconds = time.monotonic() - t0
    cpu = {
        "cpu_s": round(children_cpu_s() - children_before, 2),
        "services_cpu_s": round(sum(process_cpu_s(pid) for pid in SERVICE_PIDS) - services_before, 2),
        "sys_cpu_s": round(children_sys_cpu_s() - sys_before, 2),
        "minflt": children_faults() - faults_before,
    }
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed with {proc.returncode}:\n{text[-3000:]}")
    return Run(seconds, peak_kib / 1024, text, cpu)


def poller(source: str, work: Path, streams: int, env: dict[str, str]) -> Run:
    argv = [
        sys.executable,
        "-m",
        "model_poller",
        "--once",
        "--log-level",
        "DEBUG",
        "--source",
        source,
        "--model-dir",
        str(work / "models"),
        "--download-streams",
        str(streams),
    ]
    result = run(argv, env, work / "poller.log")
    found = _TIMES.findall(result.log)
    if found:
        last, placed = (float(x) for x in found[-1])
        result.extra.update(last_byte_s=last, in_place_s=placed, after_last_byte_s=round(placed - last, 3))
    return result


def sidecar(gcs: Gcs, bucket: Any, prefix: str, work: Path, streams: int, env: dict[str, str]) -> Run:
    """The poller as it runs in a pod: a long-running process (``--poll-interval 0.1``, no
    ``--once``), started and idle before the version is complete at the source. The clock
    starts when the version's ``_READY`` marker is uploaded and stops when
    ``<model-dir>/1/`` exists (the rename), so process start and imports are not counted, as
    in a sidecar that has been running; detection costs up to one 0.1 s listing."""
    marker = bucket.blob(f"{prefix}_READY")
    if marker.exists():
        marker.delete()
    version_dir = work / "models" / "1"
    argv = [
        sys.executable,
        "-m",
        "model_poller",
        "--log-level",
        "DEBUG",
        "--source",
        f"gs://{bucket.name}/{prefix.rsplit('/', 2)[0]}/",
        "--model-dir",
        str(work / "models"),
        "--download-streams",
        str(streams),
        "--poll-interval",
        "0.1",
        "--http-port",
        str(free_port()),
    ]
    os.sync()
    with open(work / "poller.log", "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # started, listed (nothing complete yet), idle
            if proc.poll() is not None:
                raise SystemExit(
                    f"the sidecar poller exited with {proc.returncode}:\n{(work / 'poller.log').read_text()[-3000:]}"
                )
            cpu_before = process_cpu_s(proc.pid)
            services_before = sum(process_cpu_s(pid) for pid in SERVICE_PIDS)
            marker.upload_from_string(b"")
            t0 = time.monotonic()
            peak_kib = 0
            while not version_dir.exists():
                if proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise SystemExit(f"version 1 not installed:\n{(work / 'poller.log').read_text()[-3000:]}")
                peak_kib = max(peak_kib, vm_hwm_kib(proc.pid))
                time.sleep(0.005)
            seconds = time.monotonic() - t0
            cpu = {
                "cpu_s": round(process_cpu_s(proc.pid) - cpu_before, 2),
                "services_cpu_s": round(sum(process_cpu_s(pid) for pid in SERVICE_PIDS) - services_before, 2),
            }
        finally:
            proc.terminate()
            proc.wait(30)
    return Run(seconds, peak_kib / 1024, "", cpu)


def rclone_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG_BENCH_TYPE": "google cloud storage",
        "RCLONE_CONFIG_BENCH_ANONYMOUS": "true",
        "RCLONE_CONFIG_BENCH_ENDPOINT": f"{endpoint}/storage/v1/",
    }


def rclone(remote: str, dest: Path, streams: int, endpoint: str, work: Path, unzip: bool) -> Run:
    argv = [
        str(binary("rclone")),
        "copy",
        remote,
        str(dest),
        "--transfers",
        str(streams),
        "--multi-thread-streams",
        str(streams),
        "--checkers",
        str(streams),
    ]
    copied = run(argv, rclone_env(endpoint), work / "rclone.log")
    if not unzip:
        return copied
    archive = next(dest.glob("*.zip"))
    unpacked = run(
        [sys.executable, "-c", UNZIP, str(archive), str(work / "unpacked")], dict(os.environ), work / "unzip.log"
    )
    return Run(
        copied.seconds + unpacked.seconds,
        max(copied.rss_mib, unpacked.rss_mib),
        extra={
            "rclone_s": round(copied.seconds, 2),
            "unzip_s": round(unpacked.seconds, 2),
            "cpu_s": round(copied.extra["cpu_s"] + unpacked.extra["cpu_s"], 2),
            "services_cpu_s": round(copied.extra["services_cpu_s"] + unpacked.extra["services_cpu_s"], 2),
        },
    )


def seed_folder(gcs: Gcs, bucket: Any, prefix: str, size: int, shards: int, root: Path) -> None:
    rng = random.Random(8)
    block = rng.randbytes(16 * MiB)
    each = size // shards
    for i in range(shards):
        path = root / f"shard-{i}"
        with open(path, "wb") as fh:
            for at in range(0, each, len(block)):
                rot = (i * 7919 + at // MiB) % len(block)
                chunk = (block[rot:] + block[:rot])[: min(len(block), each - at)]
                fh.write(chunk)
        seed_object(gcs, bucket, f"{prefix}variables/variables.data-{i:05d}-of-{shards:05d}", path)
    bucket.blob(f"{prefix}saved_model.pb").upload_from_string(b"saved model")
    bucket.blob(f"{prefix}variables/variables.index").upload_from_string(b"index")
    bucket.blob(f"{prefix}_READY").upload_from_string(b"")


def targets(summary: dict[str, dict[str, float]], n: int, rate_mib: float, folder_bytes: int) -> dict[str, Any]:
    """The issue's targets, from the medians (wall times include process start)."""

    def get(name: str, key: str = "median_s") -> float:
        return summary.get(name, {}).get(key, float("nan"))

    ceiling_rate = folder_bytes / MiB / get("ceiling_rclone_shm") if "ceiling_rclone_shm" in summary else None
    out: dict[str, Any] = {"ceiling_MiB_per_s": round(ceiling_rate, 1) if ceiling_rate else None}
    for kind in ("zip", "folder"):
        out[kind] = {
            "x_faster_than_one_stream (wall)": round(get(f"{kind}_poller_1_stream") / get(f"{kind}_poller"), 2),
            "x_faster_than_one_stream (install)": round(
                get(f"{kind}_poller_1_stream", "median_in_place_s") / get(f"{kind}_poller", "median_in_place_s"), 2
            ),
            "rclone_s / poller_s (wall)": round(get(f"{kind}_rclone") / get(f"{kind}_poller"), 2),
            "rclone_s / poller_install_s": round(get(f"{kind}_rclone") / get(f"{kind}_poller", "median_in_place_s"), 2),
            "download_MiB_per_s": round(get(f"{kind}_poller", "median_download_MiB_per_s"), 1),
            # 70% of what N capped connections can carry, the ceiling of this machine at most
            "target_MiB_per_s (70% of min(N x rate, ceiling))": round(
                0.7 * min(n * rate_mib, ceiling_rate or float("inf")), 1
            ),
            "after_last_byte_s": get(f"{kind}_poller", "median_after_last_byte_s"),
            "peak_rss_MiB": get(f"{kind}_poller", "peak_rss_MiB"),
        }
    if "folder_poller_sidecar" in summary:
        out["folder"]["rclone_s / poller_sidecar_s (marker -> in place)"] = round(
            get("folder_rclone") / get("folder_poller_sidecar"), 2
        )
        out["folder"]["x_faster_than_one_stream (sidecar vs one-stream install)"] = round(
            get("folder_poller_1_stream", "median_in_place_s") / get("folder_poller_sidecar"), 2
        )
    out["no_toxic_direct: poller_s / baseline_s"] = round(get("zip_direct_poller") / get("zip_direct_baseline"), 3)
    out["no_toxic_direct: poller_install_s / baseline_s"] = round(
        get("zip_direct_poller", "median_in_place_s") / get("zip_direct_baseline"), 3
    )
    if "zip_direct_baseline_64k" in summary:
        out["no_toxic_direct: poller_s / baseline_64k_s"] = round(
            get("zip_direct_poller") / get("zip_direct_baseline_64k"), 3
        )
        out["no_toxic_direct: poller_install_s / baseline_64k_s"] = round(
            get("zip_direct_poller", "median_in_place_s") / get("zip_direct_baseline_64k"), 3
        )
    if "zip_direct_poller_reference" in summary:
        out["no_toxic_direct: reference_s / baseline_s"] = round(
            get("zip_direct_poller_reference") / get("zip_direct_baseline"), 3
        )
        out["no_toxic_direct: reference_install_s / baseline_s"] = round(
            get("zip_direct_poller_reference", "median_in_place_s") / get("zip_direct_baseline"), 3
        )
    return out


def fresh(root: Path, name: str) -> Path:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


@dataclass
class Bench:
    """One run of the benchmark: the services, the seeded objects, the results so far."""

    root: Path
    streams: int
    rate_mib: float
    only: set[str]
    reference: dict[str, str]  # the environment that runs the reference code, if any
    gcs: Gcs
    proxy: Proxy
    bucket: Any
    zip_bytes: int = 0
    folder_bytes: int = 0
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def via_proxy(self) -> dict[str, str]:
        return {**os.environ, "STORAGE_EMULATOR_HOST": self.proxy.url}

    @property
    def direct(self) -> dict[str, str]:
        return {**os.environ, "STORAGE_EMULATOR_HOST": self.gcs.url}

    @property
    def zip_src(self) -> str:
        return f"gs://{self.bucket.name}/zip/"

    @property
    def folder_src(self) -> str:
        return f"gs://{self.bucket.name}/folder/"

    def want(self, name: str) -> bool:
        return not self.only or name in self.only

    def record(self, name: str, result: Run, nbytes: int) -> None:
        entry = {
            "s": round(result.seconds, 2),
            "rss_MiB": round(result.rss_mib, 1),
            "MiB_per_s": round(nbytes / MiB / result.seconds, 1),
            **result.extra,
        }
        self.results.setdefault(name, []).append(entry)
        print(json.dumps({name: entry}), flush=True)

    def seed(self, size: int) -> None:
        archive = self.root / "upload.zip"
        build_archive(archive, size)
        self.zip_bytes = archive.stat().st_size
        seed_object(self.gcs, self.bucket, "zip/0001.zip", archive)
        folder_runs = (
            "folder_poller",
            "folder_poller_1_stream",
            "folder_rclone",
            "ceiling_rclone_shm",
            "folder_poller_no_toxic",
            "folder_poller_sidecar",
        )
        if any(self.want(name) for name in folder_runs):
            seed_folder(self.gcs, self.bucket, "folder/0001/", size, 8, self.root)
        self.folder_bytes = sum(b.size for b in self.bucket.list_blobs(prefix="folder/"))

    def poller_runs(self, name: str, source: str, env: dict[str, str], nbytes: int, streams: int = 0) -> None:
        """``name`` with this code, then ``name_reference`` with the reference code, if any."""
        if not self.want(name):
            return
        streams = streams or self.streams
        self.record(name, poller(source, fresh(self.root, "run"), streams, env), nbytes)
        if self.reference and name in REFERENCE_RUNS:
            self.record(
                f"{name}_reference",
                poller(source, fresh(self.root, "run"), streams, {**env, **self.reference}),
                nbytes,
            )

    def toxic_round(self) -> None:
        """Every connection capped at ``rate_mib``: the pollers, then rclone."""
        cap = self.proxy.bandwidth(int(self.rate_mib * MiB / 1000))
        try:
            for streams, label in ((self.streams, "poller"), (1, "poller_1_stream")):
                self.poller_runs(f"zip_{label}", self.zip_src, self.via_proxy, self.zip_bytes, streams)
                self.poller_runs(f"folder_{label}", self.folder_src, self.via_proxy, self.folder_bytes, streams)
            if self.want("folder_poller_sidecar"):
                self.record(
                    "folder_poller_sidecar",
                    sidecar(
                        self.gcs, self.bucket, "folder/0001/", fresh(self.root, "run"), self.streams, self.via_proxy
                    ),
                    self.folder_bytes,
                )
            if self.want("zip_rclone"):
                work = fresh(self.root, "run")
                self.record(
                    "zip_rclone",
                    rclone(f"bench:{self.bucket.name}/zip", work / "dl", self.streams, self.proxy.url, work, True),
                    self.zip_bytes,
                )
            if self.want("folder_rclone"):
                work = fresh(self.root, "run")
                self.record(
                    "folder_rclone",
                    rclone(
                        f"bench:{self.bucket.name}/folder/0001", work / "dl", self.streams, self.proxy.url, work, False
                    ),
                    self.folder_bytes,
                )
        finally:
            self.proxy.remove_toxic(cap)

    def no_toxic_round(self) -> None:
        # The ceiling of N connections through the proxy on this machine (rclone, N objects
        # side by side, into memory: download only).
        if self.want("ceiling_rclone_shm"):
            shm = Path(tempfile.mkdtemp(prefix="bench-", dir="/dev/shm"))
            try:
                self.record(
                    "ceiling_rclone_shm",
                    rclone(
                        f"bench:{self.bucket.name}/folder/0001",
                        shm,
                        self.streams,
                        self.proxy.url,
                        fresh(self.root, "run"),
                        False,
                    ),
                    self.folder_bytes,
                )
            finally:
                shutil.rmtree(shm, ignore_errors=True)
        self.poller_runs("zip_poller_no_toxic", self.zip_src, self.via_proxy, self.zip_bytes)
        self.poller_runs("folder_poller_no_toxic", self.folder_src, self.via_proxy, self.folder_bytes)
        # Straight to fake-gcs-server: the figures of bench/poller_throughput.py.
        url = f"{self.gcs.url}/download/storage/v1/b/{self.bucket.name}/o/zip%2F0001.zip?alt=media"
        for name, script in (("zip_direct_baseline", BASELINE), ("zip_direct_baseline_64k", BASELINE_64K)):
            if self.want(name):
                work = fresh(self.root, "run")
                argv = [sys.executable, "-c", script, url, str(work / "a.zip"), str(work / "out")]
                self.record(name, run(argv, self.direct, work / "baseline.log"), self.zip_bytes)
        self.poller_runs("zip_direct_poller", self.zip_src, self.direct, self.zip_bytes)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: summarize(runs, self.zip_bytes if name.startswith("zip") else self.folder_bytes)
            for name, runs in self.results.items()
        }


def summarize(runs: list[dict[str, Any]], nbytes: int) -> dict[str, float]:
    """Medians of one scenario's runs (and the poller's own timings, where it logged them)."""
    out = {
        "median_s": statistics.median(r["s"] for r in runs),
        "peak_rss_MiB": max(r["rss_MiB"] for r in runs),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "median_services_cpu_s": statistics.median(r["services_cpu_s"] for r in runs),
    }
    if all("in_place_s" in r for r in runs):
        out["median_in_place_s"] = statistics.median(r["in_place_s"] for r in runs)
        out["median_after_last_byte_s"] = statistics.median(r["after_last_byte_s"] for r in runs)
        out["median_download_MiB_per_s"] = statistics.median(nbytes / MiB / r["last_byte_s"] for r in runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rate-mib", type=float, default=100.0, help="bandwidth cap per connection")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument(
        "--reference",
        default=None,
        help="folder holding another model_poller package, run side by side (the zip runs with N streams)",
    )
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="network-bench-"))
    reference = {"PYTHONPATH": str(Path(args.reference).resolve())} if args.reference else {}
    with Toxiproxy(root / "toxiproxy") as toxiproxy:
        gcs_port, proxy_port = free_port(), free_port()
        proxy: Proxy = toxiproxy.create_proxy("gcs", f"127.0.0.1:{gcs_port}", listen=f"127.0.0.1:{proxy_port}")
        gcs = Gcs(root / "gcs", gcs_port, proxy.url).start()
        assert gcs.service is not None and toxiproxy._service is not None  # (the bench reads their CPU time)
        SERVICE_PIDS[:] = [gcs.service.proc.pid, toxiproxy._service.proc.pid]
        load_before = os.getloadavg()
        try:
            bucket = gcs.client(gcs.url).create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
            bench = Bench(
                root,
                args.streams,
                args.rate_mib,
                set(filter(None, args.only.split(","))),
                reference,
                gcs,
                proxy,
                bucket,
            )
            bench.seed(int(args.size_gib * GiB))
            for _ in range(args.rounds):
                bench.toxic_round()
                bench.no_toxic_round()
                shutil.rmtree(root / "run", ignore_errors=True)
        finally:
            gcs.stop()
    summary = bench.summary()
    print(
        json.dumps(
            {
                "summary": summary,
                "targets": targets(summary, args.streams, args.rate_mib, bench.folder_bytes),
                "size_bytes": {"zip": bench.zip_bytes, "folder": bench.folder_bytes},
                "streams": args.streams,
                "rate_MiB_per_connection": args.rate_mib,
                "load_avg_before": load_before,
                "load_avg_after": os.getloadavg(),
                **machine(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
