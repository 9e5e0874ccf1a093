"""Unpacking while the archive is still downloading.

A ``Download`` thread streams the object into the staging file (hashing as it goes); a
``GrowingReader`` lets the extractor read that file as it grows, waiting for bytes not
yet there. For a zip, the central directory at the end is fetched first with one small
range read, so unpacking starts with the first bytes instead of after the last. The
checksum of the whole object is verified before anything is renamed into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import struct
import threading
from pathlib import Path
from typing import Any

from model_poller.errors import Abandoned, SourceError
from model_poller.install_verify import Verifier
from model_poller.sources.base import Source
from model_poller.versions import SourceObject

MAX_TAIL = 64 << 20  # a bigger central directory is read from the finished download
# The part of the staging archive already unpacked is dropped every this many bytes...
DISCARD_EVERY = 64 << 20
# ...except for this much just behind the read position (the BufferedReader's window).
DISCARD_MARGIN = 8 << 20
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
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def zip_tail(source: Source, obj: SourceObject) -> tuple[bytes, int]:
    """(bytes, offset) covering the zip's central directory through the end of the object,
    or (b"", size) when it cannot be located cheaply (then nothing is read ahead)."""
    size = obj.size
    first = min(size, 65536 + 22)
    if first < 22:
        return b"", size
    tail = source.read_range(obj, size - first, size)
    start = size - first
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return b"", size
    cd_size, cd_offset = struct.unpack_from("<II", tail, at + 12)
    if cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        loc = at - 20
        if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
            return b"", size
        (eocd64,) = struct.unpack_from("<Q", tail, loc + 8)
        if eocd64 < start:
            if size - eocd64 > MAX_TAIL:
                return b"", size
            tail, start = source.read_range(obj, eocd64, size), eocd64
        rel = eocd64 - start
        if tail[rel : rel + 4] != b"PK\x06\x06" or rel + 56 > len(tail):  # (cut short: the unpacker says so)
            return b"", size
        cd_size, cd_offset = struct.unpack_from("<QQ", tail, rel + 40)
    if cd_offset > size:
        return b"", size
    if cd_offset < start:
        if size - cd_offset > MAX_TAIL:
            return b"", size
        extra = source.read_range(obj, cd_offset, start)
        tail, start = extra + tail, cd_offset
    return tail, start


class Download(threading.Thread):
    """Streams ``obj`` into ``path``; readers wait for the bytes they need."""

    def __init__(self, source: Source, obj: SourceObject, path: Path, stop: threading.Event) -> None:
        super().__init__(name="download", daemon=True)
        self.source = source
        self.obj = obj
        self.path = path
        self.stop = stop
        self.abort = threading.Event()
        self.verifier = Verifier(obj)
        self.available = 0
        self.done = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._fh = open(path, "xb", buffering=0)

    def run(self) -> None:
        try:
            self.source.download(self.obj, self._sink, self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader / finish()
            self.error = exc
        finally:
            self._fh.close()
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def _sink(self, chunk: bytes) -> None:
        if self.abort.is_set() or self.stop.is_set():
            raise Abandoned()
        self.verifier.update(chunk)
        view = memoryview(chunk)
        while view:
            written = self._fh.write(view)
            assert written is not None
            view = view[written:]
        with self._cond:
            self.available += len(chunk)
            self._cond.notify_all()

    def wait_for(self, end: int) -> None:
        """Block until bytes ``[0, end)`` are in the file; raise the download's error."""
        with self._cond:
            while self.available < end and not self.done:
                self._cond.wait(1.0)
                if self.stop.is_set():
                    raise Abandoned()
            if self.available < end:
                if self.error is not None:
                    raise self.error
                raise SourceError(
                    f"{self.source.uri}{self.obj.name}: got {self.available} bytes, the store reports {self.obj.size}"
                )

    def finish(self, tail: bytes, tail_start: int) -> int:
        """Wait for the end; raise its error; verify size, checksum and the read-ahead tail."""
        self.join()
        if self.error is not None:
            raise self.error
        where = f"{self.source.uri}{self.obj.name}"
        self.verifier.check(where)
        if tail:
            with open(self.path, "rb", buffering=0) as fh:
                if os.pread(fh.fileno(), len(tail), tail_start) != tail:
                    raise SourceError(f"{where} changed while it was downloaded")
        return self.verifier.size

    def cancel(self) -> None:
        self.abort.set()
        self.join()


class GrowingReader(io.RawIOBase):
    """A seekable view of the object being downloaded: ``[0, tail_start)`` from the
    growing file (waiting as needed), ``[tail_start, size)`` from the read-ahead tail.

    The extractors read front to back, so what lies well behind the read position is
    never read again: it is punched out of the staging file as the reading advances.
    Without that, a 4 GiB archive is 4 GiB of dirty page cache that the kernel starts
    writing to disk (past vm.dirty_background_ratio), competing with the unpacked files'
    writes that must reach the disk; with it, the archive costs a bounded window of page
    cache and next to no disk writes. (The checksum was computed as the bytes arrived;
    the read-ahead tail is never punched, so ``finish()`` can still compare it.) Reading
    behind the dropped part is refused, never answered with the hole's zeros.
    """

    def __init__(self, download: Download, tail: bytes, tail_start: int) -> None:
        super().__init__()
        self._download = download
        self._size = download.obj.size
        self._tail = tail
        self._tail_start = tail_start if tail else self._size
        self._fd = os.open(download.path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = 0
        self._discard_fd: int | None = os.open(download.path, os.O_WRONLY | os.O_CLOEXEC)
        self._discarded = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        if self._pos >= self._tail_start:
            at = self._pos - self._tail_start
            data = self._tail[at : at + want]
        else:
            if self._pos < self._discarded:
                raise SourceError(f"internal: read at {self._pos}, before the discarded {self._discarded} bytes")
            end = min(self._pos + want, self._tail_start)
            self._download.wait_for(end)
            data = os.pread(self._fd, end - self._pos, self._pos)
            self._discard_behind()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _discard_behind(self) -> None:
        upto = (self._pos - DISCARD_MARGIN) // DISCARD_EVERY * DISCARD_EVERY
        if self._discard_fd is None or upto <= self._discarded:
            return
        if punch_hole(self._discard_fd, self._discarded, upto - self._discarded):
            self._discarded = upto
        else:
            os.close(self._discard_fd)
            self._discard_fd = None

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            if self._discard_fd is not None:
                os.close(self._discard_fd)
                self._discard_fd = None
        super().close()
