"""Which versions belong on disk: pure functions, no I/O.

``keep N`` wants the newest N valid versions at the source; ``pinned`` wants exactly
those versions (a rollback). Versions outside the policy are removed only once a version
inside it is installed, so the model dir is never emptied while the source holds a
valid version (see ``removable`` for what waits for TF Serving's confirmation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from model_poller_api.defaults import DEFAULT_KEEP


@dataclass(frozen=True)
class Policy:
    keep: int | None = DEFAULT_KEEP
    pinned: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.pinned is None):
            raise ValueError("a policy is either keep=N or pinned=[...], not both and not neither")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep must be at least 1, got {self.keep}")
        if self.pinned is not None and not self.pinned:
            raise ValueError("pinned needs at least one version")

    def describe(self) -> str:
        if self.pinned is not None:
            return "pinned " + ",".join(str(v) for v in sorted(self.pinned))
        return f"keep {self.keep}"

    def wanted(self, available: Iterable[int]) -> frozenset[int]:
        """The versions that should be on disk, given the valid versions at the source."""
        present = set(available)
        if self.pinned is not None:
            return frozenset(present & self.pinned)
        assert self.keep is not None
        return frozenset(sorted(present, reverse=True)[: self.keep])

    def missing_pins(self, available: Iterable[int]) -> frozenset[int]:
        """Pinned versions that are not (validly) at the source."""
        if self.pinned is None:
            return frozenset()
        return frozenset(self.pinned - set(available))


def install_order(wanted: AbstractSet[int], installed: AbstractSet[int]) -> list[int]:
    """Wanted versions not yet on disk, newest first (the newest serves soonest)."""
    return sorted(wanted - installed, reverse=True)


def removable(wanted: AbstractSet[int], installed: AbstractSet[int], *, allowed: bool = True) -> list[int]:
    """Installed versions outside the policy that may go now.

    Nothing goes unless at least one wanted version is installed (never leave the dir
    empty while the source holds a valid version). Versions newer than every wanted one go
    then: TF Serving loads only the highest version on disk, so a rollback could never load
    while they stay, and TF Serving keeps serving the one it has until the rolled-back one
    is AVAILABLE (its availability-preserving policy). Older versions go only when
    ``allowed`` (TF Serving reports a version inside the policy AVAILABLE, when that is
    configured).
    """
    in_place = wanted & installed
    if not in_place:
        return []
    newest = max(wanted)
    return sorted(v for v in installed - wanted if v > newest or allowed)


def version_bytes_bound(storage_limit: int, policy: Policy) -> int:
    """The largest version that fits a model dir of ``storage_limit`` bytes (an emptyDir's
    sizeLimit: over it, the pod is evicted). The dir holds the ``n`` versions the policy
    keeps, the one a new version replaces (removed once TF Serving has loaded a version
    inside the policy) and one staging copy: ``storage_limit // (n + 2)``."""
    kept = len(policy.pinned) if policy.pinned is not None else (policy.keep or DEFAULT_KEEP)
    return storage_limit // (kept + 2)


def policy_to_json(policy: Policy) -> str:
    if policy.pinned is not None:
        return json.dumps({"pinned": sorted(policy.pinned)})
    return json.dumps({"keep": policy.keep})


def policy_from_json(text: str) -> Policy | None:
    """The policy saved by ``policy_to_json``; None for anything else (never raises)."""
    try:
        data = json.loads(text)
        if isinstance(data.get("pinned"), list) and all(type(v) is int and v >= 0 for v in data["pinned"]):
            return Policy(keep=None, pinned=frozenset(data["pinned"]))
        if type(data.get("keep")) is int:
            return Policy(keep=data["keep"])
    except (ValueError, AttributeError, TypeError):
        pass
    return None
