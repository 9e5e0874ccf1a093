"""Which objects under a source prefix are versions: pure functions over a listing.

A version is ``<digits>.zip``, ``<digits>.tar.gz``, ``<digits>.tgz`` or a folder
``<digits>/`` holding the marker object ``_READY``. Everything else is skipped with a
reason (the caller logs it once), never an exception.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable

READY_MARKER = "_READY"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

_ARCHIVE = re.compile(r"^(\d+)\.(zip|tar\.gz|tgz)$")
_DIGITS = re.compile(r"^\d+$")


@dataclass(frozen=True)
class SourceObject:
    """One object (or file) under the source prefix, as the store reports it.

    ``name`` is relative to the prefix, with ``/`` separators. ``crc32c`` and ``md5`` are
    base64 digests as GCS reports them (``None`` where the store has none).
    """

    name: str
    size: int
    generation: int
    crc32c: str | None = None
    md5: str | None = None


class Kind(enum.Enum):
    ZIP = "zip"
    TAR_GZ = "tar.gz"
    FOLDER = "folder"


@dataclass(frozen=True)
class Artifact:
    """A version at the source: one archive object, or the objects of a ready folder.

    For a folder, ``name`` is ``<digits>/``, ``objects`` are the files under it (names
    relative to the source prefix, like every ``SourceObject``) and ``marker`` is the
    ``_READY`` object, whose generation identifies the upload.
    """

    version: int
    kind: Kind
    objects: tuple[SourceObject, ...]
    marker: SourceObject | None = None
    name: str = ""

    @property
    def generation(self) -> int:
        if self.marker is not None:
            return self.marker.generation
        return self.objects[0].generation

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def parse_archive_name(name: str) -> tuple[int, Kind] | None:
    """``0002.zip`` -> (2, ZIP); anything that is not a version archive -> None."""
    match = _ARCHIVE.match(name)
    if not match:
        return None
    kind = Kind.ZIP if match.group(2) == "zip" else Kind.TAR_GZ
    return int(match.group(1)), kind


def parse_listing(objects: Iterable[SourceObject]) -> tuple[dict[int, Artifact], list[Skipped]]:
    """Turn a listing into ``{version: artifact}`` plus the names that were skipped.

    When two artifacts claim one version (``2.zip`` and ``0002.tar.gz``), the one with
    the newest generation wins and the other is reported as skipped.
    """
    candidates: dict[int, list[Artifact]] = {}
    skipped: list[Skipped] = []
    folders: dict[str, list[SourceObject]] = {}
    ignored_tops: dict[str, str] = {}

    for obj in objects:
        head, sep, rest = obj.name.partition("/")
        if not sep:
            parsed = parse_archive_name(obj.name)
            if parsed is None:
                skipped.append(Skipped(obj.name, "not <digits>.zip, <digits>.tar.gz or <digits>.tgz"))
                continue
            version, kind = parsed
            candidates.setdefault(version, []).append(
                Artifact(version=version, kind=kind, objects=(obj,), name=obj.name)
            )
            continue
        if not _DIGITS.match(head):
            ignored_tops.setdefault(head + "/", "folder name is not a version number")
            continue
        if not rest or rest.endswith("/"):
            continue  # a zero-byte "directory" placeholder object
        folders.setdefault(head, []).append(obj)

    skipped.extend(Skipped(name, reason) for name, reason in sorted(ignored_tops.items()))

    for head, members in sorted(folders.items()):
        marker_name = f"{head}/{READY_MARKER}"
        marker = next((m for m in members if m.name == marker_name), None)
        if marker is None:
            skipped.append(Skipped(head + "/", f"folder has no {READY_MARKER} marker yet"))
            continue
        files = tuple(sorted((m for m in members if m.name != marker_name), key=lambda m: m.name))
        version = int(head)
        candidates.setdefault(version, []).append(
            Artifact(version=version, kind=Kind.FOLDER, objects=files, marker=marker, name=head + "/")
        )

    artifacts: dict[int, Artifact] = {}
    for version, options in candidates.items():
        options.sort(key=lambda a: (a.generation, a.name), reverse=True)
        artifacts[version] = options[0]
        skipped.extend(
            Skipped(other.name, f"version {version} is also {options[0].name} (newer upload wins)")
            for other in options[1:]
        )
    return artifacts, skipped
