"""The bounds every archive is unpacked within, and the one check of an entry's path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from model_poller.errors import Rejected

GiB = 1 << 30
DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_BYTES = 50 * GiB
DEFAULT_MAX_RATIO = 200.0
# Small entries of zeros compress far beyond any sane ratio; the ratio only counts above this.
RATIO_FLOOR = 1 << 20
# Entry paths: Linux's NAME_MAX and PATH_MAX, and a depth no SavedModel comes near. The
# depth bound also keeps every walk over the tree (ours, rmtree's) far from recursion limits.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 64

_DRIVE = re.compile(r"^[A-Za-z]:$")


@dataclass(frozen=True)
class Limits:
    max_files: int = DEFAULT_MAX_FILES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    # Where max_bytes comes from, for the rejection message.
    max_bytes_origin: str = "--max-bytes"


def short_name(name: str) -> str:
    """``name`` for a message: hostile names can be kilobytes long."""
    return repr(name) if len(name) <= 100 else repr(name[:100]) + "..."


def safe_parts(name: str) -> tuple[str, ...]:
    """Split an entry name into path components, rejecting anything that could escape
    or that the filesystem could not hold.

    ``./a//b`` -> ("a", "b"); ``/etc/x``, ``C:/x``, ``a/../b``, ``a\\b``, NUL, more than
    ``MAX_DEPTH`` components, a component over ``MAX_NAME_BYTES`` or a path over
    ``MAX_PATH_BYTES`` (encoded as the filesystem sees it) -> Rejected.
    """
    if "\x00" in name:
        raise Rejected("unsafe_path", f"entry name {short_name(name)} contains NUL")
    if "\\" in name:
        raise Rejected("unsafe_path", f"entry name {short_name(name)} contains a backslash")
    if name.startswith("/"):
        raise Rejected("unsafe_path", f"entry {short_name(name)} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if parts and _DRIVE.match(parts[0]):
        raise Rejected("unsafe_path", f"entry {short_name(name)} has an absolute path")
    if ".." in parts:
        raise Rejected("unsafe_path", f"entry {short_name(name)} goes up with '..'")
    if not parts:
        raise Rejected("unsafe_path", f"entry name {name!r} is empty")
    if len(parts) > MAX_DEPTH:
        raise Rejected("unsafe_path", f"entry {short_name(name)} is {len(parts)} levels deep (at most {MAX_DEPTH})")
    total = len(parts) - 1  # the slashes
    for part in parts:
        try:
            size = len(os.fsencode(part))
        except UnicodeEncodeError:
            raise Rejected("unsafe_path", f"entry name {short_name(name)} cannot be encoded as a file name") from None
        if size > MAX_NAME_BYTES:
            raise Rejected(
                "unsafe_path", f"entry {short_name(name)} has a {size}-byte path component (at most {MAX_NAME_BYTES})"
            )
        total += size
    if total > MAX_PATH_BYTES:
        raise Rejected("unsafe_path", f"entry {short_name(name)} has a {total}-byte path (at most {MAX_PATH_BYTES})")
    return parts
