"""Downloads through a real network that fails (issue 12): Toxiproxy between the poller
and fake-gcs-server resets connections at random points and stalls them; the version
still installs, whole and checked, and what was received is not fetched again."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from model_poller.errors import Abandoned
from model_poller.stores.base import Transfer
from model_poller.sync import Engine

from local_services.archives import installed_files, model_files
from local_services.gcs import seed_object
from local_services.toxiproxy import Proxy
from tests.poller.kit import Dirs, EngineFactory
from tests.poller.recording import RecordingStore

MiB = 1 << 20
pytestmark = [pytest.mark.gcs]


def big_version(tmp: Path, version: int, size: int) -> tuple[Path, dict[str, str]]:
    """A zip of incompressible shards (about ``size`` bytes) and the SHA-256 of each file."""
    files = model_files(version)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    path = tmp / f"{version}.zip"
    shard = 64 * MiB
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for i in range(max(1, size // shard)):
            data = random.Random(i).randbytes(shard)
            name = f"variables/shard-{i}"
            digests[name] = hashlib.sha256(data).hexdigest()
            with zf.open(name, "w", force_zip64=True) as fh:
                fh.write(data)
    return path, digests


def installed_digests(version_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in installed_files(version_dir).items()}


def proxied_source(fake_gcs: Any, proxy: Proxy, bucket: Any, transfer: Transfer) -> RecordingStore:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=fake_gcs.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": proxy.url}
    )
    return RecordingStore(f"gs://{bucket.name}/m/", bucket.name, "m/", client, transfer)


def sync_in_background(engine: Engine) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(engine.sync())
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def wait_for_bytes(source: RecordingStore, at_least: int, thread: threading.Thread, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while source.received < at_least:
        assert thread.is_alive(), "the sync ended before the bytes came"
        assert time.monotonic() < deadline, f"only {source.received} of {at_least} bytes after {timeout}s"
        time.sleep(0.002)


def test_connection_resets_at_random_points_resume_where_they_stopped(
    fake_gcs: Any,
    bucket: Any,
    proxied_gcs: Proxy,
    dirs: Dirs,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 resets at random points of a 256 MiB download: one sync installs the version,
    every file matches, and at most 1.5x the object is received (each reset costs what
    was in flight, never what was already received)."""
    path, digests = big_version(dirs.root, 1, 256 * MiB)
    size = path.stat().st_size
    seed_object(fake_gcs, bucket, "m/1.zip", path)
    transfer = Transfer(streams=4, slice_bytes=8 * MiB, read_timeout=10)
    source = proxied_source(fake_gcs, proxied_gcs, bucket, transfer)
    proxied_gcs.bandwidth(8_000)  # 8 MB/s per connection: about 8 s for the whole object
    engine = make_engine(store=source)
    points = sorted(random.Random(12).sample(range(size // 20, size * 19 // 20), 20))
    with caplog.at_level(logging.INFO, logger="model_poller"):
        thread, results = sync_in_background(engine)
        for point in points:
            wait_for_bytes(source, point, thread)
            with proxied_gcs.toxic("reset_peer", {"timeout": 0}):
                time.sleep(0.03)  # every open connection is reset by its next packet
        thread.join(120)
    assert not thread.is_alive()
    (outcome,) = results
    assert not isinstance(outcome, BaseException), outcome
    assert outcome.complete, outcome.reason()
    assert installed_digests(dirs.models / "1") == digests
    resumed = [r for r in caplog.records if "resuming at byte" in r.getMessage() or "retrying in" in r.getMessage()]
    assert len(resumed) >= 20, [r.getMessage() for r in resumed]
    assert source.received < 1.5 * size, (source.received, size)


def test_a_stalled_connection_is_dropped_within_the_read_timeout(
    fake_gcs: Any,
    bucket: Any,
    proxied_gcs: Proxy,
    dirs: Dirs,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Toxiproxy's ``timeout`` toxic: the connections stay open and carry nothing. Each
    is dropped after --read-timeout, retried while the stall lasts, and the download
    resumes where it stopped once data flows again."""
    path, digests = big_version(dirs.root, 2, 64 * MiB)
    size = path.stat().st_size
    seed_object(fake_gcs, bucket, "m/2.zip", path)
    read_timeout = 1.0
    source = proxied_source(
        fake_gcs, proxied_gcs, bucket, Transfer(streams=2, slice_bytes=8 * MiB, read_timeout=read_timeout)
    )
    proxied_gcs.bandwidth(8_000)
    engine = make_engine(store=source)
    with caplog.at_level(logging.INFO, logger="model_poller"):
        thread, results = sync_in_background(engine)
        wait_for_bytes(source, size // 4, thread)
        stall = proxied_gcs.timeout(0)
        stalled_at = time.time()
        time.sleep(read_timeout + 2.5)
        proxied_gcs.remove_toxic(stall)
        thread.join(120)
    (outcome,) = results
    assert not isinstance(outcome, BaseException), outcome
    assert outcome.complete, outcome.reason()
    assert installed_digests(dirs.models / "2") == digests
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage().lower() and r.created >= stalled_at]
    assert timeouts, [r.getMessage() for r in caplog.records]
    detected = timeouts[0].created - stalled_at
    assert detected <= read_timeout + 0.5, (detected, timeouts[0].getMessage())
    assert source.received < 1.5 * size


def test_stop_cuts_a_stalled_download_short(
    fake_gcs: Any, bucket: Any, proxied_gcs: Proxy, dirs: Dirs, make_engine: EngineFactory
) -> None:
    """Stopping while every connection is stalled (read timeout 60 s) abandons the
    install at once: the blocked reads are cut, nothing is left behind."""
    path, _ = big_version(dirs.root, 3, 64 * MiB)
    seed_object(fake_gcs, bucket, "m/3.zip", path)
    source = proxied_source(fake_gcs, proxied_gcs, bucket, Transfer(streams=4, slice_bytes=8 * MiB, read_timeout=60))
    proxied_gcs.bandwidth(8_000)
    engine = make_engine(store=source)
    thread, results = sync_in_background(engine)
    wait_for_bytes(source, 8 * MiB, thread)
    proxied_gcs.timeout(0)
    time.sleep(0.5)
    stopped_at = time.monotonic()
    engine.stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 2.0
    (outcome,) = results
    assert isinstance(outcome, Abandoned), outcome
    assert [p.name for p in dirs.models.iterdir() if not p.name.startswith(".model-poller")] == []
    assert [p.name for p in dirs.models.iterdir() if p.name.startswith(".model-poller-staging")] == []
