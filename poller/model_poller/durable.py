"""Durability helpers: fsync files in the background, fsync directories, remove trees."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path


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
