"""The ModelDeployment API shared by the operator, the poller and the tests.

This package is the bottom layer: it imports nothing from ``model_poller`` or
``model_poller_operator``. Group, version, names, field layout, the CRD schema and the
contract between the operator and the poller (env vars, ports, paths) live here only.
"""

from model_poller_api.defaults import release
from model_poller_api.names import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)

__all__ = ["__version__", "API_VERSION", "GROUP", "KIND", "PLURAL", "SHORT_NAMES", "SINGULAR", "VERSION"]


def __getattr__(name: str) -> str:
    """``__version__``: the release (pyproject.toml's version, read from the installed
    distribution on first use, see ``defaults.release``); the poller and the operator
    re-export it."""
    if name == "__version__":
        return release()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
