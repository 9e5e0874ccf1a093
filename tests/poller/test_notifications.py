"""Pub/Sub notifications from fake-gcs-server: every replica hears of every version;
duplicates and out-of-order redelivery change nothing twice."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from model_poller.notifications import subscription_filter, subscription_name

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.slow]


def versions_in(models: Path) -> list[int]:
    if not models.exists():
        return []
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def our_subscriptions(project: str, topic: str) -> list[str]:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    return [s for s in publisher.list_topic_subscriptions(request={"topic": topic}) if "/model-poller-" in s]


def test_three_replicas_in_topic_mode(fake_gcs: Any, bucket: Any, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    topic = fake_gcs.notification_topic
    source = f"gs://{bucket.name}/models/"
    pods = [f"replica-{i}-{uuid.uuid4().hex[:5]}" for i in range(3)]
    pollers = [
        PollerProcess(
            [
                "--source",
                source,
                "--model-dir",
                str(tmp_path / pod),
                "--topic",
                topic,
                "--poll-interval",
                "3600",
                "--keep",
                "10",
            ],
            tmp_path / f"{pod}.log",
            env={"POD_NAME": pod},
        )
        for pod in pods
    ]
    try:
        for p in pollers:
            p.wait_for("/readyz")
        assert len(our_subscriptions(fake_gcs.project, topic)) >= 3
        # The poll interval is an hour: only notifications can bring these in.
        for v in (1, 2, 3):
            bucket.blob(f"models/{v}.zip").upload_from_string(zip_bytes(model_files(v)))
        for pod, p in zip(pods, pollers, strict=False):
            wait_for(f"{pod}: {p.output()}", lambda pod=pod: versions_in(tmp_path / pod) == [1, 2, 3], 30)
        for p in pollers:
            wait_for(p.output(), lambda p=p: p.metric("model_poller_installs_total") == 3, 10)
            assert p.metric("model_poller_notification_to_installed_seconds_count") >= 1
        downloaded = [p.metric("model_poller_downloaded_bytes_total") for p in pollers]
        ignored = [p.metric("model_poller_notifications_total", 'outcome="ignored"') for p in pollers]

        # Duplicates and out-of-order redelivery: the same notifications again, oldest last.
        publisher = pubsub_v1.PublisherClient()
        for v in (3, 2, 2, 1, 3, 1):
            blob = bucket.get_blob(f"models/{v}.zip")
            publisher.publish(
                topic,
                b"{}",
                bucketId=bucket.name,
                objectId=blob.name,
                objectGeneration=str(blob.generation),
                eventType="OBJECT_FINALIZE",
                payloadFormat="JSON_API_V1",
            ).result(timeout=30)
        for i, p in enumerate(pollers):
            wait_for(
                p.output(),
                lambda p=p, i=i: p.metric("model_poller_notifications_total", 'outcome="ignored"') >= ignored[i] + 6,
                20,
            )
        for i, p in enumerate(pollers):
            assert p.metric("model_poller_installs_total") == 3
            assert p.metric("model_poller_downloaded_bytes_total") == downloaded[i]
        assert all(versions_in(tmp_path / pod) == [1, 2, 3] for pod in pods)

        # A deletion is a rollback, also learned from a notification.
        bucket.blob("models/3.zip").delete()
        for pod in pods:
            wait_for(pod, lambda pod=pod: versions_in(tmp_path / pod) == [1, 2], 30)
    finally:
        codes = [p.terminate() for p in pollers]
    assert codes == [0, 0, 0], [p.output() for p in pollers]
    remaining = our_subscriptions(fake_gcs.project, topic)
    assert not any(pod.lower() in s for s in remaining for pod in pods), remaining
    for p in pollers:
        assert "Traceback" not in p.output()


def test_shared_subscription_mode(fake_gcs: Any, bucket: Any, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    name = f"projects/{fake_gcs.project}/subscriptions/shared-{uuid.uuid4().hex[:8]}"
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(request={"name": name, "topic": fake_gcs.notification_topic})
    models = tmp_path / "models"
    poller = PollerProcess(
        [
            "--source",
            f"gs://{bucket.name}/m/",
            "--model-dir",
            str(models),
            "--subscription",
            name,
            "--poll-interval",
            "3600",
        ],
        tmp_path / "poller.log",
    )
    try:
        poller.wait_for("/readyz")
        bucket.blob("m/0004.zip").upload_from_string(zip_bytes(model_files(4), top="0004"))
        wait_for(poller.output(), lambda: versions_in(models) == [4], 30)
    finally:
        code = poller.terminate()
    assert code == 0
    # A shared subscription is not ours to delete.
    subscriber.get_subscription(request={"subscription": name})
    subscriber.delete_subscription(request={"subscription": name})


def test_missing_topic_logs_one_line_and_keeps_listing(fake_gcs: Any, bucket: Any, tmp_path: Path) -> None:
    bucket.blob("m/1.zip").upload_from_string(zip_bytes(model_files(1)))
    models = tmp_path / "models"
    poller = PollerProcess(
        [
            "--source",
            f"gs://{bucket.name}/m/",
            "--model-dir",
            str(models),
            "--topic",
            f"projects/{fake_gcs.project}/topics/no-such-topic",
            "--poll-interval",
            "1",
        ],
        tmp_path / "poller.log",
    )
    try:
        poller.wait_for("/readyz")
        assert versions_in(models) == [1]
        wait_for(
            "a condition", lambda: "topic projects/" in poller.output() and "does not exist" in poller.output(), 10
        )
        bucket.blob("m/2.zip").upload_from_string(zip_bytes(model_files(2)))
        wait_for(poller.output(), lambda: versions_in(models) == [1, 2], 15)
    finally:
        code = poller.terminate()
    assert code == 0
    assert "Traceback" not in poller.output()


def test_subscription_naming_and_filter() -> None:
    a = subscription_name("p", "Pod_A.1", "projects/p/topics/t", "gs://b/m/")
    assert a.startswith("projects/p/subscriptions/model-poller-pod-a-1-")
    assert a == subscription_name("p", "Pod_A.1", "projects/p/topics/t", "gs://b/m/")  # stable across restarts
    assert a != subscription_name("p", "pod-b", "projects/p/topics/t", "gs://b/m/")
    assert subscription_filter("b", "m/") == 'attributes.bucketId = "b" AND hasPrefix(attributes.objectId, "m/")'
    assert subscription_filter("b", "") == 'attributes.bucketId = "b"'


def test_names_that_are_no_version_never_stop_the_poller(fake_gcs: Any, bucket: Any, tmp_path: Path) -> None:
    """``²`` passes str.isdigit() and then makes int() raise: such a notification used to
    end the poller, unacked, so it came back and ended every restart too."""
    from google.api_core import exceptions as api
    from google.cloud import pubsub_v1

    junk = ["m/²/_READY", "m/١٢.zip", "m/99999999999999999999.zip", "m/١٢/_READY"]
    bucket.blob("m/1.zip").upload_from_string(zip_bytes(model_files(1)))
    for name in junk:  # before the subscription exists: only the listing sees these
        bucket.blob(name).upload_from_string(zip_bytes(model_files(12)))
    name = f"projects/{fake_gcs.project}/subscriptions/junk-{uuid.uuid4().hex[:8]}"
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(
        request={"name": name, "topic": fake_gcs.notification_topic, "ack_deadline_seconds": 10}
    )
    models = tmp_path / "models"
    poller = PollerProcess(
        [
            "--source",
            f"gs://{bucket.name}/m/",
            "--model-dir",
            str(models),
            "--subscription",
            name,
            "--poll-interval",
            "3600",
            "--keep",
            "10",
        ],
        tmp_path / "poller.log",
    )
    try:
        poller.wait_for("/readyz")
        assert versions_in(models) == [1]
        publisher = pubsub_v1.PublisherClient()
        for object_name in junk:
            blob = bucket.get_blob(object_name)
            for event in ("OBJECT_FINALIZE", "OBJECT_DELETE"):
                publisher.publish(
                    fake_gcs.notification_topic,
                    b"{}",
                    bucketId=bucket.name,
                    objectId=object_name,
                    objectGeneration=str(blob.generation),
                    eventType=event,
                    payloadFormat="JSON_API_V1",
                ).result(timeout=30)
        # A generation that is not ASCII digits is no generation (int() would take it).
        publisher.publish(
            fake_gcs.notification_topic,
            b"{}",
            bucketId=bucket.name,
            objectId="m/1.zip",
            objectGeneration="١٢",
            eventType="OBJECT_FINALIZE",
            payloadFormat="JSON_API_V1",
        ).result(timeout=30)
        wait_for(
            poller.output(), lambda: poller.metric("model_poller_notifications_total", 'outcome="ignored"') >= 8, 20
        )
        # Still following notifications: a later valid version arrives through one.
        bucket.blob("m/2.zip").upload_from_string(zip_bytes(model_files(2)))
        wait_for(poller.output(), lambda: versions_in(models) == [1, 2], 30)
        assert poller.metric("model_poller_install_attempts_total") == 2  # none of the junk names
        assert poller.metric("model_poller_rejections_total", 'reason="corrupt"') == 0
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
    log = poller.log.read_text()
    assert "Traceback" not in log
    for object_name in junk:
        # The listing logs each name once; each notification is logged once, then acked.
        assert log.count(f"ignoring notification for gs://{bucket.name}/{object_name}:") == 2, log
    for listed in ["m/²/", "m/١٢.zip", "m/99999999999999999999.zip", "m/١٢/"]:
        assert log.count(f"ignoring gs://{bucket.name}/{listed}:") == 1, log
    # Everything was acked: nothing comes back once the ack deadline (10 s) has passed.
    deadline = time.monotonic() + 12
    redelivered = []
    while time.monotonic() < deadline:
        try:
            response = subscriber.pull(request={"subscription": name, "max_messages": 50}, timeout=3)
        except api.DeadlineExceeded:
            continue
        redelivered += [m.message.attributes.get("objectId") for m in response.received_messages]
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": name, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
    subscriber.delete_subscription(request={"subscription": name})
    assert redelivered == []
