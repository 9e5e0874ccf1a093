"""Pure: compare a rendered child with the live object, decide whose it is, describe the outcome.

Nothing is written when the live object already holds every rendered field *and* carries
the hash of the rendered object (:func:`in_sync`; the hash catches fields removed from the
render, which a subset check cannot see), so a steady state makes zero writes. A live
object that is not controlled by this ModelDeployment (no controller ownerReference with
its uid) is a :class:`Conflict`, never an overwrite. ``apply.py`` does the I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import InvalidOperation
from typing import Any, Final

from kubernetes.utils import parse_quantity
from model_poller_api import names

Obj = dict[str, Any]

HASH_ANNOTATION: Final = f"{names.GROUP}/applied-hash"


def desired_hash(obj: Mapping[str, Any]) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def with_hash(obj: Mapping[str, Any]) -> Obj:
    """``obj`` with the hash annotation that marks what was applied last."""
    stamped: Obj = json.loads(json.dumps(obj))
    stamped["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = desired_hash(obj)
    return stamped


def _same_scalar(desired: Any, live: Any) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    # Quantities come back canonical ("1000m" -> "1", 5000000000 -> "5G").
    if isinstance(desired, (str, int)) and isinstance(live, (str, int)) and not isinstance(desired, bool):
        try:
            return bool(parse_quantity(desired) == parse_quantity(live))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, InvalidOperation):
            return False
    return False


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of ``desired`` is in ``live`` with the same value.

    Fields the API server defaults (or other managers own) may exist only in ``live``.
    Lists must match item by item; lists of named items (containers, env, ports, volumes)
    may hold extra items only if every desired item finds its namesake.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and _map_subset(desired, live)
    if isinstance(desired, list):
        return isinstance(live, list) and _list_subset(desired, live)
    return _same_scalar(desired, live)


def _map_subset(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    for key, value in desired.items():
        if live.get(key) is None:
            if isinstance(value, (dict, list)) and not value:
                continue  # an empty map or list is the same as an absent one
            return False
        if not is_subset(value, live[key]):
            return False
    return True


def _list_subset(desired: list[Any], live: list[Any]) -> bool:
    if len(desired) == len(live):
        return all(is_subset(d, lv) for d, lv in zip(desired, live, strict=False))
    named = all(isinstance(d, Mapping) and "name" in d for d in desired) and all(isinstance(lv, Mapping) for lv in live)
    if not named:
        return False
    by_name = {lv.get("name"): lv for lv in live}
    return all(d["name"] in by_name and is_subset(d, by_name[d["name"]]) for d in desired)


def in_sync(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    if live is None:
        return False
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return annotations.get(HASH_ANNOTATION) == desired_hash(desired) and is_subset(desired, live)


@dataclass(frozen=True)
class Change:
    """One child written: ``action`` is "created", "updated" or "deleted"."""

    kind: str
    name: str
    action: str

    @property
    def created(self) -> bool:
        return self.action == "created"


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with ``controller: true``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


def is_model_deployment_ref(ref: Mapping[str, Any]) -> bool:
    return ref.get("kind") == names.KIND and str(ref.get("apiVersion", "")).startswith(names.GROUP + "/")


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether the ModelDeployment of ``uid`` is ``obj``'s controller."""
    ref = controller_of(obj)
    return ref is not None and is_model_deployment_ref(ref) and ref.get("uid") == uid


@dataclass(frozen=True)
class Conflict:
    """A live object holds a child's name but is not controlled by this ModelDeployment."""

    kind: str
    name: str
    # Who controls it instead, for the message: "" when nothing does.
    controller: str = ""

    @classmethod
    def of(cls, desired: Mapping[str, Any], live: Mapping[str, Any]) -> Conflict | None:
        """None when ``live`` is controlled by the owner that ``desired`` names."""
        want = controller_of(desired)
        have = controller_of(live)
        if (
            want is not None
            and have is not None
            and have.get("uid") == want.get("uid")
            and is_model_deployment_ref(have)
        ):
            return None
        if have is None:
            controller = ""
        elif is_model_deployment_ref(have) and have.get("name") == (want or {}).get("name"):
            controller = f"an earlier {names.KIND} {have.get('name')} (uid {have.get('uid')})"
        else:
            controller = f"{have.get('kind')} {have.get('name')}"
        return cls(kind=str(desired["kind"]), name=str(desired["metadata"]["name"]), controller=controller)

    def describe(self) -> str:
        by = f"controlled by {self.controller}" if self.controller else "not controlled by any owner"
        return f"{self.kind} {self.name} ({by})"


@dataclass(frozen=True)
class Outcome:
    """What converging the children did: applied, refused (conflicts) and held back."""

    changes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    # Children not applied because a child they depend on is in conflict.
    held_back: tuple[tuple[str, str], ...] = ()

    def conflict_message(self, namespace: str) -> str:
        """A message naming every conflicting object and what to do about it."""
        several = len(self.conflicts) > 1
        it = "them" if several else "it"
        objects = ", ".join(c.describe() for c in self.conflicts)
        refs = " ".join(f"{c.kind.lower()}/{c.name}" for c in self.conflicts)
        message = (
            f"{objects} already exist{'' if several else 's'} in namespace {namespace!r} and "
            f"{'are' if several else 'is'} not owned by this ModelDeployment: the operator leaves {it} untouched"
        )
        if self.held_back:
            held = ", ".join(f"{kind} {name}" for kind, name in self.held_back)
            message += (
                f", and did not apply {held} either (the poller's pods would run under an identity "
                "the operator does not control)"
            )
        return (
            f"{message}. If {'they are leftovers' if several else 'it is a leftover'}, delete {it} "
            f"(kubectl -n {namespace} delete {refs}); otherwise give this ModelDeployment another name. "
            "The operator retries by itself."
        )
