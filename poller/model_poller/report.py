"""The seam for status reporting: a Reporter receives a PollerReport after every sync.

Patching the ModelDeployment's ``status.pollers`` (``--report-to``) plugs in here in a
later issue; until then the default reporter does nothing.
"""

from __future__ import annotations

from typing import Protocol

from model_poller_api.models import PollerReport


class Reporter(Protocol):
    def report(self, report: PollerReport) -> None:
        """Called after every sync (successful or not); must not raise."""
        ...


class NullReporter:
    def report(self, report: PollerReport) -> None:
        pass


class RemovalGate(Protocol):
    """Decides whether versions outside the policy may be removed now.

    With ``--serving-url`` (a later issue) this asks TF Serving whether a version inside
    the policy is AVAILABLE; by default a version inside the policy on disk is enough.
    """

    def allows_removal(self, in_place: frozenset[int]) -> bool: ...


class AlwaysAllow:
    def allows_removal(self, in_place: frozenset[int]) -> bool:
        return True
