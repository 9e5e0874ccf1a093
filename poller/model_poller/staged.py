"""Unpacking while the archive is still downloading.

``Staged`` downloads the object into the staging file with several connections, piece
by piece, hashing each piece as it arrives; readers (``StagedRange`` for each zip
member being inflated, ``GrowingReader`` for the tar.gz stream and the zip's directory)
wait for the bytes they need, and their positions decide which pieces are fetched next.
For a zip, the central directory at the end is fetched first with one small range read,
so unpacking starts with the first bytes instead of after the last. The checksum of the
whole object is verified before anything is renamed into place.

This module holds the download (``Staged``) and the reader of one range (``StagedRange``);
``growing_reader.py`` the view of the whole object, ``zip_tail.py`` the read-ahead of the
zip's central directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_poller.checksums import PieceChecksums
from model_poller.durable import pwrite_all
from model_poller.errors import Abandoned, SourceError
from model_poller.extract import ArchiveRange, Cancelled
from model_poller.stores.base import Halt, RangedStore, Store, Transfer
from model_poller.transfer import Piece, fetch, join_all, plan
from model_poller.versions import SourceObject

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``[offset, offset+length)`` of the file (its page cache, dirty or not, and its
    blocks); the file keeps its size. False where the filesystem cannot."""
    if _fallocate is None or length <= 0:
        return False
    return bool(_fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0)


def _never() -> bool:
    return False


