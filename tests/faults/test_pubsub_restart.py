"""The Pub/Sub emulator is killed and restarted empty behind the same address: the poller's
own subscription (and the topic) are gone. The poller lists at its short fallback interval
meanwhile, recreates its subscription once an administrator recreates the topic, catches up
by listing, and hears later notifications again; it never exits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_services.gcs import FakeGcs
from local_services.process import wait_for
from local_services.pubsub import PubSubEmulator
from local_services.toxiproxy import Proxy, Toxiproxy
from tests.faults.faultkit import assert_intact, upload, versions_in, wait_installed
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.slow]

FALLBACK = 3.0  # --fallback-poll-interval of the poller under test


def create_topic(topic: str) -> None:
    from google.cloud import pubsub_v1

    pubsub_v1.PublisherClient().create_topic(name=topic)


def subscriptions(topic: str) -> list[str]:
    from google.cloud import pubsub_v1

    return list(pubsub_v1.PublisherClient().list_topic_subscriptions(request={"topic": topic}))


class Emulators:
    """A private emulator behind a stable proxy, restartable empty; a private fake-gcs-server
    publishing through that proxy."""

    def __init__(self, root: Path, proxy: Proxy) -> None:
        self.root = root
        self.proxy = proxy
        self.restarts = 0
        self.emulator = PubSubEmulator(root / "pubsub-0").start()
        proxy.set_upstream(self.emulator.host)

    def kill(self) -> None:
        self.emulator.stop()

    def start_empty(self) -> None:
        self.restarts += 1
        self.emulator = PubSubEmulator(self.root / f"pubsub-{self.restarts}").start()
        self.proxy.set_upstream(self.emulator.host)


@pytest.fixture
def private_pubsub(toxiproxy: Toxiproxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulators]:
    proxy = toxiproxy.create_proxy(f"pubsub-restart-{uuid.uuid4().hex[:6]}", "127.0.0.1:1")
    emulators = Emulators(tmp_path, proxy)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", proxy.listen)
    try:
        yield emulators
    finally:
        emulators.emulator.stop()
        proxy.delete()


@pytest.fixture
def private_gcs(private_pubsub: Emulators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcs]:
    server = FakeGcs(tmp_path / "gcs", pubsub_host=private_pubsub.proxy.listen, project=private_pubsub.emulator.project)
    create_topic(server.notification_topic)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    try:
        yield server
    finally:
        server.stop()


def test_emulator_restarted_empty(private_pubsub: Emulators, private_gcs: FakeGcs, tmp_path: Path) -> None:
    bucket = private_gcs.client().create_bucket(f"b-{uuid.uuid4().hex[:12]}")
    topic = private_gcs.notification_topic
    models = tmp_path / "models"
    pod = f"restart-{uuid.uuid4().hex[:5]}"
    poller = PollerProcess(
        [
            "--source",
            f"gs://{bucket.name}/m/",
            "--model-dir",
            str(models),
            "--topic",
            topic,
            "--keep",
            "10",
            "--poll-interval",
            "600",
            "--fallback-poll-interval",
            str(FALLBACK),
        ],
        tmp_path / "poller.log",
        env={
            "POD_NAME": pod,
            "PUBSUB_EMULATOR_HOST": private_pubsub.proxy.listen,
            "STORAGE_EMULATOR_HOST": private_gcs.url,
        },
    )
    try:
        poller.wait_for("/readyz")
        wait_for("the poller's subscription", lambda: len(subscriptions(topic)) == 1, 30)
        # The poll interval is 10 minutes: only a notification brings version 1 in quickly.
        uploaded = upload(bucket, "m/", 1)
        seen = wait_installed(models, 1, 30, f"version 1 via its notification: {poller.output()}")
        print(f"\nbefore the restart: notification to installed {seen - uploaded:.2f} s")

        private_pubsub.kill()
        killed = time.monotonic()
        # Pub/Sub is away: the client reconnects silently; only listing finds this upload.
        uploaded = upload(bucket, "m/", 2)
        seen = wait_installed(
            models, 2, FALLBACK + 15, f"version 2 by listing while Pub/Sub is away: {poller.output()}"
        )
        print(
            f"emulator killed: version 2 found by listing {seen - uploaded:.2f} s after its upload "
            f"({seen - killed:.2f} s after the kill; fallback interval {FALLBACK:g} s)"
        )

        private_pubsub.start_empty()
        restarted = time.monotonic()
        # Back, but empty: the subscription and the topic are gone; nobody hears of this upload.
        uploaded = upload(bucket, "m/", 3)
        seen = wait_installed(models, 3, FALLBACK + 15, f"version 3 by listing, Pub/Sub empty: {poller.output()}")
        print(
            f"emulator restarted empty: version 3 found by listing {seen - uploaded:.2f} s after its upload "
            f"({seen - restarted:.2f} s after the restart)"
        )
        assert poller.proc.poll() is None, poller.output()

        # The stream meets the empty emulator (when its reconnection backs off long enough),
        # and the poller's attempts to recreate its subscription fail: no topic.
        wait_for(
            f"a failed attempt to recreate the subscription: {poller.output()}",
            lambda: f"topic {topic} does not exist" in poller.log.read_text(),
            90,
        )
        assert poller.proc.poll() is None, poller.output()
        # An administrator recreates the topic; the poller recreates its own subscription.
        create_topic(topic)
        recreated = time.monotonic()
        wait_for(f"the subscription recreated: {poller.output()}", lambda: len(subscriptions(topic)) == 1, 30)
        resubscribed = time.monotonic()
        print(f"topic recreated: subscription recreated after {resubscribed - recreated:.2f} s")
        time.sleep(1)  # let the new stream open

        # Back on notifications: a notification brings version 4 ...
        before = poller.metric("model_poller_notification_to_installed_seconds_count")
        uploaded = upload(bucket, "m/", 4)
        seen = wait_installed(models, 4, 30, f"version 4 via its notification: {poller.output()}")
        print(f"after recovery: notification to installed {seen - uploaded:.2f} s")
        wait_for(
            f"version 4 counted as brought by a notification: {poller.output()}",
            lambda: poller.metric("model_poller_notification_to_installed_seconds_count") == before + 1,
            10,
        )
        # ... and the fallback listing is over: no listing for longer than the fallback interval.
        last_sync = poller.metric("model_poller_last_sync_timestamp_seconds")
        time.sleep(2 * FALLBACK + 1)
        assert poller.metric("model_poller_last_sync_timestamp_seconds") == last_sync, "still listing at the fallback"
        assert versions_in(models) == [1, 2, 3, 4]
        for version in (1, 2, 3, 4):
            assert_intact(models, version)
        assert poller.proc.poll() is None, poller.output()
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
