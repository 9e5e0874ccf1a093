"""Errors the poller distinguishes, each carrying a one-line message a user can act on."""

from __future__ import annotations


class PollerError(Exception):
    """Something the user can fix or wait out; ``str()`` is one line, never a traceback."""


class ConfigError(PollerError):
    """Bad flags or environment: fatal at start."""


class SourceError(PollerError):
    """Listing or downloading failed (missing bucket, denied credential, network...).

    Never touches installed versions; the long-running poller retries with backoff.
    """


class SourceAccessDenied(SourceError):
    """The poller's identity may not read the source (401/403, or a file permission)."""


class SourceNotFound(SourceError):
    """The bucket (or the file:// directory) does not exist."""


class NotificationError(PollerError):
    """Pub/Sub setup failed (missing topic or subscription, denied credential...)."""


class ModelDirError(PollerError):
    """The model dir cannot be created or written."""


class Rejected(Exception):
    """A version that will never become valid at this generation (hostile or broken upload).

    ``reason`` is a short snake_case label (also the metrics label); ``detail`` says more.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Abandoned(Exception):
    """The poller is stopping; the current install was abandoned cleanly."""
