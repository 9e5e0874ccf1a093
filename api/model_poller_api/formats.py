"""Formats both sides of the api/poller line check or write: Pub/Sub names, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

# A TF Serving model name (spec.modelName, --model-name) becomes a path segment and a URL
# segment.
MODEL_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Full Pub/Sub resource names, as the CRD's `pattern` and the poller's flags accept them.
TOPIC_PATTERN: Final = r"^projects/[^/]+/topics/[^/]+$"
SUBSCRIPTION_PATTERN: Final = r"^projects/[^/]+/subscriptions/[^/]+$"

# metav1.Time's wire format: UTC, whole seconds.
RFC3339_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(when: float | datetime | None = None) -> str:
    """``when`` (Unix time, or an aware datetime; None: now) as ``2024-05-01T12:00:00Z``."""
    if when is None:
        moment = datetime.now(UTC)
    elif isinstance(when, datetime):
        moment = when.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime(RFC3339_FORMAT)
