"""SIGTERM ends the poller within 5 s even when Pub/Sub or the API server is unreachable:
connection refused, or a black hole where every byte vanishes and calls hang until their
timeouts. Kubernetes would kill it after the grace period anyway; a pod that takes long to
stop slows every rollout."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from local_services.gcs import FakeGcs
from local_services.kube import KubeControlPlane
from local_services.process import wait_for
from local_services.toxiproxy import Proxy
from tests.faults.faultkit import kubeconfig_via, upload, wait_installed
from tests.poller import kube_identity as ki
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.gcs, pytest.mark.pubsub, pytest.mark.kube, pytest.mark.slow]

BOUND = 5.0


@contextmanager
def unreachable(proxy: Proxy, how: str) -> Iterator[None]:
    if how == "refused":
        with proxy.down():
            yield
    else:  # a black hole, both ways: open connections and new ones hang
        with (
            proxy.toxic("timeout", {"timeout": 0}, stream="upstream"),
            proxy.toxic("timeout", {"timeout": 0}, stream="downstream"),
        ):
            yield


def subscriptions(topic: str) -> list[str]:
    from google.cloud import pubsub_v1

    return [
        s
        for s in pubsub_v1.PublisherClient().list_topic_subscriptions(request={"topic": topic})
        if "/model-poller-" in s
    ]


@pytest.mark.parametrize(
    ("cut", "how"),
    [
        ("nothing", "-"),
        ("pubsub", "refused"),
        ("pubsub", "blackhole"),
        ("kube", "refused"),
        ("kube", "blackhole"),
        ("both", "blackhole"),
    ],
)
def test_sigterm_ends_within_bound(
    cut: str,
    how: str,
    fake_gcs: FakeGcs,
    bucket: Any,
    kube: KubeControlPlane,
    namespace: str,
    proxied_pubsub: Proxy,
    proxied_kube: Proxy,
    tmp_path: Path,
) -> None:
    source = f"gs://{bucket.name}/m/"
    md = ki.create_md(kube, namespace, "m", {"source": {"uri": source}, "versions": {"keep": 5}})
    ki.apply_identity(kube, md)
    kubeconfig = kubeconfig_via(ki.poller_kubeconfig(kube, md, tmp_path / "poller.kubeconfig"), proxied_kube.listen)
    pod = f"m-{uuid.uuid4().hex[:5]}"
    topic = fake_gcs.notification_topic
    models = tmp_path / "models"
    upload(bucket, "m/", 1)
    poller = PollerProcess(
        [
            "--source",
            source,
            "--model-dir",
            str(models),
            "--topic",
            topic,
            "--report-to",
            f"{namespace}/m",
            "--poll-interval",
            "1",
        ],
        tmp_path / "poller.log",
        env={
            "POD_NAME": pod,
            "KUBECONFIG": str(kubeconfig),
            "PUBSUB_EMULATOR_HOST": proxied_pubsub.listen,
            "STORAGE_EMULATOR_HOST": fake_gcs.url,
        },
    )
    try:
        poller.wait_for("/readyz")
        wait_for(
            f"the entry of {pod}: {poller.output()}",
            lambda: (ki.pollers(kube, namespace, "m").get(pod) or {}).get("versions") == [1],
            30,
        )
        own = [s for s in subscriptions(topic) if pod in s]
        assert len(own) == 1
        with ExitStack() as stack:
            if cut in ("pubsub", "both"):
                stack.enter_context(unreachable(proxied_pubsub, how))
            if cut in ("kube", "both"):
                stack.enter_context(unreachable(proxied_kube, how))
            # Work in flight when the signal comes: a new version, its status write pending.
            upload(bucket, "m/", 2)
            wait_installed(models, 2, 30, f"version 2 while {cut} is cut: {poller.output()}")
            time.sleep(1)
            assert poller.proc.poll() is None, poller.output()
            started = time.monotonic()
            code = poller.terminate(timeout=60)
            took = time.monotonic() - started
        print(f"\n{cut} {how}: SIGTERM to exit {took:.2f} s (exit {code})")
        assert code == 0, poller.output()
        assert took < BOUND, f"SIGTERM took {took:.1f} s with {cut} {how}: {poller.output()}"
        if cut in ("nothing", "pubsub"):  # the budget leaves room for what a reachable service needs
            entry = ki.pollers(kube, namespace, "m").get(pod) or {}
            assert entry.get("versions") == [1, 2], f"the last status write was lost: {entry}"
        if cut in ("nothing", "kube"):
            assert not [s for s in subscriptions(topic) if pod in s], "the subscription was not deleted"
    finally:
        poller.terminate()
