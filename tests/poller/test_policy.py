"""Which versions to keep and remove (pure)."""

from __future__ import annotations

import pytest
from model_poller.policy import Policy, install_order, removable


def test_keep_newest_n() -> None:
    assert Policy(keep=2).wanted([1, 5, 3, 4]) == {5, 4}
    assert Policy(keep=1).wanted([1]) == {1}
    assert Policy(keep=3).wanted([]) == frozenset()


def test_pinned_exactly_those_present() -> None:
    policy = Policy(keep=None, pinned=frozenset({3, 7}))
    assert policy.wanted([1, 3, 5]) == {3}
    assert policy.missing_pins([1, 3, 5]) == {7}


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        Policy(keep=0)
    with pytest.raises(ValueError):
        Policy(keep=2, pinned=frozenset({1}))
    with pytest.raises(ValueError):
        Policy(keep=None, pinned=frozenset())


def test_install_newest_first() -> None:
    assert install_order({5, 4, 2}, {4}) == [5, 2]


def test_never_empty_while_a_wanted_version_is_missing() -> None:
    # Nothing wanted is on disk yet: keep everything installed.
    assert removable({5}, {1, 2}) == []
    # A wanted version is in place: everything outside the policy goes.
    assert removable({5, 4}, {1, 4}) == [1]
    # Rollback: the newest was deleted at the source, so it is no longer wanted.
    assert removable({2}, {2, 3}) == [3]
    # Gate closed (TF Serving has not confirmed yet): nothing goes.
    assert removable({5}, {1, 5}, allowed=False) == []


def test_a_rollback_removes_newer_versions_without_waiting_for_tf_serving() -> None:
    # TF Serving loads only the highest version on disk: pinned 1 could never load while 2
    # stays, and TF Serving keeps serving 2 until 1 is AVAILABLE. Older ones still wait.
    assert removable({1}, {1, 2}, allowed=False) == [2]
    assert removable({3}, {1, 3, 4}, allowed=False) == [4]
    assert removable({3}, {1, 3, 4}, allowed=True) == [1, 4]
    assert removable({3}, {4}, allowed=True) == []  # nothing wanted on disk yet: keep serving 4


def test_storage_limit_bounds_each_version_under_the_live_policy() -> None:
    from model_poller.policy import version_bytes_bound

    assert version_bytes_bound(20 << 30, Policy(keep=2)) == 5 << 30
    assert version_bytes_bound(20 << 30, Policy(keep=3)) == 4 << 30
    assert version_bytes_bound(6_000_000_000, Policy(keep=None, pinned=frozenset({7}))) == 2_000_000_000
