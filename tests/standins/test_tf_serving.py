"""The TF Serving stand-in behaves as tensorflow/serving does where model-poller depends on it.

Pure parts (flag parsing, version names, the availability-preserving policy, what loads)
are checked directly; the lifecycle is checked against the real stand-in process, with
versions installed the way the poller installs them (one rename of a complete directory).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local_services.process import port_open
from local_services.tf_serving import (
    Action,
    HarnessState,
    Health,
    Snapshot,
    TfServingProcess,
    UsageError,
    check_saved_model,
    list_versions,
    next_action,
    parse_int64,
    parse_options,
)

NEW, LOADING, READY, DISABLED, ERROR = (
    HarnessState.NEW,
    HarnessState.LOADING,
    HarnessState.READY,
    HarnessState.DISABLED,
    HarnessState.ERROR,
)


def install(base: Path, version: int | str, content: bytes = b"saved model", name: str = "saved_model.pb") -> Path:
    """A complete version directory, made visible by one rename as the poller does."""
    staging = base / f".staging-{version}"
    staging.mkdir(parents=True)
    (staging / name).write_bytes(content)
    (staging / "variables").mkdir()
    final = base / str(version)
    os.rename(staging, final)
    return final


def remove(path: Path) -> None:
    """Take a version away in one rename, then delete it out of the scanned names."""
    hidden = path.with_name(f".removed-{path.name}")
    os.rename(path, hidden)
    for child in sorted(hidden.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    hidden.rmdir()


def count_lines(proc: TfServingProcess, needle: str) -> int:
    return sum(needle in line for line in proc.log_path.read_text().splitlines())


def wait_lines(proc: TfServingProcess, needle: str, count: int, timeout: float = 15) -> None:
    """Wait for the stand-in's log to hold ``count`` lines with ``needle``."""
    deadline = time.monotonic() + timeout
    while count_lines(proc, needle) < count:
        assert time.monotonic() < deadline, f"no {count} lines with {needle!r}:\n{proc.output()}"
        time.sleep(0.05)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


StandIn = Callable[..., TfServingProcess]


@pytest.fixture
def standin(base: Path, tmp_path: Path) -> Iterator[StandIn]:
    """Starts the stand-in over ``base`` with extra flags; stops it after the test."""
    started: list[TfServingProcess] = []

    def start(*extra_args: str, load_seconds: float = 0.2, wait: bool = True) -> TfServingProcess:
        log = tmp_path / f"tf_serving-{len(started)}.log"
        proc = TfServingProcess(base, log, model_name="model", load_seconds=load_seconds, extra_args=extra_args)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.stop()


@dataclass
class Sampler:
    """Polls status and predict as fast as it can, recording every answer."""

    proc: TfServingProcess
    states: list[dict[int, str]] = field(default_factory=list)
    predictions: list[tuple[int, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.states.append(self.proc.states())  # asserts a 200 on every call
            self.predictions.append(self.proc.predict())
            time.sleep(0.01)


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("7", 7),
        ("0007", 7),
        (" 7\t", 7),  # TF's safe_strto64 skips surrounding C spaces
        ("-7", -7),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # beyond int64
        ("", None),
        ("-", None),
        ("+7", None),
        (".7", None),
        ("7.tmp", None),
        (".staging-7", None),
        ("7a", None),
        ("٧", None),  # ARABIC-INDIC DIGIT SEVEN: a digit to Python, not to C's isdigit
        ("７", None),  # FULLWIDTH DIGIT SEVEN
        ("\u00a07", None),  # a non-C space
    ],
)
def test_version_names_parse_like_tf(name: str, version: int | None) -> None:
    assert parse_int64(name) == version


def test_listing_keeps_numeric_names_files_included(base: Path) -> None:
    for name in ("abc", ".7", "7.tmp", "٧", "７", "99999999999999999999"):
        (base / name).mkdir()
    (base / "3").mkdir()
    (base / "5").write_bytes(b"a file named like a version")
    assert list_versions(base) == {3: base / "3", 5: base / "5"}
    assert list_versions(base / "missing") is None


def snap(version: int, state: HarnessState, aspired: bool) -> Snapshot:
    return Snapshot(version, state, aspired)


@pytest.mark.parametrize(
    ("snapshots", "action"),
    [
        ([snap(1, NEW, True)], (Action.LOAD, 1)),
        # The new version loads while the old one keeps serving ...
        ([snap(1, READY, False), snap(2, NEW, True)], (Action.LOAD, 2)),
        ([snap(1, READY, False), snap(2, LOADING, True)], None),
        # ... and the old one goes only once the new one is serving.
        ([snap(1, READY, False), snap(2, READY, True)], (Action.UNLOAD, 1)),
        # A failed new version never takes the old one down.
        ([snap(1, READY, False), snap(2, ERROR, True)], None),
        # Nothing aspired any more: unload.
        ([snap(1, READY, False)], (Action.UNLOAD, 1)),
        # Two unaspired versions serving: the lowest goes even before the new one is ready.
        ([snap(1, READY, False), snap(2, READY, False), snap(3, NEW, True)], (Action.UNLOAD, 1)),
        # Only the highest new aspired version is loaded.
        ([snap(2, NEW, True), snap(3, NEW, True)], (Action.LOAD, 3)),
        ([snap(1, DISABLED, False), snap(2, READY, True)], None),
    ],
)
def test_availability_preserving_policy(snapshots: list[Snapshot], action: tuple[Action, int] | None) -> None:
    assert next_action(snapshots) == action


