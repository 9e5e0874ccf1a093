"""The deflate implementation unpacking uses, chosen here and nowhere else: ISA-L.

Why: on 2 cores an install is CPU-bound, and ISA-L (the ``isal`` package) inflates and
checksums several times faster than CPython's zlib 1.2.13 (bench/inflate_speed.py, best of
5, 256 MiB, shared 2-vCPU VM, 2026-11-25): stored blocks 3.9-4.7 GiB/s vs 0.9-2.0,
Huffman-coded float weights 443-465 MiB/s vs 202-218, CRC-32 9.6-11.1 GiB/s vs 2.3-3.5.
Like zlib it releases the GIL while it works (the zip members inflate on threads), its
``decompress(data, max_length)`` returns at most ``max_length`` bytes and keeps the rest of
the input in ``unconsumed_tail``, and its gzip reader's memory stays flat whatever the
stream inflates to (4 GiB of zeros: 14 MiB peak RSS). tests/poller/test_inflate.py checks
all of this. zlib-ng (``zlib-ng``) measured close, with slower CRC-32 and Huffman decoding.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO, Protocol, cast

from isal import igzip, isal_zlib

NAME = "isal"

# What a corrupt raw deflate stream raises (isal's stub declares its error class as an instance).
DEFLATE_ERRORS: tuple[type[BaseException], ...] = (cast(type[BaseException], isal_zlib.error), zlib.error)
# What reading a corrupt or truncated gzip stream raises besides OSError (gzip.BadGzipFile)
# and EOFError: ISA-L's reader refuses a gzip header larger than its 512 KiB input buffer
# (a never-ending file name) with OverflowError rather than reading it.
GZIP_ERRORS: tuple[type[BaseException], ...] = (*DEFLATE_ERRORS, OverflowError)


class RawInflater(Protocol):
    """The part of zlib's decompress object the zip member loop uses."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...


def raw_inflater() -> RawInflater:
    """A decompressor for a zip member's raw deflate stream (no header, no trailer)."""
    return isal_zlib.decompressobj(-15)


def crc32(data: bytes, value: int = 0) -> int:
    """The zip (and gzip) CRC-32, continued from ``value``."""
    return isal_zlib.crc32(data, value)


def open_gzip(fileobj: BinaryIO) -> gzip.GzipFile:
    """A reader of the gzip stream in ``fileobj``: it checks the trailer's CRC-32 and length."""
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")  # type: ignore[no-untyped-call]
