"""A corpus of hostile archives: each is rejected with its reason, the installed version
stays intact, no staging is left, and nothing is written outside the model dir."""

from __future__ import annotations

import base64
import io
import os
import stat
import tarfile
import threading
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import pytest
from model_poller.checksums import Verifier
from model_poller.durable import Syncer
from model_poller.errors import Rejected
from model_poller.extract import MAX_DEPTH, Limits, Unpacker, extract, safe_parts
from model_poller.extract.untar import _BoundedTarInfo
from model_poller.policy import Policy
from model_poller.stores.file import FileStore
from model_poller.sync import Engine
from model_poller.versions import Kind, SourceObject

from local_services import archives as a
from tests.poller.kit import Dirs, EngineFactory

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
    "zip-too-many-bytes": (
        "2.zip",
        lambda: a.zip_with([("variables/big", os.urandom(2 * MiB))]),
        "too_many_bytes",
        Limits(max_bytes=MiB),
    ),
    "zip-bomb-ratio": ("2.zip", lambda: a.zip_bomb(32 * MiB), "compression_ratio", Limits()),
    "zip-bomb-bytes": (
        "2.zip",
        lambda: a.zip_bomb(32 * MiB),
        "too_many_bytes",
        Limits(max_bytes=8 * MiB, max_ratio=1e9),
    ),
    "zip-crc-error": ("2.zip", a.zip_crc_error, "corrupt", Limits()),
    "zip-truncated": ("2.zip", lambda: a.zip_bytes(a.model_files(2, size=200_000))[:-5000], "corrupt", Limits()),
    "zip-garbage": ("2.zip", lambda: os.urandom(4096), "corrupt", Limits()),
    "zip-empty-file": ("2.zip", lambda: b"", "corrupt", Limits()),
    "zip-duplicate-entry": ("2.zip", a.zip_duplicate, "duplicate_entry", Limits()),
    "zip-overlapping-entries": ("2.zip", a.zip_overlapping, "corrupt", Limits()),
    "zip-encrypted": ("2.zip", a.zip_encrypted_flag, "unsupported", Limits()),
    "zip-no-saved-model": (
        "2.zip",
        lambda: a.zip_bytes({"variables/x": b"1", "README": b"x"}),
        "no_saved_model",
        Limits(),
    ),
    "zip-two-top-folders": (
        "2.zip",
        lambda: a.zip_bytes({"0002/saved_model.pb": b"x", "0003/saved_model.pb": b"y"}),
        "no_saved_model",
        Limits(),
    ),
    "tar-absolute-path": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("/tmp/evil2", data=b"x")]),
        "unsafe_path",
        Limits(),
    ),
    "tar-dotdot": ("2.tar.gz", lambda: a.targz_with([a.tar_member("../evil", data=b"x")]), "unsafe_path", Limits()),
    "tar-symlink": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("link", tarfile.SYMTYPE, linkname="/etc")]),
        "link",
        Limits(),
    ),
    "tar-symlink-then-write-through": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("d", tarfile.SYMTYPE, linkname=".."), a.tar_member("d/evil", data=b"x")]),
        "link",
        Limits(),
    ),
    "tar-hardlink": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("hard", tarfile.LNKTYPE, linkname="/etc/passwd")]),
        "link",
        Limits(),
    ),
    "tar-char-device": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("null", tarfile.CHRTYPE)]),
        "special_file",
        Limits(),
    ),
    "tar-block-device": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("sda", tarfile.BLKTYPE)]),
        "special_file",
        Limits(),
    ),
    "tar-fifo": ("2.tar.gz", lambda: a.targz_with([a.tar_member("fifo", tarfile.FIFOTYPE)]), "special_file", Limits()),
    "tar-too-many-files": (
        "2.tgz",
        lambda: a.targz_with([a.tar_member(f"f{i}", data=b"x") for i in range(20)]),
        "too_many_files",
        Limits(max_files=10),
    ),
    "tar-too-many-bytes": (
        "2.tgz",
        lambda: a.targz_with([a.tar_member("big", data=os.urandom(2 * MiB))]),
        "too_many_bytes",
        Limits(max_bytes=MiB),
    ),
    "tar-bomb-ratio": ("2.tgz", lambda: a.targz_bomb(32 * MiB), "compression_ratio", Limits()),
    "tar-truncated": ("2.tar.gz", lambda: a.targz_bytes(a.model_files(2, size=300_000))[:-20000], "corrupt", Limits()),
    "tar-garbage": ("2.tar.gz", lambda: os.urandom(4096), "corrupt", Limits()),
    "tar-bad-gzip-crc": ("2.tar.gz", lambda: _flip_gzip_crc(a.targz_bytes(a.model_files(2))), "corrupt", Limits()),
    "tar-duplicate-entry": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("saved_model.pb", data=b"again")]),
        "duplicate_entry",
        Limits(),
    ),
    "tar-file-then-dir": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("saved_model.pb/x", data=b"again")]),
        "duplicate_entry",
        Limits(),
    ),
    "tar-no-saved-model": ("2.tar.gz", lambda: a.targz_bytes({"variables/x": b"1"}), "no_saved_model", Limits()),
    # zip members compressed with anything but stored / deflated, refused before inflating
    "zip-bzip2": (
        "2.zip",
        lambda: a.zip_compressed(12, a.bzip2_zeros(4), 32 * MiB),
        "unsupported_compression",
        Limits(),
    ),
    "zip-lzma": (
        "2.zip",
        lambda: a.zip_compressed(14, a.lzma_zip_data(16 * MiB), 16 * MiB),
        "unsupported_compression",
        Limits(),
    ),
    "zip-zstd": ("2.zip", lambda: a.zip_compressed(93, os.urandom(100), 1000), "unsupported_compression", Limits()),
    # the central directory, judged by the end records before it is read
    "zip64-declares-too-many-files": (
        "2.zip",
        lambda: a.zip_model_and([], first=[a.raw_member("a", b"a")], copies_of_first_record=70_000),
        "too_many_files",
        Limits(max_files=65_535),
    ),
    "zip-directory-count-lies": (
        "2.zip",
        lambda: a.zip_model_and([], first=[a.raw_member("a", b"a")], copies_of_first_record=1000, declared_entries=5),
        "corrupt",
        Limits(),
    ),
    "zip64-end-record-cut-short": ("2.zip", a.zip64_end_record_cut_short, "corrupt", Limits()),
    "zip-directory-oversized": (
        "2.zip",
        lambda: a.zip_model_and([], directory_filler=MiB),
        "oversized_header",
        Limits(),
    ),
    "zip-entry-comment-oversized": (
        "2.zip",
        lambda: a.zip_model_and([a.RawMember(b"x", b"", comment=b"c" * 2000)]),
        "oversized_header",
        Limits(),
    ),
    # paths too deep or too long for any filesystem to take
    "zip-deep-path": ("2.zip", lambda: a.zip_raw_name("a/" * 1000 + "f"), "unsafe_path", Limits()),
    "zip-long-directory-name": ("2.zip", lambda: a.zip_raw_name("d" * 300 + "/f"), "unsafe_path", Limits()),
    "zip-long-file-name": ("2.zip", lambda: a.zip_raw_name("f" * 300), "unsafe_path", Limits()),
    "zip-long-raw-name": ("2.zip", lambda: a.zip_raw_name("/".join(["n" * 200] * 25)), "unsafe_path", Limits()),
    "tar-deep-path": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("a/" * 1000 + "f", data=b"x")]),
        "unsafe_path",
        Limits(),
    ),
    "tar-long-directory-name": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("d" * 300 + "/f", data=b"x")]),
        "unsafe_path",
        Limits(),
    ),
    "tar-long-path": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("/".join(["p" * 250] * 17) + "/f", data=b"x")]),
        "unsafe_path",
        Limits(),
    ),
    # tar metadata headers bigger than a real archive needs; refused before being read (a
    # 100 KiB long name would otherwise be read and then refused as unsafe_path, a pax
    # comment read and ignored: the exact reason proves the bound runs)
    "tar-gnu-long-name-oversized": (
        "2.tar.gz",
        lambda: a.targz_metadata(b"L", b"a" * 100_000),
        "oversized_header",
        Limits(),
    ),
    "tar-gnu-long-link-oversized": (
        "2.tar.gz",
        lambda: a.targz_metadata(b"K", b"a" * 100_000),
        "oversized_header",
        Limits(),
    ),
    "tar-pax-oversized": (
        "2.tar.gz",
        lambda: a.targz_metadata(b"x", a.pax_record("comment", "c" * 100_000)),
        "oversized_header",
        Limits(),
    ),
    "tar-pax-global-oversized": (
        "2.tar.gz",
        lambda: a.targz_metadata(b"g", a.pax_record("comment", "c" * 100_000)),
        "oversized_header",
        Limits(),
    ),
    "tar-solaris-oversized": (
        "2.tar.gz",
        lambda: a.targz_metadata(b"X", a.pax_record("comment", "c" * 100_000)),
        "oversized_header",
        Limits(),
    ),
    "tar-pax-globals-add-up": ("2.tar.gz", a.targz_pax_globals, "oversized_header", Limits()),
    # 400 long-name headers in a row made tarfile recurse past Python's limit
    "tar-header-run": ("2.tar.gz", lambda: a.targz_metadata(b"L", b"x" * 10, times=400), "oversized_header", Limits()),
    "tar-gnu-sparse": (
        "2.tar.gz",
        lambda: a.targz_with([a.tar_member("variables/s", tarfile.GNUTYPE_SPARSE)]),
        "unsupported",
        Limits(),
    ),
    "tar-pax-sparse": ("2.tar.gz", a.targz_pax_sparse, "unsupported", Limits()),
    # every byte out of the gzip stream counts, not only file content
    "tar-trailing-zeros-bytes": (
        "2.tgz",
        lambda: a.targz_trailing_zeros(64 * MiB),
        "too_many_bytes",
        Limits(max_bytes=16 * MiB, max_ratio=1e9),
    ),
    "tar-trailing-zeros-ratio": ("2.tgz", lambda: a.targz_trailing_zeros(64 * MiB), "compression_ratio", Limits()),
    "tar-directory-data": (
        "2.tgz",
        lambda: a.targz_directory_data(64 * MiB),
        "too_many_bytes",
        Limits(max_bytes=16 * MiB, max_ratio=1e9),
    ),
    "tar-headers-counted": (
        "2.tgz",
        lambda: a.gzip_with_zeros(
            a.tar_entries({**a.model_files(9), **{f"e/{i}": b"" for i in range(1000)}}) + a.TAR_END, 0
        ),
        "too_many_bytes",
        Limits(max_bytes=128 << 10),  # 500 KB of headers, 8 KB of content
    ),
}


