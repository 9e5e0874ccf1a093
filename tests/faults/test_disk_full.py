"""Disk full: the model dir on a small tmpfs (mounted by the test; the suite runs as root,
here and in CI). A version larger than the free space fails with a clear error (in the log,
and in the pod's status entry: reason InstallFailed), its staging is removed, the installed
version is untouched, nothing exits; once space is freed, it installs, and so does the next."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_services.archives import model_files, zip_bytes
from local_services.gcs import FakeGcs
from local_services.kube import KubeControlPlane
from local_services.process import wait_for
from tests.faults.faultkit import assert_intact, no_staging, versions_in, wait_installed
from tests.poller import kube_identity as ki
from tests.poller.procs import PollerProcess

pytestmark = [pytest.mark.gcs, pytest.mark.kube, pytest.mark.slow]

MiB = 1 << 20
TMPFS = 3 * MiB


@pytest.fixture
def small_model_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "models"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def big_files(version: int) -> dict[str, bytes]:
    """4 MiB that does not compress, in two shards: more than the whole tmpfs."""
    return {
        **model_files(version),
        "variables/variables.data-00000-of-00002": os.urandom(2 * MiB),
        "variables/variables.data-00001-of-00002": os.urandom(2 * MiB),
    }


def upload(bucket: Any, version: int, files: dict[str, bytes], layout: str) -> None:
    if layout == "zip":
        bucket.blob(f"m/{version}.zip").upload_from_string(zip_bytes(files))
        return
    for name, data in files.items():
        bucket.blob(f"m/{version}/{name}").upload_from_string(data)
    bucket.blob(f"m/{version}/_READY").upload_from_string(b"")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_version_larger_than_the_free_space(
    layout: str,
    fake_gcs: FakeGcs,
    bucket: Any,
    kube: KubeControlPlane,
    namespace: str,
    small_model_dir: Path,
    tmp_path: Path,
) -> None:
    models = small_model_dir
    source = f"gs://{bucket.name}/m/"
    md = ki.create_md(kube, namespace, "m", {"source": {"uri": source}, "versions": {"keep": 3}})
    ki.apply_identity(kube, md)
    kubeconfig = ki.poller_kubeconfig(kube, md, tmp_path / "poller.kubeconfig")
    pod = f"m-{uuid.uuid4().hex[:5]}"
    upload(bucket, 1, model_files(1), layout)
    poller = PollerProcess(
        ["--source", source, "--model-dir", str(models), "--report-to", f"{namespace}/m", "--poll-interval", "2"],
        tmp_path / "poller.log",
        env={"POD_NAME": pod, "KUBECONFIG": str(kubeconfig), "STORAGE_EMULATOR_HOST": fake_gcs.url},
    )

    def entry() -> dict[str, Any]:
        return ki.pollers(kube, namespace, "m").get(pod) or {}

    try:
        poller.wait_for("/readyz")
        assert versions_in(models) == [1]
        used_before = shutil.disk_usage(models).used

        v2 = big_files(2)
        upload(bucket, 2, v2, layout)
        wait_for(f"InstallFailed in the entry: {entry()}", lambda: entry().get("reason") == "InstallFailed", 30)
        error = str(entry().get("error"))
        print(
            f"\n{layout}: version of {sum(map(len, v2.values())) / MiB:.1f} MiB on a {TMPFS / MiB:g} MiB tmpfs: "
            f"entry error {error!r}"
        )
        assert "version 2" in error and "No space left on device" in error, error
        assert "No space left on device" in poller.log.read_text()
        assert entry().get("versions") == [1]
        # Between attempts: no staging, no partial file, nothing but version 1 on the volume.
        wait_for(f"staging removed: {no_staging(models)}", lambda: not no_staging(models), 10)
        wait_for(
            f"space given back: {shutil.disk_usage(models).used} used, {used_before} before",
            lambda: shutil.disk_usage(models).used <= used_before + 64 * 1024,
            10,
        )
        assert versions_in(models) == [1]
        assert_intact(models, 1)
        assert poller.metric("model_poller_install_failures_total") >= 1
        assert poller.metric("model_poller_rejections_total", 'reason="corrupt"') == 0
        assert poller.proc.poll() is None, poller.output()

        # Space freed: version 2 installs on a later attempt (backoff capped at the poll
        # interval), the error goes; the next version installs too.
        subprocess.run(["mount", "-o", "remount,size=64m", str(models)], check=True)
        wait_installed(models, 2, 15, f"version 2 once space is freed: {poller.output()}")
        assert files_of(models / "2") == v2
        upload(bucket, 3, model_files(3), layout)
        wait_installed(models, 3, 15, f"version 3: {poller.output()}")
        wait_for(
            f"entry [1, 2, 3] with no error: {entry()}",
            lambda: entry().get("versions") == [1, 2, 3] and entry().get("error") is None,
            15,
        )
        assert_intact(models, 1)
        assert_intact(models, 3)
        assert not no_staging(models)
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
    assert "Traceback" not in poller.log.read_text()
