"""Download speed on a network with a per-connection cap (issue 12), side by side in one run.

Toxiproxy sits between the downloaders and fake-gcs-server (whose media links point at
the proxy, so rclone goes through it too) and caps every connection at ``--rate-mib``
MiB/s with its ``bandwidth`` toxic, which is how one stream to Cloud Storage behaves.
For a 1 GiB zip archive (shards of 256 MiB, deflate level 1: incompressible, like float
weights) and a 1 GiB folder version of 8 shards, each in a fresh process and a fresh
model dir:
- the poller (``model-poller --once``, ``--download-streams N``);
- the poller with one stream (``--download-streams 1``);
- rclone with the same budget (``--transfers N --multi-thread-streams N``), followed by
  ``zipfile.extractall`` where the version is an archive (rclone verifies the MD5; no
  fsync, no limits, no atomic rename).
Then, without the toxic: the loopback ceiling through the proxy (rclone with N streams
into /dev/shm: download only), the poller through the proxy, and, straight to
fake-gcs-server (no proxy), the poller vs bench/poller_throughput.py's baseline
(streaming GET + ``zipfile.extractall``).

Wall time includes process start; peak RSS is the child's VmHWM. For the poller, its
debug log gives the time of the last byte received and of the rename into place.

    .venv/bin/python bench/network_speed.py [--size-gib 1] [--streams 8] [--rate-mib 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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
from poller_throughput import BASELINE, build_archive, seed_object

from local_services.binaries import binary
from local_services.process import Service, free_port
from local_services.toxiproxy import Proxy, Toxiproxy

MiB = 1 << 20
GiB = 1 << 30
UNZIP = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
_TIMES = re.compile(r"last byte received at ([0-9.]+)s, in place at ([0-9.]+)s")


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
            [str(binary("fake-gcs-server")), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.external, "-public-host", self.external.removeprefix("http://"),
             "-backend", "filesystem", "-filesystem-root", str(self.workdir / "storage"), "-log-level", "warn"],
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

        return storage.Client(project="bench", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": endpoint})

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
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_kib = 0
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed with {proc.returncode}:\n{text[-3000:]}")
    return Run(seconds, peak_kib / 1024, text)


def poller(source: str, work: Path, streams: int, env: dict[str, str]) -> Run:
    argv = [sys.executable, "-m", "model_poller", "--once", "--log-level", "DEBUG", "--source", source,
            "--model-dir", str(work / "models"), "--download-streams", str(streams)]
    result = run(argv, env, work / "poller.log")
    found = _TIMES.findall(result.log)
    if found:
        last, placed = (float(x) for x in found[-1])
        result.extra = {"last_byte_s": last, "in_place_s": placed, "after_last_byte_s": round(placed - last, 3)}
    return result


def rclone_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG_BENCH_TYPE": "google cloud storage",
        "RCLONE_CONFIG_BENCH_ANONYMOUS": "true",
        "RCLONE_CONFIG_BENCH_ENDPOINT": f"{endpoint}/storage/v1/",
    }


def rclone(remote: str, dest: Path, streams: int, endpoint: str, work: Path, unzip: bool) -> Run:
    argv = [str(binary("rclone")), "copy", remote, str(dest), "--transfers", str(streams),
            "--multi-thread-streams", str(streams), "--checkers", str(streams)]
    copied = run(argv, rclone_env(endpoint), work / "rclone.log")
    if not unzip:
        return copied
    archive = next(dest.glob("*.zip"))
    unpacked = run([sys.executable, "-c", UNZIP, str(archive), str(work / "unpacked")], dict(os.environ),
                   work / "unzip.log")
    return Run(copied.seconds + unpacked.seconds, max(copied.rss_mib, unpacked.rss_mib),
               extra={"rclone_s": round(copied.seconds, 2), "unzip_s": round(unpacked.seconds, 2)})


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
                get(f"{kind}_poller_1_stream", "median_in_place_s") / get(f"{kind}_poller", "median_in_place_s"), 2),
            "rclone_s / poller_s (wall)": round(get(f"{kind}_rclone") / get(f"{kind}_poller"), 2),
            "rclone_s / poller_install_s": round(get(f"{kind}_rclone") / get(f"{kind}_poller", "median_in_place_s"), 2),
            "download_MiB_per_s": round(get(f"{kind}_poller", "median_download_MiB_per_s"), 1),
            # 70% of what N capped connections can carry, the ceiling of this machine at most
            "target_MiB_per_s (70% of min(N x rate, ceiling))": round(
                0.7 * min(n * rate_mib, ceiling_rate or float("inf")), 1),
            "after_last_byte_s": get(f"{kind}_poller", "median_after_last_byte_s"),
            "peak_rss_MiB": get(f"{kind}_poller", "peak_rss_MiB"),
        }
    out["no_toxic_direct: poller_s / baseline_s"] = round(get("zip_direct_poller") / get("zip_direct_baseline"), 3)
    out["no_toxic_direct: poller_install_s / baseline_s"] = round(
        get("zip_direct_poller", "median_in_place_s") / get("zip_direct_baseline"), 3)
    return out


def fresh(root: Path, name: str) -> Path:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rate-mib", type=float, default=100.0, help="bandwidth cap per connection")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = parser.parse_args()
    size = int(args.size_gib * GiB)
    n = args.streams
    only = set(filter(None, args.only.split(",")))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="network-bench-"))
    results: dict[str, list[dict[str, Any]]] = {}

    def record(name: str, result: Run, nbytes: int) -> None:
        entry = {"s": round(result.seconds, 2), "rss_MiB": round(result.rss_mib, 1),
                 "MiB_per_s": round(nbytes / MiB / result.seconds, 1), **result.extra}
        results.setdefault(name, []).append(entry)
        print(json.dumps({name: entry}), flush=True)

    def want(name: str) -> bool:
        return not only or name in only

    with Toxiproxy(root / "toxiproxy") as toxiproxy:
        gcs_port, proxy_port = free_port(), free_port()
        proxy: Proxy = toxiproxy.create_proxy("gcs", f"127.0.0.1:{gcs_port}", listen=f"127.0.0.1:{proxy_port}")
        gcs = Gcs(root / "gcs", gcs_port, proxy.url).start()
        try:
            bucket = gcs.client(gcs.url).create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
            archive = root / "upload.zip"
            build_archive(archive, size)
            zip_bytes = archive.stat().st_size
            seed_object(gcs, bucket, "zip/0001.zip", archive)
            if any(want(name) for name in ("folder_poller", "folder_poller_1_stream", "folder_rclone",
                                           "ceiling_rclone_shm", "folder_poller_no_toxic")):
                seed_folder(gcs, bucket, "folder/0001/", size, 8, root)
            folder_bytes = sum(b.size for b in bucket.list_blobs(prefix="folder/"))
            via_proxy = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
            direct = {**os.environ, "STORAGE_EMULATOR_HOST": gcs.url}
            zip_src, folder_src = f"gs://{bucket.name}/zip/", f"gs://{bucket.name}/folder/"
            for _ in range(args.rounds):
                cap = proxy.bandwidth(int(args.rate_mib * MiB / 1000))
                try:
                    for streams, label in ((n, "poller"), (1, "poller_1_stream")):
                        if want(f"zip_{label}"):
                            record(f"zip_{label}", poller(zip_src, fresh(root, "run"), streams, via_proxy), zip_bytes)
                        if want(f"folder_{label}"):
                            record(f"folder_{label}", poller(folder_src, fresh(root, "run"), streams, via_proxy),
                                   folder_bytes)
                    if want("zip_rclone"):
                        work = fresh(root, "run")
                        record("zip_rclone", rclone(f"bench:{bucket.name}/zip", work / "dl", n, proxy.url, work, True),
                               zip_bytes)
                    if want("folder_rclone"):
                        work = fresh(root, "run")
                        record("folder_rclone",
                               rclone(f"bench:{bucket.name}/folder/0001", work / "dl", n, proxy.url, work, False),
                               folder_bytes)
                finally:
                    proxy.remove_toxic(cap)
                # No toxic: the ceiling of N connections through the proxy on this machine
                # (rclone, N objects side by side, into memory: download only).
                if want("ceiling_rclone_shm"):
                    shm = Path(tempfile.mkdtemp(prefix="bench-", dir="/dev/shm"))
                    try:
                        record("ceiling_rclone_shm",
                               rclone(f"bench:{bucket.name}/folder/0001", shm, n, proxy.url, fresh(root, "run"), False),
                               folder_bytes)
                    finally:
                        shutil.rmtree(shm, ignore_errors=True)
                if want("zip_poller_no_toxic"):
                    record("zip_poller_no_toxic", poller(zip_src, fresh(root, "run"), n, via_proxy), zip_bytes)
                if want("folder_poller_no_toxic"):
                    record("folder_poller_no_toxic", poller(folder_src, fresh(root, "run"), n, via_proxy), folder_bytes)
                # Straight to fake-gcs-server: the figures of bench/poller_throughput.py.
                if want("zip_direct_baseline"):
                    work = fresh(root, "run")
                    url = f"{gcs.url}/download/storage/v1/b/{bucket.name}/o/zip%2F0001.zip?alt=media"
                    record("zip_direct_baseline",
                           run([sys.executable, "-c", BASELINE, url, str(work / "a.zip"), str(work / "out")], direct,
                               work / "baseline.log"), zip_bytes)
                if want("zip_direct_poller"):
                    record("zip_direct_poller", poller(zip_src, fresh(root, "run"), n, direct), zip_bytes)
                shutil.rmtree(root / "run", ignore_errors=True)
        finally:
            gcs.stop()
    summary = {name: {"median_s": statistics.median(r["s"] for r in runs),
                      "peak_rss_MiB": max(r["rss_MiB"] for r in runs),
                      **({"median_in_place_s": statistics.median(r["in_place_s"] for r in runs),
                          "median_after_last_byte_s": statistics.median(r["after_last_byte_s"] for r in runs),
                          "median_download_MiB_per_s": statistics.median(
                              (zip_bytes if name.startswith("zip") else folder_bytes) / MiB / r["last_byte_s"]
                              for r in runs)}
                         if all("in_place_s" in r for r in runs) else {})}
               for name, runs in results.items()}
    print(json.dumps({"summary": summary, "targets": targets(summary, n, args.rate_mib, folder_bytes),
                      "size_bytes": {"zip": zip_bytes, "folder": folder_bytes},
                      "streams": n, "rate_MiB_per_connection": args.rate_mib, **machine()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