def _flip_gzip_crc(blob: bytes) -> bytes:
    data = bytearray(blob)
    data[-8] ^= 0xFF  # the gzip trailer's CRC32
    return bytes(data)


def rejection_reasons(engine: Engine) -> list[str]:
    """The reasons of the uploads the engine rejected (it keeps a reason or the error)."""
    return [getattr(r, "reason", r) for r in engine.rejected.values()]


def _model_dir_entries(models: Path) -> list[str]:
    """Versions and work leftovers in the model dir (the bookkeeping folder aside)."""
    return sorted(p.name for p in models.iterdir() if p.name != ".model-poller")


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

    assert rejection_reasons(engine) == [reason], engine.rejected
    assert outcome.complete  # version 1 is still the newest valid version
    assert _model_dir_entries(dirs.models) == ["1"]  # no version 2, no staging
    assert a.tree(dirs.models / "1") == before_v1
    assert snapshot_outside(dirs.root, dirs.models) == before_outside
    assert not Path("/tmp/evil1").exists() and not Path("/tmp/evil2").exists()
    assert engine.metrics.rejections.labels(reason=reason)._value.get() == 1


def test_hostile_folder_version_names(dirs: Dirs, make_engine: EngineFactory) -> None:
    """Folder versions go through the same limits as archives."""
    a.write_folder(dirs.src, 3, {**a.model_files(3), **{f"variables/f{i}": b"x" for i in range(20)}})
    engine = make_engine(limits=Limits(max_files=10))
    outcome = engine.sync()
    assert rejection_reasons(engine) == ["too_many_files"]
    assert not outcome.complete and list(dirs.models.iterdir()) == []


