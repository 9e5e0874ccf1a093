"""Hardened unpacking of zip and tar.gz archives into a staging directory.

Rejects (``Rejected(reason, ...)``):

- ``unsafe_path``: an absolute path, ``..``, a backslash or NUL, more than
  ``MAX_DEPTH`` components, a component over ``MAX_NAME_BYTES`` or a path over
  ``MAX_PATH_BYTES`` (encoded), or a path the model dir's filesystem finds too long;
- ``link``: symbolic and hard links; ``special_file``: device, fifo and socket entries;
- ``too_many_files``: more than ``max_files`` entries (for a zip, as its end record
  declares them, before the central directory is read);
- ``too_many_bytes`` / ``compression_ratio``: more than ``max_bytes`` bytes, or more than
  ``max_ratio`` times the archive's size, counted twice: as file content written, and
  (tar.gz) as every byte the gzip stream inflates to, tar headers, padding, data of
  skipped members and data after the end-of-archive blocks included; a zip member's
  inflated bytes are its content;
- ``oversized_header``: archive metadata bigger than anything a real archive needs,
  refused before it is read: a tar GNU long-name / long-link or pax (``x``, ``g``, ``X``)
  header declaring more than ``MAX_TAR_HEADER`` bytes, global pax headers adding up to
  more, more than ``MAX_TAR_HEADER_RUN`` such headers in front of one entry; a zip central
  directory larger than its declared entries can be (``ZIP_RECORD_MAX`` bytes each), or
  an entry whose extra field or comment is over ``ZIP_MAX_EXTRA`` / ``ZIP_MAX_COMMENT``;
- ``unsupported_compression``: a zip entry compressed with anything but stored (0) or
  deflated (8), refused before a byte of it is decompressed;
- ``unsupported``: encrypted zip entries, GNU sparse tar members, multi-disk zips;
- ``corrupt``: corrupt or truncated data, CRC errors, inconsistent zip records;
- ``duplicate_entry``: entries that collide; ``no_saved_model``: no SavedModel found.

Nothing is ever written outside ``dest``: every path is validated, directories are made
one component at a time with ``mkdir``, files are created with ``O_EXCL | O_NOFOLLOW``,
and no link is ever created, so no path inside ``dest`` can lead outside it.
"""

from __future__ import annotations

import errno
import functools
import gzip
import io
import os
import queue
import re
import stat
import struct
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Callable, Protocol, cast

from model_poller import inflate
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
# Entry paths: Linux's NAME_MAX and PATH_MAX, and a depth no SavedModel comes near. The
# depth bound also keeps every walk over the tree (ours, rmtree's) far from recursion limits.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 64

_DRIVE = re.compile(r"^[A-Za-z]:$")
# Archive tools' litter, ignored when looking for the single top folder.
_LITTER = frozenset({"__MACOSX", ".DS_Store"})


@dataclass(frozen=True)
class Limits:
    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    # Where max_bytes comes from, for the rejection message.
    max_bytes_origin: str = "--max-bytes"


def _short(name: str) -> str:
    """``name`` for a message: hostile names can be kilobytes long."""
    return repr(name) if len(name) <= 100 else repr(name[:100]) + "..."


