"""Status conditions shaped like metav1.Condition, as pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    new: Condition,
    *,
    now: str,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``new`` set in place of any condition of the same type.

    ``lastTransitionTime`` changes only when ``status`` changes, so re-applying the same
    state is a no-op and yields an equal list (which lets callers skip the write).
    """
    result: list[dict[str, Any]] = []
    replaced = False
    for existing in conditions:
        if existing.get("type") != new.type:
            result.append(dict(existing))
            continue
        replaced = True
        changed = existing.get("status") != new.status
        result.append(_render(new, existing.get("lastTransitionTime") if not changed else now, observed_generation))
    if not replaced:
        result.append(_render(new, now, observed_generation))
    return result


def find_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def _render(c: Condition, transition: Any, observed_generation: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": c.type,
        "status": c.status,
        "reason": c.reason,
        "message": c.message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        out["observedGeneration"] = observed_generation
    return out
