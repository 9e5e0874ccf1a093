"""The model-poller operator: ModelDeployment -> tensorflow/serving with the poller injected.

Layers: the ``render`` package, ``status`` (with the conditions it computes:
``readiness``, ``degradation``) and ``compare`` are pure; ``children`` is the one table of
child kinds (read by everything that needs to know them); ``apply`` is the edge that talks
to the API server and ``refresh`` the one place that writes status; ``reconcile`` is what a
reconcile does and ``handlers`` wires it into kopf; ``config`` holds the settings and
``main`` is the console script. docs/operator.md
("Layout") lists every module.
"""

from model_poller_api.defaults import release

# The release: pyproject.toml's version, read from the installed distribution.
__version__ = release()
