"""The deflate implementation unpacking uses, chosen here and nowhere else: ISA-L.

Why: on 2 cores an install is CPU-bound, and ISA-L (the ``isal`` package) inflates and
checksums several times faster than CPython's zlib 1.2.13 (bench/inflate_speed.py, shared
2-vCPU VM, 2026-11-25): stored blocks 4.9 GiB/s vs 0.9-2.0, Huffman-coded float weights
436 MiB/s vs 202-309, CRC-32 9.4-11.5 GiB/s vs 1.7-3.4 (BENCHMARKS.md). Like zlib it
releases the GIL while it works (the zip members inflate on threads), returns at most
``max_length`` bytes per step, keeping the input it could not consume for the next step,
and its gzip reader's memory stays flat whatever the stream inflates to (4 GiB of zeros:
14 MiB peak RSS). tests/poller/test_inflate.py checks all of this. zlib-ng (``zlib-ng``)
measured close, with slower CRC-32 and Huffman decoding.
"""

from __future__ import annotations

import gzip
import zlib
from typing import BinaryIO, Protocol, cast

from isal import igzip, igzip_lib, isal_zlib

NAME = "isal"

# Output of one inflate step. ISA-L's decompressor allocates the whole step up front: with
# 4 MiB steps (zlib's, which grows its output block by block) the unzip threads got freshly
# mapped pages for nearly every step (190,000 page faults and +0.6 s of system time per GiB,
# more than the inflate saved); 512 KiB buffers are reused (6,800 faults) and fit in the
# CPU cache for the CRC-32 and the write. bench/unpack_cpu.py, 1 GiB zip, 2 threads, user +
# system CPU: zlib 4 MiB steps 1.56 s, ISA-L 4 MiB 1.69 s, ISA-L 512 KiB 1.21 s.
MAX_STEP = 512 << 10

# What a corrupt raw deflate stream raises (isal's stub declares its error class as an instance).
DEFLATE_ERRORS: tuple[type[BaseException], ...] = (cast(type[BaseException], isal_zlib.error), zlib.error)
# What reading a corrupt or truncated gzip stream raises besides OSError (gzip.BadGzipFile)
# and EOFError: ISA-L's reader refuses a gzip header larger than its 512 KiB input buffer
# (a never-ending file name) with OverflowError rather than reading it.
GZIP_ERRORS: tuple[type[BaseException], ...] = (*DEFLATE_ERRORS, OverflowError)


class RawInflater(Protocol):
    """The part of zlib's decompress object the zip member loop uses: ``decompress(data,
    max_length)`` returns at most ``max_length`` bytes; what it could not consume yet is
    in ``unconsumed_tail`` or kept inside, to come out of the next call (with ``b""``)."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, max_length: int = 0, /) -> bytes: ...


class _IsalRawInflater:
    """ISA-L's raw deflate decompressor (``IgzipDecompressor``, bz2-style: it keeps the
    input it has not consumed, at most one read of it) behind zlib's interface. Input
    given after the end of the stream makes ``unused_data`` non-empty, as with zlib (ISA-L's
    own object raises EOFError); only its first byte is kept: the caller only asks whether
    there is any, and keeping it all would hold as much as a hostile member declares."""

    unconsumed_tail = b""

    def __init__(self) -> None:
        self._inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_DEFLATE)
        self._after_end = b""

    @property
    def eof(self) -> bool:
        return self._inflater.eof

    @property
    def unused_data(self) -> bytes:
        return self._inflater.unused_data + self._after_end

    def decompress(self, data: bytes | memoryview, max_length: int = 0, /) -> bytes:
        # (ISA-L copies the input it keeps: the caller may reuse ``data``'s buffer.)
        if self._inflater.eof:
            self._after_end = self._after_end or bytes(data[:1])
            return b""
        return self._inflater.decompress(data, max_length if max_length > 0 else -1)


def raw_inflater() -> RawInflater:
    """A decompressor for a zip member's raw deflate stream (no header, no trailer)."""
    return _IsalRawInflater()


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """The zip (and gzip) CRC-32, continued from ``value``."""
    return isal_zlib.crc32(data, value)


def open_gzip(fileobj: BinaryIO) -> gzip.GzipFile:
    """A reader of the gzip stream in ``fileobj``: it checks the trailer's CRC-32 and length."""
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")  # type: ignore[no-untyped-call]
