"""Exponential backoff, the one implementation every retry loop of the poller uses."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays of ``start``, 2 x ``start``, 4 x ``start``... up to ``cap`` after each failure
    in a row; ``reset()`` after a success. With ``jitter`` (0 to 1), each delay is cut by up
    to that fraction at random, so pollers that failed together do not retry in step."""

    start: float
    cap: float
    jitter: float = 0.0
    failures: int = 0

    def fail(self, cap: float | None = None) -> float:
        """Count a failure; the delay before the next attempt (``cap`` overrides the usual
        one for this failure: a kind of error that deserves slower retries)."""
        self.failures += 1
        # (the exponent is bounded: 2**1100 would not fit a float)
        delay = min(self.cap if cap is None else cap, self.start * 2.0 ** min(self.failures - 1, 64))
        return delay * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else delay

    def reset(self) -> None:
        self.failures = 0

    @property
    def backing_off(self) -> bool:
        """True from a failure until the next success."""
        return self.failures > 0
