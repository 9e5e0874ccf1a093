"""Writing validated entries into the staging directory, within the limits."""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model_poller.durable import Syncer, fsync_dir, pwrite_all, write_all
from model_poller.errors import Abandoned, Rejected
from model_poller.extract.limits import RATIO_FLOOR, Limits, safe_parts, short_name
from model_poller.versions import SAVED_MODEL_FILES

# Large files are handed to the syncer every this many bytes, so disk writes overlap unpacking.
WRITE_BACK_EVERY = 32 << 20
# Archive tools' litter, ignored when looking for the single top folder.
_LITTER = frozenset({"__MACOSX", ".DS_Store"})


@dataclass
class Unpacker:
    """Writes validated entries under ``dest`` within ``limits``; counts what is written
    (``bytes_written``) and what a decompressor puts out (``inflated``).

    Several threads may write at once (zip members inflated in parallel, the pieces of
    a folder version's objects): every count is taken under one lock, so the limits
    hold for the sum, whichever thread crosses them.
    """

    dest: Path
    limits: Limits
    syncer: Syncer
    stop: threading.Event
    archive_size: int | None = None
    files: int = 0
    bytes_written: int = 0
    inflated: int = 0
    # The directories made so far, as {(parent's id, name): id} (``dest`` is 0): each name is
    # kept once, not as a whole path. A set of Paths cost a deep path's full string per
    # directory (95,000 directories 14 levels down: 560 MiB, from a 4 MB tar.gz).
    _dirs: dict[tuple[int, str], int] = field(default_factory=dict)
    # Reentrant: _make_parents counts the parents it creates while holding it.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _count_entry(self) -> None:
        with self._lock:
            self.files += 1
            files = self.files
        if files > self.limits.max_files:
            raise Rejected("too_many_files", f"more than {self.limits.max_files} entries (--max-files)")

    def _mkdir(self, path: Path, name: str) -> None:
        """Create one directory; an existing directory is fine, anything else is not."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                rel = path.relative_to(self.dest)
                raise Rejected(
                    "duplicate_entry", f"entry {short_name(name)}: {str(rel)!r} collides with a file"
                ) from None
        except NotADirectoryError:
            raise Rejected("duplicate_entry", f"entry {short_name(name)} goes through a file") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Rejected("unsafe_path", f"entry {short_name(name)}: path too long for the model dir") from None
            raise

    def _ensure_dir(self, parent: int, part: str, path: Path, name: str) -> int:
        """The id of directory ``part`` of directory ``parent`` (at ``path``), made if new.
        Called with ``_lock`` held: ids are handed out by the size of ``_dirs``."""
        made = self._dirs.get((parent, part))
        if made is None:
            self._mkdir(path, name)
            made = self._dirs[(parent, part)] = len(self._dirs) + 1
        return made

    def _make_parents(self, parts: tuple[str, ...], name: str) -> tuple[Path, int]:
        """Create the parents of ``parts`` under ``dest`` one component at a time (never
        ``os.makedirs``, which recurses once per level); return the entry's path and its
        parent's id."""
        path, parent = self.dest, 0
        for part in parts[:-1]:
            path = path / part
            if (parent, part) not in self._dirs:
                # A parent no entry names is an entry all the same (an inode, a name kept
                # here): counted, or 1,000 entries 62 levels deep make 63,000 directories.
                self._count_entry()
            parent = self._ensure_dir(parent, part, path, name)
        return path / parts[-1], parent

    def add_dir(self, name: str) -> None:
        self._count_entry()
        if name.strip("/") in ("", ".") and not name.startswith("/"):
            return  # the archive's own root, "./"
        parts = safe_parts(name)
        with self._lock:
            target, parent = self._make_parents(parts, name)
            self._ensure_dir(parent, parts[-1], target, name)

    def open_file(self, name: str, compressed_size: int | None = None) -> FileSink:
        self._count_entry()
        with self._lock:  # (the set of made directories is shared)
            target, _ = self._make_parents(safe_parts(name), name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(target, flags, 0o644)
        except (FileExistsError, IsADirectoryError) as exc:
            raise Rejected("duplicate_entry", f"entry {short_name(name)} appears twice") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise Rejected("unsafe_path", f"entry {short_name(name)}: path too long for the model dir") from exc
            raise
        return FileSink(self, fd, name, compressed_size)

    def _check_total(self, total: int, what: str) -> None:
        if total > self.limits.max_bytes:
            raise Rejected(
                "too_many_bytes", f"{what} more than {self.limits.max_bytes} bytes ({self.limits.max_bytes_origin})"
            )
        if (
            self.archive_size is not None
            and total > RATIO_FLOOR
            and total > self.limits.max_ratio * max(self.archive_size, 1)
        ):
            raise Rejected(
                "compression_ratio",
                f"{what} more than {self.limits.max_ratio:g}x its {self.archive_size} bytes (--max-ratio)",
            )

    def _account(self, n: int) -> None:
        with self._lock:
            self.bytes_written += n
            total = self.bytes_written
        self._check_total(total, "unpacks to")

    def count_inflated(self, n: int) -> None:
        """Count ``n`` bytes out of a decompressor, whatever they turn out to be (file
        content, headers, padding, skipped data): none of them is free to produce."""
        if self.stop.is_set():
            raise Abandoned()
        with self._lock:
            self.inflated += n
            total = self.inflated
        self._check_total(total, "inflates (tar headers, padding and trailing data included) to")

    def sync_dirs(self) -> None:
        """fsync every directory made, children before their parents, ``dest`` last.

        Walked depth first with one iterator per level, so only the current chain of paths
        (at most MAX_DEPTH) exists at a time: a list of full paths (``os.walk`` bottom-up
        keeps one per directory) cost 80 MiB for 20,000 deep directories."""
        self.syncer.wait()
        children: dict[int, list[tuple[str, int]]] = {}
        for (parent, part), made in self._dirs.items():
            children.setdefault(parent, []).append((part, made))
        stack = [(self.dest, iter(children.get(0, ())))]
        while stack:
            path, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                fsync_dir(path)
            else:
                stack.append((path / child[0], iter(children.get(child[1], ()))))


class FileSink:
    """One file being written; ``close()`` hands it to the syncer.

    ``write`` appends (one thread); ``write_at`` puts bytes at an offset and may be called
    by several threads at once (the pieces of one object fetched in parallel)."""

    def __init__(self, owner: Unpacker, fd: int, name: str, compressed_size: int | None) -> None:
        self._owner = owner
        self._fd: int | None = fd
        self._name = name
        self._compressed = compressed_size
        self.written = 0
        self._lock = threading.Lock()
        self._writers = 0  # write_at calls using the descriptor right now
        self._orphan: int | None = None  # discarded while in use: the last writer closes it

    def write_at(self, offset: int, chunk: bytes | memoryview) -> None:
        owner = self._owner
        if owner.stop.is_set():
            raise Abandoned()
        n = len(chunk)
        owner._account(n)
        with self._lock:
            fd = self._fd
            if fd is None:
                raise Abandoned()  # discarded: another piece failed
            self._writers += 1  # (a discard now leaves the descriptor to the last writer)
            before = self.written
            self.written += n
        try:
            pwrite_all(fd, chunk, offset)
            if (before + n) // WRITE_BACK_EVERY != before // WRITE_BACK_EVERY:
                owner.syncer.write_back(fd)
        finally:
            with self._lock:
                self._writers -= 1
                orphan, self._orphan = (self._orphan, None) if self._writers == 0 else (None, self._orphan)
            if orphan is not None:
                os.close(orphan)

    def write(self, chunk: bytes | memoryview) -> None:
        owner = self._owner
        if owner.stop.is_set():
            raise Abandoned()
        n = len(chunk)
        self.written += n
        owner._account(n)
        if (
            self._compressed is not None
            and self.written > RATIO_FLOOR
            and self.written > owner.limits.max_ratio * max(self._compressed, 1)
        ):
            raise Rejected(
                "compression_ratio",
                f"entry {self._name!r} expands beyond {owner.limits.max_ratio:g}x (--max-ratio)",
            )
        assert self._fd is not None
        write_all(self._fd, chunk)
        if self.written // WRITE_BACK_EVERY != (self.written - n) // WRITE_BACK_EVERY:
            owner.syncer.write_back(self._fd)

    def close(self) -> None:
        """The last byte is written (no write is running): fsync and close it."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            self._owner.syncer.hand_over(fd)

    def discard(self) -> None:
        """Give the file up; a ``write_at`` still running closes it when it returns (a
        closed descriptor's number can be reused at once: never close it under a write)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None and self._writers:
                self._orphan, fd = fd, None
        if fd is not None:
            os.close(fd)


def find_model_root(dest: Path) -> Path:
    """The directory holding the SavedModel: ``dest`` itself, or its single top folder."""
    if _has_saved_model(dest):
        return dest
    children = [c for c in dest.iterdir() if c.name not in _LITTER]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        if _has_saved_model(children[0]):
            return children[0]
    found = ", ".join(sorted(c.name for c in children)[:5]) or "nothing"
    raise Rejected(
        "no_saved_model",
        f"no saved_model.pb or saved_model.pbtxt at the root or in a single top folder (found: {found})",
    )


def _has_saved_model(path: Path) -> bool:
    for name in SAVED_MODEL_FILES:
        try:
            if stat.S_ISREG(os.lstat(path / name).st_mode):
                return True
        except FileNotFoundError:
            continue
    return False