def safe_parts(name: str) -> tuple[str, ...]:
    """Split an entry name into path components, rejecting anything that could escape
    or that the filesystem could not hold.

    ``./a//b`` -> ("a", "b"); ``/etc/x``, ``C:/x``, ``a/../b``, ``a\\b``, NUL, more than
    ``MAX_DEPTH`` components, a component over ``MAX_NAME_BYTES`` or a path over
    ``MAX_PATH_BYTES`` (encoded as the filesystem sees it) -> Rejected.
    """
    if "\x00" in name:
        raise Rejected("unsafe_path", f"entry name {_short(name)} contains NUL")
    if "\\" in name:
        raise Rejected("unsafe_path", f"entry name {_short(name)} contains a backslash")
    if name.startswith("/"):
        raise Rejected("unsafe_path", f"entry {_short(name)} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if parts and _DRIVE.match(parts[0]):
        raise Rejected("unsafe_path", f"entry {_short(name)} has an absolute path")
    if ".." in parts:
        raise Rejected("unsafe_path", f"entry {_short(name)} goes up with '..'")
    if not parts:
        raise Rejected("unsafe_path", f"entry name {name!r} is empty")
    if len(parts) > MAX_DEPTH:
        raise Rejected("unsafe_path", f"entry {_short(name)} is {len(parts)} levels deep (at most {MAX_DEPTH})")
    total = len(parts) - 1  # the slashes
    for part in parts:
        try:
            size = len(os.fsencode(part))
        except UnicodeEncodeError:
            raise Rejected("unsafe_path", f"entry name {_short(name)} cannot be encoded as a file name") from None
        if size > MAX_NAME_BYTES:
            raise Rejected(
                "unsafe_path", f"entry {_short(name)} has a {size}-byte path component (at most {MAX_NAME_BYTES})"
            )
        total += size
    if total > MAX_PATH_BYTES:
        raise Rejected("unsafe_path", f"entry {_short(name)} has a {total}-byte path (at most {MAX_PATH_BYTES})")
    return parts


@dataclass
class Unpacker:
    """Writes validated entries under ``dest`` within ``limits``; counts what is written
    (``bytes_written``) and what a decompressor puts out (``inflated``).

    Several threads may write at once (zip members inflated in parallel, the pieces of
    a folder version's objects): every count is taken under one lock, so the limits
    hold for the sum, whichever thread crosses them.
    """

    dest: Path
    limits: Limits
    syncer: Syncer
    stop: threading.Event
    archive_size: int | None = None
    files: int = 0
    bytes_written: int = 0
    inflated: int = 0
    _dirs: set[Path] = field(default_factory=set)
    # Reentrant: _make_parents counts the parents it creates while holding it.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _count_entry(self) -> None:
        with self._lock:
            self.files += 1
            files = self.files
        if files > self.limits.max_files:
            raise Rejected("too_many_files", f"more than {self.limits.max_files} entries (--max-files)")

    def _mkdir(self, path: Path, name: str) -> None:
        """Create one directory; an existing directory is fine, anything else is not."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                rel = path.relative_to(self.dest)
                raise Rejected("duplicate_entry", f"entry {_short(name)}: {str(rel)!r} collides with a file") from None
        except NotADirectoryError:
            raise Rejected("duplicate_entry", f"entry {_short(name)} goes through a file") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Rejected("unsafe_path", f"entry {_short(name)}: path too long for the model dir") from None
            raise
        self._dirs.add(path)

    def _make_parents(self, parts: tuple[str, ...], name: str) -> Path:
        """Create the parents of ``parts`` under ``dest`` one component at a time (never
        ``os.makedirs``, which recurses once per level); return the entry's path."""
        path = self.dest
        for part in parts[:-1]:
            path = path / part
            if path not in self._dirs:
                # A parent no entry names is an entry all the same (an inode, a Path kept
                # here): counted, or 1,000 entries 62 levels deep make 63,000 directories.
                self._count_entry()
                self._mkdir(path, name)
        return path / parts[-1]

    def add_dir(self, name: str) -> None:
        self._count_entry()
        if name.strip("/") in ("", ".") and not name.startswith("/"):
            return  # the archive's own root, "./"
        with self._lock:
            target = self._make_parents(safe_parts(name), name)
            if target not in self._dirs:
                self._mkdir(target, name)

    def open_file(self, name: str, compressed_size: int | None = None) -> FileSink:
        self._count_entry()
        with self._lock:  # (the set of made directories is shared)
            target = self._make_parents(safe_parts(name), name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o644)
        except (FileExistsError, IsADirectoryError) as exc:
            raise Rejected("duplicate_entry", f"entry {_short(name)} appears twice") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Rejected("unsafe_path", f"entry {_short(name)}: path too long for the model dir") from exc
            raise
        return FileSink(self, fd, name, compressed_size)

    def _check_total(self, total: int, what: str) -> None:
        if total > self.limits.max_bytes:
            raise Rejected("too_many_bytes", f"{what} more than {self.limits.max_bytes} bytes ({self.limits.max_bytes_origin})")
        if (
            self.archive_size is not None
            and total > RATIO_FLOOR
            and total > self.limits.max_ratio * max(self.archive_size, 1)
        ):
            raise Rejected(
                "compression_ratio",
                f"{what} more than {self.limits.max_ratio:g}x its {self.archive_size} bytes (--max-ratio)",
            )

    def _account(self, n: int) -> None:
        with self._lock:
            self.bytes_written += n
            total = self.bytes_written
        self._check_total(total, "unpacks to")

    def count_inflated(self, n: int) -> None:
        """Count ``n`` bytes out of a decompressor, whatever they turn out to be (file
        content, headers, padding, skipped data): none of them is free to produce."""
        if self.stop.is_set():
            raise Abandoned()
        with self._lock:
            self.inflated += n
            total = self.inflated
        self._check_total(total, "inflates (tar headers, padding and trailing data included) to")

    def sync_dirs(self) -> None:
        """fsync every directory written, deepest first, then ``dest`` itself."""
        self.syncer.wait()
        for path in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(path)
        fsync_dir(self.dest)


class FileSink:
    """One file being written; ``close()`` hands it to the syncer.

    ``write`` appends (one thread); ``write_at`` puts bytes at an offset and may be called
    by several threads at once (the pieces of one object fetched in parallel)."""

    def __init__(self, owner: Unpacker, fd: int, name: str, compressed_size: int | None) -> None:
        self._owner = owner
        self._fd: int | None = fd
        self._name = name
        self._compressed = compressed_size
        self.written = 0
        self._lock = threading.Lock()
        self._writers = 0  # write_at calls using the descriptor right now
        self._orphan: int | None = None  # discarded while in use: the last writer closes it

    def write_at(self, offset: int, chunk: bytes | memoryview) -> None:
        owner = self._owner
        if owner.stop.is_set():
            raise Abandoned()
        n = len(chunk)
        owner._account(n)
        with self._lock:
            fd = self._fd
            if fd is None:
                raise Abandoned()  # discarded: another piece failed
            self._writers += 1  # (a discard now leaves the descriptor to the last writer)
            before = self.written
            self.written += n
        try:
            view = memoryview(chunk)
            while view:
                done = os.pwrite(fd, view, offset)
                view = view[done:]
                offset += done
            if (before + n) // WRITE_BACK_EVERY != before // WRITE_BACK_EVERY:
                owner.syncer.write_back(fd)
        finally:
            with self._lock:
                self._writers -= 1
                orphan, self._orphan = (self._orphan, None) if self._writers == 0 else (None, self._orphan)
            if orphan is not None:
                os.close(orphan)

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
        """The last byte is written (no write is running): fsync and close it."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            self._owner.syncer.hand_over(fd)

    def discard(self) -> None:
        """Give the file up; a ``write_at`` still running closes it when it returns (a
        closed descriptor's number can be reused at once: never close it under a write)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None and self._writers:
                self._orphan, fd = fd, None
        if fd is not None:
            os.close(fd)


# What reading a member of a corrupt archive raises.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError) + inflate.GZIP_ERRORS


def _copy(read: Callable[[int], bytes], sink: FileSink, what: str) -> None:
    """Copy from an archive member into ``sink``; read errors mean a corrupt archive."""
    try:
        while True:
            try:
                chunk = read(CHUNK)
            except _READ_ERRORS as exc:
                raise Rejected("corrupt", f"{what}: {exc}") from exc
            if not chunk:
                break
            sink.write(chunk)
    except BaseException:
        sink.discard()
        raise
    sink.close()


# -- zip ------------------------------------------------------------------------------------
# The end records and the central directory are parsed here, not by zipfile: zipfile reads
# the whole directory at its declared size and builds every ZipInfo before anyone can
# count them (a million-entry directory cost 450 MB). Here the end record's entry count
# is checked against --max-files and the directory's size against what that many entries
# can need, before a byte of the directory is read; it is then read record by record.

_LOCAL_HEADER = struct.Struct("<4s5HL2L2H")  # zipfile's structFileHeader
_LOCAL_MAGIC = b"PK\x03\x04"
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # zipfile's structCentralDir
_CENTRAL_MAGIC = b"PK\x01\x02"
_END = struct.Struct("<4s4H2LH")  # zipfile's structEndArchive
_END_MAGIC = b"PK\x05\x06"
_END64_LOCATOR = struct.Struct("<4sLQL")  # zipfile's structEndArchive64Locator
_END64_LOCATOR_MAGIC = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")  # zipfile's structEndArchive64
_END64_MAGIC = b"PK\x06\x06"
_ZIP64_EXTRA = 0x0001
_U32_MAX = 0xFFFFFFFF
_STORED, _DEFLATED = 0, 8
_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "LZMA", 93: "zstd", 95: "xz", 98: "PPMd"}
# Per-entry bounds on the central directory's variable fields. Names beyond MAX_PATH_BYTES
# are refused anyway; extra fields in the wild are tens of bytes (zip64 sizes, timestamps,
# uid/gid), the largest being Info-ZIP's Unicode path (5 bytes + the name); nothing we
# unpack uses an entry comment. So no directory record we accept exceeds ZIP_RECORD_MAX,
# and a directory larger than entries * ZIP_RECORD_MAX cannot be one we would accept.
ZIP_MAX_EXTRA = MAX_PATH_BYTES + 1024
ZIP_MAX_COMMENT = 1024
ZIP_RECORD_MAX = _CENTRAL.size + MAX_PATH_BYTES + ZIP_MAX_EXTRA + ZIP_MAX_COMMENT
# Compressed bytes read per step. Members are inflated by our own loop rather than
# zipfile.ZipExtFile: that one re-slices and concatenates its buffers for every read and
# cost about as much CPU as the inflate itself (profiled with py-spy on a 1 GiB archive).
ZIP_READ = 1 << 20
# Upper bound of one inflate step's output: memory stays bounded even for a bomb.
INFLATE_OUT = 4 << 20


@dataclass(frozen=True)
class _ZipDirectory:
    entries: int
    size: int
    start: int  # offset of the central directory in the file
    shift: int  # bytes in front of the zip proper (a self-extractor stub), added to offsets


@dataclass(frozen=True, slots=True)
class _ZipEntry:
    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int  # of the local header, in the file
    mode: int  # st_mode from the external attributes (0 when not made on Unix)

    def is_dir(self) -> bool:
        return self.name.endswith("/")


def _read_exactly(archive: BinaryIO, n: int, what: str) -> bytes:
    try:
        data = archive.read(n)
    except (OSError, EOFError) as exc:
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    if len(data) != n:
        raise Rejected("corrupt", f"{what}: truncated")
    return data


def _zip_directory(archive: BinaryIO, limits: Limits) -> _ZipDirectory:
    """Find the central directory from the end records (zip64's when present) and check
    the entry count and the size they declare, without reading the directory."""
    try:
        size = archive.seek(0, io.SEEK_END)
        # Like zipfile: the last 22 bytes first (no archive comment, the usual case), then
        # the most an end record and its comment can span.
        tail_start = max(0, size - _END.size)
        archive.seek(tail_start)
        tail = _read_exactly(archive, size - tail_start, "not a readable zip archive")
        if not (tail.startswith(_END_MAGIC) and tail.endswith(b"\0\0")):
            tail_start = max(0, size - _END.size - 0xFFFF)
            archive.seek(tail_start)
            tail = _read_exactly(archive, size - tail_start, "not a readable zip archive")
    except (OSError, EOFError) as exc:
        raise Rejected("corrupt", f"not a readable zip archive: {exc}") from exc
    at = len(tail)
    while True:
        at = tail.rfind(_END_MAGIC, 0, at)
        if at < 0:
            raise Rejected("corrupt", "not a zip archive: no end of central directory record")
        if at + _END.size <= len(tail) and at + _END.size + _END.unpack_from(tail, at)[7] <= len(tail):
            break
    _, disk, cd_disk, here, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, at)
    records = tail_start + at  # where the end records begin
    zip64 = False
    if records >= _END64.size + _END64_LOCATOR.size:
        archive.seek(records - _END64.size - _END64_LOCATOR.size)
        z64 = _read_exactly(archive, _END64.size + _END64_LOCATOR.size, "zip64 end record")
        locator = _END64_LOCATOR.unpack_from(z64, _END64.size)
        end64 = _END64.unpack_from(z64)
        # (zipfile, too, expects the zip64 record right before its locator)
        if locator[0] == _END64_LOCATOR_MAGIC and end64[0] == _END64_MAGIC:
            if locator[1] != 0 or locator[3] > 1:
                raise Rejected("unsupported", "the zip spans several disks")
            _, _, _, _, disk, cd_disk, here, entries, cd_size, cd_offset = end64
            records -= len(z64)
            zip64 = True
    if not zip64 and _U32_MAX in (cd_size, cd_offset):
        raise Rejected("corrupt", "the end record defers to a zip64 end record that is not there")
    if disk or cd_disk or here != entries:
        raise Rejected("unsupported", "the zip spans several disks")
    if entries > limits.max_files:
        raise Rejected(
            "too_many_files", f"the zip declares {entries} entries, more than {limits.max_files} (--max-files)"
        )
    if cd_size < entries * _CENTRAL.size:
        raise Rejected("corrupt", f"a {cd_size}-byte central directory cannot hold the {entries} entries it declares")
    if cd_size > entries * ZIP_RECORD_MAX:
        raise Rejected(
            "oversized_header",
            f"the zip's central directory declares {cd_size} bytes for {entries} entries "
            f"(at most {ZIP_RECORD_MAX} bytes each)",
        )
    start = records - cd_size
    if start < cd_offset:
        raise Rejected("corrupt", "the central directory's offset and size do not match where it ends")
    return _ZipDirectory(entries=entries, size=cd_size, start=start, shift=start - cd_offset)


