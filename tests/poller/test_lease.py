"""A download that outlives the Pub/Sub ack deadline causes no second install.

A shared subscription with the minimum ack deadline (10 s), a source whose downloads take
longer than that (the real fake-gcs-server, slowed down in front of the poller), and a
notification for the version arriving again while the install runs (what a redelivery
after an expired lease looks like). The version must be downloaded once and installed
once, and the notification acked when it is handled.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import model_poller.runner as runner_module
import pytest
from model_poller.config import build_settings
from model_poller.errors import Abandoned
from model_poller.runner import Poller
from model_poller.stores import Store, Transfer
from model_poller.stores.base import Sink
from model_poller.versions import SourceObject

from local_services.archives import model_files, zip_bytes
from local_services.process import free_port, wait_for

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.slow]

ACK_DEADLINE = 10  # the minimum Pub/Sub accepts
DOWNLOAD_SECONDS = ACK_DEADLINE + 8


class SlowStore:
    """The real GCS source, but every full download first stalls past the ack deadline."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.downloads: list[str] = []
        self.downloading = threading.Event()

    def list_objects(self) -> list[SourceObject]:
        return self.inner.list_objects()

    def read_range(self, obj: SourceObject, start: int, end: int) -> bytes:
        return self.inner.read_range(obj, start, end)

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        self.downloads.append(obj.name)
        self.downloading.set()
        if stop.wait(DOWNLOAD_SECONDS):
            raise Abandoned()
        self.inner.download(obj, sink, stop)

    def close(self) -> None:
        self.inner.close()


def leftover_messages(subscriber: Any, subscription: str) -> list[str]:
    from google.api_core import exceptions as api

    try:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=5, retry=None)
    except api.DeadlineExceeded:
        return []
    return [m.message.attributes["objectId"] for m in response.received_messages]


def test_download_longer_than_ack_deadline_installs_once(
    fake_gcs: Any, pubsub_emulator: Any, bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import pubsub_v1

    subscription = f"projects/{fake_gcs.project}/subscriptions/lease-{uuid.uuid4().hex[:8]}"
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(
        request={"name": subscription, "topic": fake_gcs.notification_topic, "ack_deadline_seconds": ACK_DEADLINE}
    )
    assert subscriber.get_subscription(request={"subscription": subscription}).ack_deadline_seconds == ACK_DEADLINE

    sources: list[SlowStore] = []
    real_open = runner_module.open_store

    def open_slow(uri: str, project: str | None = None, transfer: Transfer | None = None) -> Store:
        source = SlowStore(real_open(uri, project, transfer))
        sources.append(source)
        return source

    monkeypatch.setattr(runner_module, "open_store", open_slow)
    models = tmp_path / "models"
    settings = build_settings(
        {
            "source": f"gs://{bucket.name}/lease/",
            "model_dir": str(models),
            "subscription": subscription,
            "poll_interval": "3600",  # only the notification can bring the version in
            "http_port": str(free_port()),
        },
        env={"POD_NAME": "lease-test"},
    )
    poller = Poller(settings)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(poller.run()), name="poller", daemon=True)
    thread.start()
    try:
        wait_for("initial sync", poller.probes.ready.is_set, 60)
        source = sources[0]
        blob = bucket.blob("lease/7.zip")
        blob.upload_from_string(zip_bytes(model_files(7, size=300_000), top="0007"))
        assert source.downloading.wait(30), "the notification did not start an install"
        started = time.monotonic()

        # While the install runs: the same notification again (a redelivery), past the
        # ack deadline of the original delivery.
        blob.reload()
        publisher = pubsub_v1.PublisherClient()
        publisher.publish(
            fake_gcs.notification_topic,
            b"{}",
            bucketId=bucket.name,
            objectId=blob.name,
            objectGeneration=str(blob.generation),
            eventType="OBJECT_FINALIZE",
            payloadFormat="JSON_API_V1",
        ).result(timeout=30)
        time.sleep(ACK_DEADLINE + 2)
        assert not (models / "7").exists(), "the slow download should still be running"

        wait_for("version 7 installed", lambda: (models / "7").is_dir(), DOWNLOAD_SECONDS + 30)
        assert time.monotonic() - started > ACK_DEADLINE  # the install outlived the lease
        # Give any redelivery time to arrive and be handled, then check nothing ran twice.
        sample = poller.metrics.registry.get_sample_value
        wait_for(
            "the duplicate notification was handled",
            lambda: (sample("model_poller_notifications_total", {"outcome": "ignored"}) or 0) >= 1,
            ACK_DEADLINE + 10,
        )
        time.sleep(ACK_DEADLINE + 2)
        assert source.downloads == ["7.zip"]
        assert sample("model_poller_installs_total") == 1
        assert sample("model_poller_install_failures_total") == 0
        assert sample("model_poller_downloaded_bytes_total") == blob.size
        assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == ["7"]
        # Every notification was acked once handled: nothing is left on the subscription.
        assert leftover_messages(subscriber, subscription) == []
    finally:
        poller.request_stop()
        thread.join(60)
        subscriber.delete_subscription(request={"subscription": subscription})
    assert codes == [0]
