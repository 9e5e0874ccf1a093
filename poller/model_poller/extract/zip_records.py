"""A zip's end records and central directory, read within bounds before anything is unpacked.

The end records and the central directory are parsed here, not by zipfile: zipfile reads
the whole directory at its declared size and builds every ZipInfo before anyone can
count them (a million-entry directory cost 450 MB). Here the end record's entry count
is checked against --max-files and the directory's size against what that many entries
can need, before a byte of the directory is read; it is then read record by record.
"""

from __future__ import annotations

import io
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from model_poller.errors import Rejected
from model_poller.extract.limits import MAX_PATH_BYTES, Limits, short_name

LOCAL_HEADER = struct.Struct("<4s5HL2L2H")  # zipfile's structFileHeader
LOCAL_MAGIC = b"PK\x03\x04"
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
STORED, DEFLATED = 0, 8
_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "LZMA", 93: "zstd", 95: "xz", 98: "PPMd"}
# Per-entry bounds on the central directory's variable fields. Names beyond MAX_PATH_BYTES
# are refused anyway; extra fields in the wild are tens of bytes (zip64 sizes, timestamps,
# uid/gid), the largest being Info-ZIP's Unicode path (5 bytes + the name); nothing we
# unpack uses an entry comment. So no directory record we accept exceeds ZIP_RECORD_MAX,
# and a directory larger than entries * ZIP_RECORD_MAX cannot be one we would accept.
ZIP_MAX_EXTRA = MAX_PATH_BYTES + 1024
ZIP_MAX_COMMENT = 1024
ZIP_RECORD_MAX = _CENTRAL.size + MAX_PATH_BYTES + ZIP_MAX_EXTRA + ZIP_MAX_COMMENT
# Every entry's name is kept (raw and decoded) until the unpacking ends: 100,000 names of
# 4 KiB would be 800 MiB. 32 MiB of names is 330 bytes for each of --max-files' default
# 100,000 entries; a SavedModel's names are a few kilobytes in all.
ZIP_MAX_NAME_BYTES = 32 << 20


@dataclass(frozen=True)
class ZipDirectory:
    entries: int
    size: int
    start: int  # offset of the central directory in the file
    shift: int  # bytes in front of the zip proper (a self-extractor stub), added to offsets


@dataclass(frozen=True, slots=True)
class ZipEntry:
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


class Readable(Protocol):
    def read(self, n: int, /) -> bytes | memoryview: ...


def read_exactly(source: Readable, n: int, what: str) -> bytes:
    """The next ``n`` bytes of an archive (or of one member's range); ``corrupt`` if fewer."""
    try:
        data = source.read(n)
    except (OSError, EOFError) as exc:
        raise Rejected("corrupt", f"{what}: {exc}") from exc
    if len(data) != n:
        raise Rejected("corrupt", f"{what}: truncated")
    return bytes(data)  # (a memoryview is valid only until the source's next read)


@dataclass(frozen=True)
class _End:
    """What the end record (or the zip64 one) declares."""

    disk: int
    cd_disk: int
    here: int  # entries on this disk
    entries: int
    cd_size: int
    cd_offset: int
    records: int  # offset in the file where the end records begin
    zip64: bool = False


def zip_directory(archive: BinaryIO, limits: Limits) -> ZipDirectory:
    """Find the central directory from the end records (zip64's when present) and check
    the entry count and the size they declare, without reading the directory."""
    end = _zip64_end(archive, _end_record(archive))
    _check_end(end, limits)
    start = end.records - end.cd_size
    if start < end.cd_offset:
        raise Rejected("corrupt", "the central directory's offset and size do not match where it ends")
    return ZipDirectory(entries=end.entries, size=end.cd_size, start=start, shift=start - end.cd_offset)


def _end_record(archive: BinaryIO) -> _End:
    try:
        size = archive.seek(0, io.SEEK_END)
        # Like zipfile: the last 22 bytes first (no archive comment, the usual case), then
        # the most an end record and its comment can span.
        tail_start = max(0, size - _END.size)
        archive.seek(tail_start)
        tail = read_exactly(archive, size - tail_start, "not a readable zip archive")
        if not (tail.startswith(_END_MAGIC) and tail.endswith(b"\0\0")):
            tail_start = max(0, size - _END.size - 0xFFFF)
            archive.seek(tail_start)
            tail = read_exactly(archive, size - tail_start, "not a readable zip archive")
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
    return _End(disk, cd_disk, here, entries, cd_size, cd_offset, records=tail_start + at)


