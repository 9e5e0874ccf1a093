"""The removal policy: when versions outside the version policy may leave the model dir.

``policy.removable`` decides which versions are outside the policy; this decides whether
the older ones may go *now* (SPEC "On disk": once a version inside the policy is in
place; with ``--serving-url``, once TF Serving reports one AVAILABLE).
"""

from __future__ import annotations

from typing import Protocol

from model_poller.serving import ServingStatus


class RemovalPolicy(Protocol):
    def allows_removal(self, in_place: frozenset[int]) -> bool:
        """``in_place``: the versions inside the policy on disk (never empty)."""
        ...


class RemoveWhenOnDisk:
    """Without ``--serving-url``: a version inside the policy on disk is enough."""

    def allows_removal(self, in_place: frozenset[int]) -> bool:
        return True


class CurrentStatus(Protocol):
    def __call__(self) -> ServingStatus | None: ...


class RemoveWhenServing:
    """With ``--serving-url``: only once TF Serving reports a version inside the policy
    AVAILABLE."""

    def __init__(self, current: CurrentStatus) -> None:
        self._current = current

    def allows_removal(self, in_place: frozenset[int]) -> bool:
        status = self._current()
        return status is not None and bool(status.available() & in_place)
