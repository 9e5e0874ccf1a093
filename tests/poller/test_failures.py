"""One bad version never stops the poller, and costs what it should: an upload the file
system can never hold is rejected once (never downloaded again); a local disk problem is
retried with exponential backoff up to the poll interval; a bug fails that one version."""

from __future__ import annotations

import calendar
import errno
import io
import json
import logging
import os
import struct
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from model_poller.config import Settings
from model_poller.errors import Rejected
from model_poller.install import content_rejection, local_cause
from model_poller.metrics import Metrics
from model_poller.policy import Policy
from model_poller.runner import Poller
from model_poller.stores.base import Sink
from model_poller.stores.file import FileStore
from model_poller.versions import SourceObject
from model_poller_api.models import ReportReason

from local_services.archives import model_files, targz_bytes, zip_bytes
from local_services.process import wait_for
from tests.poller.kit import Dirs, EngineFactory
from tests.poller.procs import PollerProcess

KiB = 1 << 10


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def numeric_dirs(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def attempts(log: str, version: int) -> int:
    return log.count(f"installing version {version} from")


# -- names the file system refuses ---------------------------------------------------------


def long_component_zip(version: int) -> bytes:
    """A 300-byte folder name: more than any Linux file system's NAME_MAX (255)."""
    return zip_bytes({**model_files(version), "assets/" + "a" * 300 + "/vocab.txt": b"x"})


def long_utf8_component_targz(version: int) -> bytes:
    """200 characters, 400 bytes in UTF-8: short in characters, too long for the disk."""
    return targz_bytes({**model_files(version), "assets/" + "é" * 200: b"x"}, top=f"{version:04d}")


def deep_path_zip(version: int) -> bytes:
    """Every component is short, the whole path is longer than PATH_MAX (4096)."""
    deep = "/".join(["d" * 200] * 25)
    return zip_bytes({**model_files(version), f"assets/{deep}/x": b"x"})


@pytest.mark.slow
def test_uploads_the_file_system_refuses_are_rejected_once(dirs: Dirs, tmp_path: Path) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "2.zip").write_bytes(long_component_zip(2))
    (dirs.src / "3.tar.gz").write_bytes(long_utf8_component_targz(3))
    (dirs.src / "4.zip").write_bytes(deep_path_zip(4))
    # An entry named like the poller's old in-version marker, as a folder: it used to
    # collide with the marker file and fail ("will retry") at every attempt.
    (dirs.src / "5.zip").write_bytes(zip_bytes({**model_files(5), ".model-poller.json/x": b"x"}, top="0005"))
    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(dirs.models), "--keep", "10", "--poll-interval", "0.5"],
        tmp_path / "poller.log",
    )
    try:
        poller.wait_for("/readyz")
        # Twenty poll intervals: before the fix, each one downloaded versions 2-5 again.
        time.sleep(10)
        assert poller.proc.poll() is None, poller.output()
        assert poller.metric("model_poller_rejections_total", 'reason="unsafe_path"') == 3
        assert poller.metric("model_poller_install_attempts_total") == 5
        assert poller.metric("model_poller_install_failures_total") == 0
        assert poller.metric("model_poller_installs_total") == 2
        assert numeric_dirs(dirs.models) == [1, 5]
    finally:
        code = poller.terminate()
    log = poller.log.read_text()
    assert code == 0, poller.output()
    assert [attempts(log, v) for v in (1, 2, 3, 4, 5)] == [1, 1, 1, 1, 1], poller.output()
    assert "Traceback" not in log


