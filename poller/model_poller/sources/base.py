"""The interface every store implements: list objects under a prefix, stream one."""

from __future__ import annotations

import threading
from typing import Callable, Protocol

from model_poller.versions import SourceObject

Sink = Callable[[bytes], None]


class Source(Protocol):
    """A place versions live. A new store (S3, ...) is one module implementing this.

    Methods raise ``SourceError`` with a one-line message on failure; ``download`` raises
    ``Abandoned`` when ``stop`` is set, and passes every chunk of the object's stored
    bytes to ``sink`` in order.
    """

    uri: str

    def list_objects(self) -> list[SourceObject]:
        """Every object under the prefix, names relative to it."""
        ...

    def download(self, obj: SourceObject, sink: Sink, stop: threading.Event) -> None:
        """Stream ``obj`` at its listed generation into ``sink``."""
        ...

    def read_range(self, obj: SourceObject, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``obj`` at its listed generation (small ranges only)."""
        ...

    def close(self) -> None: ...
