"""Parallel downloads against fake-gcs-server (issue 12): slices of one archive and the
objects of a folder fetched side by side, pinned to the listed generation, checked piece
by piece, and zip members inflated by several threads within every limit."""

from __future__ import annotations

import base64
import io
import os
import random
import tarfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from model_poller import crc32c
from model_poller.durable import Syncer
from model_poller.errors import Rejected
from model_poller.extract import Limits, Unpacker, extract
from model_poller.stores.base import Transfer
from model_poller.stores.gcs import GcsStore
from model_poller.versions import Kind, SourceObject

from local_services.archives import installed_files, model_files
from tests.poller.kit import Dirs, EngineFactory
from tests.poller.recording import recording_store

MiB = 1 << 20
pytestmark = [pytest.mark.gcs]


def noise(size: int, seed: int) -> bytes:
    """Incompressible bytes (like float weights), different per seed."""
    return random.Random(seed).randbytes(size)


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method, compresslevel=1 if method == zipfile.ZIP_DEFLATED else None) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def numeric_dirs(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def covered_once(calls: list[tuple[str, int, int]], name: str, size: int) -> bool:
    """The requests for ``name`` cover ``[0, size)`` exactly: no byte fetched twice."""
    spans = sorted((s, e) for n, s, e in calls if n == name)
    at = 0
    for start, end in spans:
        if start != at:
            return False
        at = end
    return at == size


# -- the CRC32C of slices ------------------------------------------------------------------------


def test_crc32c_combined_from_slices_is_the_objects() -> None:
    data = noise(5 * MiB + 12345, seed=1)
    rng = random.Random(2)
    for _ in range(20):
        cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(rng.randrange(1, 9)))})
        slices = []
        for start, end in zip(cuts, cuts[1:], strict=False):
            piece = crc32c.Slice()
            piece.update(data[start:end])
            slices.append(piece)
        assert crc32c.combined(slices) == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert crc32c.combined([]) == base64.b64encode(google_crc32c.Checksum(b"").digest()).decode()


# -- archives in slices ------------------------------------------------------------------------------


