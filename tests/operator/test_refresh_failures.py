"""How a failed status refresh is logged: an API server that is away (an outage drill, a
restart) is expected and gets one line; anything else keeps its traceback."""

from __future__ import annotations

import logging

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from model_poller_operator import handlers


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/apis", urllib3.exceptions.NewConnectionError(None, "refused")),  # type: ignore[arg-type]
        ConnectionRefusedError(111, "Connection refused"),
        ApiException(status=503, reason="Service Unavailable"),
        ApiException(status=429, reason="storage is (re)initializing"),
    ],
    ids=["max-retries", "refused", "503", "429"],
)
def test_an_unreachable_api_server_is_one_line(caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    with caplog.at_level(logging.INFO):
        handlers._log_failure(logging.getLogger("t"), "periodic status refresh", error)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "the API server is unreachable" in record.getMessage()


@pytest.mark.parametrize("error", [ValueError("bad"), ApiException(status=422, reason="Invalid")], ids=["bug", "422"])
def test_anything_else_keeps_its_traceback(caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    with caplog.at_level(logging.INFO):
        handlers._log_failure(logging.getLogger("t"), "periodic status refresh", error)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
