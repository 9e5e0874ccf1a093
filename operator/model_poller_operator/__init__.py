"""The model-poller operator: ModelDeployment -> tensorflow/serving with the poller injected.

Layers: ``render`` and ``status`` are pure; ``apply`` is the edge that talks to the API
server; ``handlers`` wires them into kopf; ``main`` is the console script.
"""

__version__ = "0.1.0"
