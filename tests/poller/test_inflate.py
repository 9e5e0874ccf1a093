"""The deflate implementation chosen in ``model_poller.inflate`` (ISA-L) is the one that
unpacks zip members and tar.gz streams, and it keeps every bound zlib gave: output per
step, bombs refused by the limits with bounded memory, corrupt data and oversized gzip
headers rejected as ``corrupt``, and the GIL released while it inflates."""

from __future__ import annotations

import io
import os
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from model_poller import inflate
from model_poller.durable import Syncer
from model_poller.errors import Rejected
from model_poller.extract import INFLATE_OUT, Limits, Unpacker, extract
from model_poller.policy import Policy
from model_poller.versions import Kind

from local_services import archives as a
from tests.poller.kit import Dirs, EngineFactory

MiB = 1 << 20
GiB = 1 << 30
# ISA-L's wording for a deflate block of type 3; zlib's is "invalid block type".
ISAL_BAD_BLOCK = "Invalid deflate block found"


def deflated_zeros(n: int) -> bytes:
    """A raw deflate stream of ``n`` zero bytes, about 1 KB per MiB, built in milliseconds."""
    return a.gzip_with_zeros(b"", n)[10:-8]  # (the gzip stream without its header and trailer)


def unpack(tmp_path: Path, blob: bytes, kind: Kind, limits: Limits | None = None, workers: int = 1) -> Unpacker:
    dest = tmp_path / "out"
    dest.mkdir()
    with Syncer() as syncer:
        unpacker = Unpacker(dest, limits or Limits(), syncer, threading.Event(), archive_size=len(blob))
        extract(io.BytesIO(blob), kind, unpacker, workers=workers)
    return unpacker


def test_isal_is_the_implementation() -> None:
    assert inflate.NAME == "isal" and INFLATE_OUT == inflate.MAX_STEP
    data = os.urandom(MiB)
    assert inflate.crc32(data) == zlib.crc32(data)
    assert inflate.crc32(data[1000:], inflate.crc32(data[:1000])) == zlib.crc32(data)


@pytest.mark.parametrize("workers", [1, 2])
def test_zip_member_is_inflated_by_isal(tmp_path: Path, workers: int) -> None:
    """A deflated member with a block of the invalid type 3: ISA-L's error, caught as corrupt."""
    blob = a.zip_compressed(8, b"\xff" * 64, 1000)
    with pytest.raises(Rejected) as err:
        unpack(tmp_path, blob, Kind.ZIP, workers=workers)
    assert err.value.reason == "corrupt"
    assert err.value.detail.startswith("entry 'variables/big': ") and ISAL_BAD_BLOCK in err.value.detail


def test_tar_gz_is_inflated_by_isal(tmp_path: Path) -> None:
    good = a.gzip_with_zeros(a.tar_entries(a.model_files(9)) + a.TAR_END, 0)
    blob = good[:10] + b"\xff" * 64 + good[10:]  # a bad first block after the gzip header
    with pytest.raises(Rejected) as err:
        unpack(tmp_path, blob, Kind.TAR_GZ)
    assert err.value.reason == "corrupt" and ISAL_BAD_BLOCK in err.value.detail


def test_corrupt_members_rejected_by_the_engine(dirs: Dirs, make_engine: EngineFactory) -> None:
    """Through a real sync: the corrupt versions are rejected, the valid one installs."""
    (dirs.src / "1.zip").write_bytes(a.zip_bytes(a.model_files(1), top="0001"))
    (dirs.src / "2.zip").write_bytes(a.zip_compressed(8, b"\xff" * 64, 1000))
    good = a.gzip_with_zeros(a.tar_entries(a.model_files(9)) + a.TAR_END, 0)
    (dirs.src / "3.tar.gz").write_bytes(good[:10] + b"\xff" * 64 + good[10:])
    engine = make_engine(Policy(keep=1))
    outcome = engine.sync()
    assert sorted(engine.rejected.values()) == ["corrupt", "corrupt"]
    assert outcome.complete
    assert sorted(p.name for p in dirs.models.iterdir() if p.name != ".model-poller") == ["1"]
    assert a.installed_files(dirs.models / "1") == a.model_files(1)


