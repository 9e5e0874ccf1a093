"""model-poller: keeps a tensorflow/serving model dir fed with versions from GCS.

The pure core (``versions``, ``policy``, ``extract``) knows nothing of stores or
processes; ``install`` and ``stores`` do the I/O; ``sync`` ties them into one sync;
``runner`` (the run loop) and ``cli`` are the thin edges. docs/poller.md's Layout section
names every module.
"""

from model_poller_api import __version__

__all__ = ["__version__"]
