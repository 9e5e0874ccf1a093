"""Durability helpers: write files in page-cache-friendly steps, fsync them in the
background, fsync directories, remove trees."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Every write hands the kernel at most this much. Linux 6.x file systems with large folios
# (ext4, XFS) size a page-cache folio by the write: one 1 MiB write takes a 1 MiB folio
# from the buddy allocator's high-order blocks, which a VM with free page reporting
# (virtio-balloon, as in Firecracker) has handed back to its host, so the copy faults on
# the host page by page. On such a VM, 1 GiB written by dd cost 3.2-3.4 s of system CPU
# in 1 MiB writes and 0.4-0.6 s in 64 KiB ones (BENCHMARKS.md); elsewhere the extra
# calls cost about 0.03 s per GiB.
WRITE_STEP = 64 << 10


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, ``WRITE_STEP`` bytes at a time."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view[:WRITE_STEP], offset)
        view = view[done:]
        offset += done


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at the descriptor's position, ``WRITE_STEP`` bytes at a time."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_STEP]) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` (file, link or directory tree); a missing path is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class Syncer:
    """fsyncs and closes written files on worker threads while the next file is written.

    At most ``max_pending`` file descriptors are open at once. ``wait()`` blocks until all
    handed-over files are on disk and raises the first fsync error.
    """

    def __init__(self, workers: int = 2, max_pending: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsync")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: list[Future[None]] = []

    def hand_over(self, fd: int) -> None:
        """Take ownership of ``fd``: it is fsynced and closed."""
        self._slots.acquire()
        try:
            self._futures.append(self._pool.submit(self._sync_close, fd))
        except BaseException:
            self._slots.release()
            os.close(fd)
            raise

    def write_back(self, fd: int) -> None:
        """Start writing ``fd``'s data to disk now, while more is written (the caller
        keeps ``fd``); the final fsync at ``hand_over`` then has little left to do."""
        self.hand_over(os.dup(fd))

    def _sync_close(self, fd: int) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            self._slots.release()

    def wait(self) -> None:
        futures, self._futures = self._futures, []
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def close(self) -> None:
        """Wait for pending work (errors ignored) and stop the workers."""
        for future in self._futures:
            future.exception()
        self._futures = []
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