def test_each_inflate_step_is_bounded() -> None:
    """What extract relies on: at most ``max_length`` bytes per call, what is left of the
    input coming out of the next calls, the end of the stream seen."""
    size = 256 * MiB
    stream = deflated_zeros(size)
    inflater = inflate.raw_inflater()
    data, out, crc, pieces = stream, 0, 0, 0
    while not inflater.eof:
        piece = inflater.decompress(data, INFLATE_OUT)
        assert len(piece) <= INFLATE_OUT and (piece or inflater.eof)
        crc = inflate.crc32(piece, crc)
        out += len(piece)
        pieces += bool(piece)
        data = inflater.unconsumed_tail
    assert out == size and pieces == size // INFLATE_OUT
    assert crc == a.crc32_zeros(0, size)
    assert inflater.unused_data == b"" and inflater.unconsumed_tail == b""


@pytest.mark.parametrize("after", [1, 64 * MiB])
def test_data_after_the_deflate_stream_is_corrupt(tmp_path: Path, after: int) -> None:
    """A member whose deflate stream ends before its declared compressed size (1 byte or
    64 MiB of junk behind it): rejected, without holding the junk in memory."""
    content = os.urandom(100_000)
    member = a.raw_member("variables/v", content)
    bomb = a.zip_model_and([a.RawMember(member.name, member.data + bytes(after), 8, member.crc, member.size)])
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as err:
            unpack(tmp_path, bomb, Kind.ZIP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "corrupt" and "does not end where the entry does" in err.value.detail
    assert peak < 8 * MiB


@pytest.mark.parametrize(
    "limits, reason",
    [(Limits(max_bytes=64 * MiB, max_ratio=1e9), "too_many_bytes"), (Limits(max_ratio=20), "compression_ratio")],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_zip_bomb_refused_in_bounded_memory(tmp_path: Path, limits: Limits, reason: str, workers: int) -> None:
    """Two members of 1 GiB of zeros each (1 MB compressed): refused by the limits while
    inflating, with a few MiB of memory (tracemalloc sees the input and output buffers)."""
    stream = deflated_zeros(GiB)
    crc = a.crc32_zeros(0, GiB)
    bomb = a.zip_model_and([a.RawMember(f"variables/big{i}".encode(), stream, 8, crc, GiB) for i in range(2)])
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as err:
            unpack(tmp_path, bomb, Kind.ZIP, limits, workers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == reason
    assert peak < 16 * MiB  # (a read and a step per thread; the members inflate to 2 GiB)


def test_tar_gz_bomb_refused_in_bounded_memory(tmp_path: Path) -> None:
    blob = a.targz_trailing_zeros(GiB)
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as err:
            unpack(tmp_path, blob, Kind.TAR_GZ, Limits(max_bytes=64 * MiB, max_ratio=1e9))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "too_many_bytes"
    assert peak < 8 * MiB


def test_gzip_header_longer_than_isal_reads_is_corrupt(tmp_path: Path) -> None:
    """ISA-L refuses a gzip header over its 512 KiB buffer (OverflowError) instead of
    reading it: a 1 MiB file name in the header is a corrupt archive, not a crash."""
    body = a.gzip_with_zeros(a.tar_entries(a.model_files(9)) + a.TAR_END, 0)
    named = b"\x1f\x8b\x08\x08" + body[4:10] + b"n" * MiB + b"\0" + body[10:]  # FLG.FNAME set
    with pytest.raises(Rejected) as err:
        unpack(tmp_path, named, Kind.TAR_GZ)
    assert err.value.reason == "corrupt" and "Gzip header exceeds input buffer size" in err.value.detail


def test_inflating_releases_the_gil() -> None:
    """While one call inflates 64 MiB of Huffman-coded data (0.2-0.6 s), a Python
    thread keeps running: members inflated on threads use more than one core."""
    data = os.urandom(64 * MiB).translate(bytes(i % 16 for i in range(256)))  # 4 bits of entropy a byte
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    stream = compressor.compress(data) + compressor.flush()
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 1000 == 0:
                ticks.append(time.perf_counter())

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.05)
        start = time.perf_counter()
        out = inflate.raw_inflater().decompress(stream)  # one call, no max_length
        end = time.perf_counter()
    finally:
        stop.set()
        spinner.join()
    assert out == data
    # Holding the GIL, the call would leave one gap as long as itself (a 0.4 s
    # bytes.translate did: 0.39 s); released, the other thread's gaps are scheduling noise.
    inside = [start, *(t for t in ticks if start < t < end), end]
    longest = max(later - earlier for earlier, later in zip(inside, inside[1:], strict=False))
    assert longest < 0.5 * (end - start), f"another thread stood still {longest:.3f} s of a {end - start:.3f} s inflate"
