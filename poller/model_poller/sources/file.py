"""``file:///dir/``: a local directory as a source (laptops, demos, tests)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from model_poller.errors import Abandoned, SourceError
from model_poller.sources.base import Sink
from model_poller.versions import SourceObject

CHUNK = 1 << 20


class FileSource:
    """Files under a directory; a file's generation is its modification time in ns."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root

    @classmethod
    def from_uri(cls, uri: str) -> FileSource:
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise SourceError(f"source {uri!r}: use file:///absolute/dir/")
        return cls(uri, Path(path))

    def list_objects(self) -> list[SourceObject]:
        if not self.root.is_dir():
            raise SourceError(f"source directory {self.root} does not exist or is not a directory")
        objects: list[SourceObject] = []

        def fail(exc: OSError) -> None:
            raise SourceError(f"cannot list {self.root}: {exc.strerror or exc}")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=fail):
            dirnames.sort()
            base = Path(dirpath)
            for filename in sorted(filenames):
                path = base / filename
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished or a dangling link: not an object
                if not os.path.isfile(path):
                    continue
                name = path.relative_to(self.root).as_posix()
                objects.append(SourceObject(name=name, size=st.st_size, generation=st.st_mtime_ns))
        return objects

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        path = self.root / obj.name
        try:
            with open(path, "rb", buffering=0) as fh:
                st = os.fstat(fh.fileno())
                if st.st_mtime_ns != obj.generation:
                    raise SourceError(f"{self.uri}{obj.name} changed since it was listed")
                while True:
                    if stop.is_set():
                        raise Abandoned()
                    chunk = fh.read(CHUNK)
                    if not chunk:
                        break
                    sink(chunk)
        except FileNotFoundError:
            raise SourceError(f"{self.uri}{obj.name} vanished since it was listed") from None
        except PermissionError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None

    def read_range(self, obj: SourceObject, start: int, end: int) -> bytes:
        path = self.root / obj.name
        try:
            with open(path, "rb", buffering=0) as fh:
                if os.fstat(fh.fileno()).st_mtime_ns != obj.generation:
                    raise SourceError(f"{self.uri}{obj.name} changed since it was listed")
                return os.pread(fh.fileno(), end - start, start)
        except FileNotFoundError:
            raise SourceError(f"{self.uri}{obj.name} vanished since it was listed") from None
        except PermissionError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None

    def close(self) -> None:
        pass
