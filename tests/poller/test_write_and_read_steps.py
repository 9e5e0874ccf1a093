"""Bytes land where they belong: pwrite_all / write_all in steps of at most WRITE_STEP,
and reads of the staging copy into the caller's buffer."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from model_poller import durable
from model_poller.durable import WRITE_STEP, pwrite_all, write_all
from model_poller.growing_reader import GrowingReader
from model_poller.staged import Staged
from model_poller.stores.file import FileStore


def test_pwrite_all_writes_every_byte_at_its_offset(tmp_path: Path) -> None:
    data = os.urandom(3 * WRITE_STEP + 5)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        pwrite_all(fd, b"head", 0)
        pwrite_all(fd, memoryview(data), 4)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + data


def test_short_writes_carry_on_where_they_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may take fewer bytes than offered (a signal, a pipe): both helpers go on
    from the first byte not taken, at the right offset."""
    real_pwrite, real_write = os.pwrite, os.write
    monkeypatch.setattr(durable.os, "pwrite", lambda fd, data, offset: real_pwrite(fd, data[:1000], offset))
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real_write(fd, data[:999]))
    data = os.urandom(2 * WRITE_STEP + 77)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        pwrite_all(fd, data, 3)
        os.lseek(fd, 3 + len(data), os.SEEK_SET)
        write_all(fd, data[::-1])
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(3) + data + data[::-1]


def test_no_write_is_larger_than_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real_pwrite, real_write = os.pwrite, os.write

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    def write(fd: int, data: memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(durable.os, "pwrite", pwrite)
    monkeypatch.setattr(durable.os, "write", write)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        pwrite_all(fd, bytes(2 * WRITE_STEP + 1), 0)
        write_all(fd, bytes(WRITE_STEP + 1))
    finally:
        os.close(fd)
    assert sizes == [WRITE_STEP, WRITE_STEP, 1, WRITE_STEP, 1]


def test_growing_reader_fills_the_bytearray_read_passes(tmp_path: Path) -> None:
    """``read()`` and ``readall()`` hand ``readinto`` a bytearray, whose slices are copies:
    the bytes must land in the caller's buffer, not in a copy of it."""
    source = tmp_path / "source"
    source.mkdir()
    data = os.urandom(300_000)
    (source / "archive.tar.gz").write_bytes(data)
    store = FileStore.from_uri(f"file://{source}/")
    (obj,) = store.list_objects()
    staged = Staged(store, obj, tmp_path / "staged", threading.Event())
    staged.start()
    try:
        reader = GrowingReader(staged, b"", obj.size, sequential=True)
        head = reader.read(1000)  # RawIOBase.read(n): a bytearray of n
        rest = reader.read()  # readall(): bytearrays
        reader.close()
        assert staged.finish(b"", obj.size) == len(data)
    finally:
        staged.close()
    assert head + rest == data
