"""The one contract between poller and operator: a pod's ``status.pollers`` entry.

Each case runs the real poller engine on a real file:// source (a hostile upload, a
missing pinned version, a missing source, TF Serving failing a load), builds the entry
exactly as the running poller does (``report.build_report``), passes it through the same
JSON the API server stores, and feeds it to the operator's pure aggregation. The whole
condition list is asserted: the operator's reasons come from the poller's typed reason,
never from the wording of its message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_poller.errors import SourceError
from model_poller.policy import Policy
from model_poller.report import build_report, source_problem
from model_poller.serving import ServingStatus, parse_status
from model_poller.stores import open_store
from model_poller.stores.file import FileStore
from model_poller.sync_outcome import SyncOutcome
from model_poller_api import models
from model_poller_api.conditions import find_condition
from model_poller_operator import pod_states
from model_poller_operator import status as st

from local_services.archives import model_files, zip_bytes, zip_raw_name
from local_services.json_answer import json_answer
from tests.poller.kit import Dirs, EngineFactory

NOW = "2026-01-01T00:00:00Z"
SELECTOR = "app.kubernetes.io/instance=m,app.kubernetes.io/name=model-poller"
POD = "m-7d9c-abcde"


def tf_serving(*versions: tuple[int, str, str, str]) -> ServingStatus:
    """What TF Serving's GET /v1/models/m answers, parsed by the poller's own code."""
    body = {
        "model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": code, "error_message": message}}
            for v, state, code, message in versions
        ]
    }
    return ServingStatus(reachable=True, versions=parse_status(json.loads(json.dumps(body))))


def entry_of(outcome: SyncOutcome, serving: ServingStatus | None, problems: Any = None) -> dict[str, Any]:
    report = build_report(
        on_disk=outcome.on_disk,
        latest=outcome.latest,
        wanted=outcome.wanted,
        problems=outcome.problems if problems is None else problems,
        finished_at=outcome.finished_at,
        serving=serving,
        confirms=True,
    )
    stored: dict[str, Any] = json.loads(json.dumps(report.to_status()))  # as the API server keeps it
    return stored


def operator_status(entry: dict[str, Any], *, spec: dict[str, Any], ready: bool) -> dict[str, Any]:
    """The status the operator computes for one pod (ready or not) that wrote ``entry``."""
    observed = pod_states.Observed(
        name="m",
        namespace="ml",
        spec=models.ModelDeploymentSpec.from_object("m", {"replicas": 1, "source": {"uri": "gs://b/m/"}, **spec}),
        deployment=pod_states.DeploymentState(replicas=1, ready_replicas=1 if ready else 0, updated_replicas=1),
        pods=(pod_states.PodState(POD, ready=ready),),
    )
    return st.desired_status({"pollers": {POD: entry}}, observed, now=NOW, selector=SELECTOR)


def conditions(entry: dict[str, Any], *, spec: dict[str, Any], ready: bool) -> list[tuple[str, str, str]]:
    desired = operator_status(entry, spec=spec, ready=ready)
    return [(c["type"], c["status"], c["reason"]) for c in desired[models.STATUS_CONDITIONS]]


def degraded_message(entry: dict[str, Any], *, spec: dict[str, Any], ready: bool) -> str:
    desired = operator_status(entry, spec=spec, ready=ready)
    found = find_condition(desired[models.STATUS_CONDITIONS], "Degraded")
    assert found is not None
    return str(found["message"])


def test_in_sync_is_ready_and_not_degraded(dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    outcome = make_engine(Policy(keep=2)).sync()
    entry = entry_of(outcome, tf_serving((1, "END", "OK", ""), (2, "AVAILABLE", "OK", "")))
    assert entry == {
        "versions": [1, 2],
        "serving": 2,
        "latest": 2,
        "lastSync": entry["lastSync"],
        "error": None,
        "reason": None,
    }
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "False", "AsExpected"),
    ]


def test_a_hostile_upload_is_version_rejected(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "3.zip").write_bytes(zip_raw_name("../../escaped"))
    outcome = make_engine(Policy(keep=2)).sync()
    entry = entry_of(outcome, tf_serving((1, "AVAILABLE", "OK", "")))
    assert (entry["reason"], entry["serving"], entry["latest"]) == ("VersionRejected", 1, 1)
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "VersionRejected"),
    ]
    message = degraded_message(entry, spec={}, ready=True)
    assert message.startswith(f"poller of pod {POD}: version 3 ({dirs.uri}3.zip) rejected: unsafe_path: ")


def test_a_pinned_version_missing_at_the_source(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    outcome = make_engine(Policy(keep=None, pinned=frozenset({7}))).sync()
    entry = entry_of(outcome, tf_serving())
    assert entry["reason"] == "PinnedVersionMissing" and entry["serving"] is None
    assert entry["latest"] == 1  # validated though not installed: the newest valid upload
    assert conditions(entry, spec={"versions": {"pinned": [7]}}, ready=False) == [
        ("Ready", "False", "ReplicasNotReady"),
        ("Degraded", "True", "PinnedVersionMissing"),
    ]
    message = degraded_message(entry, spec={"versions": {"pinned": [7]}}, ready=False)
    assert "pinned version 7 is not a valid version at" in message and "change spec.versions.pinned" in message


def test_tf_serving_failing_a_load_is_load_failed_and_the_old_version_serves(
    dirs: Dirs, make_engine: EngineFactory
) -> None:
    for v in (1, 2):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    outcome = make_engine(Policy(keep=2)).sync()
    entry = entry_of(
        outcome,
        tf_serving((1, "AVAILABLE", "OK", ""), (2, "END", "DATA_LOSS", "Can't parse saved_model.pb as binary proto")),
    )
    assert (entry["reason"], entry["serving"]) == ("LoadFailed", 1)
    assert "TF Serving failed to load version 2: DATA_LOSS: Can't parse" in entry["error"]
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "LoadFailed"),
    ]


def test_a_missing_source_is_source_not_found(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    engine = make_engine(Policy(keep=2))
    good = engine.sync()
    engine.store = open_store(f"file://{dirs.root}/nowhere/")
    with pytest.raises(SourceError) as raised:
        engine.sync()
    entry = entry_of(good, tf_serving((1, "AVAILABLE", "OK", "")), problems=[source_problem(raised.value)])
    assert entry["reason"] == "SourceNotFound" and entry["versions"] == [1] and entry["serving"] == 1
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "SourceNotFound"),
    ]


@pytest.fixture
def denying_storage() -> Iterator[str]:
    """The Cloud Storage JSON API as it answers a caller without storage.objects.list: 403
    with GCS's JSON error body (fake-gcs-server has no IAM, so it never denies). The
    poller's real client and error mapping read it."""
    message = (
        "poller@p.iam.gserviceaccount.com does not have storage.objects.list access to the Google Cloud "
        "Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)."
    )
    error = {
        "code": 403,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
    }
    with json_answer(403, {"error": error}) as url:
        yield url


