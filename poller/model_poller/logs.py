"""Logging set up from one dict: one line per event, text or JSON."""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "logger": ..., "message": ...}`` plus any ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(entry, default=str)


class OneLineFormatter(logging.Formatter):
    """Text logs that stay one line per event even when a message holds newlines."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    formatter = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"()": OneLineFormatter, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
            },
            "root": {"handlers": ["stderr"], "level": "WARNING"},
            "loggers": {"model_poller": {"level": level.upper()}},
        }
    )


class RareLog:
    """Logs a failure at ERROR when it is new or changed, and a repeat at most every
    ``every`` seconds (a retry every few seconds must not flood the log)."""

    def __init__(self, logger: logging.Logger, every: float) -> None:
        self._log = logger
        self.every = every
        self._last: str | None = None
        self._at = 0.0

    def error(self, what: str, detail: str = "") -> None:
        """``what`` decides whether it is a repeat; ``detail`` (a retry delay) does not."""
        now = time.monotonic()
        if what != self._last or now - self._at >= self.every:
            self._log.error("%s%s", what, detail)
            self._last, self._at = what, now
        else:
            self._log.debug("%s%s", what, detail)

    def reset(self) -> None:
        self._last = None
