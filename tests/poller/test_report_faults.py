"""``--report-to`` when the real API server answers with errors: 429 (with Retry-After),
503 and 409 to the status writes, 429/503 to the watch and get of the ModelDeployment,
and 410 ("too old resource version") to a resumed watch; and the heartbeat's spacing.

The answers come from ``local_services/kube_fault_proxy.py``, a TLS reverse proxy (a test
stand-in) between the poller and the real kube-apiserver, named by the poller's kubeconfig
(the ServiceAccount's TokenRequest token, as in test_report_to.py). Everything it does not
answer itself is the real API server's answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from model_poller import entry_writer
from model_poller.config import Target
from model_poller.entry_writer import PodEntryWriter
from model_poller.kube import Kube
from model_poller_api.models import PollerReport

from local_services.kube import KubeControlPlane
from local_services.kube_fault_proxy import KubeFaultProxy, Seen
from local_services.process import wait_for
from tests.poller import kube_identity as ki
from tests.poller.test_report_to import MD, POD, Setup, full_log, has_versions
from tests.poller.test_report_to import setup as setup  # the fixture: a ModelDeployment, its identity, versions 1 and 2

STATUS = "/status"
# How long the proxy answers the status writes with an error.
FAULT_SECONDS = 8.0


@dataclass
class Proxied:
    setup: Setup
    proxy: KubeFaultProxy

    def status_writes(self, since: float) -> list[Seen]:
        return [s for s in self.proxy.requests("PATCH", STATUS) if s.at >= since]


@pytest.fixture
def proxied(setup: Setup) -> Iterator[Proxied]:
    """``setup`` with the poller's kubeconfig pointing at a fault proxy before the API server."""
    with KubeFaultProxy(setup.kube) as proxy:
        config = yaml.safe_load(setup.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = proxy.url
        path = setup.root / "poller-via-proxy.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        setup.kubeconfig = path
        try:
            yield Proxied(setup, proxy)
        finally:
            for proc in setup.procs:
                proc.terminate()


def _versions_written(seen: Seen) -> list[int]:
    entry = json.loads(seen.body)["status"]["pollers"][POD]
    versions: list[int] = entry["versions"]
    return versions


# -- 1. 429 / 503 / 409 to the status writes ------------------------------------------------


@pytest.mark.kube
@pytest.mark.slow
@pytest.mark.parametrize("code", [429, 503, 409])
def test_status_writes_answered_with_errors_are_retried_with_backoff_then_the_latest_state_is_written(
    proxied: Proxied, code: int
) -> None:
    s, proxy = proxied.setup, proxied.proxy
    proc = s.start()
    # Settled first (serving and latest written too), so no write of [1, 2] is still on its
    # way when the fault begins.
    s.wait_entry(lambda e: has_versions([1, 2], serving=2)(e) and e.get("latest") == 2, "settled entry with [1, 2]")

    retry_after = 2 if code == 429 else None
    fault = proxy.fail(code, method="PATCH", path_suffix=STATUS, seconds=FAULT_SECONDS, retry_after=retry_after)
    started = time.monotonic()
    # Syncing goes on while every status write is refused, through two version changes.
    s.upload(3)
    s.wait_disk([2, 3], proc)
    s.upload(4)
    s.wait_disk([3, 4], proc)
    assert time.monotonic() - started < FAULT_SECONDS, "the uploads took longer than the fault: nothing tested"
    wait_for("the fault's end", lambda: time.monotonic() >= started + FAULT_SECONDS, FAULT_SECONDS + 1)
    ended = time.monotonic()

    entry = s.wait_entry(has_versions([3, 4], serving=4), f"entry with [3, 4] after the {code}s", timeout=15)
    took = time.monotonic() - ended
    assert entry["latest"] == 4 and entry.get("error") is None, entry
    assert proc.proc.poll() is None, proc.output()

    attempts = fault.times
    gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:], strict=False)]
    print(f"{code}: {len(attempts)} refused writes in {FAULT_SECONDS:g} s, gaps {gaps}; entry right {took:.1f}s after")
    # Retried (not given up), and with backoff: from 0.5 s doubling (jitter cuts up to
    # half), capped at 5 s: at most 6 attempts in 8 s. A retry after every sync (every
    # second) would make 8 or more; a retry loop without a delay, hundreds.
    assert 2 <= len(attempts) <= 6, (len(attempts), gaps)
    assert all(b >= a * 0.45 for a, b in zip(gaps, gaps[1:], strict=False)), f"no backoff: {gaps}"
    if retry_after is not None:
        # The API server said how long to wait: never sooner.
        assert min(gaps) >= retry_after - 0.05, f"retried before Retry-After {retry_after}s: {gaps}"
    # The retries carried the state of their time; the first accepted write after the fault is
    # the latest state ([3, 4]), never the stale [2, 3] of the first refused write, and once.
    accepted = [w for w in proxied.status_writes(started) if not w.injected]
    assert accepted and all(w.code == 200 for w in accepted), [(w.code, w.injected) for w in accepted]
    assert [_versions_written(w) for w in accepted] == [[3, 4]], [_versions_written(w) for w in accepted]
    assert _versions_written(proxied.status_writes(started)[-1]) == [3, 4]
    # Retries are at most 5 s apart; 3 s more for the write and this test's polling on a busy machine.
    assert took <= 8.0, f"entry right {took:.1f}s after the API server answered normally again (retries <= 5 s apart)"