def test_a_denied_source_is_access_denied(
    dirs: Dirs, make_engine: EngineFactory, denying_storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    engine = make_engine(Policy(keep=2))
    good = engine.sync()
    # The source moves to a bucket the poller's identity may not list.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", denying_storage)
    engine.store = open_store("gs://private-bucket/m/")
    with pytest.raises(SourceError) as raised:
        engine.sync()
    entry = entry_of(good, tf_serving((1, "AVAILABLE", "OK", "")), problems=[source_problem(raised.value)])
    assert (entry["reason"], entry["versions"], entry["serving"]) == ("AccessDenied", [1], 1)
    assert entry["error"].startswith("cannot list gs://private-bucket/m/: access denied (403): ")
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "AccessDenied"),
    ]
    message = degraded_message(entry, spec={}, ready=True)
    assert message.startswith(f"poller of pod {POD}: ") and "roles/storage.objectViewer" in message


class VanishingSource(FileStore):
    """The real file:// store; an upload is deleted right after each listing (the source
    changing under the poller), so the download that follows fails as it really would."""

    def list_objects(self) -> list[Any]:
        listed = super().list_objects()
        for obj in listed:
            if obj.name == "2.zip":
                (self.root / obj.name).unlink(missing_ok=True)
        return listed


def test_a_source_failing_a_download_is_source_unreachable(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    source = VanishingSource.from_uri(dirs.uri)
    outcome = make_engine(Policy(keep=2), store=source).sync()
    entry = entry_of(outcome, tf_serving((1, "AVAILABLE", "OK", "")))
    assert (entry["reason"], entry["versions"], entry["serving"]) == ("SourceUnreachable", [1], 1)
    assert entry["error"] == f"version 2: {dirs.uri}2.zip vanished since it was listed"
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "SourceUnreachable"),
    ]
    assert degraded_message(entry, spec={}, ready=True) == f"poller of pod {POD}: {entry['error']}"


def test_a_model_dir_that_cannot_take_a_version_is_install_failed(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    (dirs.src / "2.zip").write_bytes(zip_bytes(model_files(2)))
    engine = make_engine(Policy(keep=2))
    blocker: Path = dirs.models / "2"
    blocker.write_text("not a version directory")  # a local install failure: a file in the way
    # (latest stays 1: a version that failed to install was never validated)
    outcome = engine.sync()
    entry = entry_of(outcome, tf_serving((1, "AVAILABLE", "OK", "")))
    assert (entry["reason"], entry["versions"], entry["serving"], entry["latest"]) == ("InstallFailed", [1], 1, 1)
    assert entry["error"].startswith(f"version 2: {blocker} is in the way")
    # Ready: version 1 is inside the policy (keep 2) and AVAILABLE; Degraded says why 2 is not.
    assert conditions(entry, spec={}, ready=True) == [
        ("Ready", "True", "AllReplicasServing"),
        ("Degraded", "True", "InstallFailed"),
    ]
