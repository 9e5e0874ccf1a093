"""The long-running poller (runner.py): probes, metrics, polling, SIGTERM."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for
from tests.poller.kit import Dirs
from tests.poller.procs import PollerProcess


@pytest.mark.slow
def test_probes_metrics_polling_and_sigterm(dirs: Dirs, tmp_path: Path) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "junk.txt").write_bytes(b"x")
    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "0.5", "--keep", "1"],
        tmp_path / "poller.log",
    )
    try:
        poller.wait_for("/healthz")
        poller.wait_for("/readyz")
        assert (dirs.models / "1").is_dir()
        assert poller.get("/serving-ready")[0] == 200
        assert poller.metric("model_poller_versions_installed") == 1
        assert poller.metric("model_poller_installs_total") == 1
        assert poller.metric("model_poller_last_sync_timestamp_seconds") > time.time() - 60
        # A new version is picked up within a poll interval; the old one goes.
        (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
        wait_for("a condition", lambda: sorted(p.name for p in dirs.models.iterdir()) == [".model-poller", "2"], 30)
        # A hostile upload shows in /metrics and changes nothing.
        (dirs.src / "3.zip").write_bytes(b"garbage")
        wait_for("a condition", lambda: poller.metric("model_poller_rejections_total", 'reason="corrupt"') == 1, 30)
        assert sorted(p.name for p in dirs.models.iterdir()) == [".model-poller", "2"]
        assert poller.metric("model_poller_installs_total") == 2
        assert poller.get("/nope")[0] == 404
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
    assert "Traceback" not in poller.output()


@pytest.mark.slow
def test_sigterm_during_a_large_install_exits_zero_and_cleanly(dirs: Dirs, tmp_path: Path) -> None:
    big = {**model_files(5), "variables/big": os.urandom(1 << 20) * 300}
    (dirs.src / "5.zip").write_bytes(zip_bytes(big))
    poller = PollerProcess(["--source", dirs.uri, "--model-dir", str(dirs.models)], tmp_path / "poller.log")
    try:
        poller.wait_for("/healthz")
        wait_for(
            "a staging dir", lambda: any(p.name.startswith(".model-poller-staging-") for p in dirs.models.iterdir()), 30
        )
    finally:
        started = time.monotonic()
        code = poller.terminate()
    assert code == 0, poller.output()
    assert time.monotonic() - started < 10
    assert list(dirs.models.iterdir()) == [], poller.output()  # abandoned: no version, no staging
    assert "abandoned" in poller.output(), poller.output()


@pytest.mark.slow
def test_unwritable_model_dir_retries_then_recovers(dirs: Dirs, tmp_path: Path) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    blocker = tmp_path / "models"
    blocker.write_text("a file where the model dir should be")
    poller = PollerProcess(["--source", dirs.uri, "--model-dir", str(blocker)], tmp_path / "poller.log")
    try:
        poller.wait_for("/healthz")
        wait_for("a condition", lambda: "is not writable" in poller.output(), 10)
        assert poller.get("/readyz")[0] == 503
        blocker.unlink()
        poller.wait_for("/readyz", timeout=30)
        assert (blocker / "1").is_dir()
    finally:
        code = poller.terminate()
    assert code == 0
    assert "Traceback" not in poller.output()
