"""Notifications waiting for the run loop: triage, deduplication, settling.

A notification is a hint that something changed at the source; only a listing decides
what. A hint that cannot change anything is settled (acked) at once: a duplicate, a
redelivery of one already handled, an upload already installed, validated or rejected,
a file of a folder version other than its ``_READY`` marker, a name that is no version.
The others wait for the next sync and are acked after it (nacked if it failed). Handled
hints are remembered, at most ``HINT_MEMORY`` of them, oldest forgotten first, so a
redelivery is acked without work (SPEC guarantee 3).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from model_poller_api.names import SCHEME_GCS

from model_poller.config import HINT_MEMORY
from model_poller.metrics import Metrics
from model_poller.notifications import DELETE, Hint
from model_poller.text import one_line
from model_poller.versions import parse_object_name

log = logging.getLogger(__name__)

# ``Engine.known``: is this exact upload (version, generation) installed, validated or rejected?
Known = Callable[[int, int], bool]


class HintInbox:
    """Hints from the Pub/Sub thread (``put``) for the run loop (``take``, then ``settle``)."""

    def __init__(self, prefix: str, metrics: Metrics, wake: Callable[[], None], memory: int = HINT_MEMORY) -> None:
        self.prefix = prefix  # of the source, in the bucket: object names are relative to it
        self._metrics = metrics
        self._wake = wake
        self._memory = memory
        self._queue: queue.SimpleQueue[Hint] = queue.SimpleQueue()
        self._handled: OrderedDict[tuple[str, str, int | None, str], None] = OrderedDict()

    def put(self, hint: Hint) -> None:
        self._queue.put(hint)
        self._wake()

    def take(self, known: Known) -> list[Hint]:
        """The hints received since the last call that wait for a sync; the others are settled."""
        waiting: list[Hint] = []
        while True:
            try:
                hint = self._queue.get_nowait()
            except queue.Empty:
                return waiting
            if self._triage(hint, known):
                waiting.append(hint)

    def settle(self, hints: list[Hint], installed: AbstractSet[int]) -> None:
        """After a sync that listed the source: ack ``hints``, remember them, and time the
        ones whose version the sync installed (notification to installed)."""
        now = time.time()
        for hint in hints:
            target = parse_object_name(hint.name[len(self.prefix) :])
            if target is not None and target.version in installed:
                self._metrics.notification_latency.observe(max(0.0, now - hint.published))
            self._remember(hint)
            hint.ack()

    @staticmethod
    def release(hints: list[Hint]) -> None:
        """The sync did not happen: Pub/Sub delivers them again."""
        for hint in hints:
            hint.nack()

    def _triage(self, hint: Hint, known: Known) -> bool:
        """True if ``hint`` waits for the next sync; otherwise it is settled (acked) now."""
        try:
            needed = self._needs_sync(hint, known)
        except Exception:  # noqa: BLE001 - defence in depth: one message never ends the poller
            log.exception(
                "ignoring notification for %s%s/%s: unexpected error (a bug: please report it)",
                SCHEME_GCS,
                hint.bucket,
                one_line(hint.name, 300),
            )
            needed = False
        if needed:
            self._metrics.notifications.labels(outcome="sync").inc()
            return True
        self._metrics.notifications.labels(outcome="ignored").inc()
        self._remember(hint)
        hint.ack()
        return False

    def _needs_sync(self, hint: Hint, known: Known) -> bool:
        if hint.key in self._handled:
            return False
        # Object names are untrusted: parse_object_name decides, as for the listing.
        target = parse_object_name(hint.name[len(self.prefix) :])
        if target is None:
            log.info(
                "ignoring notification for %s%s/%s: not a version (<digits>.zip, .tar.gz, .tgz or "
                "<digits>/_READY; ASCII digits, at most int64)",
                SCHEME_GCS,
                hint.bucket,
                one_line(hint.name, 300),
            )
            return False
        if hint.event == DELETE:
            return True
        if target.rest and not target.is_marker:
            return False  # a folder version's file: its _READY marker's notification matters
        return hint.generation is None or not known(target.version, hint.generation)

    def _remember(self, hint: Hint) -> None:
        self._handled[hint.key] = None
        while len(self._handled) > self._memory:
            self._handled.popitem(last=False)
