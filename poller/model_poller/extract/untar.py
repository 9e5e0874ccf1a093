"""Unpacking a tar.gz: one stream, every inflated byte counted, oversized headers refused.

tarfile reads a GNU long-name / long-link header and a pax header whole, at the size its
header block declares, before returning anything we could count (a 0.5 MB tar.gz made it
allocate 2 GiB), and follows a run of them by recursion. tarfile documents no hook for
this; TarInfo._proc_member() is the private one it calls on every header block, after
the block is parsed and before its payload is read (CPython 3.11, the image's), so the
bound is checked there. tests/poller/test_hostile.py fails if the override stops running.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Callable
from typing import IO, BinaryIO, cast

from model_poller import inflate
from model_poller.errors import Rejected
from model_poller.extract.limits import short_name
from model_poller.extract.unpacker import FileSink, Unpacker

# tarfile's stream reader joins and slices a new buffer on every read. Reads of 1 MiB made
# each of those buffers an mmap of its own (glibc maps blocks over its 128 KiB threshold,
# and its dynamic threshold did not stick here): 700,000 page faults and 3 s of system
# time per GiB. At 64 KiB every buffer comes from the heap and is reused
# (bench/unpack_cpu.py --kinds tgz, see BENCHMARKS.md).
TAR_READ = 64 << 10

# What reading a member of a corrupt archive raises.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError) + inflate.GZIP_ERRORS


def _copy(read: Callable[[int], bytes], sink: FileSink, what: str) -> None:
    """Copy from an archive member into ``sink``; read errors mean a corrupt archive."""
    try:
        while True:
            try:
                chunk = read(TAR_READ)
            except _READ_ERRORS as exc:
                raise Rejected("corrupt", f"{what}: {exc}") from exc
            if not chunk:
                break
            sink.write(chunk)
    except BaseException:
        sink.discard()
        raise
    sink.close()


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
                raise Rejected("oversized_header", f"{where} declares {self.size} bytes (at most {MAX_TAR_HEADER})")
            tf.header_run += 1
            if tf.header_run > MAX_TAR_HEADER_RUN:
                raise Rejected("oversized_header", f"{where} is one of more than {MAX_TAR_HEADER_RUN} in a row")
            if self.type == tarfile.XGLTYPE:
                tf.global_bytes += self.size
                if tf.global_bytes > MAX_TAR_HEADER:
                    raise Rejected("oversized_header", f"global pax headers declare over {MAX_TAR_HEADER} bytes in all")
        member: tarfile.TarInfo = super()._proc_member(tf)  # type: ignore[misc]
        return member

    # GNU sparse members (old-style and the three pax variants) each read a map of any
    # length; a SavedModel is never sparse, so they are refused before the map is read.
    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        raise Rejected("unsupported", f"entry {short_name(self.name)} is a GNU sparse file")

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
        data = self._gz.read(size if 0 <= size <= TAR_READ else TAR_READ)  # never "all of it"
        self._unpacker.count_inflated(len(data))
        return data


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError) + inflate.GZIP_ERRORS


def extract_tar(archive: BinaryIO, unpacker: Unpacker) -> None:
    # Our own GzipFile (not tarfile's "r|gz") so the gzip trailer's CRC and length are
    # verified: the stream is read to its very end after the last member.
    with inflate.open_gzip(archive) as gz:
        inflated = _Inflated(gz, unpacker)
        try:
            tf = _BoundedTarFile.open(
                fileobj=cast(IO[bytes], inflated), mode="r|", tarinfo=_BoundedTarInfo, bufsize=TAR_READ
            )
        except _TAR_ERRORS as exc:
            raise Rejected("corrupt", f"not a readable tar.gz archive: {exc}") from exc
        with tf:
            _extract_tar_members(tf, unpacker)
        try:
            while inflated.read(TAR_READ):
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
        name = short_name(member.name)
        if member.issym() or member.islnk():
            raise Rejected("link", f"entry {name} is a link to {short_name(member.linkname)}")
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
