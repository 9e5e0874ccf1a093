"""The zip's central directory read ahead with one small range read, so unpacking starts
with the first bytes of the download instead of after the last."""

from __future__ import annotations

import struct

from model_poller.stores.base import Store
from model_poller.versions import SourceObject

MAX_TAIL = 64 << 20  # a bigger central directory is read from the finished download

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def zip_tail(store: Store, obj: SourceObject) -> tuple[bytes, int]:
    """(bytes, offset) covering the zip's central directory through the end of the object,
    or (b"", size) when it cannot be located cheaply (then nothing is read ahead)."""
    size = obj.size
    first = min(size, 65536 + 22)
    if first < 22:
        return b"", size
    tail = store.read_range(obj, size - first, size)
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
            tail, start = store.read_range(obj, eocd64, size), eocd64
        rel = eocd64 - start
        if tail[rel : rel + 4] != b"PK\x06\x06" or rel + 56 > len(tail):  # (cut short: the unpacker says so)
            return b"", size
        cd_size, cd_offset = struct.unpack_from("<QQ", tail, rel + 40)
    if cd_offset > size:
        return b"", size
    if cd_offset < start:
        if size - cd_offset > MAX_TAIL:
            return b"", size
        extra = store.read_range(obj, cd_offset, start)
        tail, start = extra + tail, cd_offset
    return tail, start
