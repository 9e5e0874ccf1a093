"""model-poller: keeps a tensorflow/serving model dir fed with versions from GCS.

The pure core (``versions``, ``policy``, ``extract``) knows nothing of stores or
processes; ``install`` and ``stores`` do the I/O; ``sync`` ties them into one sync;
``runner`` (the run loop) and ``cli`` are the thin edges. docs/poller.md's Layout section
names every module.
"""

from model_poller_api.defaults import release

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__``: the release, as ``model_poller_api.__version__`` (read on first use)."""
    if name == "__version__":
        return release()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