# -- 2. 429 / 503 to the watch and get of the ModelDeployment -------------------------------


@pytest.mark.kube
@pytest.mark.slow
@pytest.mark.parametrize("code", [429, 503])
def test_watch_and_get_answered_with_errors_are_retried_and_the_policy_change_still_arrives(
    proxied: Proxied, code: int
) -> None:
    s, proxy = proxied.setup, proxied.proxy
    proc = s.start()
    s.wait_entry(has_versions([1, 2], serving=2), "entry with [1, 2]")
    wait_for("the poller's watch through the proxy", lambda: proxy.open_watches >= 1, 10)

    md_path = f"/{MD}"
    fault = proxy.fail(code, method="GET", path_suffix="/modeldeployments", seconds=FAULT_SECONDS, retry_after=1)
    got = proxy.fail(code, method="GET", path_suffix=md_path, seconds=FAULT_SECONDS, retry_after=1)
    started = time.monotonic()
    proxy.end_watches()  # the server ends the watch: the re-watch meets the errors
    wait_for(f"a {code} to the re-watch", lambda: fault.answered >= 1, 5)
    # Meanwhile the policy changes (unseen yet), and a version is uploaded: installs go on.
    ki.patch_md(s.kube, s.namespace, MD, {"spec": {"versions": {"keep": None, "pinned": [1]}}})
    s.upload(3)
    s.wait_disk([2, 3], proc)
    assert time.monotonic() - started < FAULT_SECONDS, "the upload took longer than the fault: nothing tested"
    wait_for("the fault's end", lambda: time.monotonic() >= started + FAULT_SECONDS, FAULT_SECONDS + 1)
    ended = time.monotonic()
    s.wait_disk([1], proc, timeout=15)
    took = time.monotonic() - ended
    attempts = sorted(fault.times + got.times)
    gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:], strict=False)]
    print(
        f"{code} to watch/get: {len(attempts)} refused in {FAULT_SECONDS:g} s, gaps {gaps}; pinned [1] {took:.1f}s after"
    )
    assert 2 <= len(attempts) <= 7, (len(attempts), gaps)
    assert min(gaps) >= 0.95, f"retried before Retry-After 1s: {gaps}"
    assert took <= 8.0, took
    assert proc.proc.poll() is None, proc.output()


# -- 3. 410: resuming a watch from a resourceVersion the API server no longer has ------------