class TamperedStore(FileStore):
    """A store that reports the CRC32C of what was uploaded but serves altered bytes."""

    def list_objects(self) -> list[SourceObject]:
        out = []
        for obj in super().list_objects():
            crc = base64.b64encode(google_crc32c.Checksum(b"what was uploaded").digest()).decode()
            out.append(SourceObject(obj.name, obj.size, obj.generation, crc32c=crc))
        return out


def test_checksum_mismatch_rejected(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "5.zip").write_bytes(a.zip_bytes(a.model_files(5)))
    engine = make_engine(store=TamperedStore(dirs.uri, dirs.src))
    outcome = engine.sync()
    assert rejection_reasons(engine) == ["checksum_mismatch"]
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


@pytest.mark.parametrize(
    "name, detail",
    [
        ("a/" * MAX_DEPTH + "f", f"{MAX_DEPTH + 1} levels deep"),
        ("d" * 256 + "/f", "256-byte path component"),  # a directory: was os.makedirs' OSError
        ("f" * 256, "256-byte path component"),
        ("\u00e9" * 128, "256-byte path component"),  # 128 characters, 256 bytes on disk
        ("/".join(["p" * 255] * 16) + "/f", "4097-byte path"),
    ],
)
def test_safe_parts_bounds_depth_and_length(name: str, detail: str) -> None:
    with pytest.raises(Rejected) as err:
        safe_parts(name)
    assert err.value.reason == "unsafe_path" and detail in err.value.detail


