"""Installing one version: download, verify, unpack, fsync, one atomic rename.

Everything is written under ``<model-dir>/.model-poller-staging-*`` (same filesystem,
non-numeric, so TF Serving never looks at it); the finished SavedModel directory then
appears as ``<model-dir>/<version>`` by a single ``rename``. Removal goes the other way:
one ``rename`` to a non-numeric trash name, then the tree is deleted.

A version directory holds exactly the uploaded files; what the poller remembers about it
is recorded beside it (see ``model_dir``) before its rename into place.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_poller.durable import Syncer, fsync_dir, remove_tree
from model_poller.errors import Abandoned, ModelDirError, Rejected
from model_poller.extract import FileSink, Limits, Unpacker, extract, find_model_root
from model_poller.growing_reader import GrowingReader
from model_poller.model_dir import ModelDir
from model_poller.staged import Staged
from model_poller.stores.base import Store
from model_poller.transfer import Fetcher, ObjectWriter
from model_poller.versions import Artifact, Kind
from model_poller.zip_tail import zip_tail

log = logging.getLogger(__name__)

# Zip members inflated at once: zlib releases the GIL, so each uses a core of its own;
# more threads than cores still overlap one member's wait for bytes with another's
# inflating (measured in BENCHMARKS.md).
UNZIP_WORKERS = min(4, max(2, len(os.sched_getaffinity(0))))

# errno values that are the local disk's trouble, never the upload's: an error carrying
# one of these is retried with backoff even when the unpacker reported it as bad data.
LOCAL_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EBUSY,
    }
)
# errno values the file system answers to a name or layout taken from the archive (or a
# folder version's object names) while unpacking: for a path inside the unpacked tree
# (see content_rejection), the upload can never install here.
_CONTENT_ERRNOS = {
    errno.ENAMETOOLONG: "unsafe_path",
    errno.EILSEQ: "unsafe_path",
    errno.EINVAL: "unsafe_path",
    errno.ELOOP: "unsafe_path",
    errno.EEXIST: "duplicate_entry",
    errno.ENOTDIR: "duplicate_entry",
    errno.EISDIR: "duplicate_entry",
    errno.ENOTEMPTY: "duplicate_entry",
    errno.EMLINK: "too_many_files",
}


@dataclass(frozen=True)
class Received:
    bytes: int  # every byte the network delivered (a resumed transfer fetches none twice)
    last_at: float  # time.monotonic() of the last one


@dataclass(frozen=True)
class InstallResult:
    version: int
    generation: int
    downloaded_bytes: int
    unpacked_bytes: int
    files: int
    seconds: float


def install(
    store: Store, artifact: Artifact, model_dir: ModelDir, limits: Limits, stop: threading.Event
) -> InstallResult:
    """Install ``artifact`` as ``<model-dir>/<version>``, or raise and leave no trace.

    Raises ``Rejected`` (never valid at this generation: bad data, or names or a layout
    the file system refuses), ``SourceError`` (try again later), ``Abandoned`` (stop
    requested), ``ModelDirError`` or ``OSError`` (the model dir's trouble: try again later).
    """
    return _in_staging(store, artifact, model_dir, limits, stop, put_in_place=True)


def validate(
    store: Store, artifact: Artifact, model_dir: ModelDir, limits: Limits, stop: threading.Event
) -> InstallResult:
    """Download, verify and unpack ``artifact`` in staging exactly as ``install`` does,
    then discard it: proves the upload valid (or raises as ``install`` does) without
    putting anything where TF Serving looks. Used for the newest upload while pinned."""
    return _in_staging(store, artifact, model_dir, limits, stop, put_in_place=False)


def _in_staging(
    store: Store, artifact: Artifact, model_dir: ModelDir, limits: Limits, stop: threading.Event, *, put_in_place: bool
) -> InstallResult:
    """Unpack ``artifact`` in a staging dir of its own, then rename it into place (or not);
    the staging dir is removed whatever happens."""
    started = time.monotonic()
    staging = model_dir.staging()
    try:
        root, unpacker, received = _unpack(store, artifact, staging / "unpacked", limits, stop)
        if put_in_place:
            log.debug("version %d: on disk at %.2fs", artifact.version, time.monotonic() - started)
            _rename_into_place(model_dir, artifact, root)
            done = time.monotonic()
            log.debug(
                "version %d: last byte received at %.3fs, in place at %.3fs (%.3fs after the last byte)",
                artifact.version,
                received.last_at - started,
                done - started,
                done - received.last_at,
            )
        return InstallResult(
            version=artifact.version,
            generation=artifact.generation,
            downloaded_bytes=received.bytes,
            unpacked_bytes=unpacker.bytes_written,
            files=unpacker.files,
            seconds=time.monotonic() - started,
        )
    finally:
        remove_tree(staging)


def _rename_into_place(model_dir: ModelDir, artifact: Artifact, root: Path) -> None:
    """Record the upload, then make ``root`` appear as ``<model-dir>/<version>`` by one rename."""
    final = model_dir.path / str(artifact.version)
    if os.path.lexists(final):  # (a version dir would have been seen: a file, or a race)
        raise ModelDirError(f"{final} is in the way: remove it (or is another poller using this dir?)")
    model_dir.write_record(artifact, final.name)
    try:
        os.rename(root, final)
    except OSError as exc:
        model_dir.forget(artifact.version)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ModelDirError(f"{final} appeared while installing (another poller on this dir?)") from None
        raise
    fsync_dir(model_dir.path)


def _unpack(
    store: Store, artifact: Artifact, unpacked: Path, limits: Limits, stop: threading.Event
) -> tuple[Path, Unpacker, Received]:
    """Download and unpack into ``unpacked``, everything fsynced; returns the SavedModel
    root, the unpacker (for its counts) and what was received.

    Errors are sorted by cause: the upload's (``Rejected``, remembered, never downloaded
    again) or the local disk's (``OSError``, retried with backoff).
    """
    try:
        with Syncer() as syncer:
            unpacked.mkdir()
            if artifact.kind is Kind.FOLDER:
                unpacker = Unpacker(unpacked, limits, syncer, stop)
                received = _download_folder(store, artifact, unpacker, stop)
            else:
                archive = unpacked.parent / ("archive.zip" if artifact.kind is Kind.ZIP else "archive.tar.gz")
                unpacker = Unpacker(unpacked, limits, syncer, stop, archive_size=artifact.size)
                received = _download_and_extract(store, artifact, archive, unpacker, stop)
                archive.unlink()
            root = find_model_root(unpacked)
            unpacker.sync_dirs()
            fsync_dir(root)
        return root, unpacker, received
    except Rejected as exc:
        local = local_cause(exc)
        if local is None:
            raise
        # A full disk is not a corrupt archive: retry, do not remember. (A fresh error:
        # re-raising ``local`` itself would make its cause chain a loop.)
        raise OSError(local.errno, local.strerror, local.filename) from None
    except OSError as exc:
        rejection = content_rejection(exc, unpacked)
        if rejection is None:
            raise
        raise rejection from exc


def local_cause(exc: BaseException) -> OSError | None:
    """The local I/O failure (full disk, I/O error, permissions) behind ``exc``, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in LOCAL_ERRNOS:
            return current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def content_rejection(exc: OSError, unpacked: Path) -> Rejected | None:
    """``Rejected`` when the file system refused a path inside ``unpacked`` because of
    its name or layout (too long, invalid, colliding); None for anything else."""
    reason = _CONTENT_ERRNOS.get(exc.errno or 0)
    if reason is None or not _is_inside(exc.filename, unpacked):
        return None
    relative = os.path.relpath(os.fsdecode(exc.filename), unpacked)
    shown = relative if len(relative) <= 120 else relative[:117] + "..."
    return Rejected(reason, f"the file system refuses {shown!r}: {exc.strerror or exc}")