def test_file_system_refusals_are_sorted_by_cause(tmp_path: Path) -> None:
    """The classification itself, on errors the kernel really raises, whatever the
    unpacker checks first: a name from the upload is the upload's fault, a full or broken
    disk never is (even when reported as bad data)."""
    unpacked = tmp_path / "staging" / "unpacked"
    unpacked.mkdir(parents=True)
    raised: list[OSError] = []
    for attempt in (
        lambda: os.makedirs(unpacked / "assets" / ("a" * 300) / "b"),
        lambda: os.makedirs(unpacked.joinpath(*["d" * 200] * 25)),
        lambda: os.open(unpacked / ("é" * 200), os.O_WRONLY | os.O_CREAT | os.O_EXCL),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        raised.append(info.value)
    for exc in raised:
        assert exc.errno == errno.ENAMETOOLONG
        rejection = content_rejection(exc, unpacked)
        assert rejection is not None and rejection.reason == "unsafe_path", exc
    (unpacked / "file").write_bytes(b"")
    with pytest.raises(OSError) as collision:
        os.mkdir(unpacked / "file" / "sub")
    rejection = content_rejection(collision.value, unpacked)
    assert rejection is not None and rejection.reason == "duplicate_entry"
    # The same errno about a path outside the unpacked tree is not the upload's.
    with pytest.raises(OSError) as outside:
        os.mkdir(tmp_path / ("a" * 300))
    assert content_rejection(outside.value, unpacked) is None

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(unpacked / "saved_model.pb"))
    assert content_rejection(full, unpacked) is None
    try:
        try:
            raise full
        except OSError as exc:
            raise Rejected("corrupt", "entry 'saved_model.pb': no space") from exc
    except Rejected as reported:
        assert local_cause(reported) is full
    assert local_cause(Rejected("corrupt", "bad CRC")) is None


# -- local disk trouble: exponential backoff up to the poll interval -----------------------


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Iterator[Path]:
    """A model dir on its own 1 MiB tmpfs: a real ENOSPC, then room once remounted bigger."""
    path = tmp_path / "models"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def attempt_times(log: Path, version: int) -> list[float]:
    times = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("message", "")).startswith(f"installing version {version} from"):
            stamp = time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")
            times.append(calendar.timegm(stamp) + int(entry["time"][20:23]) / 1000)
    return times


@pytest.mark.slow
def test_full_disk_backs_off_up_to_the_poll_interval_then_recovers(
    dirs: Dirs, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # ~700 KiB that does not compress: the archive fits, the archive and its unpacked
    # copy do not, so the unpacker's write fails with ENOSPC (reported to the poller as a
    # corrupt entry before the fix: rejected, never retried).
    files = {**model_files(5), "variables/variables.data-00000-of-00001": os.urandom(700 * KiB)}
    (dirs.src / "5.zip").write_bytes(zip_bytes(files))
    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(tiny_model_dir), "--poll-interval", "3", "--log-format", "json"],
        tmp_path / "poller.log",
    )
    try:
        wait_for("six attempts", lambda: len(attempt_times(poller.log, 5)) >= 6, 30)
        times = attempt_times(poller.log, 5)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)][:5]
        # 1, 2, then capped at the poll interval (3 s), and staying there.
        for gap, expected in zip(gaps, [1, 2, 3, 3, 3], strict=False):
            assert expected - 0.05 <= gap <= expected + 1.0, (gaps, poller.output())
        assert poller.metric("model_poller_rejections_total", 'reason="corrupt"') == 0
        # (The counter goes up when an attempt ends, a moment after its log line.)
        wait_for("six install failures counted", lambda: poller.metric("model_poller_install_failures_total") >= 6, 10)
        assert "No space left on device" in poller.output()
        assert [p.name for p in tiny_model_dir.iterdir() if p.name.isdigit()] == []

        subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_model_dir)], check=True)
        wait_for(poller.output(), lambda: (tiny_model_dir / "5" / "saved_model.pb").exists(), 10)
        assert poller.metric("model_poller_installs_total") == 1
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
    assert "Traceback" not in poller.log.read_text()


# -- a bug costs one version, never the process ---------------------------------------------


class BrokenDownloads(FileStore):
    """A real file source whose downloads of the names in ``broken`` hit a "bug"."""

    broken: frozenset[str] = frozenset()

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        if obj.name in self.broken:
            raise ValueError(f"simulated bug while downloading {obj.name}")
        super().download(obj, sink, stop)


