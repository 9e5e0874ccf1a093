"""CPU cost of unpacking alone: ``extract()`` on a local archive, in this process.

No download, no fake-gcs-server: the archive is read from a file, unpacked with the
poller's hardened extractor (the install's number of unzip threads) into ``--dest``
(default a tmpfs, /dev/shm, so the disk does not count), and the process's own wall time,
user and system CPU, minor page faults and peak RSS are printed. Run it with another
``model_poller`` on ``PYTHONPATH`` (e.g. the ``poller/`` of ``git archive <commit>``) to
compare two versions of the code on the same archive.

Archives (built once into ``--workdir``, reused): ``zip``, bench/poller_throughput.py's 1 GiB
zip of incompressible 256 MiB shards (deflate level 1: stored blocks); ``tgz``, the same
bytes as a tar.gz (gzip level 1, zlib's: stored blocks as well; takes ~40 s to build).

    .venv/bin/python bench/unpack_cpu.py [--kinds zip,tgz] [--rounds 3] [--dest /dev/shm]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import resource
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import model_poller
from model_poller.durable import Syncer
from model_poller.extract import Limits, Unpacker, extract
from model_poller.install import UNZIP_WORKERS
from model_poller.versions import Kind
from poller_throughput import build_archive

GiB = 1 << 30


def zip_to_tgz(src: Path, dest: Path) -> None:
    """The zip's files, in order, as a tar.gz (gzip level 1)."""
    with (
        zipfile.ZipFile(src) as zf,
        gzip.open(dest, "wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w|") as tf,
    ):
        for info in zf.infolist():
            member = tarfile.TarInfo(info.filename)
            member.size = info.file_size
            with zf.open(info) as data:
                tf.addfile(member, io.BufferedReader(data, 1 << 20))  # type: ignore[arg-type]


def archive(workdir: Path, kind: str) -> Path:
    path = workdir / ("unpack-1g.zip" if kind == "zip" else "unpack-1g.tar.gz")
    if not path.exists():
        if kind == "zip":
            build_archive(path, GiB)
        else:
            zip_to_tgz(archive(workdir, "zip"), path)
    return path


def unpack_once(path: Path, kind: str, dest_root: Path) -> dict[str, Any]:
    dest = Path(tempfile.mkdtemp(prefix="unpack-", dir=dest_root))
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    try:
        with open(path, "rb") as fh, Syncer() as syncer:
            unpacker = Unpacker(dest, Limits(), syncer, threading.Event(), archive_size=path.stat().st_size)
            extract(fh, Kind.ZIP if kind == "zip" else Kind.TAR_GZ, unpacker, workers=UNZIP_WORKERS)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return {
        "wall_s": round(wall, 2),
        "user_s": round(after.ru_utime - before.ru_utime, 2),
        "sys_s": round(after.ru_stime - before.ru_stime, 2),
        "minflt": after.ru_minflt - before.ru_minflt,
        "peak_rss_MiB": after.ru_maxrss // 1024,
        "load_avg": round(os.getloadavg()[0], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="zip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dest", default="/dev/shm")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "unpack-bench"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    code = str(Path(model_poller.__file__).parent)
    for kind in args.kinds.split(","):
        path = archive(workdir, kind)
        for _ in range(args.rounds):
            os.sync()
            print(
                json.dumps(
                    {"kind": kind, "code": code, "workers": UNZIP_WORKERS, **unpack_once(path, kind, Path(args.dest))}
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
