"""Raw-deflate inflate and CRC-32 throughput of zlib vs isal_zlib vs zlib_ng, in-process.

The loop is the poller's zip member loop (``extract._inflate_zip_member``): 1 MiB reads of
compressed data, at most 4 MiB of output per ``decompress`` call (``max_length``), the
``unconsumed_tail`` fed back, a running CRC-32 of every output piece. Two kinds of member:
- ``random-l1``: incompressible bytes deflated at level 1 (the benchmarks' shards: mostly
  stored blocks, so inflating is a copy);
- ``floats-l6``: float32 weights (normal, rounded to 8 mantissa bits, so they compress
  like trained weights do, ~40%) deflated at level 6 (Huffman + matches: real decoding).
Each figure is the best of ``--repeat`` passes (the machine is shared). "2 threads" inflates
two members at once, one per thread: a figure near 2x means the library releases the GIL.

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
from types import ModuleType
from typing import Any, Callable

MiB = 1 << 20
READ = 1 << 20
OUT = 4 << 20


def _modules() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {"zlib": zlib}
    try:
        from isal import isal_zlib

        found["isal_zlib"] = isal_zlib
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        found["zlib_ng"] = zlib_ng
    except ImportError:
        pass
    return found


def _samples(size: int) -> dict[str, tuple[bytes, bytes]]:
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
    floats = floats[:size]
    out = {}
    for name, data, level in (("random-l1", noise, 1), ("floats-l6", bytes(floats), 6)):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        out[name] = (c.compress(data) + c.flush(), data)
    return out


def inflate(mod: ModuleType, stream: bytes) -> tuple[int, int]:
    """The poller's member loop; returns (bytes out, CRC-32)."""
    d = mod.decompressobj(-15)
    crc = out = 0
    view = memoryview(stream)
    for at in range(0, len(stream), READ):
        data: Any = view[at : at + READ]
        while True:
            piece = d.decompress(data, OUT)
            if piece:
                crc = mod.crc32(piece, crc)
                out += len(piece)
            data = d.unconsumed_tail
            if d.eof or (not data and len(piece) < OUT):
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256, help="inflated size of each member")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * MiB
    samples = _samples(size)
    modules = _modules()
    results: dict[str, Any] = {"load_avg": os.getloadavg(), "mib": args.mib}
    for name, mod in modules.items():
        row: dict[str, Any] = {}
        for kind, (stream, data) in samples.items():
            got = inflate(mod, stream)
            if got != (len(data), zlib.crc32(data)):
                raise SystemExit(f"{name} inflated {kind} wrong")
            one = best(lambda: inflate(mod, stream), args.repeat)
            two = best(lambda: two_threads(lambda: inflate(mod, stream)), args.repeat)
            row[kind] = {
                "ratio": round(len(stream) / len(data), 3),
                "MiB_per_s": round(args.mib / one, 1),
                "2_threads_speedup": round(2 * one / two, 2),
            }
        crc_data = memoryview(samples["random-l1"][1])
        crc_one = best(lambda: [mod.crc32(crc_data[i : i + OUT]) for i in range(0, size, OUT)], args.repeat)
        crc_two = best(lambda: two_threads(lambda: [mod.crc32(crc_data[i : i + OUT]) for i in range(0, size, OUT)]),
                       args.repeat)
        row["crc32"] = {"MiB_per_s": round(args.mib / crc_one, 1), "2_threads_speedup": round(2 * crc_one / crc_two, 2)}
        results[name] = row
        print(json.dumps({name: row}), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
