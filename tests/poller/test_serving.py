"""``--serving-url``: the poller waits for TF Serving's word before it lets a version go.

Real processes only: the poller CLI over a file:// source, and the TF Serving stand-in
(local_services/tf_serving.py) on the same model dir, with the serving container's flags
(``--file_system_poll_wait_seconds=1 --max_num_load_retries=0``). The stand-in loads only
the highest version in the model dir and keeps the old one AVAILABLE until the new one
is (TF Serving's availability-preserving policy); its REST port opens only once a first
version is AVAILABLE.

What the user sees (SPEC "On disk"; docs/poller.md "How it runs"):
- ``/readyz``: 200 once the policy's versions are on disk, whatever TF Serving does.
- ``/serving-ready`` (the serving container's readiness probe): 503 while TF Serving serves
  nothing; 200 while it serves a version inside the policy, or during a transition the
  version it keeps serving (the previous one during a rollout or after a failed load, the
  newer one during a rollback); 503 again when it serves only a version the poller no
  longer stands behind (deleted at the source, gone from disk) and the policy's version
  failed to load. So a rollout, a rollback or a bad upload never makes every replica
  unready at once.
- Versions older than the policy's go only once TF Serving reports a version inside the
  policy AVAILABLE; versions newer than the policy's newest go at once (else a rollback
  could never load).
- The pod's report (``build_report``) counts only versions inside the policy: ``serving``
  and a ``LoadFailed`` reason with TF Serving's own message.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from model_poller.feedback import changed_model_dir
from model_poller.report import build_report
from model_poller.serving import ServingWatcher, fetch, serving_version
from model_poller.sync_outcome import SyncOutcome
from model_poller_api.models import PollerReport, ReportReason

from local_services.archives import model_files, zip_bytes
from local_services.process import wait_for
from local_services.tf_serving import TfServingProcess
from tests.poller.kit import Dirs
from tests.poller.procs import PollerProcess

MODEL = "m"
SAMPLE_EVERY = 0.05

StartPoller = Callable[..., PollerProcess]
StandIn = Callable[..., TfServingProcess]


# -- fixtures: the two processes ------------------------------------------------------------


@pytest.fixture
def standin(dirs: Dirs, tmp_path: Path) -> Iterator[StandIn]:
    """Makes (does not start) a stand-in on the poller's model dir; stopped at teardown."""
    made: list[TfServingProcess] = []

    def make(load_seconds: float = 0.2) -> TfServingProcess:
        proc = TfServingProcess(
            dirs.models,
            tmp_path / f"tf-serving-{len(made)}.log",
            model_name=MODEL,
            load_seconds=load_seconds,
            poll_seconds=1,
            extra_args=["--max_num_load_retries=0"],
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.service is not None:
            proc.stop()


@pytest.fixture
def start_poller(dirs: Dirs, tmp_path: Path) -> Iterator[StartPoller]:
    """The real CLI on ``dirs``, polling every second; stopped at teardown, where it must
    exit 0 without a traceback."""
    started: list[PollerProcess] = []

    def start(*args: str) -> PollerProcess:
        argv = ["--source", dirs.uri, "--model-dir", str(dirs.models), "--poll-interval", "1", *args]
        proc = PollerProcess(argv, tmp_path / f"poller-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        code = proc.terminate()
        assert code == 0, proc.output()
        assert "Traceback" not in proc.output(), proc.output()


def serving_args(url: str, keep: int) -> list[str]:
    return ["--serving-url", url, "--model-name", MODEL, "--keep", str(keep)]


# -- helpers ----------------------------------------------------------------------------------


def upload(dirs: Dirs, version: int, invalid: bool = False) -> None:
    """A version archive; ``invalid``: valid for the poller (it holds saved_model.pb), but
    the stand-in fails to load it with DATA_LOSS, as TF Serving does with a corrupt proto."""
    files = model_files(version)
    if invalid:
        files["saved_model.pb"] = b"INVALID proto " + str(version).encode()
    tmp = dirs.src / f".{version}.zip.part"
    tmp.write_bytes(zip_bytes(files))
    tmp.rename(dirs.src / f"{version}.zip")  # the listing never sees half an upload


def on_disk(models: Path) -> frozenset[int]:
    try:
        return frozenset(int(p.name) for p in models.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return frozenset()


def states(proc: TfServingProcess) -> dict[int, str] | None:
    """Version -> state from the stand-in's status API; None while its port is closed."""
    try:
        with urllib.request.urlopen(f"{proc.url}/v1/models/{MODEL}", timeout=2) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError):
        return None
    return {int(e["version"]): e["state"] for e in body["model_version_status"]}


def available(seen: dict[int, str] | None) -> frozenset[int]:
    return frozenset(v for v, s in (seen or {}).items() if s == "AVAILABLE")


def probe(poller: PollerProcess, path: str) -> int:
    try:
        return poller.get(path)[0]
    except OSError:
        return 0  # not answering yet


@dataclass(frozen=True)
class Sample:
    """One moment, read in this order: the poller's probe, the model dir, the stand-in.
    States only move forward (a version once AVAILABLE stays so until unloaded), so a
    sample that shows a version missing from disk and a successor not yet AVAILABLE
    proves a moment when both were true."""

    at: float
    serving_ready: int
    disk: frozenset[int]
    states: dict[int, str] | None


@dataclass
class Sampler:
    poller: PollerProcess
    standin: TfServingProcess
    models: Path
    samples: list[Sample] = field(default_factory=list)
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
        while not self._stop.wait(SAMPLE_EVERY):
            ready = probe(self.poller, "/serving-ready")
            disk = on_disk(self.models)
            self.samples.append(Sample(time.monotonic(), ready, disk, states(self.standin)))

    def served(self) -> list[Sample]:
        """Samples taken while the stand-in answered."""
        return [s for s in self.samples if s.states is not None]


def transitions(proc: TfServingProcess) -> list[tuple[int, str]]:
    """Every state transition the stand-in published, in order (one log line each)."""
    text = proc.log_path.read_text(errors="replace")
    return [(int(v), s) for v, s in re.findall(rf"model={MODEL} version=(\d+) state=([A-Z]+)", text)]


def never_unserved(proc: TfServingProcess) -> None:
    """Replays the stand-in's own transitions: from its first AVAILABLE version on, some
    version was AVAILABLE at every moment (exact, unlike sampling)."""
    current: dict[int, str] = {}
    serving_seen = False
    for version, state in transitions(proc):
        current[version] = state
        serving_seen = serving_seen or state == "AVAILABLE"
        assert not serving_seen or "AVAILABLE" in current.values(), f"no version AVAILABLE after {version} {state}"


# -- 1. the probes follow the initial sync and TF Serving ---------------------------------------


@pytest.mark.slow
def test_readyz_after_the_initial_sync_serving_ready_after_tf_serving(
    dirs: Dirs, start_poller: StartPoller, standin: StandIn
) -> None:
    upload(dirs, 1)
    tf = standin(load_seconds=1.0)  # its port is known; it is not running yet
    poller = start_poller(*serving_args(tf.url, keep=1))
    poller.wait_for("/readyz", timeout=30)
    # The policy's version is on disk: ready, though TF Serving has loaded nothing.
    assert on_disk(dirs.models) == {1}
    assert poller.get("/serving-ready")[0] == 503
    wait_for("the unreachable TF Serving in the log", lambda: "TF Serving not answering yet" in poller.output(), 10)
    assert poller.get("/serving-ready")[0] == 503

    tf.start(wait=False)
    with Sampler(poller, tf, dirs.models) as sampler:
        poller.wait_for("/serving-ready", timeout=30)
        # (and one sample of the stand-in saying so, under load the sampler can lag behind)
        wait_for("a sample of 1 AVAILABLE", lambda: any(1 in available(s.states) for s in sampler.served()), 10)
    seen = states(tf)
    assert seen == {1: "AVAILABLE"}
    # Never 200 before the stand-in said AVAILABLE (a 200 is read before the stand-in).
    early = [s for s in sampler.samples if s.serving_ready == 200 and 1 not in available(s.states)]
    assert early == [], early
    assert any(s.serving_ready == 503 for s in sampler.samples)
    # It follows within a fast poll, not a slow one: 1 was just installed, so the poller
    # watches TF Serving closely.
    first_available = min(s.at for s in sampler.served() if 1 in available(s.states))
    assert max(s.at for s in sampler.samples if s.serving_ready == 503) - first_available < 2.0
    assert poller.get("/readyz")[0] == 200


# -- 2. an older version goes only once the new one is AVAILABLE --------------------------------


@pytest.mark.slow
def test_removal_waits_for_tf_serving_to_report_the_new_version_available(
    dirs: Dirs, start_poller: StartPoller, standin: StandIn
) -> None:
    upload(dirs, 1)
    tf = standin(load_seconds=1.0)
    poller = start_poller(*serving_args(tf.url, keep=1))
    poller.wait_for("/readyz", timeout=30)
    tf.start(wait=False)
    poller.wait_for("/serving-ready", timeout=30)

    with Sampler(poller, tf, dirs.models) as sampler:
        upload(dirs, 2)
        wait_for("1 removed after 2 loaded", lambda: on_disk(dirs.models) == {2}, 30)
        tf.wait_for(1, "END")
        time.sleep(0.3)
    samples = sampler.served()
    assert any(s.disk == {1, 2} and 2 not in available(s.states) for s in samples), "2 installed before it loaded"
    gone_early = [s for s in samples if 1 not in s.disk and 2 not in available(s.states)]
    assert gone_early == [], f"version 1 removed before TF Serving reported 2 AVAILABLE: {gone_early}"
    unserved = [s for s in samples if not available(s.states)]
    assert unserved == [], unserved
    never_unserved(tf)
    # 1 is outside keep 1 once 2 is installed, but it is what TF Serving serves while 2
    # loads: the pod stays ready throughout the rollout.
    assert {s.serving_ready for s in sampler.samples} == {200}
    assert poller.metric("model_poller_removals_total") == 1
    assert "removed version 1" in poller.output()


# -- 3. a version TF Serving cannot load --------------------------------------------------------


def wait_failed(tf: TfServingProcess, version: int) -> None:
    tf.wait_for(version, "END", timeout=20)
    entry = tf.status(version)["model_version_status"][0]
    assert entry["status"]["error_code"] == "DATA_LOSS", entry


def report_from_tf_serving(tf: TfServingProcess, on_disk: tuple[int, ...], wanted: set[int]) -> PollerReport:
    """The pod's entry as the poller builds it, from TF Serving's real answer."""
    status = fetch(tf.url, MODEL)
    assert status.reachable, status.problem
    return build_report(
        on_disk=on_disk,
        latest=max(on_disk),
        wanted=frozenset(wanted),
        problems=[],
        finished_at=time.time(),
        serving=status,
        confirms=True,
    )


@pytest.mark.slow
def test_load_failure_keep_1_keeps_the_old_version_and_says_so(
    dirs: Dirs, start_poller: StartPoller, standin: StandIn
) -> None:
    """keep 1, 1 serving, a bad 2 uploaded. What the user sees: 1 stays on disk and
    AVAILABLE (TF Serving keeps serving it), the pod stays ready (/serving-ready 200: 1 is
    what TF Serving serves after the failed load), the log and the pod's report say TF
    Serving failed to load 2 (reason LoadFailed, ``serving`` none: nothing inside the
    policy serves, so the ModelDeployment is not Ready). A newer good version is the way
    out; re-uploading 2 is not (TF Serving never reloads a version number)."""
    upload(dirs, 1)
    tf = standin()
    poller = start_poller(*serving_args(tf.url, keep=1))
    poller.wait_for("/readyz", timeout=30)
    tf.start()
    poller.wait_for("/serving-ready", timeout=30)

    with Sampler(poller, tf, dirs.models) as sampler:
        upload(dirs, 2, invalid=True)
        wait_failed(tf, 2)
        wait_for("the failure logged", lambda: "TF Serving failed to load version 2: DATA_LOSS" in poller.output(), 10)
        time.sleep(2.5)  # a few syncs and TF Serving polls later, nothing changed
    assert "as binary proto" in poller.output()
    assert {s.serving_ready for s in sampler.samples} == {200}
    assert on_disk(dirs.models) == {1, 2}
    assert states(tf) == {1: "AVAILABLE", 2: "END"}
    assert poller.get("/readyz")[0] == 200  # the policy's version is on disk

    report = report_from_tf_serving(tf, (1, 2), {2})
    assert report.reason == ReportReason.LOAD_FAILED
    assert report.serving is None
    assert report.error is not None and report.error.startswith("TF Serving failed to load version 2: DATA_LOSS: ")
    assert f"Can't parse {dirs.models / '2' / 'saved_model.pb'} as binary proto" in report.error

    # The way out: a newer good version; once it is AVAILABLE, 1 and the bad 2 go.
    upload(dirs, 3)
    wait_for("1 and 2 removed after 3 loaded", lambda: on_disk(dirs.models) == {3}, 30)
    assert 3 in available(states(tf))
    assert poller.get("/serving-ready")[0] == 200
    never_unserved(tf)


@pytest.mark.slow
def test_load_failure_keep_2_still_serving_ready(dirs: Dirs, start_poller: StartPoller, standin: StandIn) -> None:
    """keep 2: the failed 2 and the serving 1 are both inside the policy, so the pod stays
    ready and the report says LoadFailed with TF Serving's message, serving 1."""
    upload(dirs, 1)
    tf = standin()
    poller = start_poller(*serving_args(tf.url, keep=2))
    poller.wait_for("/readyz", timeout=30)
    tf.start()
    poller.wait_for("/serving-ready", timeout=30)

    with Sampler(poller, tf, dirs.models) as sampler:
        upload(dirs, 2, invalid=True)
        wait_failed(tf, 2)
        wait_for("the failure logged", lambda: "TF Serving failed to load version 2" in poller.output(), 10)
        time.sleep(1.5)
    assert {s.serving_ready for s in sampler.samples} == {200}
    assert on_disk(dirs.models) == {1, 2}
    assert states(tf) == {1: "AVAILABLE", 2: "END"}

    report = report_from_tf_serving(tf, (1, 2), {1, 2})
    assert report.reason == ReportReason.LOAD_FAILED
    assert report.serving == 1
    assert report.versions == (1, 2)
    assert report.error is not None and "version 2: DATA_LOSS: Can't parse" in report.error
    # What the poller itself exposes: TF Serving serves 1 inside the policy, 2 failed.
    assert poller.metric("model_poller_serving_version") == 1
    assert poller.metric("model_poller_load_failures") == 1


# -- 4. rollback by deleting the newest version at the source -----------------------------------


@pytest.mark.slow
def test_rollback_by_delete_does_not_deadlock(dirs: Dirs, start_poller: StartPoller, standin: StandIn) -> None:
    """keep 2 with 1 and 2 on disk and 2 AVAILABLE; 2 deleted at the source. 2 is newer
    than every version in the policy, so the poller removes it at once (TF Serving loads
    only the highest version: while 2 stayed, 1 could never load); TF Serving keeps
    serving 2 until 1 is AVAILABLE, and the pod stays ready meanwhile."""
    upload(dirs, 1)
    upload(dirs, 2)
    tf = standin(load_seconds=1.0)
    poller = start_poller(*serving_args(tf.url, keep=2))
    poller.wait_for("/readyz", timeout=30)
    assert on_disk(dirs.models) == {1, 2}
    tf.start()
    assert states(tf) == {2: "AVAILABLE"}
    poller.wait_for("/serving-ready", timeout=30)

    with Sampler(poller, tf, dirs.models) as sampler:
        (dirs.src / "2.zip").unlink()
        tf.wait_for(1, "AVAILABLE", timeout=20)
        tf.wait_for(2, "END", timeout=10)
        time.sleep(0.3)
    assert on_disk(dirs.models) == {1}
    samples = sampler.served()
    # 2 went before TF Serving had 1 AVAILABLE: no waiting for a confirmation that could
    # never come.
    assert any(2 not in s.disk and 1 not in available(s.states) for s in samples), "2 not removed at once"
    unserved = [s for s in samples if not available(s.states)]
    assert unserved == [], unserved
    never_unserved(tf)
    assert {s.serving_ready for s in sampler.samples} == {200}
    assert "removed version 2" in poller.output()


@pytest.mark.slow
def test_rollback_to_a_version_tf_serving_cannot_load(dirs: Dirs, start_poller: StartPoller, standin: StandIn) -> None:
    """The same rollback, but 1 fails to load. 2 was deleted at the source and is gone from
    disk: TF Serving still serves it (nothing else is AVAILABLE), but the poller no longer
    stands behind it, so the pod turns unready (503) and the report says LoadFailed for 1.
    Nothing is ever left unserved by TF Serving itself."""
    upload(dirs, 1, invalid=True)  # never loaded while 2 is the highest
    upload(dirs, 2)
    tf = standin()
    poller = start_poller(*serving_args(tf.url, keep=2))
    poller.wait_for("/readyz", timeout=30)
    tf.start()
    poller.wait_for("/serving-ready", timeout=30)

    (dirs.src / "2.zip").unlink()
    wait_failed(tf, 1)
    poller.wait_for("/serving-ready", 503, timeout=10)
    assert on_disk(dirs.models) == {1}
    assert states(tf) == {1: "END", 2: "AVAILABLE"}
    never_unserved(tf)
    report = report_from_tf_serving(tf, (1,), {1})
    assert report.reason == ReportReason.LOAD_FAILED
    assert report.serving is None
    assert report.error is not None and report.error.startswith("TF Serving failed to load version 1: DATA_LOSS: ")
    assert poller.get("/readyz")[0] == 200


# -- 6. TF Serving unreachable ------------------------------------------------------------------


@pytest.mark.slow
def test_tf_serving_unreachable_keeps_syncing_and_keeps_old_versions(
    dirs: Dirs, start_poller: StartPoller, standin: StandIn
) -> None:
    """No TF Serving answers at --serving-url: the poller installs what the policy wants,
    /serving-ready stays 503, and versions older than the policy's stay (no confirmation);
    only a version newer than the policy's newest goes (a rollback needs that)."""
    tf = standin()  # never started: its port stays closed
    upload(dirs, 1)
    poller = start_poller(*serving_args(tf.url, keep=1))
    poller.wait_for("/readyz", timeout=30)
    assert on_disk(dirs.models) == {1}

    upload(dirs, 2)
    wait_for("2 installed", lambda: on_disk(dirs.models) == {1, 2}, 30)
    upload(dirs, 3)
    wait_for("3 installed", lambda: on_disk(dirs.models) == {1, 2, 3}, 30)
    synced = poller.metric("model_poller_last_sync_timestamp_seconds")
    wait_for("more syncs", lambda: poller.metric("model_poller_last_sync_timestamp_seconds") >= synced + 2, 10)
    assert on_disk(dirs.models) == {1, 2, 3}, "an older version removed without TF Serving's confirmation"
    assert poller.get("/serving-ready")[0] == 503

    (dirs.src / "3.zip").unlink()
    wait_for("3 (newer than the policy's newest) removed", lambda: 3 not in on_disk(dirs.models), 30)
    synced = poller.metric("model_poller_last_sync_timestamp_seconds")
    wait_for("more syncs", lambda: poller.metric("model_poller_last_sync_timestamp_seconds") >= synced + 2, 10)
    assert on_disk(dirs.models) == {1, 2}
    assert poller.get("/serving-ready")[0] == 503
    assert poller.get("/readyz")[0] == 200
    assert poller.get("/healthz")[0] == 200
    assert poller.metric("model_poller_removals_total") == 1
    assert poller.metric("model_poller_installs_total") == 3
    assert "TF Serving not answering yet" in poller.output()


# -- 5. the answer a report carries is asked after the model dir changed -----------------------


def test_refresh_replaces_an_answer_from_before_the_model_dir_changed(
    dirs: Dirs, standin: StandIn, tmp_path: Path
) -> None:
    """The watcher polls slowly while nothing is expected; a sync that installed or removed a
    version asks TF Serving again (``Feedback.refresh_serving``) so the pod's entry never
    reports a version TF Serving has since unloaded (seen after a live rollback)."""
    dirs.models.mkdir(exist_ok=True)
    (dirs.models / "1").mkdir()
    for name, data in model_files(1).items():
        (dirs.models / "1" / name).parent.mkdir(parents=True, exist_ok=True)
        (dirs.models / "1" / name).write_bytes(data)
    tf = standin(load_seconds=0.1)
    tf.start()
    changes: list[float] = []
    watcher = ServingWatcher(tf.url, MODEL, lambda: changes.append(time.monotonic()), fast=60, slow=60)
    watcher.start()
    try:
        wait_for("the first answer", lambda: (s := watcher.current()) is not None and s.available() == {1}, 10)
        (dirs.models / "2").mkdir()
        for name, data in model_files(2).items():
            (dirs.models / "2" / name).parent.mkdir(parents=True, exist_ok=True)
            (dirs.models / "2" / name).write_bytes(data)
        tf.wait_for(2, "AVAILABLE")
        tf.wait_for(1, "END")
        stale = watcher.current()
        assert stale is not None and stale.available() == {1}, "the slow watcher has not asked again yet"
        assert serving_version(stale, {1, 2}) == 1  # what a report would claim without a refresh

        assert not changed_model_dir(SyncOutcome(latest=2, wanted=frozenset({1, 2}), on_disk=(1, 2)))
        assert changed_model_dir(SyncOutcome(latest=2, wanted=frozenset({1, 2}), on_disk=(1, 2), removed=[3]))
        watcher.refresh()  # what Feedback.refresh_serving does after such a sync
        fresh = watcher.current()
        assert fresh is not None and fresh.available() == {2}, fresh
        assert serving_version(fresh, {1, 2}) == 2 and changes, "the change was announced"
    finally:
        watcher.stop()