def _zip_entries(archive: BinaryIO, directory: _ZipDirectory) -> list[_ZipEntry]:
    """Read the central directory one record at a time, exactly as many as declared."""
    archive.seek(directory.start)
    entries: list[_ZipEntry] = []
    consumed = 0
    for index in range(directory.entries):
        what = f"central directory record {index}"
        record = _CENTRAL.unpack(_read_exactly(archive, _CENTRAL.size, what))
        if record[0] != _CENTRAL_MAGIC:
            raise Rejected("corrupt", f"{what}: bad signature")
        flags, method, crc, compressed, size = record[5], record[6], record[9], record[10], record[11]
        name_len, extra_len, comment_len, external, offset = record[12], record[13], record[14], record[17], record[18]
        if name_len > MAX_PATH_BYTES:
            raise Rejected("unsafe_path", f"{what}: a {name_len}-byte entry name (at most {MAX_PATH_BYTES})")
        if extra_len > ZIP_MAX_EXTRA or comment_len > ZIP_MAX_COMMENT:
            raise Rejected(
                "oversized_header",
                f"{what}: {extra_len} bytes of extra fields and a {comment_len}-byte comment "
                f"(at most {ZIP_MAX_EXTRA} and {ZIP_MAX_COMMENT})",
            )
        consumed += _CENTRAL.size + name_len + extra_len + comment_len
        if consumed > directory.size:
            raise Rejected("corrupt", f"{what} runs past the central directory's {directory.size} bytes")
        raw_name = _read_exactly(archive, name_len, what)
        extra = _read_exactly(archive, extra_len, what)
        _read_exactly(archive, comment_len, what)
        try:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        except UnicodeDecodeError:
            raise Rejected("corrupt", f"{what}: entry name {raw_name[:100]!r} is not valid UTF-8") from None
        size, compressed, offset = _zip64_fields(extra, size, compressed, offset, f"entry {_short(name)}")
        entries.append(
            _ZipEntry(name, raw_name, flags, method, crc, compressed, size, offset + directory.shift, external >> 16)
        )
    if consumed != directory.size:
        raise Rejected("corrupt", f"the central directory holds {consumed} bytes of records, it declares {directory.size}")
    return entries


