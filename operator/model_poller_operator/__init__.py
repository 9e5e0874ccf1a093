"""The model-poller operator: ModelDeployment -> tensorflow/serving with the poller injected.

Layers: ``render`` and ``status`` are pure; ``children`` is the one table of child kinds
(read by everything that needs to know them); ``apply`` is the edge that talks to the API
server and ``refresh`` the one place that writes status; ``handlers`` wires them into kopf;
``config`` holds the settings and ``main`` is the console script. docs/operator.md
("Layout") lists every module.
"""

__version__ = "0.1.0"
