"""CRC32C of an object downloaded in slices: each slice is hashed as its bytes arrive, by
the thread that received them, and the slices' CRCs are combined in order at the end.

Why combine rather than hash the finished file front to back: combining costs a few
32x32 GF(2) matrix-vector products per slice (measured on this VM: 0.2 ms per slice; the
operators "append 2**k zero bytes" are computed once per process, 4 ms), while hashing
the file again as its contiguous prefix grows reads every byte back from the page cache
and hashes it a second time (measured: 0.20 s wall, 0.14 s CPU per GiB, on a 2-core
machine that also unpacks), and it keeps the archive's pages until the hasher has
passed them. The math is zlib's ``crc32_combine``
(Mark Adler), with CRC32C's reflected polynomial.
"""

from __future__ import annotations

import base64
import threading

import google_crc32c

_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected
_operators: list[list[int]] = []  # _operators[k]: append 2**k zero bytes
_lock = threading.Lock()


def _times(matrix: list[int], vector: int) -> int:
    total = 0
    row = 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def _operator(k: int) -> list[int]:
    with _lock:
        if not _operators:
            one_bit = [_POLY] + [1 << n for n in range(31)]  # the CRC register after one zero bit
            two = _square(one_bit)
            four = _square(two)
            _operators.append(_square(four))  # one zero byte
        while len(_operators) <= k:
            _operators.append(_square(_operators[-1]))
        return _operators[k]


def combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC32C of ``A + B`` from ``crc1`` = CRC32C(A), ``crc2`` = CRC32C(B), ``length2`` = len(B)."""
    k = 0
    while length2:
        if length2 & 1:
            crc1 = _times(_operator(k), crc1)
        length2 >>= 1
        k += 1
    return crc1 ^ crc2


class Slice:
    """The CRC32C of bytes received in order, possibly over several requests."""

    __slots__ = ("_checksum", "length")

    def __init__(self) -> None:
        self._checksum = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        self.length = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._checksum.update(chunk)  # type: ignore[no-untyped-call]
        self.length += len(chunk)

    def value(self) -> int:
        return int.from_bytes(self._checksum.digest(), "big")  # type: ignore[no-untyped-call]


def combined(slices: list[Slice]) -> str:
    """The base64 CRC32C (as GCS reports it) of the slices' bytes, in order."""
    crc = 0
    for part in slices:
        crc = combine(crc, part.value(), part.length)  # the CRC32C of nothing is 0
    return base64.b64encode(crc.to_bytes(4, "big")).decode()
