"""Smoke tests: each service fixture is a real, working service."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from google.cloud import pubsub_v1

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub]


def _subscribe(topic: str) -> tuple[pubsub_v1.SubscriberClient, str]:
    subscriber = pubsub_v1.SubscriberClient()
    project = topic.split("/")[1]
    name = subscriber.subscription_path(project, f"smoke-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=name, topic=topic)
    return subscriber, name


def _pull(subscriber: pubsub_v1.SubscriberClient, name: str, bucket: str, want: int) -> list[Any]:
    """Pull until ``want`` messages about ``bucket`` arrived (others belong to other tests)."""
    got: list[Any] = []
    for _ in range(40):
        resp = subscriber.pull(subscription=name, max_messages=10, timeout=5)
        if resp.received_messages:
            subscriber.acknowledge(subscription=name, ack_ids=[m.ack_id for m in resp.received_messages])
        got += [m.message for m in resp.received_messages if m.message.attributes["bucketId"] == bucket]
        if len(got) >= want:
            return got
    raise AssertionError(f"only {len(got)} of {want} notifications for bucket {bucket} arrived")


def test_emulator_env_is_set(fake_gcs: Any, pubsub_emulator: Any) -> None:
    assert os.environ["STORAGE_EMULATOR_HOST"] == fake_gcs.url
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host


def test_write_read_and_notifications(fake_gcs: Any, bucket: Any) -> None:
    subscriber, sub = _subscribe(fake_gcs.notification_topic)

    blob = bucket.blob("models/0001.zip")
    blob.upload_from_string(b"not really a zip")
    assert bucket.blob("models/0001.zip").download_as_bytes() == b"not really a zip"
    blob.reload()
    assert blob.crc32c and blob.md5_hash and blob.generation

    bucket.blob("models/0001.zip").delete()

    finalize, delete = _pull(subscriber, sub, bucket.name, want=2)
    assert finalize.attributes["eventType"] == "OBJECT_FINALIZE"
    assert delete.attributes["eventType"] == "OBJECT_DELETE"
    for message in (finalize, delete):
        assert message.attributes["objectId"] == "models/0001.zip"
        assert message.attributes["payloadFormat"] == "JSON_API_V1"
        assert message.attributes["objectGeneration"] == str(blob.generation)
    payload = json.loads(finalize.data)
    assert payload["name"] == "models/0001.zip"
    assert payload["bucket"] == bucket.name
    assert payload["crc32c"] == blob.crc32c
    subscriber.delete_subscription(subscription=sub)


def test_pubsub_publish_and_pull(pubsub_emulator: Any) -> None:
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(pubsub_emulator.project, f"smoke-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=topic)
    subscriber, sub = _subscribe(topic)
    publisher.publish(topic, b"hello", bucketId="x").result(timeout=10)
    assert [m.data for m in _pull(subscriber, sub, "x", want=1)] == [b"hello"]
