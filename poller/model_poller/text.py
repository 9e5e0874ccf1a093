"""Small text helpers for one-line messages."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")


def one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace (no multi-line errors in logs) and cut to ``limit`` chars."""
    flat = _SPACE.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
