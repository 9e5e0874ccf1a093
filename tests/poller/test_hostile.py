"""A corpus of hostile archives: each is rejected with its reason, the installed version
stays intact, no staging is left, and nothing is written outside the model dir."""

from __future__ import annotations

import base64
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Callable

import google_crc32c
import pytest
from poller import archives as a
from poller.conftest import Dirs, EngineFactory

from model_poller.errors import Rejected
from model_poller.extract import Limits, safe_parts
from model_poller.install import Verifier
from model_poller.policy import Policy
from model_poller.sources.file import FileSource
from model_poller.versions import SourceObject

MiB = 1 << 20

# name -> (archive file name for version 2, bytes builder, expected reason, limits)
CORPUS: dict[str, tuple[str, Callable[[], bytes], str, Limits]] = {
    "zip-absolute-path": ("2.zip", lambda: a.zip_raw_name("/tmp/evil1"), "unsafe_path", Limits()),
    "zip-dotdot": ("2.zip", lambda: a.zip_raw_name("../../evil"), "unsafe_path", Limits()),
    "zip-dotdot-nested": ("2.zip", lambda: a.zip_raw_name("a/../../../e"), "unsafe_path", Limits()),
    "zip-backslash": ("2.zip", lambda: a.zip_raw_name("..\\..\\evil"), "unsafe_path", Limits()),
    "zip-symlink": ("2.zip", a.zip_symlink, "link", Limits()),
    "zip-fifo": ("2.zip", lambda: a.zip_special(stat.S_IFIFO), "special_file", Limits()),
    "zip-char-device": ("2.zip", lambda: a.zip_special(stat.S_IFCHR), "special_file", Limits()),
    "zip-too-many-files": ("2.zip", lambda: a.zip_many_files(20), "too_many_files", Limits(max_files=10)),
    "zip-too-many-bytes": ("2.zip", lambda: a.zip_with([("variables/big", os.urandom(2 * MiB))]), "too_many_bytes", Limits(max_bytes=MiB)),
    "zip-bomb-ratio": ("2.zip", lambda: a.zip_bomb(32 * MiB), "compression_ratio", Limits()),
    "zip-bomb-bytes": ("2.zip", lambda: a.zip_bomb(32 * MiB), "too_many_bytes", Limits(max_bytes=8 * MiB, max_ratio=1e9)),
    "zip-crc-error": ("2.zip", a.zip_crc_error, "corrupt", Limits()),
    "zip-truncated": ("2.zip", lambda: a.zip_bytes(a.model_files(2, size=200_000))[:-5000], "corrupt", Limits()),
    "zip-garbage": ("2.zip", lambda: os.urandom(4096), "corrupt", Limits()),
    "zip-empty-file": ("2.zip", lambda: b"", "corrupt", Limits()),
    "zip-duplicate-entry": ("2.zip", a.zip_duplicate, "duplicate_entry", Limits()),
    "zip-overlapping-entries": ("2.zip", a.zip_overlapping, "corrupt", Limits()),
    "zip-encrypted": ("2.zip", a.zip_encrypted_flag, "unsupported", Limits()),
    "zip-no-saved-model": ("2.zip", lambda: a.zip_bytes({"variables/x": b"1", "README": b"x"}), "no_saved_model", Limits()),
    "zip-two-top-folders": ("2.zip", lambda: a.zip_bytes({"0002/saved_model.pb": b"x", "0003/saved_model.pb": b"y"}), "no_saved_model", Limits()),
    "tar-absolute-path": ("2.tar.gz", lambda: a.targz_with([a.tar_member("/tmp/evil2", data=b"x")]), "unsafe_path", Limits()),
    "tar-dotdot": ("2.tar.gz", lambda: a.targz_with([a.tar_member("../evil", data=b"x")]), "unsafe_path", Limits()),
    "tar-symlink": ("2.tar.gz", lambda: a.targz_with([a.tar_member("link", tarfile.SYMTYPE, linkname="/etc")]), "link", Limits()),
    "tar-symlink-then-write-through": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("d", tarfile.SYMTYPE, linkname=".."), a.tar_member("d/evil", data=b"x")]),
        "link",
        Limits(),
    ),
    "tar-hardlink": ("2.tar.gz", lambda: a.targz_with([a.tar_member("hard", tarfile.LNKTYPE, linkname="/etc/passwd")]), "link", Limits()),
    "tar-char-device": ("2.tar.gz", lambda: a.targz_with([a.tar_member("null", tarfile.CHRTYPE)]), "special_file", Limits()),
    "tar-block-device": ("2.tar.gz", lambda: a.targz_with([a.tar_member("sda", tarfile.BLKTYPE)]), "special_file", Limits()),
    "tar-fifo": ("2.tar.gz", lambda: a.targz_with([a.tar_member("fifo", tarfile.FIFOTYPE)]), "special_file", Limits()),
    "tar-too-many-files": ("2.tgz", lambda: a.targz_with([a.tar_member(f"f{i}", data=b"x") for i in range(20)]), "too_many_files", Limits(max_files=10)),
    "tar-too-many-bytes": ("2.tgz", lambda: a.targz_with([a.tar_member("big", data=os.urandom(2 * MiB))]), "too_many_bytes", Limits(max_bytes=MiB)),
    "tar-bomb-ratio": ("2.tgz", lambda: a.targz_bomb(32 * MiB), "compression_ratio", Limits()),
    "tar-truncated": ("2.tar.gz", lambda: a.targz_bytes(a.model_files(2, size=300_000))[:-20000], "corrupt", Limits()),
    "tar-garbage": ("2.tar.gz", lambda: os.urandom(4096), "corrupt", Limits()),
    "tar-bad-gzip-crc": ("2.tar.gz", lambda: _flip_gzip_crc(a.targz_bytes(a.model_files(2))), "corrupt", Limits()),
    "tar-duplicate-entry": ("2.tar.gz", lambda: a.targz_with([a.tar_member("saved_model.pb", data=b"again")]), "duplicate_entry", Limits()),
    "tar-file-then-dir": ("2.tar.gz", lambda: a.targz_with([a.tar_member("saved_model.pb/x", data=b"again")]), "duplicate_entry", Limits()),
    "tar-no-saved-model": ("2.tar.gz", lambda: a.targz_bytes({"variables/x": b"1"}), "no_saved_model", Limits()),
}