def _zip64_end(archive: BinaryIO, end: _End) -> _End:
    """The zip64 end record in front of ``end``, if there is one; else ``end``."""
    if end.records < _END64.size + _END64_LOCATOR.size:
        return end
    archive.seek(end.records - _END64.size - _END64_LOCATOR.size)
    z64 = read_exactly(archive, _END64.size + _END64_LOCATOR.size, "zip64 end record")
    locator = _END64_LOCATOR.unpack_from(z64, _END64.size)
    end64 = _END64.unpack_from(z64)
    # (zipfile, too, expects the zip64 record right before its locator)
    if locator[0] != _END64_LOCATOR_MAGIC or end64[0] != _END64_MAGIC:
        return end
    if locator[1] != 0 or locator[3] > 1:
        raise Rejected("unsupported", "the zip spans several disks")
    _, _, _, _, disk, cd_disk, here, entries, cd_size, cd_offset = end64
    return _End(disk, cd_disk, here, entries, cd_size, cd_offset, records=end.records - len(z64), zip64=True)


def _check_end(end: _End, limits: Limits) -> None:
    """Refuse what the end record declares before a byte of the directory is read."""
    if not end.zip64 and _U32_MAX in (end.cd_size, end.cd_offset):
        raise Rejected("corrupt", "the end record defers to a zip64 end record that is not there")
    if end.disk or end.cd_disk or end.here != end.entries:
        raise Rejected("unsupported", "the zip spans several disks")
    if end.entries > limits.max_files:
        raise Rejected(
            "too_many_files", f"the zip declares {end.entries} entries, more than {limits.max_files} (--max-files)"
        )
    if end.cd_size < end.entries * _CENTRAL.size:
        raise Rejected(
            "corrupt", f"a {end.cd_size}-byte central directory cannot hold the {end.entries} entries it declares"
        )
    if end.cd_size > end.entries * ZIP_RECORD_MAX:
        raise Rejected(
            "oversized_header",
            f"the zip's central directory declares {end.cd_size} bytes for {end.entries} entries "
            f"(at most {ZIP_RECORD_MAX} bytes each)",
        )


def zip_entries(archive: BinaryIO, directory: ZipDirectory) -> list[ZipEntry]:
    """Read the central directory one record at a time, exactly as many as declared."""
    archive.seek(directory.start)
    entries: list[ZipEntry] = []
    consumed = names = 0
    for index in range(directory.entries):
        what = f"central directory record {index}"
        record = _CENTRAL.unpack(read_exactly(archive, _CENTRAL.size, what))
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
        names += name_len
        if names > ZIP_MAX_NAME_BYTES:
            raise Rejected(
                "oversized_header",
                f"{what}: the entry names add up to over {ZIP_MAX_NAME_BYTES >> 20} MiB (at most {ZIP_MAX_NAME_BYTES})",
            )
        consumed += _CENTRAL.size + name_len + extra_len + comment_len
        if consumed > directory.size:
            raise Rejected("corrupt", f"{what} runs past the central directory's {directory.size} bytes")
        raw_name = read_exactly(archive, name_len, what)
        extra = read_exactly(archive, extra_len, what)
        read_exactly(archive, comment_len, what)
        try:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        except UnicodeDecodeError:
            raise Rejected("corrupt", f"{what}: entry name {raw_name[:100]!r} is not valid UTF-8") from None
        size, compressed, offset = _zip64_fields(extra, size, compressed, offset, f"entry {short_name(name)}")
        entries.append(
            ZipEntry(name, raw_name, flags, method, crc, compressed, size, offset + directory.shift, external >> 16)
        )
    if consumed != directory.size:
        raise Rejected(
            "corrupt", f"the central directory holds {consumed} bytes of records, it declares {directory.size}"
        )
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


def check_zip_entry(entry: ZipEntry) -> None:
    """Refuse what we never unpack, before anything is unpacked."""
    what = f"entry {short_name(entry.name)}"
    if stat.S_ISLNK(entry.mode):
        raise Rejected("link", f"{what} is a symbolic link")
    if stat.S_ISCHR(entry.mode) or stat.S_ISBLK(entry.mode) or stat.S_ISFIFO(entry.mode) or stat.S_ISSOCK(entry.mode):
        raise Rejected("special_file", f"{what} is a device, fifo or socket")
    if entry.flags & 0x1:
        raise Rejected("unsupported", f"{what} is encrypted")
    if entry.method not in (STORED, DEFLATED):
        # Python's bzip2 and LZMA readers inflate a whole read's worth of input at once,
        # unbounded: a 9 KB entry became 1 GiB of memory. Models are stored or deflated.
        method = _METHOD_NAMES.get(entry.method, "unknown")
        raise Rejected(
            "unsupported_compression",
            f"{what} is compressed with method {entry.method} ({method}); "
            "only stored (0) and deflated (8) entries are unpacked",
        )