def _zip64_fields(extra: bytes, size: int, compressed: int, offset: int, what: str) -> tuple[int, int, int]:
    """(size, compressed size, header offset), the ones saturated at 2**32-1 taken from
    the zip64 extra field, in the order the format (and zipfile) reads them."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) != length:
            raise Rejected("corrupt", f"{what}: truncated extra field {tag:#06x}")
        if tag == _ZIP64_EXTRA:
            values = list(struct.unpack_from(f"<{length // 8}Q", body))
            wanted = (size == _U32_MAX) + (compressed == _U32_MAX) + (offset == _U32_MAX)
            if len(values) < wanted:
                raise Rejected("corrupt", f"{what}: zip64 extra field too short")
            if size == _U32_MAX:
                size = values.pop(0)
            if compressed == _U32_MAX:
                compressed = values.pop(0)
            if offset == _U32_MAX:
                offset = values.pop(0)
        pos += 4 + length
    return size, compressed, offset


def _check_zip_entry(entry: _ZipEntry) -> None:
    """Refuse what we never unpack, before anything is unpacked."""
    what = f"entry {_short(entry.name)}"
    if stat.S_ISLNK(entry.mode):
        raise Rejected("link", f"{what} is a symbolic link")
    if stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode) or stat.S_ISFIFO(entry.mode) or stat.S_ISSOCK(entry.mode):
        raise Rejected("special_file", f"{what} is a device, fifo or socket")
    if entry.flags & 0x1:
        raise Rejected("unsupported", f"{what} is encrypted")
    if entry.method not in (_STORED, _DEFLATED):
        # Python's bzip2 and LZMA readers inflate a whole read's worth of input at once,
        # unbounded: a 9 KB entry became 1 GiB of memory. Models are stored or deflated.
        method = _METHOD_NAMES.get(entry.method, "unknown")
        raise Rejected(
            "unsupported_compression",
            f"{what} is compressed with method {entry.method} ({method}); "
            "only stored (0) and deflated (8) entries are unpacked",
        )


class Cancelled(Exception):
    """A member given up because a member before it failed (never reported)."""


class ArchiveRange(Protocol):
    """Bytes ``[start, end)`` of an archive, read front to back by one thread."""

    def read(self, n: int) -> bytes:
        """The next ``min(n, bytes left)`` bytes (waiting for them if need be); raises
        ``Cancelled`` once ``cancel()`` was called."""
        ...

    def cancel(self) -> None:
        """Make the current and every later ``read`` raise ``Cancelled`` (any thread)."""
        ...

    def close(self) -> None:
        """Done with the range: its bytes may be freed."""
        ...


class ArchiveParts(Protocol):
    """An archive read by several threads at once, one range each."""

    def open_range(self, start: int, end: int) -> ArchiveRange: ...


class SharedFile:
    """``ArchiveParts`` over one seekable file object: reads take turns (seek, read)."""

    def __init__(self, archive: BinaryIO) -> None:
        self._archive = archive
        self._lock = threading.Lock()

    def open_range(self, start: int, end: int) -> ArchiveRange:
        return _SharedRange(self, start, end)

    def read_at(self, offset: int, n: int) -> bytes:
        with self._lock:
            self._archive.seek(offset)
            return self._archive.read(n)


class _SharedRange:
    def __init__(self, shared: SharedFile, start: int, end: int) -> None:
        self._shared = shared
        self._pos = start
        self._end = end
        self._cancelled = False

    def read(self, n: int) -> bytes:
        if self._cancelled:
            raise Cancelled()
        data = self._shared.read_at(self._pos, min(n, self._end - self._pos))
        self._pos += len(data)
        return data

    def cancel(self) -> None:
        self._cancelled = True

    def close(self) -> None:
        pass


def _read_range_exactly(member: ArchiveRange, n: int, what: str) -> bytes:
    try:
        data = member.read(n)
    except (OSError, EOFError) as exc:
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    if len(data) != n:
        raise Rejected("corrupt", f"{what}: truncated")
    return data


class _Members:
    """Zip members inflated by up to ``workers`` threads at once (in the calling thread
    when ``workers`` is 1). Members are independent and the inflater (``inflate``)
    releases the GIL while it inflates and computes CRC-32s, so members inflate on
    several cores while the next ones download. One member more than ``workers`` is
    queued: its range is open, so the download fetches its bytes while the others inflate.

    A failed member cancels the members after it, never those before it: ``finish``
    raises the failure of the member first in the archive (``Abandoned`` if the poller
    is stopping), the one a sequential unpacking would have met."""

    def __init__(self, workers: int) -> None:
        self._workers = max(1, workers)
        self._slots = threading.Semaphore(self._workers + 1)
        self._queue: queue.SimpleQueue[tuple[int, Callable[[], None]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._errors: list[tuple[int, BaseException]] = []
        self._failed_at: int | None = None
        self._ranges: dict[int, ArchiveRange] = {}  # open ranges by member offset

    def track(self, offset: int, member: ArchiveRange) -> None:
        """``member`` (at ``offset``) is open until ``untrack``: cancel it if an earlier one fails."""
        with self._lock:
            self._ranges[offset] = member
            cancel = self._failed_at is not None and self._failed_at < offset
        if cancel:
            member.cancel()

    def untrack(self, offset: int) -> None:
        with self._lock:
            self._ranges.pop(offset, None)

    def cancelled(self, offset: int) -> bool:
        """True once a member before ``offset`` has failed."""
        failed_at = self._failed_at
        return failed_at is not None and failed_at < offset

    def submit(self, offset: int, job: Callable[[], None]) -> None:
        """Run ``job``, which releases its own resources whatever happens."""
        if self._workers == 1:
            job()
            return
        while not self._slots.acquire(timeout=0.2):
            if self._failed_at is not None:
                job()  # (cancelled, or it finishes: it is before the failure)
                return
        if len(self._threads) < self._workers:
            thread = threading.Thread(target=self._run, name=f"unzip-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._queue.put((offset, job))

    def fail(self, offset: int, exc: BaseException) -> None:
        with self._lock:
            self._errors.append((offset, exc))
            if isinstance(exc, Cancelled):
                return
            if self._failed_at is None or offset < self._failed_at:
                self._failed_at = offset
            later = [member for at, member in self._ranges.items() if at > offset]
        for member in later:
            member.cancel()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            offset, job = item
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed to finish()
                self.fail(offset, exc)
            finally:
                self._slots.release()

    def finish(self) -> None:
        """Wait for every member; raise the first failure (in archive order)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        with self._lock:
            errors = sorted(((o, e) for o, e in self._errors if not isinstance(e, Cancelled)), key=lambda oe: oe[0])
        for _, exc in errors:
            if isinstance(exc, Abandoned):
                raise exc
        if errors:
            raise errors[0][1]


