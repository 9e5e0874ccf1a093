"""Installing one version: download, verify, unpack, fsync, one atomic rename.

Everything is written under ``<model-dir>/.model-poller-staging-*`` (same filesystem,
non-numeric, so TF Serving never looks at it); the finished SavedModel directory then
appears as ``<model-dir>/<version>`` by a single ``rename``. Removal goes the other way:
one ``rename`` to a non-numeric trash name, then the tree is deleted.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from model_poller.durable import Syncer, fsync_dir, remove_tree
from model_poller.errors import Abandoned, ModelDirError, Rejected, SourceError
from model_poller.extract import Limits, Unpacker, extract, find_model_root
from model_poller.install_verify import Verifier
from model_poller.sources.base import Source
from model_poller.streaming import Download, GrowingReader, zip_tail
from model_poller.versions import Artifact, Kind, SourceObject

log = logging.getLogger(__name__)

WORK_PREFIX = ".model-poller-"
STAGING_PREFIX = WORK_PREFIX + "staging-"
TRASH_PREFIX = WORK_PREFIX + "trash-"
MARKER_FILE = ".model-poller.json"
_NUMERIC = re.compile(r"^\d+$")


@dataclass(frozen=True)
class InstallResult:
    version: int
    generation: int
    downloaded_bytes: int
    unpacked_bytes: int
    files: int
    seconds: float


class ModelDir:
    """``<model-dir>``: numeric children are versions, ``.model-poller-*`` are ours."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> list[str]:
        """Create the dir if needed, prove it writable, remove crash leftovers."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path)
            os.rmdir(probe)
        except OSError as exc:
            raise ModelDirError(f"model dir {self.path} is not writable: {exc.strerror or exc}") from None
        removed = []
        for child in sorted(self.path.iterdir()):
            if child.name.startswith(WORK_PREFIX):
                remove_tree(child)
                removed.append(child.name)
        if removed:
            fsync_dir(self.path)
        return removed

    def installed(self) -> dict[int, int | None]:
        """``{version: generation}`` of the versions on disk (generation None if unknown)."""
        result: dict[int, int | None] = {}
        try:
            children = list(self.path.iterdir())
        except FileNotFoundError:
            return result
        for child in children:
            if not _NUMERIC.match(child.name) or not child.is_dir():
                continue
            version = int(child.name)
            generation: int | None = None
            try:
                generation = int(json.loads((child / MARKER_FILE).read_text())["generation"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if version in result and result[version] is not None:
                continue  # "2" and "0002": keep the one we know
            result[version] = generation
        return result

    def version_paths(self, version: int) -> list[Path]:
        return [c for c in self.path.iterdir() if _NUMERIC.match(c.name) and int(c.name) == version]

    def remove(self, version: int) -> None:
        """Make ``version`` disappear atomically (rename to trash), then delete it."""
        for path in self.version_paths(version):
            trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{version}-", dir=self.path))
            target = trash / "v"
            os.rename(path, target)
            fsync_dir(self.path)
            remove_tree(trash)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path))


def install(
    source: Source,
    artifact: Artifact,
    model_dir: ModelDir,
    limits: Limits,
    stop: threading.Event,
) -> InstallResult:
    """Install ``artifact`` as ``<model-dir>/<version>``, or raise and leave no trace.

    Raises ``Rejected`` (never valid at this generation), ``SourceError`` (try again
    later), ``Abandoned`` (stop requested) or ``OSError`` (the model dir's trouble).
    """
    started = time.monotonic()
    staging = model_dir.staging()
    try:
        with Syncer() as syncer:
            unpacked = staging / "unpacked"
            unpacked.mkdir()
            if artifact.kind is Kind.FOLDER:
                unpacker = Unpacker(unpacked, limits, syncer, stop)
                downloaded = _download_folder(source, artifact, unpacker, stop)
            else:
                archive = staging / ("archive.zip" if artifact.kind is Kind.ZIP else "archive.tar.gz")
                unpacker = Unpacker(unpacked, limits, syncer, stop, archive_size=artifact.size)
                downloaded = _download_and_extract(source, artifact, archive, unpacker, stop)
                archive.unlink()
            log.debug("version %d: unpacked at %.2fs", artifact.version, time.monotonic() - started)
            root = find_model_root(unpacked)
            _write_marker(root, artifact, syncer)
            unpacker.sync_dirs()
            fsync_dir(root)
            log.debug("version %d: on disk at %.2fs", artifact.version, time.monotonic() - started)
        final = model_dir.path / str(artifact.version)
        try:
            os.rename(root, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise ModelDirError(f"{final} appeared while installing (another poller on this dir?)") from None
            raise
        fsync_dir(model_dir.path)
        return InstallResult(
            version=artifact.version,
            generation=artifact.generation,
            downloaded_bytes=downloaded,
            unpacked_bytes=unpacker.bytes_written,
            files=unpacker.files,
            seconds=time.monotonic() - started,
        )
    finally:
        remove_tree(staging)


def _download_and_extract(
    source: Source, artifact: Artifact, archive: Path, unpacker: Unpacker, stop: threading.Event
) -> int:
    """Download ``artifact`` into ``archive`` and unpack it while the bytes arrive; the
    checksum of the whole object is verified before this returns."""
    obj = artifact.objects[0]
    tail, tail_start = zip_tail(source, obj) if artifact.kind is Kind.ZIP else (b"", obj.size)
    download = Download(source, obj, archive, stop)
    download.start()
    try:
        with io.BufferedReader(GrowingReader(download, tail, tail_start), buffer_size=1 << 20) as reader:
            extract(reader, artifact.kind, unpacker)
        return download.finish(tail, tail_start)
    except BaseException:
        download.cancel()
        if download.error is not None and not isinstance(download.error, Abandoned):
            raise download.error from None  # the transfer failed: that, not its symptoms
        raise


def _download_folder(source: Source, artifact: Artifact, unpacker: Unpacker, stop: threading.Event) -> int:
    total = 0
    for obj in artifact.objects:
        relative = obj.name[len(artifact.name) :]
        sink = unpacker.open_file(relative)
        verifier = Verifier(obj)

        def write(chunk: bytes) -> None:
            verifier.update(chunk)
            sink.write(chunk)

        try:
            source.download(obj, write, stop)
        except BaseException:
            sink.discard()
            raise
        sink.close()
        verifier.check(f"{source.uri}{obj.name}")
        total += verifier.size
    return total


def _write_marker(root: Path, artifact: Artifact, syncer: Syncer) -> None:
    body = json.dumps(
        {
            "version": artifact.version,
            "generation": artifact.generation,
            "object": artifact.name,
            "installedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    ).encode()
    fd = os.open(root / MARKER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, body)
    except BaseException:
        os.close(fd)
        raise
    syncer.hand_over(fd)


__all__ = ["Abandoned", "InstallResult", "ModelDir", "install", "MARKER_FILE", "STAGING_PREFIX"]
