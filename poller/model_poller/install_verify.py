"""Checking downloaded bytes against what the store reports."""

from __future__ import annotations

import base64
import hashlib

import google_crc32c

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
        if self.size != obj.size:
            raise SourceError(f"{where}: got {self.size} bytes, the store reports {obj.size} (truncated transfer)")
        if self._crc is not None:
            got = base64.b64encode(self._crc.digest()).decode()  # type: ignore[no-untyped-call]
            if got != obj.crc32c:
                raise Rejected("checksum_mismatch", f"{where}: CRC32C {got} but the store reports {obj.crc32c}")
        elif self._md5 is not None:
            got = base64.b64encode(self._md5.digest()).decode()
            if got != obj.md5:
                raise Rejected("checksum_mismatch", f"{where}: MD5 {got} but the store reports {obj.md5}")
