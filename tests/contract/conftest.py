"""The contract tests run the real poller engine: reuse the poller tests' fixtures."""

from tests.poller.conftest import dirs, make_engine  # noqa: F401 - pytest finds fixtures by name