def _extract_zip(archive: BinaryIO, unpacker: Unpacker, parts: ArchiveParts | None, workers: int) -> None:
    directory = _zip_directory(archive, unpacker.limits)
    entries = _zip_entries(archive, directory)
    for entry in entries:
        _check_zip_entry(entry)
    # In file order, so a growing download is read front to back; entries must not
    # overlap (overlapping entries are a known zip-bomb trick).
    ordered = sorted(entries, key=lambda e: e.offset)
    parts = parts or SharedFile(archive)
    members = _Members(workers)
    offset = 0  # of the entry being walked
    try:
        for at, entry in enumerate(ordered):
            offset = entry.offset
            next_start = ordered[at + 1].offset if at + 1 < len(ordered) else directory.start
            if members.cancelled(offset):
                break
            if entry.is_dir():
                unpacker.add_dir(entry.name)
                continue
            member = parts.open_range(entry.offset, next_start)
            members.track(offset, member)
            try:
                sink = _open_zip_member(member, entry, next_start, unpacker)
            except BaseException:
                members.untrack(offset)
                member.close()
                raise
            job = functools.partial(_inflate_zip_member, member, entry, sink, members)
            members.submit(offset, job)
    except BaseException as exc:  # (Cancelled: a member before this one failed)
        members.fail(offset, exc)
    members.finish()


