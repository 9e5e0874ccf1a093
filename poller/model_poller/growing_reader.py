"""A seekable view of an object while it downloads (``staged.Staged``): the tar.gz
extractor reads it front to back, the zip extractor its central directory."""

from __future__ import annotations

import io

from model_poller.errors import SourceError
from model_poller.staged import Staged

# The part of the staging archive already unpacked is dropped every this many bytes...
DISCARD_EVERY = 64 << 20
# ...except for this much just behind the read position (the BufferedReader's window).
DISCARD_MARGIN = 8 << 20


class GrowingReader(io.RawIOBase):
    """A seekable view of the object being downloaded: ``[0, tail_start)`` from the
    staged file (waiting as needed), ``[tail_start, size)`` from the read-ahead tail.

    The tar.gz extractor reads front to back: what lies well behind the read position is
    never read again and is freed (the BufferedReader on top keeps a window just behind
    it, hence the margin); the zip extractor reads its directory through this view (from
    the tail, or, when the tail could not be read ahead, from wherever the directory is:
    those pieces are fetched first) and its members through ``Staged.open_range``.
    Reading behind the freed part is refused, never answered with the hole's zeros.
    """

    def __init__(self, staged: Staged, tail: bytes, tail_start: int, sequential: bool) -> None:
        super().__init__()
        self._staged = staged
        self._size = staged.obj.size
        self._tail = tail
        self._tail_start = tail_start if tail else self._size
        self._pos = 0
        self._sequential = sequential
        self._key: int | None = staged.demand(0, self._tail_start) if sequential else None
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

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        # (read() and readall() pass a bytearray, whose slices are copies: fill a view.)
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        if self._pos >= self._tail_start:
            at = self._pos - self._tail_start
            piece = memoryview(self._tail)[at : at + want]
            got = len(piece)
            view[:got] = piece
        else:
            if self._pos < self._discarded:
                raise SourceError(f"internal: read at {self._pos}, before the discarded {self._discarded} bytes")
            # Straight into the caller's (the BufferedReader's, reused) buffer.
            got = self._staged.read_into(self._pos, view[: min(want, self._tail_start - self._pos)])
            if self._key is not None:
                self._staged.advance(self._key, self._pos + got)
                self._discard_behind()
        self._pos += got
        return got

    def _discard_behind(self) -> None:
        upto = (self._pos - DISCARD_MARGIN) // DISCARD_EVERY * DISCARD_EVERY
        if upto > self._discarded:
            self._staged.release(self._discarded, upto)
            self._discarded = upto

    def close(self) -> None:
        if not self.closed and self._key is not None:
            self._staged.drop(self._key)
            self._key = None
        super().close()
