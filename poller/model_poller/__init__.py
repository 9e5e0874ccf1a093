"""model-poller: keeps a tensorflow/serving model dir fed with versions from GCS.

The pure core (``versions``, ``policy``, ``extract``) knows nothing of stores or
processes; ``install`` and ``sources`` do the I/O; ``sync`` ties them into one sync;
``server`` and ``cli`` are the thin edges.
"""

__version__ = "0.1.0"