def _open_zip_member(member: ArchiveRange, entry: _ZipEntry, limit: int, unpacker: Unpacker) -> FileSink:
    """Check one member's local header (``member`` is left at its data); open its file."""
    what = f"entry {_short(entry.name)}"
    header = _read_range_exactly(member, _LOCAL_HEADER.size, what)
    if header[:4] != _LOCAL_MAGIC:
        raise Rejected("corrupt", f"{what}: bad local file header")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[9], fields[10]
    raw_name = _read_range_exactly(member, name_len, what)
    if raw_name != entry.raw_name:
        raise Rejected("corrupt", f"{what}: local header names {raw_name[:80]!r}")
    start = entry.offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + entry.compressed > limit:
        raise Rejected("corrupt", f"{what}: overlaps the next entry")
    _read_range_exactly(member, extra_len, what)  # (at most 64 KiB: a 16-bit length)
    return unpacker.open_file(entry.name, compressed_size=entry.compressed)


def _inflate_zip_member(member: ArchiveRange, entry: _ZipEntry, sink: FileSink, members: _Members) -> None:
    """Copy one stored or deflated member's data, checking its size and CRC-32."""
    what = f"entry {_short(entry.name)}"
    try:
        left = entry.compressed
        # (an empty deflated entry may be written as zero bytes: nothing to inflate)
        inflater = inflate.raw_inflater() if entry.method == _DEFLATED and left else None
        crc = 0
        out = 0
        while left > 0:
            if members.cancelled(entry.offset):
                raise Cancelled()
            data = member.read(min(ZIP_READ, left))
            if not data:
                raise Rejected("corrupt", f"{what}: truncated")
            left -= len(data)
            if inflater is None:
                crc = inflate.crc32(data, crc)
                out += len(data)
                sink.write(data)
                continue
            while True:  # at most INFLATE_OUT bytes of output at a time
                try:
                    piece = inflater.decompress(data, INFLATE_OUT)
                except inflate.DEFLATE_ERRORS as exc:
                    raise Rejected("corrupt", f"{what}: {exc}") from exc
                if piece:
                    crc = inflate.crc32(piece, crc)
                    out += len(piece)
                    sink.write(piece)
                data = inflater.unconsumed_tail
                if inflater.eof or (not data and len(piece) < INFLATE_OUT):
                    break
        if inflater is not None and (not inflater.eof or inflater.unused_data or inflater.unconsumed_tail):
            raise Rejected("corrupt", f"{what}: deflate stream does not end where the entry does")
        if out != entry.size:
            raise Rejected("corrupt", f"{what}: {out} bytes, the archive says {entry.size}")
        if crc != entry.crc:
            raise Rejected("corrupt", f"{what}: bad CRC-32 ({crc:08x}, the archive says {entry.crc:08x})")
    except (OSError, EOFError) as exc:
        sink.discard()
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    except BaseException:
        sink.discard()
        raise
    finally:
        members.untrack(entry.offset)
        member.close()
    sink.close()


