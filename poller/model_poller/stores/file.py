"""``file:///dir/``: a local directory as a store (laptops, demos, tests).

Symbolic links under the directory are never followed: a link in a version folder
(``variables/x -> /var/run/secrets/...``) would otherwise copy its target, a file the
poller can read but the uploader cannot, into the model dir. The listing skips links
(files and folders alike), and every read opens each path component with ``O_NOFOLLOW``,
so a link swapped in after the listing fails as a ``SourceError`` instead of being read.
The root directory itself may be a link: the user named it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from pathlib import Path

from model_poller_api.names import SCHEME_FILE

from model_poller.errors import Abandoned, SourceAccessDenied, SourceError, SourceNotFound
from model_poller.stores.base import Sink
from model_poller.versions import SourceObject

CHUNK = 1 << 20

# O_NONBLOCK: a FIFO swapped in after the listing must not block the open.
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

log = logging.getLogger(__name__)


class FileStore:
    """Files under a directory; a file's generation is its modification time in ns."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root
        # Each skipped link is logged once while it stays, not at every poll interval:
        # the links of the last listing (only those: a sidecar runs for months).
        self._skipped: set[str] = set()
        self._listing_links: set[str] = set()

    @classmethod
    def from_uri(cls, uri: str) -> FileStore:
        path = uri[len(SCHEME_FILE) - 1 :]  # (the third slash starts the absolute path)
        if not path.startswith("/"):
            raise SourceError(f"source {uri!r}: use file:///absolute/dir/")
        return cls(uri, Path(path))

    def list_objects(self) -> list[SourceObject]:
        if not self.root.is_dir():
            raise SourceNotFound(f"source directory {self.root} does not exist or is not a directory")
        objects: list[SourceObject] = []

        def fail(exc: OSError) -> None:
            raise _unreadable(f"cannot list {self.root}", exc)

        self._listing_links = set()

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=fail, followlinks=False):
            base = Path(dirpath)
            # os.walk does not descend into linked folders but still names them: say so.
            dirnames[:] = sorted(d for d in dirnames if not self._is_link(base / d))
            for filename in sorted(filenames):
                path = base / filename
                try:
                    st = path.lstat()  # lstat: stat() would describe a link's target
                except OSError:
                    continue  # vanished since the folder was read: not an object
                if stat.S_ISLNK(st.st_mode):
                    self._skip_link(path)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # FIFOs, sockets, devices: not objects
                objects.append(SourceObject(name=self._name(path), size=st.st_size, generation=st.st_mtime_ns))
        self._skipped = self._listing_links
        return objects

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        fd = self._open(obj)
        with open(fd, "rb", buffering=0) as fh:
            while True:
                if stop.is_set():
                    raise Abandoned()
                try:
                    chunk = fh.read(CHUNK)
                except OSError as exc:
                    raise _unreadable(f"cannot read {self.uri}{obj.name}", exc) from None
                if not chunk:
                    break
                sink(chunk)  # outside the try: a full disk is not the source's fault

    def read_range(self, obj: SourceObject, start: int, end: int) -> bytes:
        fd = self._open(obj)
        try:
            return os.pread(fd, end - start, start)
        except OSError as exc:
            raise _unreadable(f"cannot read {self.uri}{obj.name}", exc) from None
        finally:
            os.close(fd)

    def close(self) -> None:
        pass

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _is_link(self, path: Path) -> bool:
        if path.is_symlink():
            self._skip_link(path)
            return True
        return False

    def _skip_link(self, path: Path) -> None:
        name = self._name(path)
        self._listing_links.add(name)
        if name not in self._skipped:
            log.warning("skipping %s%s: a symbolic link (a file:// source never follows links)", self.uri, name)

    def _open(self, obj: SourceObject) -> int:
        """A descriptor on ``obj``'s regular file at its listed generation, no link followed."""
        try:
            fd = self._open_nofollow(obj.name)
        except SourceError:
            raise
        except FileNotFoundError:
            raise SourceError(f"{self.uri}{obj.name} vanished since it was listed") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SourceError(f"{self.uri}{obj.name} is now a symbolic link or under one; not followed") from None
            raise _unreadable(f"cannot read {self.uri}{obj.name}", exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime_ns != obj.generation:
            os.close(fd)
            raise SourceError(f"{self.uri}{obj.name} changed since it was listed")
        return fd

    def _open_nofollow(self, name: str) -> int:
        # O_NOFOLLOW alone guards only the last component; walking one component at a
        # time from the root's descriptor guards the folders on the way too.
        parts = name.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise SourceError(f"{self.uri}{name}: not a plain relative object name")
        dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, _OPEN_DIR, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            return os.open(parts[-1], _OPEN_FILE, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)


def _unreadable(what: str, exc: OSError) -> SourceError:
    """A file permission the poller's user lacks is access denied, as a 403 is for gs://."""
    kind = SourceAccessDenied if isinstance(exc, PermissionError) else SourceError
    return kind(f"{what}: {exc.strerror or exc}")