class Staged:
    """``obj`` downloaded into ``path`` by up to ``Transfer.streams`` connections, piece
    by piece (see ``transfer``), for readers that wait for the bytes they need.

    Which piece a free connection fetches next is decided by the readers: each open
    range (``open_range``: a zip member being inflated; ``demand``: the tar stream read
    through ``growing_reader.GrowingReader``) asks for the pieces from its position up
    to its share of ``Transfer.window`` ahead, the nearest first; a read waiting for
    bytes nobody asked for asks for them. So several members download side by side, none
    runs more than the window ahead of its reader, and what is read is dropped from the
    file behind the reader (``punch_hole``): a multi-GiB archive costs a bounded window
    of page cache, not its size. Pieces nobody read (the central directory, read ahead
    by ``zip_tail``; bytes between members) are fetched by ``finish()``, which then
    checks the whole object's checksum, before anything is renamed into place.
    """

    def __init__(
        self, store: Store, obj: SourceObject, path: Path, stop: threading.Event, keep_from: int | None = None
    ) -> None:
        self.store = store
        self.obj = obj
        self.path = path
        self.stop = stop
        # Bytes from here on are never freed: finish() compares them with the tail read ahead.
        self.keep_from = obj.size if keep_from is None else keep_from
        self.where = f"{store.uri}{obj.name}"
        ranged = isinstance(store, RangedStore)
        self.transfer = store.transfer if isinstance(store, RangedStore) else Transfer(streams=1)
        self.pieces = plan(obj, self.transfer, ranged)
        self._step = self.pieces[0].length or 1  # every piece but the last is this long
        self.checks = PieceChecksums(obj, len(self.pieces))
        self.received = 0
        self.last_byte_at = time.monotonic()
        self.error: BaseException | None = None
        self._halt = Halt()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # readers wait here for bytes
        self._work = threading.Condition(self._lock)  # connections wait here for demand
        self._state = [_MISSING] * len(self.pieces)
        self._missing = len(self.pieces)
        self._demands: dict[int, list[int]] = {}  # id -> [position, end]
        self._next_demand = 0
        self._everything = False
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._threads = [
            threading.Thread(target=self._connection, name=f"download-{i}", daemon=True)
            for i in range(min(self.transfer.streams, len(self.pieces)))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- what the readers want ----------------------------------------------------------------
    def demand(self, start: int, end: int) -> int:
        """Ask for ``[start, end)``; returns the id to move it on or drop it."""
        with self._lock:
            key = self._next_demand
            self._next_demand += 1
            self._demands[key] = [start, end]
            self._work.notify_all()
        return key

    def advance(self, key: int, position: int) -> None:
        with self._lock:
            self._demands[key][0] = position
            self._work.notify_all()

    def drop(self, key: int) -> None:
        with self._lock:
            self._demands.pop(key, None)
            self._work.notify_all()

    def _pick(self) -> int | None:
        """The missing piece nearest ahead of a reader, within its share of the window."""
        if self._everything:
            return next((i for i, s in enumerate(self._state) if s == _MISSING), None)
        if not self._demands:
            return None
        ahead = max(self._step, self.transfer.window // len(self._demands))
        best, best_distance = None, 0
        for position, end in self._demands.values():
            limit = min(end, position + ahead)
            index = position // self._step
            while index < len(self.pieces) and self.pieces[index].start < limit:
                if self._state[index] == _MISSING:
                    distance = max(0, self.pieces[index].start - position)
                    if best is None or distance < best_distance:
                        best, best_distance = index, distance
                    break
                index += 1
        return best

    # -- the connections ------------------------------------------------------------------------
    def _take(self) -> Piece | None:
        with self._lock:
            while True:
                if self._halt.is_set() or self.error is not None or self._missing == 0:
                    return None
                index = self._pick()
                if index is not None:
                    self._state[index] = _ACTIVE
                    self._missing -= 1
                    return self.pieces[index]
                self._work.wait(0.5)
                if self.stop.is_set():
                    self._halt.set()

    def _connection(self) -> None:
        fd = os.dup(self._fd)  # each connection its own: closing the shared one never races a write
        try:
            while (piece := self._take()) is not None:
                self._fetch(piece, fd)
                with self._lock:
                    self._state[piece.index] = _DONE
                    self._arrived.notify_all()
                    self._work.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the readers and finish()
            self._fail(exc)
        finally:
            os.close(fd)

    def _fetch(self, piece: Piece, fd: int) -> None:
        def sink(chunk: bytes) -> None:
            if self.stop.is_set():
                self._halt.set()
            if self._halt.is_set():
                raise Abandoned()
            pwrite_all(fd, chunk, piece.start + piece.filled)
            self.checks.update(piece.index, chunk)
            with self._lock:
                piece.filled += len(chunk)
                self.received += len(chunk)
                self.last_byte_at = time.monotonic()
                self._arrived.notify_all()

        fetch(self.store, self.obj, piece, sink, self._halt, self.where)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
            self._arrived.notify_all()
            self._work.notify_all()
        self._halt.set()

    # -- reading ----------------------------------------------------------------------------------
    def _available(self, start: int, end: int) -> bool:
        index = start // self._step
        while index < len(self.pieces) and self.pieces[index].start < end:
            piece = self.pieces[index]
            if piece.start + piece.filled < min(end, piece.end):
                return False
            index += 1
        return True

    def wait_for(self, start: int, end: int, cancelled: Callable[[], bool] = _never) -> None:
        """Block until ``[start, end)`` is in the file; raise the download's error, or
        ``Cancelled`` once ``cancelled()`` (checked whenever ``wake()`` is called)."""
        with self._lock:
            if self._available(start, end):
                return
            key = self._next_demand
            self._next_demand += 1
            self._demands[key] = [start, end]
            self._work.notify_all()
            try:
                while not self._available(start, end):
                    if cancelled():
                        raise Cancelled()
                    if self.error is not None:
                        raise self.error
                    if self.stop.is_set():
                        raise Abandoned()
                    self._arrived.wait(0.5)
            finally:
                self._demands.pop(key, None)

    def wake(self) -> None:
        """Make every waiting reader look again (one was cancelled)."""
        with self._lock:
            self._arrived.notify_all()

    def read_into(self, offset: int, buffer: memoryview, cancelled: Callable[[], bool] = _never) -> int:
        """Fill ``buffer`` with the object's bytes from ``offset``, waiting for them; fewer
        only at the object's end. Readers pass buffers they reuse: a fresh 1 MiB ``bytes``
        per read is a fresh mapping, faulted in page by page (about 100,000 page faults per
        GiB of zip, measured with ``perf record -e page-faults``)."""
        end = min(offset + len(buffer), self.obj.size)
        if end <= offset:
            return 0
        self.wait_for(offset, end, cancelled)
        view, at = buffer[: end - offset], offset
        while view:
            done = os.preadv(self._fd, [view], at)
            if done == 0:
                raise SourceError(f"{self.where}: the staging copy ends before byte {at}")
            view, at = view[done:], at + done
        return end - offset

    def open_range(self, start: int, end: int) -> ArchiveRange:
        return StagedRange(self, start, end)

    def release(self, start: int, end: int) -> None:
        """The readers are done with ``[start, end)``: free its whole pages (those partly
        outside may hold a neighbour's bytes)."""
        first = -(-start // PAGE) * PAGE
        last = min(end, self.keep_from) // PAGE * PAGE
        if last > first:
            punch_hole(self._fd, first, last - first)

    # -- the end ------------------------------------------------------------------------------------
    def finish(self, tail: bytes, tail_start: int) -> int:
        """Fetch what nobody read, wait for the last byte, raise the download's error,
        verify size and checksum and the read-ahead tail; returns the bytes received."""
        with self._lock:
            self._everything = True
            self._work.notify_all()
            while self._missing or any(s == _ACTIVE for s in self._state):
                if self.error is not None:
                    break
                if self.stop.is_set():
                    raise Abandoned()
                self._arrived.wait(0.5)
        self.cancel()  # (the connections are idle: they end at once)
        if self.error is not None:
            raise self.error
        self.checks.check(self.where)
        if tail and os.pread(self._fd, len(tail), tail_start) != tail:
            raise SourceError(f"{self.where} changed while it was downloaded")
        return self.received

    def cancel(self) -> None:
        """Stop every connection now (a blocked read is cut short) and wait for them."""
        self._halt.set()
        with self._lock:
            self._work.notify_all()
        self._join()

    def _join(self) -> None:
        join_all(self._threads)  # (each connection writes through a descriptor of its own)

    def close(self) -> None:
        self.cancel()
        os.close(self._fd)


_MISSING, _ACTIVE, _DONE = 0, 1, 2
PAGE = 4096
# A reader frees what lies behind it in steps of this many bytes (fewer system calls).
RELEASE_EVERY = 8 << 20


class StagedRange:
    """``[start, end)`` of a ``Staged`` object, read front to back; the download fetches
    ahead of the position, and what lies behind it is freed."""

    def __init__(self, staged: Staged, start: int, end: int) -> None:
        self._staged = staged
        self._start = start
        self._pos = start
        self._end = end
        self._released = start
        self._release_every = min(RELEASE_EVERY, staged.transfer.slice_bytes)
        self._cancelled = False
        self._buffer = bytearray()
        self._key: int | None = staged.demand(start, end)

    def cancel(self) -> None:
        self._cancelled = True
        self._staged.wake()

    def _is_cancelled(self) -> bool:
        return self._cancelled

    def read(self, n: int) -> memoryview:
        """The next bytes, in a buffer of this range's that the next ``read`` overwrites."""
        if self._cancelled:
            raise Cancelled()
        want = max(0, min(n, self._end - self._pos))
        if len(self._buffer) < want:
            self._buffer = bytearray(want)
        view = memoryview(self._buffer)
        data = view[: self._staged.read_into(self._pos, view[:want], self._is_cancelled)]
        self._pos += len(data)
        if self._key is not None:
            self._staged.advance(self._key, self._pos)
        if self._pos - self._released >= self._release_every:
            self._staged.release(self._released, self._pos)
            self._released = self._pos
        return data

    def close(self) -> None:
        self._buffer = bytearray()  # (an idle worker still holds its last range)
        if self._key is not None:
            self._staged.drop(self._key)
            self._key = None
            self._staged.release(self._released, self._pos)
            self._released = self._pos