# -- tar.gz ---------------------------------------------------------------------------------
# tarfile reads a GNU long-name / long-link header and a pax header whole, at the size its
# header block declares, before returning anything we could count (a 0.5 MB tar.gz made it
# allocate 2 GiB), and follows a run of them by recursion. tarfile documents no hook for
# this; TarInfo._proc_member() is the private one it calls on every header block, after
# the block is parsed and before its payload is read (CPython 3.11, the image's), so the
# bound is checked there. tests/poller/test_hostile.py fails if the override stops running.

MAX_TAR_HEADER = 64 << 10
# Real archives put at most a global pax header, a long-name and a long-link (or one pax
# header) in front of an entry.
MAX_TAR_HEADER_RUN = 8
_TAR_METADATA = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XHDTYPE: "pax extended",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended",
}


class _BoundedTarFile(tarfile.TarFile):
    """A TarFile that remembers how much metadata its headers declared."""

    header_run = 0  # metadata headers since the last entry
    global_bytes = 0  # declared by all global pax headers (tarfile keeps them all)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized metadata headers and sparse files before tarfile
    reads their payload."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if not isinstance(tf, _BoundedTarFile):
            raise TypeError("_BoundedTarInfo needs a _BoundedTarFile")
        if self.size < 0:
            raise Rejected("corrupt", f"header at offset {self.offset} declares a negative size")
        kind = _TAR_METADATA.get(self.type)
        if kind is None:
            tf.header_run = 0
        else:
            where = f"the {kind} header at offset {self.offset}"
            if self.size > MAX_TAR_HEADER:
                raise Rejected(
                    "oversized_header", f"{where} declares {self.size} bytes (at most {MAX_TAR_HEADER})"
                )
            tf.header_run += 1
            if tf.header_run > MAX_TAR_HEADER_RUN:
                raise Rejected("oversized_header", f"{where} is one of more than {MAX_TAR_HEADER_RUN} in a row")
            if self.type == tarfile.XGLTYPE:
                tf.global_bytes += self.size
                if tf.global_bytes > MAX_TAR_HEADER:
                    raise Rejected(
                        "oversized_header", f"global pax headers declare over {MAX_TAR_HEADER} bytes in all"
                    )
        member: tarfile.TarInfo = super()._proc_member(tf)  # type: ignore[misc]
        return member

    # GNU sparse members (old-style and the three pax variants) each read a map of any
    # length; a SavedModel is never sparse, so they are refused before the map is read.
    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        raise Rejected("unsupported", f"entry {_short(self.name)} is a GNU sparse file")

    def _proc_gnusparse_00(self, *_: object) -> None:
        raise Rejected("unsupported", "an entry is a GNU sparse file (pax 0.0)")

    def _proc_gnusparse_01(self, *_: object) -> None:
        raise Rejected("unsupported", "an entry is a GNU sparse file (pax 0.1)")

    def _proc_gnusparse_10(self, *_: object) -> None:
        raise Rejected("unsupported", "an entry is a GNU sparse file (pax 1.0)")


