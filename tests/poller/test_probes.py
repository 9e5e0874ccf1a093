"""The poller's probes in each state, against the real CLI over a file:// source.

- ``/healthz`` answers 200 from the start, whatever the source or the disk do (the kubelet
  restarts a pod whose liveness probe fails: a bad source is no reason to).
- ``/readyz`` turns 200 once a sync found every version the policy wants on disk with
  nothing failing (``SyncOutcome.settled``): never while the source cannot be listed or
  while installs fail, but also when the source holds no valid version at all (there is
  nothing to wait for).
- ``/serving-ready`` without ``--serving-url``: 200 while a version inside the policy is on
  disk (TF Serving's default policy serves the highest one).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for
from tests.poller.kit import Dirs
from tests.poller.procs import PollerProcess

StartPoller = Callable[..., PollerProcess]


@pytest.fixture
def start_poller(tmp_path: Path) -> Iterator[StartPoller]:
    """Starts the real CLI (``--poll-interval 1`` plus ``args``); every poller started is
    stopped at teardown and must have exited 0 without a traceback."""
    started: list[PollerProcess] = []

    def start(*args: str) -> PollerProcess:
        proc = PollerProcess(["--poll-interval", "1", *args], tmp_path / f"poller-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        code = proc.terminate()
        assert code == 0, proc.output()
        assert "Traceback" not in proc.output(), proc.output()


def numeric_dirs(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def first_answer(poller: PollerProcess, path: str) -> int:
    """The code of the first answer ``path`` gives once the port is open."""
    codes: list[int] = []

    def answered() -> bool:
        assert poller.proc.poll() is None, poller.output()
        try:
            codes.append(poller.get(path)[0])
        except OSError:
            return False  # the port is not open yet
        return True

    wait_for(f"{path} to answer", answered, 30)
    return codes[0]


def stays(poller: PollerProcess, path: str, code: int, seconds: float) -> None:
    """``path`` answers ``code`` for ``seconds`` (several poll intervals)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got, body = poller.get(path)
        assert got == code, f"{path} answered {got} ({body.strip()}), expected {code}\n{poller.output()}"


@pytest.mark.slow
def test_source_unreachable_then_reachable(dirs: Dirs, start_poller: StartPoller) -> None:
    """A source directory that does not exist: alive, not ready, the reason in the log;
    once it appears with a version, ready."""
    absent = dirs.root / "absent"
    poller = start_poller("--source", f"file://{absent}/", "--model-dir", str(dirs.models), "--keep", "1")
    assert first_answer(poller, "/healthz") == 200
    wait_for("the missing source in the log", lambda: "does not exist" in poller.output(), 15)
    assert poller.get("/readyz")[0] == 503
    assert poller.get("/serving-ready")[0] == 503
    stays(poller, "/readyz", 503, 2.5)  # several retries: still not ready
    assert poller.get("/healthz")[0] == 200
    assert poller.metric("model_poller_sync_errors_total") >= 2

    absent.mkdir()
    (absent / "1.zip").write_bytes(zip_bytes(model_files(1)))
    poller.wait_for("/readyz", timeout=30)
    assert numeric_dirs(dirs.models) == [1]
    assert poller.get("/serving-ready")[0] == 200


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Iterator[Path]:
    """A model dir on a 64 KiB tmpfs: every version below is bigger, so every install fails
    with ENOSPC (a local disk problem: retried, never a rejection of the upload)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount / "models"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.slow
def test_every_install_failing_is_not_ready(dirs: Dirs, tiny_model_dir: Path, start_poller: StartPoller) -> None:
    for version in (1, 2):
        # Incompressible bytes: the zip is as big as what it unpacks to (256 KiB > 64 KiB).
        files = {**model_files(version), "variables/variables.data-00000-of-00001": os.urandom(256 << 10)}
        (dirs.src / f"{version}.zip").write_bytes(zip_bytes(files))
    poller = start_poller("--source", dirs.uri, "--model-dir", str(tiny_model_dir), "--keep", "2")
    assert first_answer(poller, "/healthz") == 200
    # Both versions fail, and are tried again (with backoff up to the poll interval).
    wait_for("installs failing, retried", lambda: poller.metric("model_poller_install_failures_total") >= 4, 30)
    assert "No space left on device" in poller.output()
    assert poller.get("/readyz")[0] == 503
    assert poller.get("/serving-ready")[0] == 503
    assert poller.get("/healthz")[0] == 200
    assert poller.metric("model_poller_rejections_total", 'reason="too_many_bytes"') == 0
    assert numeric_dirs(tiny_model_dir) == []
    # Nothing half-written is left where TF Serving looks, and no staging piles up.
    assert [p.name for p in tiny_model_dir.iterdir() if not p.name.startswith(".model-poller")] == []


@pytest.mark.slow
def test_no_valid_version_at_the_source_is_ready(dirs: Dirs, start_poller: StartPoller) -> None:
    """Nothing to wait for: ready (the pod must not be restarted or held back by an empty
    bucket); nothing to serve: /serving-ready stays 503. A junk name and a rejected upload
    change neither."""
    (dirs.src / "junk.txt").write_bytes(b"not a version")
    (dirs.src / "7.zip").write_bytes(b"not a zip")
    poller = start_poller("--source", dirs.uri, "--model-dir", str(dirs.models), "--keep", "2")
    poller.wait_for("/readyz", timeout=30)
    assert poller.get("/serving-ready")[0] == 503
    assert poller.get("/healthz")[0] == 200
    assert numeric_dirs(dirs.models) == []
    wait_for("7.zip rejected", lambda: poller.metric("model_poller_rejections_total", 'reason="corrupt"') == 1, 15)
    stays(poller, "/readyz", 200, 1.5)
    assert poller.get("/serving-ready")[0] == 503

    # A valid version arrives: installed, and then it serves.
    (dirs.src / "3.zip").write_bytes(zip_bytes(model_files(3)))
    poller.wait_for("/serving-ready", timeout=30)
    assert numeric_dirs(dirs.models) == [3]
    assert poller.get("/readyz")[0] == 200


@pytest.mark.slow
def test_ready_once_the_policy_is_on_disk(dirs: Dirs, start_poller: StartPoller) -> None:
    for version in (1, 2, 3):
        (dirs.src / f"{version}.zip").write_bytes(zip_bytes(model_files(version)))
    poller = start_poller("--source", dirs.uri, "--model-dir", str(dirs.models), "--keep", "2")
    assert first_answer(poller, "/healthz") == 200
    poller.wait_for("/readyz", timeout=30)
    # Ready means the whole policy is on disk, not just its first install.
    assert numeric_dirs(dirs.models) == [2, 3]
    assert poller.get("/serving-ready")[0] == 200
    assert poller.metric("model_poller_last_sync_success") == 1

    # Rollback by deleting the newest at the source: 2 is inside the policy and on disk,
    # so /serving-ready never drops while 3 goes.
    (dirs.src / "3.zip").unlink()
    codes: set[int] = set()

    def rolled_back() -> bool:
        codes.add(poller.get("/serving-ready")[0])
        return numeric_dirs(dirs.models) == [1, 2]

    wait_for("3 removed and 1 installed", rolled_back, 30)
    assert codes == {200}, poller.output()
    stays(poller, "/serving-ready", 200, 1.0)
    assert poller.get("/readyz")[0] == 200