def test_zip_downloads_in_slices_side_by_side(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    files = {**model_files(1), **{f"variables/shard-{i}": noise(3 * MiB + i, seed=i) for i in range(4)}}
    blob = zip_of(files, zipfile.ZIP_DEFLATED)
    bucket.blob("m/1.zip").upload_from_string(blob)
    source = recording_store(fake_gcs, bucket, Transfer(streams=4, slice_bytes=1 * MiB))
    outcome = make_engine(store=source).sync()
    assert outcome.complete, outcome.reason()
    assert installed_files(dirs.models / "1") == files
    ranged = [c for c in source.calls if c[0] == "1.zip"]
    assert len(ranged) >= len(blob) // MiB, ranged  # one request per slice
    assert covered_once(source.calls, "1.zip", len(blob)), sorted(source.calls)
    assert source.received == len(blob)  # nothing fetched twice
    assert source.most_in_flight >= 2, "the slices were fetched one after another"
    (result,) = outcome.installed
    assert result.downloaded_bytes == len(blob)


def test_tar_gz_downloads_in_slices(fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory) -> None:
    files = {**model_files(2), "variables/big": noise(6 * MiB, seed=7)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    bucket.blob("m/2.tar.gz").upload_from_string(buf.getvalue())
    source = recording_store(fake_gcs, bucket, Transfer(streams=3, slice_bytes=1 * MiB))
    outcome = make_engine(store=source).sync()
    assert outcome.complete, outcome.reason()
    assert installed_files(dirs.models / "2") == files
    assert covered_once(source.calls, "2.tar.gz", len(buf.getvalue()))
    assert source.most_in_flight >= 2


def test_gzip_encoded_object_is_fetched_as_stored(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    """A .tar.gz uploaded with Content-Encoding: gzip (``gsutil cp -Z`` does that): asked
    for "identity", the store inflates it on the fly and the bytes no longer match the
    CRC32C of what is stored (this used to reject the upload as checksum_mismatch)."""
    files = model_files(3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = bucket.blob("m/3.tar.gz")
    blob.content_encoding = "gzip"
    blob.upload_from_string(buf.getvalue(), content_type="application/gzip")
    outcome = make_engine(uri=f"gs://{bucket.name}/m/").sync()
    assert outcome.complete, outcome.reason()
    assert installed_files(dirs.models / "3") == files


def test_generation_replaced_mid_download_starts_over(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    """Every slice is pinned to the listed generation: a re-upload while the slices are
    fetched can never mix two uploads; the download is abandoned, and the next sync
    installs the new upload from scratch."""
    old = {**model_files(4), "variables/w": noise(6 * MiB, seed=40)}
    new = {**model_files(4), "variables/w": noise(6 * MiB, seed=41)}
    bucket.blob("m/4.zip").upload_from_string(zip_of(old))

    def reupload(number: int) -> None:
        if number == 3:  # two slices are on their way: a new upload lands
            bucket.blob("m/4.zip").upload_from_string(zip_of(new))

    source = recording_store(fake_gcs, bucket, Transfer(streams=2, slice_bytes=1 * MiB), before=reupload)
    engine = make_engine(store=source)
    first = engine.sync()
    assert not first.complete and numeric_dirs(dirs.models) == []
    (problem,) = first.problems
    assert "4.zip" in problem.message and "replaced since it was listed" in problem.message, problem.message
    assert engine.rejected == {}  # not the upload's fault: retried
    assert [p.name for p in dirs.models.iterdir() if p.name.startswith(".model-poller-staging")] == []
    second = engine.sync()
    assert second.complete, second.reason()
    assert installed_files(dirs.models / "4") == new


def test_staged_archive_stays_within_the_window(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    """The download never runs more than streams x slice ahead of the unpacking, and what
    was unpacked is freed: the staged archive's disk (and page cache) stays bounded,
    however big the archive. Inflating this archive is slower than fetching it, so an
    unbounded download would hold most of it."""
    table = bytes(b"ACGT"[i % 4] for i in range(256))  # 2 bits of entropy a byte: ratio ~3.5
    text = os.urandom(64 * MiB).translate(table)
    blob = zip_of({**model_files(5), "variables/w": text}, zipfile.ZIP_DEFLATED)
    bucket.blob("m/5.zip").upload_from_string(blob)
    transfer = Transfer(streams=2, slice_bytes=1 * MiB)
    source = recording_store(fake_gcs, bucket, transfer)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for staged in dirs.models.glob(".model-poller-staging-*/archive.zip"):
                try:
                    peak[0] = max(peak[0], staged.stat().st_blocks * 512)
                except FileNotFoundError:
                    pass
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        outcome = make_engine(store=source).sync()
    finally:
        done.set()
        sampler.join()
    assert outcome.complete, outcome.reason()
    assert len(blob) > 16 * MiB
    # window (2 MiB) + a slice being read and released + one per connection in flight
    assert 0 < peak[0] <= transfer.window + 3 * transfer.slice_bytes, (peak[0], len(blob))


# -- folder versions -----------------------------------------------------------------------------


def test_folder_objects_fetched_side_by_side_largest_first(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    files = {
        **model_files(6),
        "variables/variables.data-00000-of-00004": noise(1 * MiB, seed=60),
        "variables/variables.data-00001-of-00004": noise(5 * MiB + 7, seed=61),
        "variables/variables.data-00002-of-00004": noise(300_000, seed=62),
        "variables/variables.data-00003-of-00004": noise(3 * MiB, seed=63),
        "assets/empty": b"",
    }
    for name, data in files.items():
        bucket.blob(f"m/0006/{name}").upload_from_string(data)
    bucket.blob("m/0006/_READY").upload_from_string(b"")
    source = recording_store(fake_gcs, bucket, Transfer(streams=3, slice_bytes=1 * MiB))
    outcome = make_engine(store=source).sync()
    assert outcome.complete, outcome.reason()
    assert installed_files(dirs.models / "6") == files
    assert source.calls[0][0] == "0006/variables/variables.data-00001-of-00004"  # the largest first
    assert source.most_in_flight >= 2
    for name, data in files.items():
        if data:
            assert covered_once(source.calls, f"0006/{name}", len(data)), name
    assert source.received == sum(len(d) for d in files.values())


def test_folder_object_with_a_bad_checksum_is_rejected(
    fake_gcs: Any, bucket: Any, dirs: Dirs, make_engine: EngineFactory
) -> None:
    """Each object is checked against its CRC32C, combined from its slices."""
    files = {**model_files(7), "variables/w": noise(3 * MiB, seed=70)}
    for name, data in files.items():
        bucket.blob(f"m/7/{name}").upload_from_string(data)
    bucket.blob("m/7/_READY").upload_from_string(b"")
    real = GcsStore(f"gs://{bucket.name}/m/", bucket.name, "m/", fake_gcs.client(), Transfer(slice_bytes=1 * MiB))

    class Misreported(GcsStore):
        def list_objects(self) -> list[SourceObject]:
            wrong = base64.b64encode(google_crc32c.Checksum(b"something else").digest()).decode()
            return [
                SourceObject(o.name, o.size, o.generation, crc32c=wrong if o.name.endswith("/w") else o.crc32c)
                for o in real.list_objects()
            ]

    source = Misreported(real.uri, bucket.name, "m/", fake_gcs.client(), Transfer(slice_bytes=1 * MiB))
    engine = make_engine(store=source)
    assert not engine.sync().complete
    assert list(engine.rejected.values()) == ["checksum_mismatch"]
    assert numeric_dirs(dirs.models) == []


# -- zip members inflated in parallel -----------------------------------------------------------


def unpack(blob: bytes, tmp_path: Path, limits: Limits, workers: int) -> Unpacker:
    out = tmp_path / f"out-{workers}-{time.monotonic_ns()}"
    out.mkdir()
    with Syncer() as syncer:
        unpacker = Unpacker(out, limits, syncer, threading.Event(), archive_size=len(blob))
        extract(io.BytesIO(blob), Kind.ZIP, unpacker, workers=workers)
        unpacker.sync_dirs()
    return unpacker


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_parallel_unzip_writes_what_a_sequential_one_does(tmp_path: Path) -> None:
    files = {f"d{i % 3}/m{i}": noise(MiB // (i + 1), seed=i) for i in range(9)}
    blob = zip_of(files, zipfile.ZIP_DEFLATED)
    one = unpack(blob, tmp_path, Limits(), workers=1)
    four = unpack(blob, tmp_path, Limits(), workers=4)
    assert installed_files(one.dest) == installed_files(four.dest) == files
    assert (one.files, one.bytes_written) == (four.files, four.bytes_written)


def test_parallel_unzip_counts_every_member_against_the_limits(tmp_path: Path) -> None:
    blob = zip_of({f"m{i}": noise(2 * MiB, seed=i) for i in range(6)})
    before = open_fds()
    with pytest.raises(Rejected) as caught:
        unpack(blob, tmp_path, Limits(max_bytes=7 * MiB), workers=4)
    assert caught.value.reason == "too_many_bytes"
    assert open_fds() == before  # every member's file closed, whichever thread wrote it


def set_crc(blob: bytearray, name: str, crc: int) -> None:
    """Write ``crc`` into both headers (local, central) of member ``name`` of a small zip."""
    raw = crc.to_bytes(4, "little")
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as zf:
        local = zf.getinfo(name).header_offset
    blob[local + 14 : local + 18] = raw
    at = int.from_bytes(blob[-6:-2], "little")  # the central directory, from the end record
    while blob[at : at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = (int.from_bytes(blob[at + o : at + o + 2], "little") for o in (28, 30, 32))
        if blob[at + 46 : at + 46 + name_len] == name.encode():
            blob[at + 16 : at + 20] = raw
            return
        at += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"no member {name}")


def test_parallel_unzip_reports_the_first_bad_member(tmp_path: Path) -> None:
    """Member 1 has a bad CRC-32 (found only after inflating all of it), member 3 is a
    bomb (found after 1 MiB of output): whichever thread fails first, the reason is
    member 1's, as a sequential unpacking reports it."""
    good = noise(3 * MiB, seed=1)
    bad = noise(2 * MiB, seed=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("m0", good)
        zf.writestr("m1", bad)
        zf.writestr("m2", good)
        zf.writestr("m3", bytes(64 * MiB))
    blob = bytearray(buf.getvalue())
    set_crc(blob, "m1", zlib.crc32(bad) ^ 0xFFFFFFFF)
    for workers in (1, 4, 4, 4):
        with pytest.raises(Rejected) as caught:
            unpack(bytes(blob), tmp_path, Limits(), workers=workers)
        assert caught.value.reason == "corrupt" and "'m1'" in caught.value.detail, caught.value


def test_bombs_inflated_side_by_side_stop_early(tmp_path: Path) -> None:
    """Four bombs at once: each thread checks its member as the bytes come out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(4):
            zf.writestr(f"bomb{i}", bytes(256 * MiB))
        compressed = zf.getinfo("bomb0").compress_size
    with pytest.raises(Rejected) as caught:
        unpack(buf.getvalue(), tmp_path, Limits(), workers=4)
    assert caught.value.reason == "compression_ratio"
    written = sum(p.stat().st_size for p in tmp_path.rglob("bomb*"))
    assert written <= 4 * (200 * compressed + 4 * MiB), written  # (the staging dir is removed after)


# -- flags -------------------------------------------------------------------------------------------


def test_download_flags_reach_the_source(dirs: Dirs) -> None:
    from model_poller.cli import make_parser, resolve
    from model_poller.config import build_settings

    env = {"MODEL_POLLER_DOWNLOAD_STREAMS": "3", "MODEL_POLLER_READ_TIMEOUT": "5s"}
    args = make_parser().parse_args(
        ["--source", "gs://b/m/", "--model-dir", str(dirs.models), "--download-slice", "8Mi"]
    )
    settings = build_settings(resolve(args, env), env)
    assert settings.transfer == Transfer(streams=3, read_timeout=5.0, slice_bytes=8 * MiB)