@pytest.mark.kube
@pytest.mark.slow
def test_a_watch_resumed_from_a_resource_version_too_old_gets_410_and_the_policy_still_follows(
    proxied: Proxied, kube: KubeControlPlane
) -> None:
    """The watch ends (as at its timeoutSeconds) and its re-watch, from the last
    resourceVersion the poller saw, reaches an API server that restarted meanwhile: its watch
    cache starts at the current revision, so the old one is "too old" (410). The poller gets
    the ModelDeployment again and watches from the server's current state (not from that
    object's resourceVersion, which may be too old as well); a spec.versions change then
    arrives."""
    s, proxy = proxied.setup, proxied.proxy
    proc = s.start()
    s.wait_entry(has_versions([1, 2], serving=2), "entry with [1, 2]")
    wait_for("the poller's watch through the proxy", lambda: proxy.open_watches >= 1, 10)

    proxy.hold_watches()
    proxy.end_watches()
    wait_for("the poller's re-watch, held by the proxy", lambda: proxy.held_watches >= 1, 10)
    # Writes of the same kind move the revision on, then the restart empties the watch cache.
    ki.create_md(kube, s.namespace, "other", {"source": {"uri": f"file://{s.src}/"}})
    for keep in range(1, 6):
        ki.patch_md(kube, s.namespace, "other", {"spec": {"versions": {"keep": keep}}})
    kube.stop_apiserver()
    kube.start_apiserver()
    watches_before = len([r for r in proxy.requests("GET") if r.watch])
    proxy.release_watches()

    wait_for("a 410 to the resumed watch", lambda: proxy.expired_watches >= 1, 15)
    wait_for("the poller's log of the 410", lambda: "too old resource version" in full_log(proc), 10)
    # Then one fresh watch, which stays open: not a get and a watch from the object's own
    # resourceVersion (older than the restarted server's watch cache) again and again, each
    # answered 410.
    wait_for("a fresh watch after the 410", lambda: proxy.open_watches >= 1, 15)
    time.sleep(3)
    rewatches = [r for r in proxy.requests("GET") if r.watch and not r.injected][watches_before:]
    print(f"watch requests after the release: {[(r.code, r.query) for r in rewatches]}")
    assert proxy.expired_watches == 1, f"{proxy.expired_watches} watches answered 410: {rewatches}"
    assert proxy.open_watches == 1, proxy.open_watches

    changed = time.monotonic()
    ki.patch_md(s.kube, s.namespace, MD, {"spec": {"versions": {"keep": None, "pinned": [1]}}})
    s.wait_disk([1], proc, timeout=10)
    took = time.monotonic() - changed
    print(f"after the 410: pinned [1] on disk {took:.2f}s after the change")
    assert took <= 1.0, f"the change reached the poller {took:.2f}s after it was made"
    assert proc.proc.poll() is None, proc.output()


# -- 4. the heartbeat -----------------------------------------------------------------------


@pytest.mark.kube
def test_heartbeat_is_never_sooner_than_its_interval(kube: KubeControlPlane, namespace: str) -> None:
    """``--status-heartbeat 300`` means at most one heartbeat per 300 s: the jitter (which
    keeps pods started together apart) only lengthens the interval. Here 0.5 s, so a dozen
    heartbeats of an unchanged entry are written to the real API server in a few seconds."""
    ki.create_md(kube, namespace, MD, {"source": {"uri": "file:///src/"}})
    heartbeat = 0.5
    written: list[float] = []
    lock = threading.Lock()

    def on_write(outcome: str) -> None:
        assert outcome == "ok", outcome
        with lock:
            written.append(time.monotonic())

    writer = PodEntryWriter(Kube(kube.api_client(), Target(namespace, MD)), POD, heartbeat=heartbeat, on_write=on_write)
    writer.start()
    try:
        writer.write_entry(PollerReport(versions=(1,), serving=1, latest=1, last_sync="2026-01-01T00:00:00Z"))
        wait_for("13 writes", lambda: len(written) >= 13, 30)
    finally:
        writer.stop()
    gaps = [b - a for a, b in zip(written, written[1:], strict=False)]
    print(f"heartbeat {heartbeat}s: gaps {[round(g, 3) for g in gaps]}")
    assert min(gaps) >= heartbeat, f"a heartbeat {min(gaps):.3f}s after the last write (interval {heartbeat}s)"
    # Jittered, so pods started together drift apart (the spread is up to 20 %; with the
    # API server's answer time on top).
    assert max(gaps) <= heartbeat * (1 + entry_writer.HEARTBEAT_JITTER) + 1.0, gaps
    assert max(gaps) - min(gaps) > 0.005, f"no jitter: {gaps}"
    entry = ki.pollers(kube, namespace, MD)[POD]
    assert entry["versions"] == [1], entry
