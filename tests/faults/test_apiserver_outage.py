"""The API server unreachable for 30 s through a proxy (connection refused, or a black hole
where every byte vanishes): syncing goes on, and the pod's status entry is right within
10 s of the API server's return; a policy change made after the return still arrives."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from local_services.archives import model_files, zip_bytes
from local_services.kube import KubeControlPlane
from local_services.process import wait_for
from local_services.toxiproxy import Proxy
from tests.faults.faultkit import assert_intact, kubeconfig_via
from tests.poller import kube_identity as ki
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.kube, pytest.mark.slow]

OUTAGE = 30.0
CATCH_UP = 10.0
POD = "m-outage"


@contextmanager
def unreachable(proxy: Proxy, how: str) -> Iterator[None]:
    if how == "refused":
        with proxy.down():
            yield
    else:
        with (
            proxy.toxic("timeout", {"timeout": 0}, stream="upstream"),
            proxy.toxic("timeout", {"timeout": 0}, stream="downstream"),
        ):
            yield


def publish(src: Path, version: int) -> None:
    """An archive version appearing at once (written aside, renamed in)."""
    staging = src.parent / f"upload-{version}.zip"
    staging.write_bytes(zip_bytes(model_files(version)))
    os.replace(staging, src / f"{version}.zip")


def on_disk(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit()) if models.is_dir() else []


def entry(kube: KubeControlPlane, namespace: str) -> dict[str, Any]:
    return ki.pollers(kube, namespace, "m").get(POD) or {}


@pytest.mark.parametrize("how", ["refused", "blackhole"])
def test_api_server_unreachable_for_30s(
    how: str, kube: KubeControlPlane, namespace: str, proxied_kube: Proxy, tmp_path: Path
) -> None:
    src, models = tmp_path / "src", tmp_path / "models"
    src.mkdir()
    md = ki.create_md(kube, namespace, "m", {"source": {"uri": f"file://{src}/"}, "versions": {"keep": 2}})
    ki.apply_identity(kube, md)
    kubeconfig = kubeconfig_via(ki.poller_kubeconfig(kube, md, tmp_path / "poller.kubeconfig"), proxied_kube.listen)
    publish(src, 1)
    publish(src, 2)
    poller = PollerProcess(
        [
            "--source",
            f"file://{src}/",
            "--model-dir",
            str(models),
            "--report-to",
            f"{namespace}/m",
            "--poll-interval",
            "1",
        ],
        tmp_path / "poller.log",
        env={"KUBECONFIG": str(kubeconfig), "POD_NAME": POD},
    )
    try:
        poller.wait_for("/readyz")
        wait_for(f"entry [1, 2]: {poller.output()}", lambda: entry(kube, namespace).get("versions") == [1, 2], 30)

        with unreachable(proxied_kube, how):
            cut = time.monotonic()
            publish(src, 3)
            wait_for(f"version 3 during the outage: {poller.output()}", lambda: on_disk(models) == [2, 3], 15)
            synced_3 = time.monotonic() - cut
            publish(src, 4)
            wait_for(f"version 4 during the outage: {poller.output()}", lambda: on_disk(models) == [3, 4], 15)
            synced_4 = time.monotonic() - cut
            assert entry(kube, namespace).get("versions") == [1, 2]  # nothing got through
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut)))
            assert poller.proc.poll() is None, poller.output()
        back = time.monotonic()
        wait_for(
            f"entry [3, 4] within {CATCH_UP:g} s of the return: {poller.output()}",
            lambda: entry(kube, namespace).get("versions") == [3, 4],
            CATCH_UP,
        )
        caught_up = time.monotonic() - back
        assert entry(kube, namespace).get("latest") == 4 and entry(kube, namespace).get("error") is None

        # The live policy still follows spec.versions after the outage.
        ki.patch_md(kube, namespace, "m", {"spec": {"versions": {"keep": 1}}})
        patched = time.monotonic()
        wait_for(f"keep 1 applied after the outage: {poller.output()}", lambda: on_disk(models) == [4], 60)
        applied = time.monotonic() - patched
        print(
            f"\nAPI server {how} for {OUTAGE:g} s: versions 3 and 4 synced {synced_3:.1f} s and {synced_4:.1f} s "
            f"into the outage; status caught up {caught_up:.1f} s after the return; a policy change made "
            f"after it applied in {applied:.1f} s"
        )
        for version in (4,):
            assert_intact(models, version)
        assert poller.proc.poll() is None, poller.output()
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
