"""pwrite_all / write_all: every byte lands where it belongs, in steps of at most WRITE_STEP."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from model_poller import durable
from model_poller.durable import WRITE_STEP, pwrite_all, write_all


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


def test_write_all_survives_short_writes() -> None:
    """A pipe takes at most its capacity per write: write_all carries on where it stopped."""
    data = os.urandom(5 * WRITE_STEP + 17)
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 4096):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_all(write_fd, data)
    finally:
        os.close(write_fd)
        reader.join(10)
        os.close(read_fd)
    assert bytes(received) == data


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
