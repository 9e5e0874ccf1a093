"""Installing one version: download, verify, unpack, fsync, one atomic rename.

Everything is written under ``<model-dir>/.model-poller-staging-*`` (same filesystem,
non-numeric, so TF Serving never looks at it); the finished SavedModel directory then
appears as ``<model-dir>/<version>`` by a single ``rename``. Removal goes the other way:
one ``rename`` to a non-numeric trash name, then the tree is deleted.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from model_poller.durable import Syncer, fsync_dir, remove_tree
from model_poller.errors import Abandoned, ModelDirError, Rejected, SourceError
from model_poller.extract import Limits, Unpacker, extract, find_model_root
from model_poller.sources.base import Source
from model_poller.versions import Artifact, Kind, SourceObject

log = logging.getLogger(__name__)

WORK_PREFIX = ".model-poller-"
STAGING_PREFIX = WORK_PREFIX + "staging-"
TRASH_PREFIX = WORK_PREFIX + "trash-"
MARKER_FILE = ".model-poller.json"
_NUMERIC = re.compile(r"^\d+$")


class Verifier:
    """Checks a stream against the size and checksum the store reported.

    CRC32C (google-crc32c's C extension) where the store reports it, MD5 otherwise;
    nothing to check for a store that reports neither (a local directory).
    """

    def __init__(self, obj: SourceObject) -> None:
        self._obj = obj
        self._crc = google_crc32c.Checksum() if obj.crc32c else None
        self._md5 = hashlib.md5(usedforsecurity=False) if obj.md5 and not obj.crc32c else None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._crc is not None:
            self._crc.update(chunk)
        elif self._md5 is not None:
            self._md5.update(chunk)

    def check(self, where: str) -> None:
        obj = self._obj
        if self.size != obj.size:
            raise SourceError(f"{where}: got {self.size} bytes, the store reports {obj.size} (truncated transfer)")
        if self._crc is not None:
            got = base64.b64encode(self._crc.digest()).decode()
            if got != obj.crc32c:
                raise Rejected("checksum_mismatch", f"{where}: CRC32C {got} but the store reports {obj.crc32c}")
        elif self._md5 is not None:
            got = base64.b64encode(self._md5.digest()).decode()
            if got != obj.md5:
                raise Rejected("checksum_mismatch", f"{where}: MD5 {got} but the store reports {obj.md5}")


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
                downloaded = _download_file(source, artifact.objects[0], archive, stop)
                unpacker = Unpacker(unpacked, limits, syncer, stop, archive_size=downloaded)
                extract(archive, artifact.kind, unpacked, unpacker)
                archive.unlink()
            root = find_model_root(unpacked)
            _write_marker(root, artifact, syncer)
            unpacker.sync_dirs()
            fsync_dir(root)
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


def _download_file(source: Source, obj: SourceObject, dest: Path, stop: threading.Event) -> int:
    verifier = Verifier(obj)
    with open(dest, "xb", buffering=0) as fh:

        def sink(chunk: bytes) -> None:
            verifier.update(chunk)
            view = memoryview(chunk)
            while view:
                written = fh.write(view)
                assert written is not None
                view = view[written:]

        source.download(obj, sink, stop)
    verifier.check(f"{source.uri}{obj.name}")
    return verifier.size


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
