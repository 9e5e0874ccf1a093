"""2 s of latency on every answer from Cloud Storage and Pub/Sub (a Toxiproxy latency toxic
in front of fake-gcs-server and the Pub/Sub emulator): installs still complete, and a new
version is installed within the poll interval + 5 s of its upload, through its notification."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from local_services.archives import model_files, zip_bytes
from local_services.gcs import FakeGcs
from local_services.toxiproxy import Proxy
from tests.faults.faultkit import versions_in, wait_installed
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.slow]

LATENCY_MS = 2000
POLL_INTERVAL = 10.0
MiB = 1 << 20


def files(version: int) -> dict[str, bytes]:
    """A SavedModel-shaped version with two 2 MiB shards that do not compress."""
    return {
        **model_files(version),
        "variables/variables.data-00000-of-00002": os.urandom(2 * MiB),
        "variables/variables.data-00001-of-00002": os.urandom(2 * MiB),
    }


def assert_files(models: Path, version: int, want: dict[str, bytes]) -> None:
    root = models / str(version)
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == want, f"version {version} differs from its upload"


def test_two_seconds_of_latency_on_every_answer(
    fake_gcs: FakeGcs, bucket: Any, proxied_gcs: Proxy, proxied_pubsub: Proxy, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    uploads = {1: files(1)}
    bucket.blob("m/1.zip").upload_from_string(zip_bytes(uploads[1]))
    for proxy in (proxied_gcs, proxied_pubsub):
        proxy.latency(LATENCY_MS)
    started = time.monotonic()
    poller = PollerProcess(
        [
            "--source",
            f"gs://{bucket.name}/m/",
            "--model-dir",
            str(models),
            "--topic",
            fake_gcs.notification_topic,
            "--keep",
            "10",
            "--poll-interval",
            f"{POLL_INTERVAL:g}",
        ],
        tmp_path / "poller.log",
        env={
            "POD_NAME": f"lat-{uuid.uuid4().hex[:5]}",
            "STORAGE_EMULATOR_HOST": proxied_gcs.url,
            "PUBSUB_EMULATOR_HOST": proxied_pubsub.listen,
        },
    )
    try:
        poller.wait_for("/readyz", timeout=120)
        print(
            f"\nlatency {LATENCY_MS} ms: subscribed, initial sync done and ready after "
            f"{time.monotonic() - started:.1f} s"
        )
        assert versions_in(models) == [1]

        figures = []
        # An archive, then a folder version (several objects, the _READY marker last).
        uploads[2] = files(2)
        bucket.blob("m/2.zip").upload_from_string(zip_bytes(uploads[2]))
        uploaded = time.monotonic()
        seen = wait_installed(
            models, 2, POLL_INTERVAL + 5, f"zip version 2 within {POLL_INTERVAL + 5:g} s: {poller.output()}"
        )
        figures.append(("zip", seen - uploaded))
        uploads[3] = files(3)
        for name, data in uploads[3].items():
            bucket.blob(f"m/3/{name}").upload_from_string(data)
        bucket.blob("m/3/_READY").upload_from_string(b"")
        uploaded = time.monotonic()
        seen = wait_installed(
            models, 3, POLL_INTERVAL + 5, f"folder version 3 within {POLL_INTERVAL + 5:g} s: {poller.output()}"
        )
        figures.append(("folder", seen - uploaded))
        for kind, took in figures:
            print(
                f"latency {LATENCY_MS} ms: {kind} version, upload to installed {took:.1f} s "
                f"(bound: poll interval {POLL_INTERVAL:g} s + 5 s)"
            )
        assert poller.metric("model_poller_notification_to_installed_seconds_count") >= 1
        for version in (1, 2, 3):
            assert_files(models, version, uploads[version])
        assert poller.proc.poll() is None, poller.output()
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
