"""What the poller remembers lives in ``<model-dir>/.model-poller/``, never inside a
version directory: a version directory holds exactly the uploaded files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from model_poller.model_dir import BOOKKEEPING_DIR, WORK_PREFIX, ModelDir
from model_poller_api.models import ReportReason

from local_services.archives import model_files, targz_bytes, tree, write_folder, zip_bytes
from tests.poller.kit import Dirs, EngineFactory

Cli = Callable[..., subprocess.CompletedProcess[str]]


def records(models: Path) -> dict[str, dict[str, object]]:
    folder = models / BOOKKEEPING_DIR / "versions"
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.iterdir())}


def expected_tree(files: dict[str, bytes]) -> dict[str, bytes | None]:
    """``tree()`` of a directory holding exactly ``files`` (with their parent folders)."""
    result: dict[str, bytes | None] = dict(files)
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            result["/".join(parts[:i])] = None
    return result


def test_version_dir_holds_exactly_the_uploaded_files(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "3.zip").write_bytes(zip_bytes(model_files(3), top="0003"))
    (dirs.src / "4.tar.gz").write_bytes(targz_bytes(model_files(4)))
    write_folder(dirs.src, 5, model_files(5))
    outcome = make_engine().sync()  # keep 2: versions 4 and 5
    assert outcome.complete, outcome.reason()
    for version in (4, 5):
        assert tree(dirs.models / str(version)) == expected_tree(model_files(version))
    assert sorted(p.name for p in dirs.models.iterdir()) == [BOOKKEEPING_DIR, "4", "5"]
    got = records(dirs.models)
    assert sorted(got) == ["4.json", "5.json"]
    assert got["4.json"]["generation"] == (dirs.src / "4.tar.gz").stat().st_mtime_ns
    assert got["5.json"]["generation"] == (dirs.src / "0005" / "_READY").stat().st_mtime_ns
    assert got["5.json"]["directory"] == "5" and got["5.json"]["object"] == "0005/"


def test_entries_named_like_the_old_marker_install_as_ordinary_files(dirs: Dirs, make_engine: EngineFactory) -> None:
    # Before: the poller wrote .model-poller.json inside the version dir, over the
    # archive's own file (or failed on a folder of that name, retrying forever).
    as_file = {**model_files(6), ".model-poller.json": b'{"generation": 1, "not": "ours"}\n'}
    as_folder = {**model_files(7), ".model-poller.json/inside.txt": b"a folder of that name"}
    (dirs.src / "6.zip").write_bytes(zip_bytes(as_file))
    (dirs.src / "7.tgz").write_bytes(targz_bytes(as_folder, top="0007"))
    engine = make_engine()
    outcome = engine.sync()
    assert outcome.complete and outcome.problems == [], outcome.reason()
    assert engine.metrics.registry.get_sample_value("model_poller_install_attempts_total") == 2
    assert tree(dirs.models / "6") == expected_tree(as_file)
    assert tree(dirs.models / "7") == expected_tree(as_folder)
    # The archive's file does not vouch for anything: the record does.
    assert ModelDir(dirs.models).installed() == {
        6: (dirs.src / "6.zip").stat().st_mtime_ns,
        7: (dirs.src / "7.tgz").stat().st_mtime_ns,
    }


def test_bookkeeping_survives_restarts_and_follows_removals(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    assert make_engine().sync().complete
    before = records(dirs.models)
    assert sorted(before) == ["1.json", "2.json"]
    assert not BOOKKEEPING_DIR.startswith(WORK_PREFIX)  # the start-up cleanup's prefix

    # A restart: prepare() removes work leftovers, never the bookkeeping; nothing is
    # downloaded again, because the generations are still known.
    (dirs.models / f"{WORK_PREFIX}staging-left").mkdir()
    engine = make_engine()
    assert records(dirs.models) == before
    assert sorted(p.name for p in dirs.models.iterdir()) == [BOOKKEEPING_DIR, "1", "2"]
    outcome = engine.sync()
    assert outcome.complete and outcome.installed == []
    assert engine.known(2, (dirs.src / "2.zip").stat().st_mtime_ns)

    # A version's record goes once the version is gone.
    (dirs.src / "3.zip").write_bytes(zip_bytes(model_files(3)))
    outcome = engine.sync()
    assert outcome.removed == [1]
    assert sorted(records(dirs.models)) == ["2.json", "3.json"]


def test_records_without_their_version_are_removed_at_start(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    assert make_engine().sync().complete
    folder = dirs.models / BOOKKEEPING_DIR / "versions"
    # A crash after the record, before the rename; and a temp file of an interrupted write.
    (folder / "9.json").write_text(json.dumps({"version": 9, "directory": "9", "generation": 5}))
    (folder / ".tmp-9-abc").write_text("{")
    removed = ModelDir(dirs.models).prepare()
    assert sorted(removed) == [f"{BOOKKEEPING_DIR}/versions/.tmp-9-abc", f"{BOOKKEEPING_DIR}/versions/9.json"]
    assert sorted(records(dirs.models)) == ["1.json"]
    # So a directory made by hand later is not taken for that upload.
    (dirs.models / "9").mkdir()
    assert ModelDir(dirs.models).installed()[9] is None


def test_version_dir_without_record_has_unknown_generation(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    assert make_engine().sync().complete
    (dirs.models / "0002").mkdir()  # another spelling of version 2, put there by hand
    (dirs.models / "3").mkdir()  # a version from an earlier release: its marker was inside
    (dirs.models / "3" / ".model-poller.json").write_text(json.dumps({"generation": 7}))
    installed = ModelDir(dirs.models).installed()
    assert installed == {2: (dirs.src / "2.zip").stat().st_mtime_ns, 3: None}
    (dirs.models / "٣").mkdir()  # not a version name for TF Serving, nor for us
    (dirs.models / "99999999999999999999").mkdir()
    assert set(ModelDir(dirs.models).installed()) == {2, 3}


def test_cli_restart_keeps_the_bookkeeping(dirs: Dirs, cli: Cli) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    args = ("--source", dirs.uri, "--model-dir", str(dirs.models), "--once", "--log-level", "DEBUG")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    before = records(dirs.models)
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    assert "installing version" not in second.stderr  # nothing downloaded twice
    assert records(dirs.models) == before


def test_a_file_in_the_way_of_a_version_fails_with_its_path(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    engine = make_engine()
    (dirs.models / "2").write_text("not a version directory")
    outcome = engine.sync()
    assert outcome.failed == {2} and engine.rejected == {}  # the model dir's trouble: retried
    assert [(p.reason, p.message) for p in outcome.problems] == [
        (
            ReportReason.INSTALL_FAILED,
            f"version 2: {dirs.models / '2'} is in the way: remove it (or is another poller using this dir?)",
        )
    ]
    assert not (dirs.models / BOOKKEEPING_DIR).exists()  # no record for what is not ours
    (dirs.models / "2").unlink()
    assert engine.sync().complete
