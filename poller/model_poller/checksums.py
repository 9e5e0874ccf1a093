"""Checking downloaded bytes against the size and checksum the store reports: a whole
stream (``Verifier``) or the pieces of a sliced download arriving in any order
(``PieceChecksums``). Used by every download: folder objects, streamed archives, ranges."""

from __future__ import annotations

import base64
import hashlib
import threading

import google_crc32c

from model_poller import crc32c
from model_poller.errors import Rejected, SourceError
from model_poller.versions import SourceObject


class Verifier:
    """Checks a stream against the size and checksum the store reported.

    CRC32C (google-crc32c's C extension) where the store reports it, MD5 otherwise;
    nothing to check for a store that reports neither (a local directory).
    """

    def __init__(self, obj: SourceObject) -> None:
        self._obj = obj
        self._crc = google_crc32c.Checksum() if obj.crc32c else None  # type: ignore[no-untyped-call]
        self._md5 = hashlib.md5(usedforsecurity=False) if obj.md5 and not obj.crc32c else None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._crc is not None:
            self._crc.update(chunk)  # type: ignore[no-untyped-call]
        elif self._md5 is not None:
            self._md5.update(chunk)

    def check(self, where: str) -> None:
        obj = self._obj
        check_size(self.size, obj, where)
        if self._crc is not None:
            got = base64.b64encode(self._crc.digest()).decode()  # type: ignore[no-untyped-call]
            if got != obj.crc32c:
                raise Rejected("checksum_mismatch", f"{where}: CRC32C {got} but the store reports {obj.crc32c}")
        elif self._md5 is not None:
            got = base64.b64encode(self._md5.digest()).decode()
            if got != obj.md5:
                raise Rejected("checksum_mismatch", f"{where}: MD5 {got} but the store reports {obj.md5}")


def check_size(got: int, obj: SourceObject, where: str) -> None:
    if got != obj.size:
        raise SourceError(f"{where}: got {got} bytes, the store reports {obj.size} (truncated transfer)")


class PieceChecksums:
    """What the store reported, checked against the pieces of one object (see
    ``transfer.plan``) arriving in any order: the CRC32C is combined from the pieces'
    (see ``crc32c``); an object whose store reports only an MD5 is one piece, hashed in order."""

    def __init__(self, obj: SourceObject, pieces: int) -> None:
        self._obj = obj
        self._slices = [crc32c.Slice() for _ in range(pieces)] if obj.crc32c else None
        self._verifier = None if obj.crc32c else Verifier(obj)
        if self._verifier is not None and pieces != 1:
            raise ValueError("an object without a CRC32C is checked in one piece")
        self._size = 0
        self._lock = threading.Lock()

    def update(self, piece: int, chunk: bytes) -> None:
        """Account ``chunk``, the next bytes of piece number ``piece`` (one thread per piece)."""
        if self._slices is not None:
            self._slices[piece].update(chunk)
        else:
            assert self._verifier is not None
            self._verifier.update(chunk)
        with self._lock:
            self._size += len(chunk)

    def check(self, where: str) -> None:
        obj = self._obj
        if self._slices is None:
            assert self._verifier is not None
            self._verifier.check(where)
            return
        check_size(self._size, obj, where)
        got = crc32c.combined(self._slices)
        if got != obj.crc32c:
            raise Rejected("checksum_mismatch", f"{where}: CRC32C {got} but the store reports {obj.crc32c}")
