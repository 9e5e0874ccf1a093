"""Pure functions over TF Serving's status answer: what the poller reports and answers."""

from __future__ import annotations

from model_poller.serving import (
    ServingStatus,
    VersionStatus,
    load_failures,
    parse_status,
    serving_ready,
    serving_version,
)


def tf(*versions: tuple[int, str] | tuple[int, str, str]) -> ServingStatus:
    return ServingStatus(
        reachable=True,
        versions=tuple(VersionStatus(v[0], v[1], v[2] if len(v) > 2 else "OK") for v in versions),  # type: ignore[misc]
    )


def test_parse_status_reads_tf_servings_json_and_skips_non_int64_versions() -> None:
    body = {"model_version_status": [
        {"version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "END", "status": {"error_code": "DATA_LOSS", "error_message": "Can't parse"}},
        {"version": "١٢", "state": "AVAILABLE", "status": {}},
        {"version": "99999999999999999999", "state": "AVAILABLE", "status": {}},
    ]}  # fmt: skip
    parsed = parse_status(body)
    assert [(v.version, v.state, v.failed) for v in parsed] == [(2, "END", True), (3, "AVAILABLE", False)]


def test_serving_is_the_highest_available_version_inside_the_policy() -> None:
    assert serving_version(tf((1, "AVAILABLE"), (2, "AVAILABLE")), {1, 2}) == 2
    assert serving_version(tf((1, "AVAILABLE"), (2, "LOADING")), {2}) is None
    assert serving_version(None, {1}) is None
    assert load_failures(tf((1, "AVAILABLE"), (2, "END", "DATA_LOSS")), {1, 2}) == {2: "DATA_LOSS: "}
    assert load_failures(tf((1, "END", "DATA_LOSS")), {2}) == {}  # outside the policy: not reported


def test_serving_ready_never_drops_every_replica_during_a_transition() -> None:
    # Inside the policy and AVAILABLE.
    assert serving_ready(tf((2, "AVAILABLE")), {2}, {2})
    # keep 1, a rollout: 2 loads, the previous version 1 stays on disk and serves.
    assert serving_ready(tf((1, "AVAILABLE"), (2, "LOADING")), {2}, {1, 2})
    # A rollback to pinned 1: 2 left the disk at once; TF Serving serves it while 1 loads.
    assert serving_ready(tf((2, "AVAILABLE"), (1, "LOADING")), {1}, {1})
    assert serving_ready(tf((2, "AVAILABLE")), {1}, {1})  # 1 not even seen by TF Serving yet
    # keep 1 and a bad upload: 2 failed, 1 is kept on disk and serves.
    assert serving_ready(tf((1, "AVAILABLE"), (2, "END", "DATA_LOSS")), {2}, {1, 2})
    # Nothing AVAILABLE, or TF Serving unreachable: not ready.
    assert not serving_ready(tf((2, "LOADING")), {2}, {2})
    assert not serving_ready(None, {2}, {2})
    # A rollback whose version failed while the old one is gone from disk: not ready.
    assert not serving_ready(tf((2, "AVAILABLE"), (1, "END", "DATA_LOSS")), {1}, {1})