class _Inflated:
    """The gzip stream's output, every byte counted against the limits as it leaves the
    decompressor: headers, padding, data tarfile skips and data after the end-of-archive
    blocks are not file content, but a bomb made of them costs the same CPU."""

    def __init__(self, gz: gzip.GzipFile, unpacker: Unpacker) -> None:
        self._gz = gz
        self._unpacker = unpacker

    def read(self, size: int = -1) -> bytes:
        data = self._gz.read(size if 0 <= size <= CHUNK else CHUNK)  # never "all of it"
        self._unpacker.count_inflated(len(data))
        return data


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError) + inflate.GZIP_ERRORS


def _extract_tar(archive: BinaryIO, unpacker: Unpacker) -> None:
    # Our own GzipFile (not tarfile's "r|gz") so the gzip trailer's CRC and length are
    # verified: the stream is read to its very end after the last member.
    with inflate.open_gzip(archive) as gz:
        inflated = _Inflated(gz, unpacker)
        try:
            tf = _BoundedTarFile.open(fileobj=cast(IO[bytes], inflated), mode="r|", tarinfo=_BoundedTarInfo)
        except _TAR_ERRORS as exc:
            raise Rejected("corrupt", f"not a readable tar.gz archive: {exc}") from exc
        with tf:
            _extract_tar_members(tf, unpacker)
        try:
            while inflated.read(CHUNK):
                pass
        except _READ_ERRORS as exc:
            raise Rejected("corrupt", f"tar.gz stream: {exc}") from exc


def _extract_tar_members(tf: tarfile.TarFile, unpacker: Unpacker) -> None:
    members = iter(tf)
    while True:
        try:
            member = next(members, None)
        except _TAR_ERRORS as exc:
            raise Rejected("corrupt", f"unreadable tar.gz: {exc}") from exc
        if member is None:
            break
        name = _short(member.name)
        if member.issym() or member.islnk():
            raise Rejected("link", f"entry {name} is a link to {_short(member.linkname)}")
        if member.ischr() or member.isblk() or member.isfifo():
            raise Rejected("special_file", f"entry {name} is a device or fifo")
        if member.sparse is not None:
            raise Rejected("unsupported", f"entry {name} is a GNU sparse file")
        if member.isdir():
            unpacker.add_dir(member.name)
            tf.members = []  # type: ignore[attr-defined]
            continue
        if not member.isreg():
            raise Rejected("special_file", f"entry {name} has unsupported type {member.type!r}")
        sink = unpacker.open_file(member.name)
        source = tf.extractfile(member)
        if source is None:
            sink.discard()
            raise Rejected("corrupt", f"entry {name} has no data")
        with source:
            _copy(source.read, sink, f"entry {name}")
        tf.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise


def extract(
    archive: BinaryIO, kind: Kind, unpacker: Unpacker, parts: ArchiveParts | None = None, workers: int = 1
) -> None:
    """Unpack ``archive`` (a seekable zip or a tar.gz stream) through ``unpacker``.

    A zip's members are inflated by up to ``workers`` threads, each reading its member
    from ``parts`` (by default, ``archive`` itself, one read at a time)."""
    if kind is Kind.ZIP:
        _extract_zip(archive, unpacker, parts, workers)
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