def _is_inside(filename: object, folder: Path) -> bool:
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return False
    path = os.fsdecode(filename)
    return path.startswith(str(folder) + os.sep)


def _download_and_extract(
    store: Store, artifact: Artifact, archive: Path, unpacker: Unpacker, stop: threading.Event
) -> Received:
    """Download ``artifact`` into ``archive`` and unpack it while the bytes arrive; the
    checksum of the whole object is verified before this returns."""
    obj = artifact.objects[0]
    tail, tail_start = zip_tail(store, obj) if artifact.kind is Kind.ZIP else (b"", obj.size)
    staged = Staged(store, obj, archive, stop, keep_from=tail_start)
    try:
        if tail:
            staged.demand(tail_start, obj.size)  # what finish() compares with the tail
        staged.start()
        sequential = artifact.kind is not Kind.ZIP
        with io.BufferedReader(GrowingReader(staged, tail, tail_start, sequential), buffer_size=1 << 20) as reader:
            extract(reader, artifact.kind, unpacker, parts=staged, workers=UNZIP_WORKERS)
        return Received(staged.finish(tail, tail_start), staged.last_byte_at)
    except BaseException:
        staged.cancel()
        if staged.error is not None and not isinstance(staged.error, Abandoned):
            raise staged.error from None  # the transfer failed: that, not its symptoms
        raise
    finally:
        staged.close()


class _FolderFile:
    """One object of a folder version, written where it belongs in the unpacked tree."""

    def __init__(self, unpacker: Unpacker, relative: str) -> None:
        self._unpacker = unpacker
        self._relative = relative
        self._sink: FileSink | None = None

    def open(self) -> Callable[[int, bytes], None]:
        self._sink = self._unpacker.open_file(self._relative)
        return self._sink.write_at

    def close(self) -> None:
        assert self._sink is not None
        self._sink.close()

    def discard(self) -> None:
        if self._sink is not None:
            self._sink.discard()


def _download_folder(store: Store, artifact: Artifact, unpacker: Unpacker, stop: threading.Event) -> Received:
    """Fetch a folder version's objects into the unpacked tree, several at once (see
    ``transfer.Fetcher``), each checked against its checksum."""
    jobs = []
    for obj in artifact.objects:
        file = _FolderFile(unpacker, obj.name[len(artifact.name) :])
        jobs.append((obj, ObjectWriter(file.open, file.close, file.discard)))
    fetcher = Fetcher(store, jobs, stop, where=lambda obj: f"{store.uri}{obj.name}")
    return Received(fetcher.run(), fetcher.last_byte_at)


__all__ = ["Abandoned", "InstallResult", "install", "validate"]
