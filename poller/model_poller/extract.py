"""Hardened unpacking of zip and tar.gz archives into a staging directory.

Rejects (``Rejected(reason, ...)``): absolute paths and ``..`` (``unsafe_path``),
symbolic and hard links (``link``), device, fifo and socket entries (``special_file``),
more than ``max_files`` entries (``too_many_files``), more than ``max_bytes`` bytes
counted as actually written (``too_many_bytes``), a compression ratio above
``max_ratio`` (``compression_ratio``), corrupt or truncated data and CRC errors
(``corrupt``), entries that collide (``duplicate_entry``), encrypted or unsupported
entries (``unsupported``) and a missing SavedModel (``no_saved_model``).

Nothing is ever written outside ``dest``: every path is validated, files are created
with ``O_EXCL | O_NOFOLLOW``, and no link is ever created, so no path inside ``dest``
can lead outside it.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
import struct
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from model_poller.durable import Syncer, fsync_dir
from model_poller.errors import Abandoned, Rejected
from model_poller.versions import SAVED_MODEL_FILES, Kind

CHUNK = 1 << 20
GiB = 1 << 30
DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_BYTES = 50 * GiB
DEFAULT_MAX_RATIO = 200.0
# Small entries of zeros compress far beyond any sane ratio; the ratio only counts above this.
RATIO_FLOOR = 1 << 20
# Large files are handed to the syncer every this many bytes, so disk writes overlap unpacking.
WRITE_BACK_EVERY = 32 << 20

_DRIVE = re.compile(r"^[A-Za-z]:$")
# Archive tools' litter, ignored when looking for the single top folder.
_LITTER = frozenset({"__MACOSX", ".DS_Store"})


@dataclass(frozen=True)
class Limits:
    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO


def safe_parts(name: str) -> tuple[str, ...]:
    """Split an entry name into path components, rejecting anything that could escape.

    ``./a//b`` -> ("a", "b"); ``/etc/x``, ``C:/x``, ``a/../b``, ``a\\b``, NUL -> Rejected.
    """
    if "\x00" in name:
        raise Rejected("unsafe_path", f"entry name {name!r} contains NUL")
    if "\\" in name:
        raise Rejected("unsafe_path", f"entry name {name!r} contains a backslash")
    if name.startswith("/"):
        raise Rejected("unsafe_path", f"entry {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if parts and _DRIVE.match(parts[0]):
        raise Rejected("unsafe_path", f"entry {name!r} has an absolute path")
    if ".." in parts:
        raise Rejected("unsafe_path", f"entry {name!r} goes up with '..'")
    if not parts:
        raise Rejected("unsafe_path", f"entry name {name!r} is empty")
    return parts


@dataclass
class Unpacker:
    """Writes validated entries under ``dest`` within ``limits``; counts what is written."""

    dest: Path
    limits: Limits
    syncer: Syncer
    stop: threading.Event
    archive_size: int | None = None
    files: int = 0
    bytes_written: int = 0
    _dirs: set[Path] = field(default_factory=set)

    def _count_entry(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise Rejected("too_many_files", f"more than {self.limits.max_files} entries (--max-files)")

    def _make_parents(self, target: Path) -> None:
        parent = target.parent
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise Rejected("duplicate_entry", f"{target.relative_to(self.dest)} collides with a file") from exc
        while parent != self.dest and parent not in self._dirs:
            self._dirs.add(parent)
            parent = parent.parent

    def add_dir(self, name: str) -> None:
        self._count_entry()
        if name.strip("/") in ("", ".") and not name.startswith("/"):
            return  # the archive's own root, "./"
        target = self.dest.joinpath(*safe_parts(name))
        self._make_parents(target)
        try:
            os.mkdir(target, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(target).st_mode):
                raise Rejected("duplicate_entry", f"directory {name!r} collides with a file") from None
        self._dirs.add(target)

    def open_file(self, name: str, compressed_size: int | None = None) -> FileSink:
        self._count_entry()
        target = self.dest.joinpath(*safe_parts(name))
        self._make_parents(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o644)
        except (FileExistsError, IsADirectoryError) as exc:
            raise Rejected("duplicate_entry", f"entry {name!r} appears twice") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Rejected("unsafe_path", f"entry name {name[:80]!r}... is too long") from exc
            raise
        return FileSink(self, fd, name, compressed_size)

    def _account(self, n: int) -> None:
        self.bytes_written += n
        if self.bytes_written > self.limits.max_bytes:
            raise Rejected("too_many_bytes", f"unpacks to more than {self.limits.max_bytes} bytes (--max-bytes)")
        if (
            self.archive_size is not None
            and self.bytes_written > RATIO_FLOOR
            and self.bytes_written > self.limits.max_ratio * max(self.archive_size, 1)
        ):
            raise Rejected(
                "compression_ratio",
                f"unpacks to more than {self.limits.max_ratio:g}x its {self.archive_size} bytes (--max-ratio)",
            )

    def sync_dirs(self) -> None:
        """fsync every directory written, deepest first, then ``dest`` itself."""
        self.syncer.wait()
        for path in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(path)
        fsync_dir(self.dest)


class FileSink:
    """One file being written; ``close()`` hands it to the syncer."""

    def __init__(self, owner: Unpacker, fd: int, name: str, compressed_size: int | None) -> None:
        self._owner = owner
        self._fd: int | None = fd
        self._name = name
        self._compressed = compressed_size
        self.written = 0

    def write(self, chunk: bytes | memoryview) -> None:
        owner = self._owner
        if owner.stop.is_set():
            raise Abandoned()
        n = len(chunk)
        self.written += n
        owner._account(n)
        if (
            self._compressed is not None
            and self.written > RATIO_FLOOR
            and self.written > owner.limits.max_ratio * max(self._compressed, 1)
        ):
            raise Rejected(
                "compression_ratio",
                f"entry {self._name!r} expands beyond {owner.limits.max_ratio:g}x (--max-ratio)",
            )
        assert self._fd is not None
        view = memoryview(chunk)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        if self.written // WRITE_BACK_EVERY != (self.written - n) // WRITE_BACK_EVERY:
            owner.syncer.write_back(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._owner.syncer.hand_over(fd)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _copy(read: Callable[[int], bytes], sink: FileSink, what: str) -> None:
    """Copy from an archive member into ``sink``; read errors mean a corrupt archive."""
    try:
        while True:
            try:
                chunk = read(CHUNK)
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
                raise Rejected("corrupt", f"{what}: {exc}") from exc
            if not chunk:
                break
            sink.write(chunk)
    except BaseException:
        sink.discard()
        raise
    sink.close()


_LOCAL_HEADER = struct.Struct("<4s5HL2L2H")  # zipfile's structFileHeader
_LOCAL_MAGIC = b"PK\x03\x04"
_STORED, _DEFLATED = 0, 8
# Compressed bytes read per step. Members are inflated by our own loop rather than
# zipfile.ZipExtFile: that one re-slices and concatenates its buffers for every read and
# cost about as much CPU as the inflate itself (profiled with py-spy on a 1 GiB archive).
ZIP_READ = 1 << 20
# Upper bound of one inflate step's output: memory stays bounded even for a bomb.
INFLATE_OUT = 4 << 20


def _extract_zip(archive: BinaryIO, unpacker: Unpacker) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise Rejected("corrupt", f"not a readable zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > unpacker.limits.max_files:
            raise Rejected("too_many_files", f"{len(infos)} entries, more than {unpacker.limits.max_files} (--max-files)")
        for info in infos:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise Rejected("link", f"entry {info.filename!r} is a symbolic link")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                raise Rejected("special_file", f"entry {info.filename!r} is a device, fifo or socket")
            if info.flag_bits & 0x1:
                raise Rejected("unsupported", f"entry {info.filename!r} is encrypted")
        # In file order, so a growing download is read front to back; entries must not
        # overlap (overlapping entries are a known zip-bomb trick).
        ordered = sorted(infos, key=lambda i: i.header_offset)
        cd_start = zf.start_dir
        for at, info in enumerate(ordered):
            next_start = ordered[at + 1].header_offset if at + 1 < len(ordered) else cd_start
            if info.is_dir():
                unpacker.add_dir(info.filename)
            elif info.compress_type in (_STORED, _DEFLATED):
                _extract_zip_member(archive, info, next_start, unpacker)
            else:  # bzip2, lzma, ...: rare in practice, zipfile's reader is fast enough
                _extract_zip_member_zipfile(zf, info, unpacker)


def _extract_zip_member_zipfile(zf: zipfile.ZipFile, info: zipfile.ZipInfo, unpacker: Unpacker) -> None:
    sink = unpacker.open_file(info.filename, compressed_size=info.compress_size)
    try:
        member = zf.open(info)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error, EOFError, OSError, ValueError) as exc:
        sink.discard()
        reason = "unsupported" if isinstance(exc, (NotImplementedError, RuntimeError)) else "corrupt"
        raise Rejected(reason, f"entry {info.filename!r}: {exc}") from exc
    with member:
        _copy(member.read, sink, f"entry {info.filename!r}")


def _extract_zip_member(archive: BinaryIO, info: zipfile.ZipInfo, limit: int, unpacker: Unpacker) -> None:
    """Copy one stored or deflated member, checking its local header, size and CRC-32."""
    what = f"entry {info.filename!r}"
    try:
        archive.seek(info.header_offset)
        header = archive.read(_LOCAL_HEADER.size)
    except (OSError, EOFError) as exc:
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise Rejected("corrupt", f"{what}: bad local file header")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[9], fields[10]
    raw_name = archive.read(name_len)
    expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", errors="replace")
    if raw_name != expected:
        raise Rejected("corrupt", f"{what}: local header names {raw_name[:80]!r}")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    left = info.compress_size
    if start + left > limit:
        raise Rejected("corrupt", f"{what}: overlaps the next entry")
    sink = unpacker.open_file(info.filename, compressed_size=info.compress_size)
    try:
        archive.seek(start)
        # (an empty deflated entry may be written as zero bytes: nothing to inflate)
        inflater = zlib.decompressobj(-15) if info.compress_type == _DEFLATED and left else None
        crc = 0
        out = 0
        while left > 0:
            data = archive.read(min(ZIP_READ, left))
            if not data:
                raise Rejected("corrupt", f"{what}: truncated")
            left -= len(data)
            if inflater is None:
                crc = zlib.crc32(data, crc)
                out += len(data)
                sink.write(data)
                continue
            while True:  # at most INFLATE_OUT bytes of output at a time
                try:
                    piece = inflater.decompress(data, INFLATE_OUT)
                except zlib.error as exc:
                    raise Rejected("corrupt", f"{what}: {exc}") from exc
                if piece:
                    crc = zlib.crc32(piece, crc)
                    out += len(piece)
                    sink.write(piece)
                data = inflater.unconsumed_tail
                if inflater.eof or (not data and len(piece) < INFLATE_OUT):
                    break
        if inflater is not None and (not inflater.eof or inflater.unused_data or inflater.unconsumed_tail):
            raise Rejected("corrupt", f"{what}: deflate stream does not end where the entry does")
        if out != info.file_size:
            raise Rejected("corrupt", f"{what}: {out} bytes, the archive says {info.file_size}")
        if crc != info.CRC:
            raise Rejected("corrupt", f"{what}: bad CRC-32 ({crc:08x}, the archive says {info.CRC:08x})")
    except (OSError, EOFError) as exc:
        sink.discard()
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    except BaseException:
        sink.discard()
        raise
    sink.close()


def _extract_tar(archive: BinaryIO, unpacker: Unpacker) -> None:
    # Our own GzipFile (not tarfile's "r|gz") so the gzip trailer's CRC and length are
    # verified: the stream is read to its very end after the last member.
    with gzip.GzipFile(fileobj=archive, mode="rb") as gz:
        try:
            tf = tarfile.open(fileobj=gz, mode="r|")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise Rejected("corrupt", f"not a readable tar.gz archive: {exc}") from exc
        with tf:
            _extract_tar_members(tf, unpacker)
        try:
            while gz.read(CHUNK):
                pass
        except (OSError, EOFError, zlib.error) as exc:
            raise Rejected("corrupt", f"tar.gz stream: {exc}") from exc


def _extract_tar_members(tf: tarfile.TarFile, unpacker: Unpacker) -> None:
    members = iter(tf)
    while True:
        try:
            member = next(members, None)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise Rejected("corrupt", f"unreadable tar.gz: {exc}") from exc
        if member is None:
            break
        if member.issym() or member.islnk():
            raise Rejected("link", f"entry {member.name!r} is a link to {member.linkname!r}")
        if member.ischr() or member.isblk() or member.isfifo():
            raise Rejected("special_file", f"entry {member.name!r} is a device or fifo")
        if member.isdir():
            unpacker.add_dir(member.name)
            tf.members = []  # type: ignore[attr-defined]
            continue
        if not member.isreg():
            raise Rejected("special_file", f"entry {member.name!r} has unsupported type {member.type!r}")
        sink = unpacker.open_file(member.name)
        source = tf.extractfile(member)
        if source is None:
            sink.discard()
            raise Rejected("corrupt", f"entry {member.name!r} has no data")
        with source:
            _copy(source.read, sink, f"entry {member.name!r}")
        tf.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise


def extract(archive: BinaryIO, kind: Kind, unpacker: Unpacker) -> None:
    """Unpack ``archive`` (a seekable zip or a tar.gz stream) through ``unpacker``."""
    if kind is Kind.ZIP:
        _extract_zip(archive, unpacker)
    elif kind is Kind.TAR_GZ:
        _extract_tar(archive, unpacker)
    else:
        raise ValueError(f"not an archive kind: {kind}")


def find_model_root(dest: Path) -> Path:
    """The directory holding the SavedModel: ``dest`` itself, or its single top folder."""
    if _has_saved_model(dest):
        return dest
    children = [c for c in dest.iterdir() if c.name not in _LITTER]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        if _has_saved_model(children[0]):
            return children[0]
    found = ", ".join(sorted(c.name for c in children)[:5]) or "nothing"
    raise Rejected(
        "no_saved_model",
        f"no saved_model.pb or saved_model.pbtxt at the root or in a single top folder (found: {found})",
    )


def _has_saved_model(path: Path) -> bool:
    for name in SAVED_MODEL_FILES:
        try:
            if stat.S_ISREG(os.lstat(path / name).st_mode):
                return True
        except FileNotFoundError:
            continue
    return False
