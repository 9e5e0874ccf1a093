"""Notification-to-installed latency: 3 pollers in --topic mode, N small uploads.

For each upload to fake-gcs-server (which publishes OBJECT_FINALIZE to the Pub/Sub
emulator), the time from the upload call returning to ``<model-dir>/<version>/``
appearing, per replica. The poll interval is an hour, so only notifications count.

    .venv/bin/python bench/poller_latency.py [--uploads 25]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile

from poller_services import machine, percentile, services

REPLICAS = 3


def small_version(v: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{v:04d}/saved_model.pb", f"model {v}".encode())
        zf.writestr(f"{v:04d}/variables/variables.index", b"i")
        zf.writestr(f"{v:04d}/variables/variables.data-00000-of-00001", os.urandom(64 * 1024))
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=25)
    args = parser.parse_args()
    with services() as (gcs, _emulator, root):
        bucket = gcs.client().create_bucket(f"bench-{uuid.uuid4().hex[:8]}")
        procs = []
        dirs = []
        for i in range(REPLICAS):
            models = root / f"models-{i}"
            dirs.append(models)
            env = {**os.environ, "POD_NAME": f"bench-replica-{i}"}
            log = open(root / f"poller-{i}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "model_poller",
                        "--source",
                        f"gs://{bucket.name}/models/",
                        "--model-dir",
                        str(models),
                        "--topic",
                        gcs.notification_topic,
                        "--poll-interval",
                        "3600",
                        "--keep",
                        str(args.uploads + 1),
                        "--http-port",
                        "0",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        try:
            deadline = time.monotonic() + 60
            while not all(
                (root / f"poller-{i}.log").read_text().count("listening for notifications") for i in range(REPLICAS)
            ):
                assert time.monotonic() < deadline, "pollers did not start"
                time.sleep(0.1)
            time.sleep(1.0)  # initial syncs done
            samples: list[float] = []
            for v in range(1, args.uploads + 1):
                data = small_version(v)
                bucket.blob(f"models/{v:04d}.zip").upload_from_string(data)
                t0 = time.monotonic()
                pending = set(range(REPLICAS))
                while pending:
                    for i in list(pending):
                        if (dirs[i] / str(v)).is_dir():
                            samples.append(time.monotonic() - t0)
                            pending.discard(i)
                    if time.monotonic() - t0 > 30:
                        raise SystemExit(f"version {v} not installed on replicas {sorted(pending)} in 30s")
                    time.sleep(0.002)
                time.sleep(0.2)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(30) for p in procs]
        result = {
            "benchmark": "notification-to-installed latency",
            "replicas": REPLICAS,
            "uploads": args.uploads,
            "samples": len(samples),
            "p50_s": round(percentile(samples, 0.5), 3),
            "p99_s": round(percentile(samples, 0.99), 3),
            "max_s": round(max(samples), 3),
            "exit_codes": codes,
            **machine(),
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
