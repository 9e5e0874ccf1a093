"""The model dir: TF Serving's base path, and the poller's work and bookkeeping beside it.

Numeric children are versions (``<model-dir>/<version>/``); ``.model-poller-*`` children
are work in progress (staging, trash), removed at start; ``.model-poller/`` holds what the
poller remembers about each version (``versions/<version>.json``: the upload's
generation), written durably before the version's rename into place and removed after
the version is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from model_poller_api.formats import rfc3339

from model_poller.durable import fsync_dir, remove_tree, write_all
from model_poller.errors import ModelDirError
from model_poller.versions import Artifact, parse_version

# Work in progress and crash leftovers: everything named so is removed at start.
WORK_PREFIX = ".model-poller-"
STAGING_PREFIX = WORK_PREFIX + "staging-"
TRASH_PREFIX = WORK_PREFIX + "trash-"
# The bookkeeping folder: no dash, so the start-up cleanup of WORK_PREFIX leaves it alone.
BOOKKEEPING_DIR = ".model-poller"
RECORDS_DIR = "versions"
_RECORD_SUFFIX = ".json"
_RECORD_TEMP_PREFIX = ".tmp-"


class ModelDir:
    """``<model-dir>``: numeric children are versions, ``.model-poller-*`` are work in
    progress, ``.model-poller/`` is the bookkeeping."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = path / BOOKKEEPING_DIR / RECORDS_DIR

    def prepare(self) -> list[str]:
        """Create the dir if needed, prove it writable, remove crash leftovers."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path)
            os.rmdir(probe)
        except OSError as exc:
            raise ModelDirError(f"model dir {self.path} is not writable: {exc.strerror or exc}") from None
        removed = []
        try:
            for child in sorted(self.path.iterdir()):
                if child.name.startswith(WORK_PREFIX):
                    remove_tree(child)
                    removed.append(child.name)
            if removed:
                fsync_dir(self.path)
            removed.extend(self._remove_stale_records())
        except OSError as exc:
            raise ModelDirError(f"cannot remove leftovers in model dir {self.path}: {exc}") from None
        return removed

    def _remove_stale_records(self) -> list[str]:
        """Records without their version (a crash between the record and the rename, or
        between a removal and its record's): they must not vouch for a later hand-made dir."""
        try:
            records = sorted(self.records.iterdir())
        except FileNotFoundError:
            return []  # nothing installed yet: the folder appears with the first record
        present = {child.name for child in self._version_children()}
        stale = []
        for record in records:
            if record.name.startswith(_RECORD_TEMP_PREFIX) or self._read_record(record)[0] not in present:
                remove_tree(record)
                stale.append(f"{BOOKKEEPING_DIR}/{RECORDS_DIR}/{record.name}")
        if stale:
            fsync_dir(self.records)
        return stale

    def _version_children(self) -> list[Path]:
        try:
            children = list(self.path.iterdir())
        except FileNotFoundError:
            return []
        return [c for c in children if parse_version(c.name) is not None and c.is_dir() and not c.is_symlink()]

    def _record_path(self, version: int) -> Path:
        return self.records / f"{version}{_RECORD_SUFFIX}"

    @staticmethod
    def _read_record(path: Path) -> tuple[str | None, int | None]:
        """(directory name, generation) from one record; (None, None) if unreadable."""
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            return None, None
        if not isinstance(body, dict):
            return None, None
        directory, generation = body.get("directory"), body.get("generation")
        return (
            directory if isinstance(directory, str) else None,
            generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
        )

    def installed(self) -> dict[int, int | None]:
        """``{version: generation}`` of the versions on disk (generation None if unknown:
        no record, e.g. a directory put there by hand or by an earlier release)."""
        result: dict[int, int | None] = {}
        for child in self._version_children():
            version = parse_version(child.name)
            assert version is not None  # _version_children keeps only those
            directory, generation = self._read_record(self._record_path(version))
            if directory != child.name:
                generation = None  # the record is about the other spelling ("2" vs "0002")
            if result.get(version) is not None:
                continue  # "2" and "0002": keep the one we know
            result[version] = generation
        return result

    def version_paths(self, version: int) -> list[Path]:
        return [c for c in self._version_children() if parse_version(c.name) == version]

    def write_record(self, artifact: Artifact, directory: str) -> None:
        """Durably record which upload ``<model-dir>/<directory>`` holds: temp file,
        fsync, rename, fsync of the folder; so after a crash a record is whole or absent."""
        body = json.dumps(
            {
                "version": artifact.version,
                "directory": directory,
                "generation": artifact.generation,
                "object": artifact.name,
                "installedAt": rfc3339(),
            }
        ).encode()
        self.records.mkdir(parents=True, exist_ok=True)  # created with the first record
        fd, temp = tempfile.mkstemp(prefix=f"{_RECORD_TEMP_PREFIX}{artifact.version}-", dir=self.records)
        try:
            try:
                write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, self._record_path(artifact.version))
        except BaseException:
            remove_tree(Path(temp))
            raise
        fsync_dir(self.records)

    def forget(self, version: int) -> None:
        """Remove ``version``'s record (its directory is already gone)."""
        try:
            os.unlink(self._record_path(version))
        except FileNotFoundError:
            return
        fsync_dir(self.records)

    def remove(self, version: int) -> None:
        """Make ``version`` disappear atomically (rename to trash), forget it, delete it."""
        for path in self.version_paths(version):
            trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{version}-", dir=self.path))
            target = trash / "v"
            os.rename(path, target)
            fsync_dir(self.path)
            self.forget(version)
            remove_tree(trash)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path))
