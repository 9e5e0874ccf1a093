"""Defaults and the release, shared by the CRD, the operator and the poller.

Each fact is written here once: the CRD's defaults, the operator's rendering and the
poller's flags read these names, so an omitted field and an omitted flag mean the same.
"""

from __future__ import annotations

import functools
from typing import Final

# The distribution every package of this repository ships in (pyproject's [project] name).
DISTRIBUTION: Final = "model-poller"

# spec.versions.keep / --keep: the newest N valid versions on disk.
DEFAULT_KEEP: Final = 2
# spec.source.pollInterval / --poll-interval: the listing's safety net (a duration).
DEFAULT_POLL_INTERVAL: Final = "60s"
# spec.poller.image: the sidecar image of this very release (``default_poller_image()``).
POLLER_IMAGE_REPOSITORY: Final = "ghcr.io/model-poller/model-poller"


@functools.cache
def release() -> str:
    """The installed distribution's version: pyproject.toml's, the one place it is written.

    Read on first use, not at import: importlib.metadata costs 50 ms of a process start
    (it imports the email package), which ``model-poller --once`` never needs."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        # A source tree imported without `pip install -e .`: the version is not known.
        return "unknown"


def default_poller_image() -> str:
    return f"{POLLER_IMAGE_REPOSITORY}:{release()}"
