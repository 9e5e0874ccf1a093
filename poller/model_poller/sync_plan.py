"""What a listing means under a version policy: the usable uploads, the versions wanted on
disk, the pins missing at the source. Pure: a function of the listing, the rejected
uploads and the policy."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from model_poller.policy import Policy, install_order
from model_poller.versions import Artifact


@dataclass(frozen=True)
class Plan:
    """What a listing means under a policy: a pure function of both (see ``plan``)."""

    usable: Mapping[int, Artifact]  # the listing minus the uploads known to be rejected
    wanted: frozenset[int]  # the versions the policy wants on disk
    missing_pins: frozenset[int]  # pinned versions that are not (validly) at the source

    def next_install(self, on_disk: Container[int], failed: Container[int]) -> Artifact | None:
        """The wanted version to install next (the newest missing one that did not fail)."""
        todo = install_order(self.wanted, {v for v in self.wanted if v in on_disk})
        return next((self.usable[v] for v in todo if v not in failed), None)


def plan(artifacts: Mapping[int, Artifact], rejected: Container[tuple[int, int]], policy: Policy) -> Plan:
    usable = {v: a for v, a in artifacts.items() if (v, a.generation) not in rejected}
    return Plan(usable, policy.wanted(usable), policy.missing_pins(usable))
