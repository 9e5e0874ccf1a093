"""What the HTTP endpoints answer (``http.HttpServer`` serves them), apart from the server:
the run loop sets them whether or not a server runs (``--once`` starts none)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Probes:
    """What the endpoints answer; set by the poller's loop, read by the HTTP threads."""

    def __init__(self, metrics: Callable[[], bytes]) -> None:
        self.ready = threading.Event()
        self.serving = threading.Event()
        self.metrics = metrics
        # Why /readyz or /serving-ready answers 503 (one line, set by the loop).
        self.not_ready_because = "initial sync not done"
        self.not_serving_because = "no version inside the policy yet"
