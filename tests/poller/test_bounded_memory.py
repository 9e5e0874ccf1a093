"""A sidecar runs for months: what the poller remembers about uploads stays bounded.

Rejected uploads are remembered (so one is never downloaded twice) only while they are
at the source; handled notifications (so a redelivery is acked without work) up to
HINT_MEMORY. Here 10,000 rejected uploads come and go, 100 at a time, through the real
engine on a file:// source, with a notification for each upload and each delete through
the real hint inbox.
"""

from __future__ import annotations

import threading
import time

import pytest
from model_poller.config import HINT_MEMORY
from model_poller.hints import HintInbox
from model_poller.metrics import Metrics
from model_poller.notifications import DELETE, FINALIZE, Hint
from model_poller.policy import Policy

from local_services.archives import model_files, zip_bytes
from tests.poller.kit import Dirs, EngineFactory

ROUNDS = 100
PER_ROUND = 100  # 10,000 rejected uploads in all
JUNK_PER_ROUND = 20  # names that are no version: logged once while they stay


def hint(name: str, generation: int, event: str) -> Hint:
    """A Cloud Storage notification as ``notifications.hint_from_message`` makes it
    (no Pub/Sub message behind it: ack and nack do nothing)."""
    return Hint(bucket="models", name=name, generation=generation, event=event, published=time.time())


@pytest.mark.slow
def test_10000_rejected_uploads_leave_no_memory_once_gone(dirs: Dirs, make_engine: EngineFactory) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    engine = make_engine(Policy(keep=1))
    inbox = HintInbox("", Metrics(), threading.Event().set)
    assert engine.sync().on_disk == (1,)
    for r in range(ROUNDS):
        uploads = [dirs.src / f"{2 + r * PER_ROUND + i}.zip" for i in range(PER_ROUND)]
        junk = [dirs.src / f"notes-{r}-{i}.txt" for i in range(JUNK_PER_ROUND)]
        for path in uploads + junk:
            path.write_bytes(b"not a zip")
        outcome = engine.sync()
        assert outcome.on_disk == (1,) and outcome.latest == 1
        # Only the uploads at the source are remembered: this round's.
        assert len(engine.rejected) == PER_ROUND, len(engine.rejected)
        assert set(engine.rejected.values()) == {"corrupt"}
        generations = [path.stat().st_mtime_ns for path in uploads]
        # Their notifications (late, after the listing) need no sync: each is known rejected.
        assert inbox.take(engine.known) == []
        for path, generation in zip(uploads, generations, strict=False):
            inbox.put(hint(path.name, generation, FINALIZE))
        assert inbox.take(engine.known) == []
        for path, generation in zip(uploads, generations, strict=False):
            path.unlink()
            inbox.put(hint(path.name, generation, DELETE))
        for path in junk:
            path.unlink()
        waiting = inbox.take(engine.known)  # a delete always waits for a listing
        assert len(waiting) == PER_ROUND
        inbox.settle(waiting, {r.version for r in engine.sync().installed})
        assert engine.rejected == {}
        assert len(inbox._handled) <= HINT_MEMORY
    rejected = engine.metrics.registry.get_sample_value("model_poller_rejections_total", {"reason": "corrupt"})
    assert rejected == ROUNDS * PER_ROUND
    # Every upload and every delete was handled: twice the memory, and it stayed at its cap.
    assert 2 * ROUNDS * PER_ROUND > HINT_MEMORY and len(inbox._handled) == HINT_MEMORY
    # Nothing else grows with the uploads either: the details of rejections, what is logged
    # once, the names ignored; what was validated is the one valid version.
    assert engine._rejections == {} and engine._logged == set() and engine._skips == set()
    assert engine._validated == {(1, (dirs.src / "1.zip").stat().st_mtime_ns)}
