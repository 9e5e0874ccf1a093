"""Raw-deflate inflate and CRC-32 throughput of zlib vs isal_zlib vs zlib_ng, in-process,
and of the inflater the poller uses (``model_poller.inflate``: ISA-L, ``MAX_STEP`` steps).

The loop is the poller's zip member loop (``extract.unzip._copy_member``): 1 MiB reads of
compressed data, at most one step of output per ``decompress`` call (``max_length``: 4 MiB
for the libraries, as the poller had with zlib), what is left fed back, a running CRC-32
of every output piece. Two kinds of member:
- ``random-l1``: incompressible bytes deflated at level 1 (the benchmarks' shards: stored
  blocks, so inflating is a copy);
- ``floats-l6``: float32 weights (normal, rounded to 8 mantissa bits, so they compress
  like trained weights do, ~47%) deflated at level 6 (Huffman + matches: real decoding).
Each figure is the best of ``--repeat`` passes (the machine is shared). "2 threads" inflates
two members at once, one per thread: a figure near 2x means the library releases the GIL.
zlib-ng is optional (``pip install zlib-ng``); it is not a dependency of the poller.

    .venv/bin/python bench/inflate_speed.py [--mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_poller import inflate as poller_inflate

MiB = 1 << 20
READ = 1 << 20


@dataclass(frozen=True)
class Impl:
    inflater: Callable[[], Any]  # a zlib-like raw deflate decompress object
    crc32: Callable[[bytes, int], int]
    step: int


def implementations() -> dict[str, Impl]:
    found = {"zlib": Impl(lambda: zlib.decompressobj(-15), zlib.crc32, 4 * MiB)}
    try:
        from isal import isal_zlib

        found["isal_zlib"] = Impl(lambda: isal_zlib.decompressobj(-15), isal_zlib.crc32, 4 * MiB)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        found["zlib_ng"] = Impl(lambda: zlib_ng.decompressobj(-15), zlib_ng.crc32, 4 * MiB)
    except ImportError:
        pass
    found[f"poller ({poller_inflate.NAME})"] = Impl(
        poller_inflate.raw_inflater, poller_inflate.crc32, poller_inflate.MAX_STEP
    )
    return found


def samples(size: int) -> dict[str, tuple[bytes, bytes]]:
    """name -> (raw deflate stream, its content)."""
    block = os.urandom(16 * MiB)
    noise = (block * (size // len(block) + 1))[:size]
    rng = random.Random(12)
    floats = bytearray()
    values = [rng.gauss(0.0, 0.05) for _ in range(1 << 16)]
    packed = struct.pack(f"<{len(values)}f", *values)
    # keep 8 of 23 mantissa bits: trained weights compress by about this much
    masked = bytes(b if i % 4 >= 2 else 0 for i, b in enumerate(packed))
    while len(floats) < size:
        rot = len(floats) // 4096 % len(masked)
        floats += masked[rot:] + masked[:rot]
    out = {}
    for name, data, level in (("random-l1", noise, 1), ("floats-l6", bytes(floats[:size]), 6)):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        out[name] = (c.compress(data) + c.flush(), data)
    return out


def inflate(impl: Impl, stream: bytes) -> tuple[int, int]:
    """The poller's member loop; returns (bytes out, CRC-32)."""
    d = impl.inflater()
    crc = out = 0
    for at in range(0, len(stream), READ):
        data = stream[at : at + READ]
        while True:
            piece = d.decompress(data, impl.step)
            if piece:
                crc = impl.crc32(piece, crc)
                out += len(piece)
            data = d.unconsumed_tail
            if d.eof or (not data and len(piece) < impl.step):
                break
    return out, crc


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def two_threads(fn: Callable[[], object]) -> None:
    threads = [threading.Thread(target=fn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure(impl: Impl, members: dict[str, tuple[bytes, bytes]], mib: int, repeat: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for kind, (stream, data) in members.items():
        if inflate(impl, stream) != (len(data), zlib.crc32(data)):
            raise SystemExit(f"wrong output for {kind}")
        one = best(lambda: inflate(impl, stream), repeat)
        two = best(lambda: two_threads(lambda: inflate(impl, stream)), repeat)
        row[kind] = {
            "ratio": round(len(stream) / len(data), 3),
            "MiB_per_s": round(mib / one, 1),
            "2_threads_speedup": round(2 * one / two, 2),
        }
    view = memoryview(members["random-l1"][1])

    def crc_all() -> None:
        for i in range(0, len(view), 4 * MiB):
            impl.crc32(view[i : i + 4 * MiB], 0)  # type: ignore[arg-type]

    crc_one = best(crc_all, repeat)
    crc_two = best(lambda: two_threads(crc_all), repeat)
    row["crc32"] = {"MiB_per_s": round(mib / crc_one, 1), "2_threads_speedup": round(2 * crc_one / crc_two, 2)}
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256, help="inflated size of each member")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    members = samples(args.mib * MiB)
    results: dict[str, Any] = {"load_avg_before": os.getloadavg(), "mib": args.mib}
    for name, impl in implementations().items():
        results[name] = measure(impl, members, args.mib, args.repeat)
        print(json.dumps({name: results[name]}), flush=True)
    results["load_avg_after"] = os.getloadavg()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