def test_safe_parts_accepts_up_to_the_bounds() -> None:
    assert len(safe_parts("a/" * (MAX_DEPTH - 1) + "f")) == MAX_DEPTH
    assert safe_parts("f" * 255) == ("f" * 255,)
    assert len("/".join(safe_parts("/".join(["p" * 255] * 16)))) == 4095


def test_deepest_allowed_path_installs(dirs: Dirs, make_engine: EngineFactory) -> None:
    """Directories are made one level at a time, so the deepest allowed entry installs."""
    deep = "d/" * (MAX_DEPTH - 1) + "f"
    (dirs.src / "2.tar.gz").write_bytes(a.targz_with([a.tar_member(deep, data=b"deep")]))
    (dirs.src / "3.zip").write_bytes(a.zip_raw_name(deep, b"deep"))
    engine = make_engine()
    assert engine.sync().complete and not engine.rejected
    assert (dirs.models / "2" / deep).read_bytes() == b"deep"
    assert (dirs.models / "3" / deep).read_bytes() == b"deep"


def test_zip_layouts_the_directory_reader_accepts(dirs: Dirs, make_engine: EngineFactory) -> None:
    """The hand-written central directory reader still takes what zipfile took: an
    archive comment (holding an end record's signature), a self-extractor stub in
    front, sizes and offsets in zip64 extra fields."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = b"PK\x05\x06 looks like an end record " * 100
        for name, data in a.model_files(2).items():
            zf.writestr(name, data)
    (dirs.src / "2.zip").write_bytes(buf.getvalue())
    (dirs.src / "3.zip").write_bytes(b"#!/bin/sh\nexit 1\n" * 50 + a.zip_bytes(a.model_files(3)))
    zip64 = [a.raw_member(n, d) for n, d in a.model_files(4).items()]
    for m in zip64:
        m.zip64 = True
    (dirs.src / "4.zip").write_bytes(a.zip_raw(zip64))
    engine = make_engine(Policy(keep=3))
    assert engine.sync().complete and not engine.rejected, engine.rejected
    for version in (2, 3, 4):
        assert a.installed_files(dirs.models / str(version))["saved_model.pb"] == f"saved model {version}".encode()


def test_tarfile_still_calls_the_overridden_hooks() -> None:
    """The header bound overrides tarfile's private ``TarInfo._proc_member`` (and the GNU
    sparse readers): a Python whose tarfile renamed them would skip the bound silently."""
    for hook in ("_proc_member", "_proc_sparse", "_proc_gnusparse_00", "_proc_gnusparse_01", "_proc_gnusparse_10"):
        assert callable(vars(tarfile.TarInfo).get(hook)), hook
        assert hook in vars(_BoundedTarInfo), hook


@pytest.mark.parametrize(
    "type_",
    [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE],
)
def test_large_declared_header_is_never_read(tmp_path: Path, type_: bytes) -> None:
    """A header declaring 1 GiB (really followed by 1 GiB of zeros): refused at the
    header block, with next to nothing inflated or allocated."""
    blob = a.targz_metadata_bomb(type_, 1 << 30)
    (tmp_path / "out").mkdir()
    with Syncer() as syncer:
        unpacker = Unpacker(tmp_path / "out", Limits(), syncer, threading.Event(), archive_size=len(blob))
        tracemalloc.start()
        try:
            with pytest.raises(Rejected) as err:
                extract(io.BytesIO(blob), Kind.TAR_GZ, unpacker)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert err.value.reason == "oversized_header" and f"declares {1 << 30} bytes" in err.value.detail
    assert unpacker.inflated < 256 << 10
    assert peak < 4 * MiB


def test_every_inflated_byte_counts(tmp_path: Path) -> None:
    """Headers, padding and the data after the end blocks count, not only file content."""
    blob = a.targz_trailing_zeros(3 * MiB)
    (tmp_path / "out").mkdir()
    with Syncer() as syncer:
        unpacker = Unpacker(tmp_path / "out", Limits(max_ratio=1e9), syncer, threading.Event(), archive_size=len(blob))
        extract(io.BytesIO(blob), Kind.TAR_GZ, unpacker)
    tar_size = len(a.tar_entries(a.model_files(9)) + a.TAR_END)
    assert unpacker.inflated == tar_size + 3 * MiB
    assert unpacker.bytes_written == sum(len(d) for d in a.model_files(9).values())


def test_stop_abandons_cleanly(dirs: Dirs, make_engine: EngineFactory) -> None:
    from model_poller.errors import Abandoned

    (dirs.src / "1.zip").write_bytes(a.zip_bytes(a.model_files(1, size=3 * MiB)))
    engine = make_engine()
    engine.stop.set()
    with pytest.raises(Abandoned):
        engine.sync()
    assert list(dirs.models.iterdir()) == []


_ = threading