def test_an_unexpected_error_fails_that_version_only(
    dirs: Dirs, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for v in (1, 2):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    source = BrokenDownloads.from_uri(dirs.uri)
    assert isinstance(source, BrokenDownloads)
    source.broken = frozenset({"2.zip"})
    engine = make_engine(store=source)
    with caplog.at_level(logging.INFO, logger="model_poller"):
        first = engine.sync()
        second = engine.sync()
    assert [r.version for r in first.installed] == [1] and numeric_dirs(dirs.models) == [1]
    for outcome in (first, second):
        assert outcome.failed == {2} and not outcome.complete
        assert [(p.reason, p.message) for p in outcome.problems] == [
            (
                ReportReason.INSTALL_FAILED,
                "version 2: unexpected error ValueError: simulated bug while downloading 2.zip",
            )
        ]
    assert metric(engine.metrics, "model_poller_install_unexpected_errors_total") == 2
    assert metric(engine.metrics, "model_poller_install_failures_total") == 2
    assert engine.rejected == {}  # not the upload's fault: retried, with backoff in the loop
    errors = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(errors) == 2
    assert [r.exc_info is not None for r in errors] == [True, False]  # the traceback once
    assert not any(p.name.startswith(".model-poller-") for p in dirs.models.iterdir())  # no staging left

    source.broken = frozenset()
    third = engine.sync()
    assert third.complete and [r.version for r in third.installed] == [2]


def zip64_end_record_pointing_past_the_end(version: int) -> bytes:
    """A zip whose zip64 end-of-central-directory locator points at a record cut short by
    the end of the object: reading that record's fields raised struct.error, which no
    handler expected and which ended the long-running poller."""
    data = zip_bytes(model_files(version))
    body = data[: data.rfind(b"PK\x05\x06")]
    comment = b"xxxxPK\x06\x06"
    record_at = len(body) + 20 + 22 + len(comment) - 4
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, record_at, 1)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    return body + locator + end + comment


@pytest.mark.slow
def test_a_hostile_zip64_end_record_never_stops_the_poller(dirs: Dirs, tmp_path: Path) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "3.zip").write_bytes(zip64_end_record_pointing_past_the_end(3))
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO((dirs.src / "3.zip").read_bytes()))
    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "1"], tmp_path / "poller.log"
    )
    try:
        poller.wait_for("/readyz")
        time.sleep(4)
        assert poller.proc.poll() is None, poller.output()
        assert numeric_dirs(dirs.models) == [1]
        # Rejected as corrupt, or (while the unpacker does not say so) failed and retried.
        refused = poller.metric("model_poller_rejections_total", 'reason="corrupt"')
        failed = poller.metric("model_poller_install_unexpected_errors_total")
        assert refused == 1 or failed >= 1, poller.output()
        (dirs.src / "4.zip").write_bytes(zip_bytes(model_files(4)))
        wait_for(poller.output(), lambda: 4 in numeric_dirs(dirs.models), 10)
    finally:
        code = poller.terminate()
    assert code == 0, poller.output()
    assert poller.log.read_text().count("Traceback") <= 1


class FlakyGate:
    """A removal gate (the seam TF Serving's confirmation plugs into) with a bug: it
    raises until ``healed`` is set."""

    def __init__(self) -> None:
        self.healed = threading.Event()
        self.calls = 0

    def allows_removal(self, in_place: frozenset[int]) -> bool:
        self.calls += 1
        if not self.healed.is_set():
            raise RuntimeError("simulated bug in the removal gate")
        return True


@pytest.mark.slow
def test_an_unexpected_error_in_a_sync_is_logged_once_and_retried(dirs: Dirs, caplog: pytest.LogCaptureFixture) -> None:
    (dirs.models / "1").mkdir(parents=True)
    (dirs.models / "1" / "saved_model.pb").write_bytes(b"old")
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    settings = Settings(source=dirs.uri, model_dir=dirs.models, policy=Policy(keep=1), poll_interval=0.5, http_port=0)
    gate = FlakyGate()
    poller = Poller(settings, removal=gate)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(poller.run()))
    with caplog.at_level(logging.INFO, logger="model_poller"):
        thread.start()
        try:
            wait_for("three syncs", lambda: gate.calls >= 3, 20)
            assert thread.is_alive()
            assert numeric_dirs(dirs.models) == [1, 2]  # installed; the removal waits
            assert metric(poller.metrics, "model_poller_sync_errors_total") >= 3
            gate.healed.set()
            wait_for("the removal once the gate works", lambda: numeric_dirs(dirs.models) == [2], 20)
        finally:
            poller.request_stop()
            thread.join(30)
    assert codes == [0]
    bugs = [r for r in caplog.records if "sync failed with an unexpected error" in r.getMessage()]
    assert len(bugs) >= 3
    assert [r.exc_info is not None for r in bugs].count(True) == 1  # the traceback once
