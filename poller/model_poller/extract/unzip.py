"""Unpacking a zip: its members read by ranges (several at once) and inflated by threads."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from model_poller import inflate
from model_poller.errors import Abandoned, Rejected
from model_poller.extract.limits import short_name
from model_poller.extract.unpacker import FileSink, Unpacker
from model_poller.extract.zip_records import (
    DEFLATED,
    LOCAL_HEADER,
    LOCAL_MAGIC,
    ZipEntry,
    check_zip_entry,
    read_exactly,
    zip_directory,
    zip_entries,
)

# Compressed bytes read per step. Members are inflated by our own loop rather than
# zipfile.ZipExtFile: that one re-slices and concatenates its buffers for every read and
# cost about as much CPU as the inflate itself (profiled with py-spy on a 1 GiB archive).
ZIP_READ = 1 << 20
# Upper bound of one inflate step's output: memory stays bounded even for a bomb. (Its
# size suits the implementation: see inflate.MAX_STEP.)
INFLATE_OUT = inflate.MAX_STEP


class Cancelled(Exception):
    """A member given up because a member before it failed (never reported)."""


class ArchiveRange(Protocol):
    """Bytes ``[start, end)`` of an archive, read front to back by one thread."""

    def read(self, n: int) -> bytes | memoryview:
        """The next ``min(n, bytes left)`` bytes (waiting for them if need be), valid until
        the next ``read`` (a range may reuse its buffer); raises ``Cancelled`` once
        ``cancel()`` was called."""
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


def extract_zip(archive: BinaryIO, unpacker: Unpacker, parts: ArchiveParts | None, workers: int) -> None:
    directory = zip_directory(archive, unpacker.limits)
    entries = zip_entries(archive, directory)
    for entry in entries:
        check_zip_entry(entry)
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


def _open_zip_member(member: ArchiveRange, entry: ZipEntry, limit: int, unpacker: Unpacker) -> FileSink:
    """Check one member's local header (``member`` is left at its data); open its file."""
    what = f"entry {short_name(entry.name)}"
    header = read_exactly(member, LOCAL_HEADER.size, what)
    if header[:4] != LOCAL_MAGIC:
        raise Rejected("corrupt", f"{what}: bad local file header")
    fields = LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[9], fields[10]
    raw_name = read_exactly(member, name_len, what)
    if raw_name != entry.raw_name:
        raise Rejected("corrupt", f"{what}: local header names {raw_name[:80]!r}")
    start = entry.offset + LOCAL_HEADER.size + name_len + extra_len
    if start + entry.compressed > limit:
        raise Rejected("corrupt", f"{what}: overlaps the next entry")
    read_exactly(member, extra_len, what)  # (at most 64 KiB: a 16-bit length)
    return unpacker.open_file(entry.name, compressed_size=entry.compressed)


def _inflate_zip_member(member: ArchiveRange, entry: ZipEntry, sink: FileSink, members: _Members) -> None:
    """Copy one stored or deflated member's data, checking its size and CRC-32."""
    what = f"entry {short_name(entry.name)}"
    try:
        crc, out = _copy_member(member, entry, sink, members, what)
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


def _copy_member(
    member: ArchiveRange, entry: ZipEntry, sink: FileSink, members: _Members, what: str
) -> tuple[int, int]:
    """Read the member's data, inflated if it is deflated, into ``sink``: (CRC-32, bytes written)."""
    left = entry.compressed
    # (an empty deflated entry may be written as zero bytes: nothing to inflate)
    inflater = inflate.raw_inflater() if entry.method == DEFLATED and left else None
    crc = 0
    out = 0
    while left > 0:
        if members.cancelled(entry.offset):
            raise Cancelled()
        data = member.read(min(ZIP_READ, left))
        if not data:
            raise Rejected("corrupt", f"{what}: truncated")
        left -= len(data)
        for piece in _inflated(inflater, data, what) if inflater is not None else (data,):
            crc = inflate.crc32(piece, crc)
            out += len(piece)
            sink.write(piece)
    if inflater is not None and (not inflater.eof or inflater.unused_data or inflater.unconsumed_tail):
        raise Rejected("corrupt", f"{what}: deflate stream does not end where the entry does")
    return crc, out


def _inflated(inflater: inflate.RawInflater, data: bytes | memoryview, what: str) -> Iterator[bytes]:
    """``data`` inflated, at most INFLATE_OUT bytes at a time (memory stays bounded)."""
    while True:
        try:
            piece = inflater.decompress(data, INFLATE_OUT)
        except inflate.DEFLATE_ERRORS as exc:
            raise Rejected("corrupt", f"{what}: {exc}") from exc
        if piece:
            yield piece
        data = inflater.unconsumed_tail
        if inflater.eof or (not data and len(piece) < INFLATE_OUT):
            return
