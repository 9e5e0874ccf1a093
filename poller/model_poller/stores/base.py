"""The interface every store implements: list objects under a prefix, stream one.

A store serves the objects under the ``--source`` URI (``Store``). A store that can also
stream any byte range of an object (``RangedStore``) gets sliced,
resumable downloads: several connections on one object, and a broken connection resumed
where it stopped instead of restarted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from model_poller.errors import SourceError
from model_poller.versions import SourceObject

Sink = Callable[[bytes], None]

MiB = 1 << 20
DEFAULT_STREAMS = 8
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_SLICE = 32 * MiB


@dataclass(frozen=True)
class Transfer:
    """How objects are fetched: ``streams`` connections at once (objects of a folder
    version, or slices of one archive), each a ranged request of at most ``slice_bytes``;
    a connection that delivers nothing for ``read_timeout`` seconds is given up and
    resumed. An archive is never downloaded more than ``streams * slice_bytes`` ahead of
    its unpacking, which bounds the page cache it holds."""

    streams: int = DEFAULT_STREAMS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    slice_bytes: int = DEFAULT_SLICE

    @property
    def window(self) -> int:
        return self.streams * self.slice_bytes


class SourceInterrupted(SourceError):
    """A transfer broke off (connection reset, stalled past the read timeout, a 5xx): the
    same request can be resumed from the first byte not received."""


class SourceChanged(SourceError):
    """The listed generation of an object is gone (a new upload replaced it): what was
    downloaded of it is worthless; a new listing starts over."""


class Halt(threading.Event):
    """A stop flag for one download that also cuts blocked reads short: ``set()`` calls
    every registered interrupter (a socket shutdown), so a stalled connection ends now
    rather than at its read timeout."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._interrupters: dict[int, Callable[[], None]] = {}
        self._next = 0

    def on_set(self, interrupt: Callable[[], None]) -> Callable[[], None]:
        """Call ``interrupt`` when the flag is set (now, if it already is); returns the
        function that unregisters it."""
        with self._lock:
            key = self._next
            self._next += 1
            self._interrupters[key] = interrupt
        if self.is_set():
            _quietly(interrupt)

        def unregister() -> None:
            with self._lock:
                self._interrupters.pop(key, None)

        return unregister

    def set(self) -> None:
        super().set()
        with self._lock:
            interrupters = list(self._interrupters.values())
        for interrupt in interrupters:
            _quietly(interrupt)


def _quietly(interrupt: Callable[[], None]) -> None:
    try:
        interrupt()
    except OSError:
        pass  # the connection is already gone: nothing left to cut


class Store(Protocol):
    """Where versions live, seen as objects. A new store (S3, ...) is one module implementing this.

    Methods raise ``SourceError`` with a one-line message on failure; ``download`` raises
    ``Abandoned`` when ``stop`` is set, and passes every chunk of the object's stored
    bytes to ``sink`` in order.
    """

    uri: str  # the --source URI

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


@runtime_checkable
class RangedStore(Store, Protocol):
    """A store that streams any byte range of an object at its listed generation."""

    transfer: Transfer

    def stream_range(self, obj: SourceObject, start: int, end: int, sink: Sink, halt: Halt) -> None:
        """Stream bytes ``[start, end)`` of ``obj`` at its listed generation into ``sink``.

        Raises ``SourceInterrupted`` when the transfer broke off (the caller resumes from
        the first byte ``sink`` did not get), ``SourceChanged`` when that generation is
        gone, another ``SourceError`` for anything a retry will not cure, ``Abandoned``
        when ``halt`` is set; errors raised by ``sink`` pass through unchanged.
        """
        ...
