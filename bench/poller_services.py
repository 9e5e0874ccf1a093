"""Start fake-gcs-server and the Pub/Sub emulator for the poller benchmarks.

Reuses the test suite's service launchers (local_services/), so benchmarks and tests run
against the same binaries.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from local_services.gcs import FakeGcs  # noqa: E402
from local_services.pubsub import PubSubEmulator  # noqa: E402


@contextlib.contextmanager
def services(workdir: Path | None = None) -> Iterator[tuple[FakeGcs, PubSubEmulator, Path]]:
    """fake-gcs-server publishing notifications to the Pub/Sub emulator; env vars set."""
    from google.cloud import pubsub_v1

    root = Path(workdir or tempfile.mkdtemp(prefix="poller-bench-"))
    (root / "pubsub").mkdir(parents=True, exist_ok=True)
    (root / "gcs").mkdir(parents=True, exist_ok=True)
    emulator = PubSubEmulator(root / "pubsub").start()
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    gcs: FakeGcs | None = None
    try:
        gcs = FakeGcs(root / "gcs", pubsub_host=emulator.host, project=emulator.project)
        pubsub_v1.PublisherClient().create_topic(name=gcs.notification_topic)
        gcs.start()
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        yield gcs, emulator, root
    finally:
        if gcs is not None:
            gcs.stop()
        emulator.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
