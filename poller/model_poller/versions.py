"""Which objects under a source prefix are versions: pure functions over a listing.

A version is ``<digits>.zip``, ``<digits>.tar.gz``, ``<digits>.tgz`` or a folder
``<digits>/`` holding the marker object ``_READY``. Everything else is skipped with a
reason (the caller logs it once), never an exception.

``<digits>`` means ASCII digits only, with a value TF Serving can read: it parses version
directory names as int64. ``parse_version`` is the one place that decides; every name
(listing, notification, model dir child) goes through it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

READY_MARKER = "_READY"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

INT64_MAX = (1 << 63) - 1
# [0-9], not \d: without re.ASCII, \d also matches other scripts' digits ("١٢").
_ASCII_DIGITS = re.compile(r"[0-9]+")
_INT64_DIGITS = len(str(INT64_MAX))
# Matched with fullmatch: "$" would also accept a trailing newline.
_ARCHIVE = re.compile(r"([^./]+)\.(zip|tar\.gz|tgz)", re.ASCII)


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


def parse_version(text: str) -> int | None:
    """``"0002"`` -> 2; None unless ``text`` is ASCII digits whose value fits in an int64.

    Never ``str.isdigit()`` (true for ``"²"``, which ``int()`` then refuses) nor a bare
    ``\\d`` (matches ``"١٢"``, which ``int()`` accepts): TF Serving reads version
    directories as int64 ASCII numbers, and so do we.
    """
    if not _ASCII_DIGITS.fullmatch(text):
        return None
    if len(text.lstrip("0")) > _INT64_DIGITS:
        return None  # (and int() refuses strings past 4300 digits)
    value = int(text)
    return value if value <= INT64_MAX else None


def parse_archive_name(name: str) -> tuple[int, Kind] | None:
    """``0002.zip`` -> (2, ZIP); anything that is not a version archive -> None."""
    match = _ARCHIVE.fullmatch(name)
    if not match:
        return None
    version = parse_version(match.group(1))
    if version is None:
        return None
    kind = Kind.ZIP if match.group(2) == "zip" else Kind.TAR_GZ
    return version, kind


@dataclass(frozen=True)
class ObjectName:
    """What an object's name (relative to the source prefix) says about its version.

    ``top`` is the archive's name (``0002.zip``) or the folder's with its slash
    (``0002/``); ``rest`` is the path inside a folder version ("" for an archive, and for
    a folder's placeholder object).
    """

    version: int
    kind: Kind
    top: str
    rest: str = ""

    @property
    def is_marker(self) -> bool:
        """The ``_READY`` object that makes a folder version complete."""
        return self.kind is Kind.FOLDER and self.rest == READY_MARKER


def parse_object_name(name: str) -> ObjectName | None:
    """The one reading of an object name, for the listing and for notifications alike:
    ``0002.tgz`` -> version 2, an archive; ``0002/variables/x`` -> version 2, a folder's
    file; None for any name that belongs to no version (``skip_reason`` says why)."""
    head, sep, rest = name.partition("/")
    if sep:
        version = parse_version(head)
        return ObjectName(version, Kind.FOLDER, head + sep, rest) if version is not None else None
    parsed = parse_archive_name(name)
    return ObjectName(parsed[0], parsed[1], name) if parsed is not None else None


def skip_reason(name: str) -> str:
    """Why ``name`` (for which ``parse_object_name`` is None) is not a version, for the log."""
    head, sep, _ = name.partition("/")
    if sep:
        if _ASCII_DIGITS.fullmatch(head):
            return f"folder version number {head} is beyond int64 (TF Serving could not load it)"
        return "folder name is not a version number (ASCII digits 0-9)"
    match = _ARCHIVE.fullmatch(name)
    if match and _ASCII_DIGITS.fullmatch(match.group(1)):
        return f"version number {match.group(1)} is beyond int64 (TF Serving could not load it)"
    if match:
        return f"{match.group(1)!r} is not ASCII digits 0-9"
    return "not <digits>.zip, <digits>.tar.gz or <digits>.tgz"


def parse_listing(objects: Iterable[SourceObject]) -> tuple[dict[int, Artifact], list[Skipped]]:
    """Turn a listing into ``{version: artifact}`` plus the names that were skipped.

    When two artifacts claim one version (``2.zip`` and ``0002.tar.gz``), the one with
    the newest generation wins and the other is reported as skipped.
    """
    candidates: dict[int, list[Artifact]] = {}
    skipped: list[Skipped] = []
    folders: dict[tuple[str, int], list[SourceObject]] = {}  # (top, version) -> its files
    ignored_tops: dict[str, str] = {}

    for obj in objects:
        parsed = parse_object_name(obj.name)
        if parsed is None:
            if "/" in obj.name:  # one line per folder, not one per file in it
                ignored_tops.setdefault(obj.name.partition("/")[0] + "/", skip_reason(obj.name))
            else:
                skipped.append(Skipped(obj.name, skip_reason(obj.name)))
        elif parsed.kind is not Kind.FOLDER:
            candidates.setdefault(parsed.version, []).append(
                Artifact(version=parsed.version, kind=parsed.kind, objects=(obj,), name=obj.name)
            )
        elif parsed.rest and not parsed.rest.endswith("/"):  # not a zero-byte "directory" placeholder
            folders.setdefault((parsed.top, parsed.version), []).append(obj)

    skipped.extend(Skipped(name, reason) for name, reason in sorted(ignored_tops.items()))

    for (top, version), members in sorted(folders.items()):
        marker_name = top + READY_MARKER
        marker = next((m for m in members if m.name == marker_name), None)
        if marker is None:
            skipped.append(Skipped(top, f"folder has no {READY_MARKER} marker yet"))
            continue
        files = tuple(sorted((m for m in members if m.name != marker_name), key=lambda m: m.name))
        candidates.setdefault(version, []).append(
            Artifact(version=version, kind=Kind.FOLDER, objects=files, marker=marker, name=top)
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
