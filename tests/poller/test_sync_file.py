"""The sync engine against a file:/// source: layouts, policies, rollback, junk names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from model_poller.model_dir import BOOKKEEPING_DIR
from model_poller.policy import Policy

from local_services.archives import installed_files, model_files, targz_bytes, write_folder, zip_bytes
from tests.poller.kit import Dirs, EngineFactory

LAYOUTS = {
    "zip-top-folder": lambda v: (f"{v:04d}.zip", zip_bytes(model_files(v), top=f"{v:04d}")),
    "zip-root": lambda v: (f"{v}.zip", zip_bytes(model_files(v))),
    "tar.gz-top-folder": lambda v: (f"{v:04d}.tar.gz", targz_bytes(model_files(v), top=f"{v:04d}")),
    "tar.gz-root-dot": lambda v: (f"{v}.tar.gz", targz_bytes(model_files(v), dot_prefix=True)),
    "tgz-root": lambda v: (f"{v}.tgz", targz_bytes(model_files(v))),
}


def numeric_dirs(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def debris(models: Path) -> list[str]:
    """What is neither a version nor the poller's bookkeeping folder."""
    return [p.name for p in models.iterdir() if not p.name.isdigit() and p.name != BOOKKEEPING_DIR]


def touch_later(path: Path, step: int) -> None:
    """Give ``path`` a distinct, later mtime (its generation for a file source)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + step * 1_000_000_000))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_archive_layouts(dirs: Dirs, make_engine: EngineFactory, layout: str) -> None:
    name, data = LAYOUTS[layout](3)
    (dirs.src / name).write_bytes(data)
    outcome = make_engine().sync()
    assert outcome.complete, outcome.reason()
    assert numeric_dirs(dirs.models) == [3]
    assert installed_files(dirs.models / "3") == model_files(3)
    assert debris(dirs.models) == []


@pytest.mark.parametrize("pbtxt", [False, True])
def test_folder_version_with_ready_marker(dirs: Dirs, make_engine: EngineFactory, pbtxt: bool) -> None:
    write_folder(dirs.src, 4, model_files(4, pbtxt=pbtxt))
    write_folder(dirs.src, 5, model_files(5), ready=False)  # upload in progress
    engine = make_engine()
    outcome = engine.sync()
    assert outcome.complete and numeric_dirs(dirs.models) == [4]
    assert installed_files(dirs.models / "4") == model_files(4, pbtxt=pbtxt)
    (dirs.src / "0005" / "_READY").write_bytes(b"")
    assert engine.sync().complete
    assert numeric_dirs(dirs.models) == [4, 5]


def test_keep_n_installs_newest_and_removes_older(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2, 3):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    engine = make_engine(Policy(keep=2))
    first = engine.sync()
    assert first.complete and numeric_dirs(dirs.models) == [2, 3]
    assert [r.version for r in first.installed] == [3, 2]  # newest first
    (dirs.src / "4.tgz").write_bytes(targz_bytes(model_files(4)))
    outcome = engine.sync()
    assert [r.version for r in outcome.installed] == [4] and outcome.removed == [2]
    assert numeric_dirs(dirs.models) == [3, 4]
    again = engine.sync()
    assert again.installed == [] and again.removed == []  # nothing twice


def test_keep_one(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (7, 8):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    assert make_engine(Policy(keep=1)).sync().complete
    assert numeric_dirs(dirs.models) == [8]


def test_rollback_by_pinned(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2, 3):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    assert make_engine(Policy(keep=2)).sync().complete
    assert numeric_dirs(dirs.models) == [2, 3]
    outcome = make_engine(Policy(keep=None, pinned=frozenset({1}))).sync()
    assert outcome.complete and numeric_dirs(dirs.models) == [1]
    assert installed_files(dirs.models / "1") == model_files(1)


def test_pinned_version_missing_keeps_what_is_there(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    assert make_engine().sync().complete
    outcome = make_engine(Policy(keep=None, pinned=frozenset({9}))).sync()
    assert not outcome.complete and "pinned version 9" in outcome.reason()
    assert numeric_dirs(dirs.models) == [1]  # never emptied


def test_rollback_by_deletion_at_the_source(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2, 3):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    engine = make_engine(Policy(keep=1))
    assert engine.sync().complete and numeric_dirs(dirs.models) == [3]
    (dirs.src / "3.zip").unlink()
    outcome = engine.sync()
    assert outcome.complete and outcome.removed == [3]
    assert numeric_dirs(dirs.models) == [2]


def test_source_emptied_leaves_installed_versions(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    engine = make_engine()
    assert engine.sync().complete
    (dirs.src / "1.zip").unlink()
    outcome = engine.sync()
    assert not outcome.complete and "no valid version" in outcome.reason()
    assert numeric_dirs(dirs.models) == [1]


def test_junk_names_never_break_a_sync(
    dirs: Dirs, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for junk in ["README.md", "model", "a.b.c", "2.zip.tmp", "latest.zip", ".DS_Store"]:
        (dirs.src / junk).write_bytes(b"junk")
    (dirs.src / "notes").mkdir()
    (dirs.src / "notes" / "x.zip").write_bytes(b"junk")
    (dirs.src / "6.zip").write_bytes(zip_bytes(model_files(6)))
    engine = make_engine()
    with caplog.at_level("INFO", logger="model_poller"):
        assert engine.sync().complete
        engine.sync()
    assert numeric_dirs(dirs.models) == [6]
    skipped_lines = [r for r in caplog.records if "a.b.c" in r.getMessage()]
    assert len(skipped_lines) == 1  # one log line per junk name, not one per sync


def test_broken_newest_falls_back_to_older_and_keeps_it(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "2.zip").write_bytes(b"this is not a zip")
    engine = make_engine(Policy(keep=1))
    outcome = engine.sync()
    assert outcome.complete, outcome.reason()
    assert numeric_dirs(dirs.models) == [1]
    assert list(engine.rejected.values()) == ["corrupt"]
    # The same broken upload is not downloaded again; a fixed upload (new generation) is.
    assert engine.sync().installed == []
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    touch_later(dirs.src / "2.zip", 5)
    outcome = engine.sync()
    assert [r.version for r in outcome.installed] == [2] and numeric_dirs(dirs.models) == [2]


def test_staging_leftovers_removed_at_start(dirs: Dirs, make_engine: EngineFactory) -> None:
    dirs.models.mkdir()
    (dirs.models / ".model-poller-staging-abc" / "unpacked" / "0003").mkdir(parents=True)
    (dirs.models / ".model-poller-trash-2-x").mkdir()
    (dirs.src / "3.zip").write_bytes(zip_bytes(model_files(3)))
    assert make_engine().sync().complete
    assert debris(dirs.models) == [] and numeric_dirs(dirs.models) == [3]


def test_existing_version_without_marker_is_not_reinstalled(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.models / "3").mkdir(parents=True)
    (dirs.models / "3" / "saved_model.pb").write_bytes(b"put there by hand")
    (dirs.src / "3.zip").write_bytes(zip_bytes(model_files(3)))
    outcome = make_engine().sync()
    assert outcome.complete and outcome.installed == []
    assert (dirs.models / "3" / "saved_model.pb").read_bytes() == b"put there by hand"


def test_storage_limit_refuses_a_version_that_would_overflow_the_volume(dirs: Dirs, make_engine: EngineFactory) -> None:
    """--storage-limit (the emptyDir's sizeLimit): keep 2 leaves room for versions of at most
    limit/4; pinned to one version, limit/3. The bound follows a live policy change."""
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1, size=1000)))
    big = {**model_files(2), "variables/variables.data-00000-of-00001": os.urandom(3 << 20)}
    (dirs.src / "2.zip").write_bytes(zip_bytes(big))  # about 3 MiB unpacked
    engine = make_engine(Policy(keep=2))
    engine.storage_limit = 10 << 20  # keep 2: 2.5 MiB per version
    outcome = engine.sync()
    assert numeric_dirs(dirs.models) == [1]
    assert engine.rejected == {(2, os.stat(dirs.src / "2.zip").st_mtime_ns): "too_many_bytes"}
    (problem,) = outcome.problems
    assert "--storage-limit 10485760 / (keep 2 + 2)" in problem.message and problem.reason.value == "VersionRejected"

    engine.storage_limit = 14 << 20  # keep 2: 3.5 MiB per version; a re-upload gets through
    (dirs.src / "2.zip").write_bytes(zip_bytes(big))
    touch_later(dirs.src / "2.zip", 5)
    assert engine.sync().complete and numeric_dirs(dirs.models) == [1, 2]


def test_latest_stays_the_newest_valid_version_after_a_rollback_removes_it(
    dirs: Dirs, make_engine: EngineFactory
) -> None:
    for v in (1, 2, 3):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    engine = make_engine(Policy(keep=2))
    assert engine.sync().latest == 3
    engine.set_policy(Policy(keep=None, pinned=frozenset({1})))
    outcome = engine.sync(relist=False)
    assert numeric_dirs(dirs.models) == [1]
    assert outcome.latest == 3  # 3 is still a valid version at the source
    assert engine.sync().installed == []  # and is not downloaded again to know it


def test_memory_of_rejected_uploads_is_dropped_when_they_leave_the_source(
    dirs: Dirs, make_engine: EngineFactory
) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    engine = make_engine(Policy(keep=1))
    for n in range(2, 12):
        (dirs.src / f"{n}.zip").write_bytes(b"broken")
        engine.sync()
        assert len(engine.rejected) == 1, engine.rejected  # only the one still at the source
        (dirs.src / f"{n}.zip").unlink()
    engine.sync()
    assert engine.rejected == {}
