"""Archive bombs against the real poller process (``python -m model_poller``, long-running):
each is refused with its reason (log and /metrics), the process survives, the version
installed before stays intact, and the process's peak RSS stays under 300 MiB.

Each bomb is real: the bytes behind it inflate to a GiB or more (built in milliseconds,
see ``archives.gzip_with_zeros`` and ``archives.bzip2_zeros``), and before the fixes each
of these cost the poller 450 MiB to 2 GiB of memory, or its sync (RecursionError).
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_services import archives as a
from tests.poller.kit import Dirs, EngineFactory
from tests.poller.procs import PollerProcess

MiB = 1 << 20
GiB = 1 << 30
PEAK_RSS_LIMIT = 300 * MiB


def peak_rss(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (``VmHWM``).

    Read while the process is alive, after the work: ``VmHWM`` is a high-water mark of
    this process's own memory. (``ru_maxrss`` from ``wait4`` is not: the kernel folds in
    the memory of the image replaced by ``exec``, here a fork of the test runner.)
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@dataclass
class Run:
    log: str
    peak_rss: int
    rejections: float  # model_poller_rejections_total{reason=...}


def poll_once_with(dirs: Dirs, make_engine: EngineFactory, name: str, blob: bytes, reason: str, *flags: str) -> Run:
    """Install version 1, add ``blob`` as ``name`` (version 2), start the poller, let its
    initial sync finish, measure, stop it; check version 1 is as it was."""
    (dirs.src / "1.zip").write_bytes(a.zip_bytes(a.model_files(1), top="0001"))
    assert make_engine().sync().complete
    before = a.tree(dirs.models / "1")
    (dirs.src / name).write_bytes(blob)

    poller = PollerProcess(
        ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "3600", *flags],
        dirs.root / "poller.log",
    )
    try:
        poller.wait_for("/readyz", timeout=120)  # the initial sync, version 2 included, is done
        peak = peak_rss(poller.proc.pid)
        rejections = poller.metric("model_poller_rejections_total", f'reason="{reason}"')
        assert poller.proc.poll() is None, poller.output()
    finally:
        code = poller.terminate()
    log = poller.output()
    assert code == 0, log
    assert sorted(p.name for p in dirs.models.iterdir() if p.name != ".model-poller") == ["1"], log
    assert a.tree(dirs.models / "1") == before
    return Run(log=log, peak_rss=peak, rejections=rejections)


def assert_refused(run: Run, reason: str, *details: str) -> None:
    lines = [line for line in run.log.splitlines() if "rejected" in line and "version 2" in line]
    assert len(lines) == 1 and f": {reason}: " in lines[0], run.log
    for detail in details:
        assert detail in lines[0], lines[0]
    assert run.rejections == 1
    assert run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss / MiB:.0f} MiB"


def _bzip2_member() -> bytes:
    size = 136 * 8 * MiB  # 1088 MiB of zeros in a 5 KB member
    return a.zip_compressed(12, a.bzip2_zeros(136), size)


def _lzma_member() -> bytes:
    # LZMA cannot be built faster than it compresses (~8 s per GiB): 384 MiB already
    # took the old reader past 600 MiB RSS (output plus its copy).
    return a.zip_compressed(14, a.lzma_zip_data(384 * MiB), 384 * MiB)


@pytest.mark.parametrize(
    "build, method",
    [(_bzip2_member, "method 12 (bzip2)"), (_lzma_member, "method 14 (LZMA)")],
    ids=["bzip2-1GiB", "lzma-384MiB"],
)
def test_zip_member_compression_refused_before_inflating(
    dirs: Dirs, make_engine: EngineFactory, build: Callable[[], bytes], method: str
) -> None:
    run = poll_once_with(dirs, make_engine, "2.zip", build(), "unsupported_compression")
    assert_refused(run, "unsupported_compression", "'variables/big'", method)


@pytest.mark.parametrize(
    "type_",
    [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE],
    ids=["gnu-long-name", "gnu-long-link", "pax", "pax-global", "solaris"],
)
def test_tar_metadata_header_declaring_1GiB(dirs: Dirs, make_engine: EngineFactory, type_: bytes) -> None:
    blob = a.targz_metadata_bomb(type_, GiB)  # about 1 MB; the header's 1 GiB of zeros is really there
    assert len(blob) < 2 * MiB
    run = poll_once_with(dirs, make_engine, "2.tar.gz", blob, "oversized_header")
    assert_refused(run, "oversized_header", f"declares {GiB} bytes")


def test_tar_trailing_zeros_stop_at_max_bytes(dirs: Dirs, make_engine: EngineFactory) -> None:
    """2 GiB of zeros after the end-of-archive blocks (a 2 MB tar.gz): they count against
    --max-bytes like file content (the ratio is out of the way here)."""
    blob = a.targz_trailing_zeros(2 * GiB)
    run = poll_once_with(
        dirs, make_engine, "2.tgz", blob, "too_many_bytes", "--max-bytes", "64Mi", "--max-ratio", "1e9"
    )
    assert_refused(run, "too_many_bytes", f"more than {64 * MiB} bytes")


def test_tar_trailing_zeros_stop_at_default_ratio(dirs: Dirs, make_engine: EngineFactory) -> None:
    """The same bomb with the default flags: the 200x ratio stops it after ~400 MB."""
    blob = a.targz_trailing_zeros(2 * GiB)
    run = poll_once_with(dirs, make_engine, "2.tgz", blob, "compression_ratio")
    assert_refused(run, "compression_ratio", f"its {len(blob)} bytes")


def test_zip_million_entry_directory_refused_by_its_end_record(dirs: Dirs, make_engine: EngineFactory) -> None:
    blob = a.zip_model_and([], first=[a.raw_member("a", b"a")], copies_of_first_record=1_000_000)
    run = poll_once_with(dirs, make_engine, "2.zip", blob, "too_many_files")
    assert_refused(run, "too_many_files", "declares 1000005 entries")


def test_zip_directory_bigger_than_its_declared_entries(dirs: Dirs, make_engine: EngineFactory) -> None:
    """The end record declares 10 entries; the directory holds a million records."""
    blob = a.zip_model_and([], first=[a.raw_member("a", b"a")], copies_of_first_record=1_000_000, declared_entries=10)
    run = poll_once_with(dirs, make_engine, "2.zip", blob, "oversized_header")
    assert_refused(run, "oversized_header", "for 10 entries")


@pytest.mark.parametrize("name", ["2.zip", "2.tar.gz"])
def test_path_1000_directories_deep(dirs: Dirs, make_engine: EngineFactory, name: str) -> None:
    """os.makedirs recursed once per level: RecursionError cost the whole sync."""
    deep = "a/" * 1000 + "f"
    blob = a.zip_raw_name(deep) if name.endswith(".zip") else a.targz_with([a.tar_member(deep, data=b"x")])
    run = poll_once_with(dirs, make_engine, name, blob, "unsafe_path")
    assert_refused(run, "unsafe_path", "1001 levels deep")
    assert "RecursionError" not in run.log


def test_implicit_parent_directories_count_as_entries(dirs: Dirs, make_engine: EngineFactory) -> None:
    """A few KiB of tar.gz whose entries each sit 62 levels deep under their own top folder:
    every parent no entry names is a directory (an inode, and memory) all the same. Counted
    against --max-files, the default 100,000 entries stop it after ~1,600 entries instead of
    6 million directories."""
    deep = "/".join(["d"] * 62)
    members = [a.tar_member(f"{n:05d}/{deep}/f", data=b"") for n in range(5000)]
    run = poll_once_with(dirs, make_engine, "2.tar.gz", a.targz_with(members), "too_many_files")
    assert_refused(run, "too_many_files", "--max-files")


def test_tar_directory_member_data_counts(dirs: Dirs, make_engine: EngineFactory) -> None:
    """1 GiB of zeros attached to a directory member (a 1 MB tar.gz): tarfile skips it, it
    is inflated all the same, so it counts against the ratio like file content."""
    blob = a.targz_directory_data(GiB)
    run = poll_once_with(dirs, make_engine, "2.tar.gz", blob, "compression_ratio")
    assert_refused(run, "compression_ratio", f"its {len(blob)} bytes")


def test_zip_entry_names_are_bounded_in_all(dirs: Dirs, make_engine: EngineFactory) -> None:
    """9,000 directory records each naming a 4,000-byte path: every record is within its
    own bounds and the count within --max-files, but the names (kept until the unpacking
    ends) add up to 36 MB; 100,000 of them would be 800 MiB of memory."""
    long_name = "/".join(["n" * 199] * 20)  # 3,999 bytes
    blob = a.zip_model_and([], first=[a.raw_member(long_name, b"a")], copies_of_first_record=9000)
    run = poll_once_with(dirs, make_engine, "2.zip", blob, "oversized_header")
    assert_refused(run, "oversized_header", "entry names add up to over 32 MiB")


def test_many_deep_directories_keep_names_not_paths(tmp_path: Path) -> None:
    """95,000 directories side by side under a chain of 14 directories of 254-byte names:
    about 6 MB of tar.gz within every limit (ratio about 80, entries under --max-files), so
    it installs. Every full path is about 3.8 KB: kept once per directory (a set of Paths,
    then os.walk's bottom-up list of paths) they took the poller to 470-560 MiB. The model
    dir is on a tmpfs, so the 95,000 directory fsyncs cost nothing."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        dirs = Dirs(root=tmp_path, src=Path(shm) / "src", models=Path(shm) / "models")
        dirs.src.mkdir()
        (dirs.src / "2.tar.gz").write_bytes(a.targz_deep_directories(95_000))
        poller = PollerProcess(
            ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "3600"],
            tmp_path / "poller.log",
        )
        try:
            poller.wait_for("/readyz", timeout=240)
            peak = peak_rss(poller.proc.pid)
        finally:
            code = poller.terminate()
        log = poller.output()
        assert code == 0, log
        assert "installed version 2 (" in log, log
        print(f"peak RSS {peak / MiB:.0f} MiB")
        assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / MiB:.0f} MiB"
