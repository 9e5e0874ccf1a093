"""Parsers of flag values: text as typed -> a typed value, or ``ValueError`` saying what
is expected (``config.build_settings`` prefixes the flag's name).

Numbers are ASCII only: ``int()`` and ``float()`` also take ``"١٢"``, ``"1_000"``,
``"nan"`` and ``"inf"``, none of which a user means as a count or a duration.
"""

from __future__ import annotations

import math
import re
import urllib.parse

from model_poller_api.models import parse_duration
from model_poller_api.names import MAX_NAME_LENGTH, NAME_PATTERN

from model_poller.versions import parse_version

_INTEGER = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
_SIZE = re.compile(r"([0-9]+)\s*([KMGT]i?B?|B)?", re.IGNORECASE | re.ASCII)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1 << 10,
    "MI": 1 << 20,
    "GI": 1 << 30,
    "TI": 1 << 40,
}
# A Kubernetes namespace: an RFC 1123 label.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", re.ASCII)
_MODEL_DEPLOYMENT_NAME = re.compile(NAME_PATTERN, re.ASCII)
# Longer than this, an interval would overflow the timeouts of threading's waits; a week
# is longer than any poll interval, heartbeat or read timeout anyone needs.
MAX_SECONDS = 7 * 24 * 3600.0


def parse_count(text: str) -> int:
    """``"12"`` -> 12: ASCII digits only."""
    if not _INTEGER.fullmatch(text.strip()):
        raise ValueError("use a whole number (ASCII digits)")
    return int(text)


def parse_number(text: str) -> float:
    """``"2.5"`` -> 2.5: ASCII digits with an optional decimal point and exponent (``1e9``)."""
    if not _DECIMAL.fullmatch(text.strip()) or not math.isfinite(value := float(text)):
        raise ValueError("use a number such as 200, 2.5 or 1e9")
    return value


def parse_size(text: str) -> int:
    """``1000``, ``50Gi``, ``50GiB``, ``10M`` -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError("use bytes or e.g. 500Mi, 50Gi")
    unit = (match.group(2) or "").upper().rstrip("B")
    return int(match.group(1)) * _UNITS[unit]


def parse_interval(text: str) -> float:
    """``60``, ``2.5``, ``90s``, ``5m``, ``1h`` -> seconds (above 0, at most MAX_SECONDS)."""
    stripped = text.strip()
    if _DECIMAL.fullmatch(stripped):
        value = float(stripped)
    else:
        try:
            value = float(parse_duration(stripped))
        except ValueError:
            raise ValueError("use seconds or a duration such as 90s, 5m, 1h") from None
    if not 0 < value <= MAX_SECONDS or not math.isfinite(value):
        raise ValueError(f"must be above 0 and at most {MAX_SECONDS:g} seconds (a week)")
    return value


def parse_pinned(text: str) -> frozenset[int]:
    """``"3,4"`` -> {3, 4}: version numbers as at the source (ASCII digits, at most int64)."""
    parsed = [parse_version(v.strip()) for v in text.split(",") if v.strip()]
    if not parsed or None in parsed:
        raise ValueError("use e.g. 3 or 3,4 (ASCII digits, at most int64)")
    return frozenset(v for v in parsed if v is not None)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """``text`` if it is one of ``choices`` (compared case-insensitively), as spelled there."""
    for choice in choices:
        if text.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"use one of {', '.join(choices)}")


def parse_http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (and a valid port, if any)."""
    try:
        url = urllib.parse.urlsplit(text.strip())
        url.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError("not a URL: use e.g. http://localhost:8501") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("use TF Serving's REST URL, e.g. http://localhost:8501")
    return text.strip()


def parse_target(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of a ModelDeployment -> (namespace, name)."""
    namespace, sep, name = text.strip().partition("/")
    if not sep or not _NAMESPACE.fullmatch(namespace) or len(namespace) > 63:
        raise ValueError("use NAMESPACE/NAME of the ModelDeployment (a namespace is lowercase a-z, 0-9 and '-')")
    if not _MODEL_DEPLOYMENT_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            "use NAMESPACE/NAME of the ModelDeployment (a name is lowercase a-z, 0-9 and '-', "
            f"starting with a letter, at most {MAX_NAME_LENGTH} characters)"
        )
    return namespace, name
