"""Session fixtures that start the real services the suite runs against.

Each service is started once per test session, on loopback, and stopped at the end. A
missing binary or emulator fails the tests that need it with a message saying how to
install it; nothing is skipped. See local_services/README.md for the interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from local_services.gcs import FakeGcs
from local_services.kube import KubeControlPlane
from local_services.pubsub import PubSubEmulator
from local_services.toxiproxy import Proxy, Toxiproxy

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "crds" / "modeldeployments.modelpoller.dev.yaml"

log = logging.getLogger("services")


class _TerminalHandler(logging.Handler):
    """Shows service start/stop lines on the terminal, so every run says what it started."""

    def __init__(self, config: pytest.Config) -> None:
        super().__init__(logging.INFO)
        self.config = config

    def emit(self, record: logging.LogRecord) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(f"[services] {record.getMessage()}")


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("services").addHandler(_TerminalHandler(config))
    logging.getLogger("services").setLevel(logging.INFO)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Point the Google clients of this process (and its children) at an emulator."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeControlPlane]:
    """etcd + kube-apiserver with the ModelDeployment CRD applied and Established."""
    plane = KubeControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        apply_crd(plane)
        yield plane
    finally:
        plane.stop()


def apply_crd(plane: KubeControlPlane) -> None:
    from kubernetes import client

    api = client.ApiextensionsV1Api(plane.api_client())
    body = yaml.safe_load(CRD_FILE.read_text())
    api.create_custom_resource_definition(body)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = api.read_custom_resource_definition(body["metadata"]["name"])
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        if conditions.get("Established") == "True":
            log.info("CRD %s established", body["metadata"]["name"])
            return
        time.sleep(0.2)
    raise RuntimeError(f"CRD {body['metadata']['name']} not Established after 30s")


@pytest.fixture
def namespace(kube: KubeControlPlane) -> str:
    """A fresh namespace per test (left behind: without a namespace controller it never goes away)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube.api_client()).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    emulator = PubSubEmulator(tmp_path_factory.mktemp("pubsub"))
    try:
        emulator.start()
        with _env("PUBSUB_EMULATOR_HOST", emulator.host):
            yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory, pubsub_emulator: PubSubEmulator) -> Iterator[FakeGcs]:
    """fake-gcs-server whose object notifications go to ``fake_gcs.notification_topic``."""
    from google.cloud import pubsub_v1

    server = FakeGcs(tmp_path_factory.mktemp("gcs"), pubsub_host=pubsub_emulator.host, project=pubsub_emulator.project)
    pubsub_v1.PublisherClient().create_topic(name=server.notification_topic)
    try:
        server.start()
        with _env("STORAGE_EMULATOR_HOST", server.url):
            yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(fake_gcs: FakeGcs) -> Any:
    """A fresh, empty bucket per test."""
    return fake_gcs.client().create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    """toxiproxy-server; tests put proxies in front of services and add toxics through it."""
    with Toxiproxy(tmp_path_factory.mktemp("toxiproxy")) as server:
        yield server


@contextlib.contextmanager
def _proxy(toxiproxy: Toxiproxy, name: str, upstream: str) -> Iterator[Proxy]:
    """A proxy of this test only: deleting it at the end closes its connections and toxics."""
    proxy = toxiproxy.create_proxy(f"{name}-{uuid.uuid4().hex[:8]}", upstream)
    log.info("proxy %s: %s -> %s", proxy.name, proxy.listen, upstream)
    try:
        yield proxy
    finally:
        proxy.delete()


@pytest.fixture
def proxied_gcs(toxiproxy: Toxiproxy, fake_gcs: FakeGcs) -> Iterator[Proxy]:
    """A proxy in front of fake-gcs-server: ``.url`` is a STORAGE_EMULATOR_HOST."""
    with _proxy(toxiproxy, "gcs", fake_gcs.host) as proxy:
        yield proxy


@pytest.fixture
def proxied_pubsub(toxiproxy: Toxiproxy, pubsub_emulator: PubSubEmulator) -> Iterator[Proxy]:
    """A proxy in front of the Pub/Sub emulator: ``.listen`` is a PUBSUB_EMULATOR_HOST."""
    with _proxy(toxiproxy, "pubsub", pubsub_emulator.host) as proxy:
        yield proxy


@pytest.fixture
def proxied_kube(toxiproxy: Toxiproxy, kube: KubeControlPlane) -> Iterator[Proxy]:
    """A proxy in front of kube-apiserver: a kubeconfig whose server is ``https://`` +
    ``.listen`` reaches it (its certificate names 127.0.0.1)."""
    with _proxy(toxiproxy, "kube", urllib.parse.urlsplit(kube.url).netloc) as proxy:
        yield proxy
