"""Fetching objects in pieces: each piece one ranged request, resumed where it broke off.

An object is cut into pieces of at most ``Transfer.slice_bytes``; up to
``Transfer.streams`` pieces are fetched at once, each written where it belongs with
``pwrite``. A connection that breaks (reset, stalled past the read timeout, a 5xx) is
resumed at the first byte not received, at the same generation; only a generation that
is gone (``SourceChanged``: a new upload) abandons the object. Every piece is checked:
the object's CRC32C is combined from the pieces' (see ``checksums.PieceChecksums``), or,
for an object whose store reports only an MD5, the object is one piece hashed in order.

A store that cannot read ranges (``file://``) gets one piece per object, read whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from model_poller.backoff import Backoff
from model_poller.checksums import PieceChecksums
from model_poller.errors import Abandoned, SourceError
from model_poller.stores.base import Halt, RangedStore, SourceInterrupted, Store, Transfer
from model_poller.versions import SourceObject

log = logging.getLogger(__name__)

# A connection that broke without delivering a byte is retried this many times, after
# 0.25, 0.5, 1, 2, 4 s (about 8 s in all: a blip, not an outage, which the sync's own
# backoff handles); one that delivered bytes is resumed at once, however often.
FRUITLESS_RETRIES = 5
FIRST_BACKOFF = 0.25
# Halting cuts every read in a response short, but a request still waiting for its
# answer's headers can only end at its read timeout: a stopping poller waits this long
# for its connections, then leaves the stragglers (daemon threads that write nothing
# more: every write checks the halt first, and no descriptor is closed under a write).
JOIN_TIMEOUT = 2.0


def join_all(threads: list[threading.Thread], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(eq=False)
class Piece:
    """Bytes ``[start, end)`` of an object; ``filled`` of them are written, in order."""

    start: int
    end: int
    index: int
    filled: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start


def plan(obj: SourceObject, transfer: Transfer, ranged: bool) -> list[Piece]:
    """The pieces ``obj`` is fetched in: slices for a ranged store whose CRC32C is known
    (or that reports no checksum at all), else the whole object as one piece."""
    size = obj.size
    if not ranged or size <= transfer.slice_bytes or (obj.crc32c is None and obj.md5 is not None):
        return [Piece(0, size, 0)]
    step = transfer.slice_bytes
    return [Piece(at, min(at + step, size), i) for i, at in enumerate(range(0, size, step))]


def fetch(
    store: Store, obj: SourceObject, piece: Piece, write: Callable[[bytes], None], halt: Halt, where: str
) -> None:
    """Fetch the rest of ``piece`` (from ``piece.start + piece.filled``) into ``write``,
    which must advance ``piece.filled``. A broken connection is resumed, never restarted."""
    if not isinstance(store, RangedStore):
        if piece.filled:
            raise SourceError(f"{where}: the transfer broke off at byte {piece.filled} and cannot be resumed")
        store.download(obj, write, halt)
        return
    fruitless = Backoff(start=FIRST_BACKOFF, cap=float("inf"))
    while piece.filled < piece.length:
        at = piece.start + piece.filled
        try:
            store.stream_range(obj, at, piece.end, write, halt)
        except SourceInterrupted as exc:
            if halt.is_set():
                raise Abandoned() from None
            if piece.start + piece.filled > at:
                fruitless.reset()
                log.info("%s; resuming at byte %d", exc, piece.start + piece.filled)
                continue
            delay = fruitless.fail()
            if fruitless.failures > FRUITLESS_RETRIES:
                raise SourceError(f"{exc} (given up after {FRUITLESS_RETRIES} retries without a byte)") from None
            log.info("%s; retrying in %.2fs", exc, delay)
            if halt.wait(delay):
                raise Abandoned() from None


@dataclass(eq=False)
class _Task:
    obj: SourceObject
    piece: Piece
    file: _File


@dataclass(eq=False)
class ObjectWriter:
    """How one object lands on disk: ``open()`` returns ``write(offset, chunk)``;
    ``close()`` after its last byte (hands it to the fsync pool); ``discard()`` on failure."""

    open: Callable[[], Callable[[int, bytes], None]]
    close: Callable[[], None]
    discard: Callable[[], None]


@dataclass(eq=False)
class _File:
    """One object being fetched: where its pieces go, and what checks them."""

    obj: SourceObject
    checks: PieceChecksums
    pieces_left: int
    writer: ObjectWriter
    write: Callable[[int, bytes], None] | None = None
    done: bool = False


@dataclass(eq=False)
class Fetcher:
    """Fetches many objects into their own files with up to ``streams`` connections:
    the largest objects first, each object's pieces in order (so about ``streams``
    files are open at once), each object checked against its checksum as its last
    piece lands. ``run()`` returns the bytes received; it raises the first failure
    (``Abandoned`` once ``stop`` is set), after every connection has ended."""

    store: Store
    jobs: list[tuple[SourceObject, ObjectWriter]]
    stop: threading.Event
    where: Callable[[SourceObject], str]
    received: int = 0
    last_byte_at: float = field(default_factory=time.monotonic)
    _tasks: list[_Task] = field(default_factory=list)
    _next: int = 0
    _error: BaseException | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _halt: Halt = field(default_factory=Halt)
    _files: list[_File] = field(default_factory=list)

    def run(self) -> int:
        ranged = isinstance(self.store, RangedStore)
        transfer = self.store.transfer if isinstance(self.store, RangedStore) else Transfer()
        for obj, writer in sorted(self.jobs, key=lambda job: -job[0].size):
            pieces = plan(obj, transfer, ranged)
            file = _File(obj, PieceChecksums(obj, len(pieces)), len(pieces), writer)
            self._files.append(file)
            self._tasks.extend(_Task(obj, piece, file) for piece in pieces)
        threads = [
            threading.Thread(target=self._work, name=f"fetch-{i}", daemon=True)
            for i in range(min(transfer.streams, len(self._tasks)))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
                    if self.stop.is_set():
                        self._halt.set()
        finally:
            self._halt.set()
            join_all(threads)
            for file in self._files:
                if not file.done and file.write is not None:
                    file.writer.discard()
        if self.stop.is_set():
            raise Abandoned()
        if self._error is not None:
            raise self._error
        return self.received

    def _take(self) -> _Task | None:
        with self._lock:
            if self._halt.is_set() or self._next >= len(self._tasks):
                return None
            task = self._tasks[self._next]
            self._next += 1
            if task.file.write is None:
                task.file.write = task.file.writer.open()  # in task order: the largest files first
            return task

    def _work(self) -> None:
        try:
            while (task := self._take()) is not None:
                self._fetch(task)
        except BaseException as exc:  # noqa: BLE001 - handed to run()
            with self._lock:
                if self._error is None and not isinstance(exc, Abandoned):
                    self._error = exc
            self._halt.set()

    def _fetch(self, task: _Task) -> None:
        piece, file = task.piece, task.file
        write = file.write
        assert write is not None

        def sink(chunk: bytes) -> None:
            if self._halt.is_set():
                raise Abandoned()
            write(piece.start + piece.filled, chunk)
            file.checks.update(piece.index, chunk)
            piece.filled += len(chunk)
            with self._lock:
                self.received += len(chunk)
                self.last_byte_at = time.monotonic()

        fetch(self.store, task.obj, piece, sink, self._halt, self.where(task.obj))
        with self._lock:
            file.pieces_left -= 1
            last = file.pieces_left == 0
        if last:
            file.checks.check(self.where(task.obj))
            file.done = True
            file.writer.close()