def test_what_loads(base: Path) -> None:
    assert check_saved_model(install(base, 1)) == Health()
    assert check_saved_model(install(base, 2, name="saved_model.pbtxt")) == Health()
    bad_pb = install(base, 3, b"INVALID protobuf")
    assert check_saved_model(bad_pb) == Health("DATA_LOSS", f"Can't parse {bad_pb}/saved_model.pb as binary proto")
    bad_txt = install(base, 4, b"INVALID", name="saved_model.pbtxt")
    assert check_saved_model(bad_txt) == Health("DATA_LOSS", f"Can't parse {bad_txt}/saved_model.pbtxt as text proto")
    # saved_model.pb wins over saved_model.pbtxt, as in TF's reader.
    (base / "1" / "saved_model.pbtxt").write_bytes(b"INVALID")
    assert check_saved_model(base / "1") == Health()
    for missing in (install(base, 5, name="README"), base / "6"):
        if missing.name == "6":
            missing.write_bytes(b"a file, not a directory")
        health = check_saved_model(missing)
        assert health.code == "NOT_FOUND"
        assert health.message.endswith(f"(should have a file called `saved_model.pb`)\nSpecified file path: {missing}")


def test_flags_are_tf_servings(base: Path) -> None:
    operator_args = [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=faster_rcnn",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=1",
    ]
    options, unknown = parse_options(operator_args)
    assert (options.rest_api_port, options.grpc_port, options.model_name) == (8501, 8500, "faster_rcnn")
    assert (options.model_base_path, options.poll_wait_seconds, unknown) == (base, 1, [])
    assert (options.max_num_load_retries, options.load_retry_interval_seconds) == (5, 60.0)
    # TF Serving only parses --flag=value: the space form is ignored, the name stays "default".
    options, unknown = parse_options(["--rest_api_port=8501", f"--model_base_path={base}", "--model_name", "x"])
    assert options.model_name == "default" and unknown == ["--model_name", "x"]
    with pytest.raises(UsageError, match="model_base_path"):
        parse_options(["--rest_api_port=8501"])
    with pytest.raises(UsageError, match="--rest_api_port"):
        parse_options([f"--model_base_path={base}"])
    with pytest.raises(UsageError, match="--file_system_poll_wait_seconds=0.5"):
        parse_options(["--rest_api_port=1", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.5"])


# --- the process --------------------------------------------------------------------------------


def test_a_version_becomes_available_with_tf_servings_json(base: Path, standin: StandIn) -> None:
    install(base, 1)
    serving = standin()
    entry = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert serving.status() == {"model_version_status": [entry]}
    assert serving.status(1) == {"model_version_status": [entry]}
    assert serving.get("/v1/models/model/versions/9") == (404, {"error": "Could not find version 9 of model model"})
    assert serving.get("/v1/models/other") == (404, {"error": "Could not find any versions of model other"})
    malformed = "/v1/models/model/versions/x"
    assert serving.get(malformed) == (400, {"error": f"Malformed request: GET {malformed}"})
    assert serving.get("/healthz") == (404, None)
    assert serving.predict() == (200, {"predictions": [], "model_version": "1"})
    assert serving.predict(2) == (404, {"error": "Servable not found for request: Specific(model, 2)"})
    assert serving.stop() == 0  # SIGTERM: a clean exit


def test_the_port_opens_only_once_the_first_version_is_available(base: Path, standin: StandIn) -> None:
    serving = standin(wait=False)
    time.sleep(1.5)  # more than one poll of the empty base path
    assert serving.service is not None and serving.service.proc.poll() is None
    assert not port_open(serving.rest_port)
    install(base, 3)
    serving.wait_ready(15)
    assert serving.states() == {3: "AVAILABLE"}


def test_a_first_version_that_fails_stops_the_server(base: Path, standin: StandIn) -> None:
    install(base, 1, b"INVALID")
    serving = standin("--max_num_load_retries=0", wait=False)
    assert serving.wait_exit(15) == 255
    assert "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available" in serving.output()
    assert "DATA_LOSS: Can't parse" in serving.output()


def test_a_newer_version_replaces_the_older_only_once_available(base: Path, standin: StandIn) -> None:
    install(base, 1)
    serving = standin(load_seconds=0.5)
    with Sampler(serving) as sampler:
        install(base, 2)
        serving.wait_for(2, "AVAILABLE")
        serving.wait_for(1, "END")
    assert all("AVAILABLE" in states.values() for states in sampler.states), sampler.states
    assert {1: "AVAILABLE", 2: "LOADING"} in sampler.states  # the old one served meanwhile
    assert [code for code, _ in sampler.predictions] == [200] * len(sampler.predictions)
    served = [int(body["model_version"]) for _, body in sampler.predictions]
    assert served == sorted(served) and {1, 2} <= set(served), served
    assert serving.status(1)["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}


def test_an_invalid_version_fails_the_old_stays_and_it_is_not_retried(base: Path, standin: StandIn) -> None:
    install(base, 1)
    serving = standin("--max_num_load_retries=0")
    bad = install(base, 2, b"INVALID saved model")
    serving.wait_for(2, "END")
    assert serving.status()["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {
            "version": "2",
            "state": "END",
            "status": {"error_code": "DATA_LOSS", "error_message": f"Can't parse {bad}/saved_model.pb as binary proto"},
        },
    ]
    # Repaired in place it stays failed: TF Serving does not retry a version it still aspires.
    (bad / "saved_model.pb").write_bytes(b"saved model")
    time.sleep(1.5)  # more than a poll
    assert serving.states() == {1: "AVAILABLE", 2: "END"}
    assert count_lines(serving, "version=2 state=LOADING") == 1
    # A newer version replaces 1; 2 leaves the aspired set and is forgotten ...
    three = install(base, 3)
    serving.wait_for(3, "AVAILABLE")
    serving.wait_for(1, "END")
    # ... so when it is the latest again it is a new version to TF Serving: loaded again.
    remove(three)
    serving.wait_for(2, "AVAILABLE")
    serving.wait_for(3, "END")
    assert count_lines(serving, "version=2 state=LOADING") == 2


def test_a_failed_version_restored_while_the_old_one_serves_stays_failed(base: Path, standin: StandIn) -> None:
    """TF Serving postpones a request that re-aspires a version it still holds (1, serving but
    unaspired), and never unloads 1 while the failed 2 stays aspired: only a newer number helps."""
    install(base, 1)
    serving = standin("--max_num_load_retries=0")
    bad = install(base, 2, b"INVALID")
    serving.wait_for(2, "END")
    remove(bad)
    wait_lines(serving, "Aspiring version for servable model from path: " + str(base / "1"), 2)
    install(base, 2)
    wait_lines(serving, "Aspiring version for servable model from path: " + str(base / "2"), 2)
    time.sleep(0.5)  # several manager ticks
    assert serving.states() == {1: "AVAILABLE", 2: "END"}
    assert count_lines(serving, "version=2 state=LOADING") == 1


def test_a_failing_load_is_retried_while_loading(base: Path, standin: StandIn) -> None:
    install(base, 1)
    serving = standin("--max_num_load_retries=2", "--load_retry_interval_micros=300000")
    with Sampler(serving) as sampler:
        install(base, 2, b"INVALID")
        serving.wait_for(2, "END")
    loading = [s for s in sampler.states if s.get(2) == "LOADING"]
    assert len(loading) >= 5 and all(s[1] == "AVAILABLE" for s in loading)  # ~0.6 s of retries
    text = serving.log_path.read_text()
    assert "{name: model version: 2} retry: 1" in text and "{name: model version: 2} retry: 2" in text
    assert "retry: 3" not in text


def test_removing_version_dirs_unloads_them(base: Path, standin: StandIn) -> None:
    one, two = install(base, 1), install(base, 2)
    serving = standin()
    assert serving.states() == {2: "AVAILABLE"}  # latest policy: 1 is never aspired
    with Sampler(serving) as sampler:
        remove(two)  # a rollback: 1 becomes the latest
        serving.wait_for(1, "AVAILABLE")
        serving.wait_for(2, "END")
    assert all("AVAILABLE" in states.values() for states in sampler.states), sampler.states
    assert [code for code, _ in sampler.predictions] == [200] * len(sampler.predictions)
    remove(one)  # nothing left: unloaded, still reported, still 200
    serving.wait_for(1, "END")
    assert serving.states() == {1: "END", 2: "END"}
    assert serving.predict() == (404, {"error": "Servable not found for request: Latest(model)"})


def test_names_that_are_not_versions_are_ignored(base: Path, standin: StandIn) -> None:
    install(base, 1)
    serving = standin("--max_num_load_retries=0")
    for name in ("abc", ".7", "7.tmp", "٧", "７", "7a", "99999999999999999999"):
        (base / name).mkdir()
        (base / name / "saved_model.pb").write_bytes(b"saved model")
    (base / "notes.txt").write_bytes(b"x")
    time.sleep(1.5)
    assert serving.states() == {1: "AVAILABLE"}
    # A *file* named like a version is one to TF Serving: it is aspired and fails to load.
    (base / ".5").write_bytes(b"a file")
    os.rename(base / ".5", base / "5")
    serving.wait_for(5, "END")
    assert serving.status(5)["model_version_status"][0]["status"]["error_code"] == "NOT_FOUND"
    assert serving.states() == {1: "AVAILABLE", 5: "END"}
