"""Hardened unpacking of zip and tar.gz archives into a staging directory.

One module per concern: ``limits`` (the bounds, the path check), ``unpacker`` (writing
entries), ``zip_records`` and ``unzip`` (zip), ``untar`` (tar.gz); ``extract()`` picks one.

Rejects (``Rejected(reason, ...)``):

- ``unsafe_path``: an absolute path, ``..``, a backslash or NUL, more than
  ``MAX_DEPTH`` components, a component over ``MAX_NAME_BYTES`` or a path over
  ``MAX_PATH_BYTES`` (encoded), or a path the model dir's filesystem finds too long;
- ``link``: symbolic and hard links; ``special_file``: device, fifo and socket entries;
- ``too_many_files``: more than ``max_files`` entries (for a zip, as its end record
  declares them, before the central directory is read);
- ``too_many_bytes`` / ``compression_ratio``: more than ``max_bytes`` bytes, or more than
  ``max_ratio`` times the archive's size, counted twice: as file content written, and
  (tar.gz) as every byte the gzip stream inflates to, tar headers, padding, data of
  skipped members and data after the end-of-archive blocks included; a zip member's
  inflated bytes are its content;
- ``oversized_header``: archive metadata bigger than anything a real archive needs,
  refused before it is read: a tar GNU long-name / long-link or pax (``x``, ``g``, ``X``)
  header declaring more than ``MAX_TAR_HEADER`` bytes, global pax headers adding up to
  more, more than ``MAX_TAR_HEADER_RUN`` such headers in front of one entry; a zip central
  directory larger than its declared entries can be (``ZIP_RECORD_MAX`` bytes each), or
  an entry whose extra field or comment is over ``ZIP_MAX_EXTRA`` / ``ZIP_MAX_COMMENT``;
- ``unsupported_compression``: a zip entry compressed with anything but stored (0) or
  deflated (8), refused before a byte of it is decompressed;
- ``unsupported``: encrypted zip entries, GNU sparse tar members, multi-disk zips;
- ``corrupt``: corrupt or truncated data, CRC errors, inconsistent zip records;
- ``duplicate_entry``: entries that collide; ``no_saved_model``: no SavedModel found.

Nothing is ever written outside ``dest``: every path is validated, directories are made
one component at a time with ``mkdir``, files are created with ``O_EXCL | O_NOFOLLOW``,
and no link is ever created, so no path inside ``dest`` can lead outside it.
"""

from __future__ import annotations

from typing import BinaryIO

from model_poller.extract.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    MAX_DEPTH,
    Limits,
    safe_parts,
)
from model_poller.extract.unpacker import FileSink, Unpacker, find_model_root
from model_poller.extract.untar import extract_tar
from model_poller.extract.unzip import INFLATE_OUT, ArchiveParts, ArchiveRange, Cancelled, extract_zip
from model_poller.versions import Kind

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_RATIO",
    "INFLATE_OUT",
    "MAX_DEPTH",
    "ArchiveParts",
    "ArchiveRange",
    "Cancelled",
    "FileSink",
    "Limits",
    "Unpacker",
    "extract",
    "find_model_root",
    "safe_parts",
]


def extract(
    archive: BinaryIO, kind: Kind, unpacker: Unpacker, parts: ArchiveParts | None = None, workers: int = 1
) -> None:
    """Unpack ``archive`` (a seekable zip or a tar.gz stream) through ``unpacker``.

    A zip's members are inflated by up to ``workers`` threads, each reading its member
    from ``parts`` (by default, ``archive`` itself, one read at a time)."""
    if kind is Kind.ZIP:
        extract_zip(archive, unpacker, parts, workers)
    elif kind is Kind.TAR_GZ:
        extract_tar(archive, unpacker)
    else:
        raise ValueError(f"not an archive kind: {kind}")