def _flip_gzip_crc(blob: bytes) -> bytes:
    data = bytearray(blob)
    data[-8] ^= 0xFF  # the gzip trailer's CRC32
    return bytes(data)


def snapshot_outside(root: Path, models: Path) -> dict[str, float]:
    """Every path under ``root`` except the model dir, with its mtime."""
    result: dict[str, float] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == models:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path == models:
                continue
            result[str(path)] = path.lstat().st_mtime
    return result


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_archive_rejected(dirs: Dirs, make_engine: EngineFactory, case: str) -> None:
    name, build, reason, limits = CORPUS[case]
    (dirs.src / "1.zip").write_bytes(a.zip_bytes(a.model_files(1), top="0001"))
    engine = make_engine(Policy(keep=2), limits)
    assert engine.sync().complete
    before_v1 = a.tree(dirs.models / "1")

    (dirs.src / name).write_bytes(build())
    before_outside = snapshot_outside(dirs.root, dirs.models)
    outcome = engine.sync()

    assert list(engine.rejected.values()) == [reason], engine.rejected
    assert outcome.complete  # version 1 is still the newest valid version
    assert sorted(p.name for p in dirs.models.iterdir()) == ["1"]  # no version 2, no staging
    assert a.tree(dirs.models / "1") == before_v1
    assert snapshot_outside(dirs.root, dirs.models) == before_outside
    assert not Path("/tmp/evil1").exists() and not Path("/tmp/evil2").exists()
    assert engine.metrics.rejections.labels(reason=reason)._value.get() == 1


def test_hostile_folder_version_names(dirs: Dirs, make_engine: EngineFactory) -> None:
    """Folder versions go through the same limits as archives."""
    a.write_folder(dirs.src, 3, {**a.model_files(3), **{f"variables/f{i}": b"x" for i in range(20)}})
    engine = make_engine(limits=Limits(max_files=10))
    outcome = engine.sync()
    assert list(engine.rejected.values()) == ["too_many_files"]
    assert not outcome.complete and list(dirs.models.iterdir()) == []


class TamperedSource(FileSource):
    """A store that reports the CRC32C of what was uploaded but serves altered bytes."""

    def list_objects(self) -> list[SourceObject]:
        out = []
        for obj in super().list_objects():
            crc = base64.b64encode(google_crc32c.Checksum(b"what was uploaded").digest()).decode()
            out.append(SourceObject(obj.name, obj.size, obj.generation, crc32c=crc))
        return out


def test_checksum_mismatch_rejected(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "5.zip").write_bytes(a.zip_bytes(a.model_files(5)))
    engine = make_engine(source=TamperedSource(dirs.uri, dirs.src))
    outcome = engine.sync()
    assert list(engine.rejected.values()) == ["checksum_mismatch"]
    assert not outcome.complete and list(dirs.models.iterdir()) == []


def test_verifier_crc32c_and_md5() -> None:
    import hashlib

    data = b"hello world" * 1000
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    for obj in (SourceObject("x", len(data), 1, crc32c=crc), SourceObject("x", len(data), 1, md5=md5)):
        v = Verifier(obj)
        v.update(data[:10])
        v.update(data[10:])
        v.check("x")
        bad = Verifier(obj)
        bad.update(data[:-1] + b"!")
        with pytest.raises(Rejected, match="checksum_mismatch"):
            bad.check("x")


@pytest.mark.parametrize(
    "name", ["/abs", "../x", "a/../../x", "a/b/../../../x", "C:/x", "a\\b", "x\x00y", "", ".", "./"]
)
def test_safe_parts_rejects(name: str) -> None:
    with pytest.raises(Rejected):
        safe_parts(name)


def test_safe_parts_normalises() -> None:
    assert safe_parts("./a//b/./c") == ("a", "b", "c")
    assert safe_parts("0002/saved_model.pb") == ("0002", "saved_model.pb")


def test_stop_abandons_cleanly(dirs: Dirs, make_engine: EngineFactory) -> None:
    from model_poller.errors import Abandoned

    (dirs.src / "1.zip").write_bytes(a.zip_bytes(a.model_files(1, size=3 * MiB)))
    engine = make_engine()
    engine.stop.set()
    with pytest.raises(Abandoned):
        engine.sync()
    assert list(dirs.models.iterdir()) == []


_ = threading
