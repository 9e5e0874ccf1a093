"""Install throughput and peak RSS of the poller vs a plain baseline, side by side.

For each size (default 1 GiB and 4 GiB) one zip archive of incompressible shards (like
float weights) is placed in fake-gcs-server (see ``seed_object``). Then, alternating, each run in its own
fresh process on the same object:
- baseline: streaming HTTP GET of the object (1 MiB chunks) to a file, then
  ``zipfile.ZipFile.extractall`` (no checksum, no limits, no fsync, no atomic rename);
- poller: ``model-poller --once`` (CRC32C, hardened extraction, fsync, rename).
Wall time includes process start. Peak RSS (ru_maxrss) is measured per process.

    .venv/bin/python bench/poller_throughput.py [--sizes 1,4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

from poller_services import machine, services

from local_services.gcs import seed_object

GiB = 1 << 30
MiB = 1 << 20
SHARD = 256 * MiB

BASELINE = r"""
import sys, zipfile, requests
url, archive, dest = sys.argv[1:4]
with requests.get(url, stream=True) as r, open(archive, "wb") as fh:
    r.raise_for_status()
    for chunk in r.iter_content(1 << 20):
        fh.write(chunk)
zipfile.ZipFile(archive).extractall(dest)
"""


def build_archive(path: Path, size: int) -> None:
    block = os.urandom(16 * MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("saved_model.pb", b"saved model")
        zf.writestr("variables/variables.index", b"index")
        written, shard = 0, 0
        while written < size:
            n = min(SHARD, size - written)
            with zf.open(f"variables/variables.data-{shard:05d}", "w", force_zip64=True) as fh:
                done = 0
                while done < n:
                    step = min(len(block), n - done)
                    rot = (shard * 7919 + done // MiB) % len(block)
                    view = memoryview(block)
                    fh.write(view[rot:step] if step <= len(block) - rot else view[rot:])
                    fh.write(view[: max(0, step - (len(block) - rot))])
                    done += step
            written += n
            shard += 1


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one child process.

    Dirty pages of earlier runs are flushed first, so no run pays for another's writeback.
    Peak RSS is the child's VmHWM, sampled from /proc until it exits (ru_maxrss would
    include the forking parent's memory).
    """
    os.sync()
    time.sleep(1)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return seconds, peak_kib / 1024, proc.returncode


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,4", help="archive sizes in GiB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    results = []
    with services(Path(args.workdir) if args.workdir else None) as (gcs, _emulator, root):
        bucket = gcs.client().create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        env = dict(os.environ)
        for size_gib in (float(s) for s in args.sizes.split(",")):
            size = int(size_gib * GiB)
            archive = root / "upload.zip"
            build_archive(archive, size)
            name = f"m{size_gib:g}/0001.zip"
            archive_bytes = archive.stat().st_size
            seed_object(gcs, bucket, name, archive)
            url = f"{gcs.url}/download/storage/v1/b/{bucket.name}/o/{name.replace('/', '%2F')}?alt=media"
            runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "poller": []}
            for _ in range(args.rounds):
                for kind in ("baseline", "poller"):
                    work = root / f"run-{kind}"
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir()
                    if kind == "baseline":
                        argv = [sys.executable, "-c", BASELINE, url, str(work / "a.zip"), str(work / "out")]
                    else:
                        argv = [
                            sys.executable,
                            "-m",
                            "model_poller",
                            "--once",
                            "--source",
                            f"gs://{bucket.name}/m{size_gib:g}/",
                            "--model-dir",
                            str(work / "models"),
                        ]
                    seconds, rss, code = timed(argv, env)
                    if code != 0:
                        raise SystemExit(f"{kind} failed with {code}")
                    runs[kind].append((seconds, rss))
                    shutil.rmtree(work, ignore_errors=True)
            base = min(s for s, _ in runs["baseline"])
            poll = min(s for s, _ in runs["poller"])
            result = {
                "size_gib": size_gib,
                "archive_bytes": archive_bytes,
                "baseline_s": [round(s, 2) for s, _ in runs["baseline"]],
                "poller_s": [round(s, 2) for s, _ in runs["poller"]],
                "ratio_best": round(poll / base, 3),
                # Runs on this VM vary by +-10%: the median ratio is the steadier figure.
                "ratio_median": round(
                    statistics.median(s for s, _ in runs["poller"]) / statistics.median(s for s, _ in runs["baseline"]),
                    3,
                ),
                "poller_MiB_per_s": round(archive_bytes / MiB / poll, 1),
                "baseline_MiB_per_s": round(archive_bytes / MiB / base, 1),
                "poller_peak_rss_MiB": round(max(r for _, r in runs["poller"]), 1),
                "baseline_peak_rss_MiB": round(max(r for _, r in runs["baseline"]), 1),
            }
            result["fake_gcs_peak_rss_MiB"] = round(vm_hwm_mib(gcs._service.proc.pid), 1)
            print(json.dumps(result), flush=True)
            results.append(result)
            bucket.blob(name).delete()
    print(json.dumps({"summary": results, **machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
