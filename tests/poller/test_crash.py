"""kill -9 at random moments during installs of a large archive: no numeric directory is
ever partial, and the next start completes the sync and leaves no staging debris."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from local_services.archives import model_files
from tests.poller.kit import Dirs

MiB = 1 << 20
FILES = 6
FILE_SIZE = 32 * MiB


def build_large_zip(path: Path, version: int) -> dict[str, int]:
    """A ~200 MiB zip (incompressible shards) holding a SavedModel; returns name -> size."""
    expected = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in model_files(version).items():
            zf.writestr(name, data)
            expected[name] = len(data)
        block = os.urandom(MiB)
        for i in range(FILES):
            name = f"variables/shard-{i}"
            with zf.open(name, "w", force_zip64=True) as fh:
                for j in range(FILE_SIZE // MiB):
                    fh.write(block[j:] + block[:j])
            expected[name] = FILE_SIZE
    return expected


class Watcher(threading.Thread):
    """Looks at the model dir as TF Serving would, as often as it can."""

    def __init__(self, models: Path, expected: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.models = models
        self.expected = expected
        self.problems: list[str] = []
        self.looks = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                children = list(self.models.iterdir())
            except FileNotFoundError:
                children = []
            for child in children:
                if not child.name.isdigit():
                    continue
                for name, size in self.expected.items():
                    try:
                        got = (child / name).stat().st_size
                    except FileNotFoundError:
                        if child.exists():
                            self.problems.append(f"{child.name}/{name} missing")
                        continue
                    if got != size:
                        self.problems.append(f"{child.name}/{name}: {got} of {size} bytes")
            self.looks += 1


def start(dirs: Dirs) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model_poller",
            "--source",
            dirs.uri,
            "--model-dir",
            str(dirs.models),
            "--once",
            "--keep",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_kill_9_during_install_never_leaves_a_partial_version(dirs: Dirs) -> None:
    expected = build_large_zip(dirs.src / "7.zip", 7)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    # How long an uninterrupted install takes here, to aim the kills inside it.
    t0 = time.monotonic()
    probe = Dirs(dirs.root, dirs.src, dirs.root / "probe-models")
    assert start(probe).wait(300) == 0
    full = time.monotonic() - t0

    watcher = Watcher(dirs.models, expected)
    watcher.start()
    kills = 0
    for _ in range(8):
        proc = start(dirs)
        time.sleep(rng.uniform(0.05, full * 0.95))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(60)
        if (dirs.models / "7").exists():
            # Completed before the kill: start over to interrupt another install.
            os.rename(dirs.models / "7", dirs.models / ".model-poller-trash-test")
    watcher.done.set()
    watcher.join()
    assert kills >= 4, f"seed {seed}: only {kills} kills landed (install took {full:.2f}s)"
    assert watcher.problems == [], f"seed {seed}"
    assert watcher.looks > 10

    final = start(dirs)
    assert final.wait(300) == 0
    assert sorted(p.name for p in dirs.models.iterdir()) == [".model-poller", "7"], f"seed {seed}: debris left"
    assert sorted(p.name for p in (dirs.models / ".model-poller" / "versions").iterdir()) == ["7.json"]
    for name, size in expected.items():
        assert (dirs.models / "7" / name).stat().st_size == size
    assert (dirs.models / "7" / "saved_model.pb").read_bytes() == (probe.models / "7" / "saved_model.pb").read_bytes()
