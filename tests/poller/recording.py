"""A real GCS source that also records what it fetched (for tests of the downloads)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from model_poller.stores.base import Halt, Sink, Transfer
from model_poller.stores.gcs import GcsStore
from model_poller.versions import SourceObject


class RecordingStore(GcsStore):
    """The real GCS source; it also notes every ranged request, how many ran at once and
    every byte the network delivered. ``before(n)`` runs before the n-th request."""

    def __init__(self, *args: Any, before: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int, int]] = []
        self.received = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.before = before
        self._lock = threading.Lock()

    def stream_range(self, obj: SourceObject, start: int, end: int, sink: Sink, halt: Halt) -> None:
        with self._lock:
            self.calls.append((obj.name, start, end))
            number = len(self.calls)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.before is not None:
            self.before(number)

        def counting(chunk: bytes) -> None:
            with self._lock:
                self.received += len(chunk)
            sink(chunk)

        try:
            super().stream_range(obj, start, end, counting, halt)
        finally:
            with self._lock:
                self.in_flight -= 1


def recording_store(fake_gcs: Any, bucket: Any, transfer: Transfer, **kwargs: Any) -> RecordingStore:
    """A recording source for ``gs://<bucket>/m/`` on fake-gcs-server."""
    return RecordingStore(f"gs://{bucket.name}/m/", bucket.name, "m/", fake_gcs.client(), transfer, **kwargs)
