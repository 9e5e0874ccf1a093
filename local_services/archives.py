"""Builders for SavedModel-shaped versions and hostile archives, made in the tests."""

from __future__ import annotations

import bz2
import hashlib
import io
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path


def model_files(version: int, size: int = 2048, pbtxt: bool = False) -> dict[str, bytes]:
    """A small SavedModel-shaped file set whose bytes identify the version."""
    seed = hashlib.sha256(f"v{version}".encode()).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    pb = "saved_model.pbtxt" if pbtxt else "saved_model.pb"
    return {
        pb: f"saved model {version}".encode(),
        "variables/variables.index": f"index {version}".encode(),
        "variables/variables.data-00000-of-00001": data,
        "assets/vocab.txt": b"a\nb\n",
    }


def zip_bytes(files: dict[str, bytes], top: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if top:
            zf.writestr(top + "/", b"")
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return buf.getvalue()


def targz_bytes(files: dict[str, bytes], top: str | None = None, dot_prefix: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        dirs: set[str] = set()
        for name, data in files.items():
            path = f"{top}/{name}" if top else name
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(("./" if dot_prefix else "") + d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tf.addfile(info)
            info = tarfile.TarInfo(("./" if dot_prefix else "") + path)
            info.size = len(data)
            info.mtime = int(time.time())
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_folder(
    root: Path, version: int, files: dict[str, bytes], ready: bool = True, name: str | None = None
) -> Path:
    folder = root / (name or f"{version:04d}")
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if ready:
        (folder / "_READY").write_bytes(b"")
    return folder


def tree(path: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for directories) of everything under ``path``."""
    result: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for d in dirnames:
            result[os.path.relpath(os.path.join(dirpath, d), path)] = None
        for f in filenames:
            full = os.path.join(dirpath, f)
            result[os.path.relpath(full, path)] = b"<link>" if os.path.islink(full) else Path(full).read_bytes()
    return result


def model_tree(version: int, **kw: object) -> dict[str, bytes]:
    """What ``<model-dir>/<version>/`` should hold for model_files(version) (marker aside)."""
    return model_files(version, **kw)  # type: ignore[arg-type]


def installed_files(version_dir: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(version_dir).items() if v is not None and k != ".model-poller.json"}


# -- hostile zips ------------------------------------------------------------------------


def _zinfo(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = (mode & 0xFFFF) << 16
        info.create_system = 3
    return info


def zip_with(entries: list[tuple[zipfile.ZipInfo | str, bytes]], base: dict[str, bytes] | None = None) -> bytes:
    """A zip holding a valid SavedModel (``base``) plus the given raw entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (base if base is not None else model_files(9)).items():
            zf.writestr(name, data)
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def zip_raw_name(name: str, data: bytes = b"evil") -> bytes:
    """A zip (valid SavedModel plus one entry) whose extra entry is named exactly ``name``."""
    return zip_with([(_zinfo(name), data)])


def zip_symlink() -> bytes:
    return zip_with([(_zinfo("link", stat.S_IFLNK | 0o777), b"/etc/passwd")])


def zip_special(kind: int) -> bytes:
    return zip_with([(_zinfo("dev", kind | 0o644), b"")])


def zip_many_files(n: int) -> bytes:
    return zip_with([(f"f{i}", b"x") for i in range(n)])


def zip_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in model_files(9).items():
            zf.writestr(name, data)
        with zf.open("variables/zeros", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                fh.write(chunk)
    return buf.getvalue()


def zip_crc_error() -> bytes:
    """A stored (uncompressed) entry whose data was altered after the CRC was computed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in model_files(9).items():
            zf.writestr(name, data)
        zf.writestr("variables/payload", b"A" * 4096)
    blob = buf.getvalue()
    return blob.replace(b"A" * 4096, b"A" * 2048 + b"B" + b"A" * 2047, 1)


def zip_duplicate() -> bytes:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zip_with([("saved_model.pb", b"second copy")])


def zip_overlapping() -> bytes:
    """The central directory's last entry points at the first entry's local header (two
    entries sharing bytes, the overlapping-entries zip-bomb trick)."""
    import struct

    blob = bytearray(zip_with([("variables/extra", b"y" * 5000)]))
    last = blob.rfind(b"PK\x01\x02")
    struct.pack_into("<I", blob, last + 42, 0)
    return bytes(blob)


def zip_encrypted_flag() -> bytes:
    """An entry flagged as encrypted (flag bit 0) in both its local and central header."""
    blob = bytearray(zip_with([(_zinfo("secret"), b"xxxxxxxxxxxx")]))
    name = b"secret"
    for sig, name_at, flag_at in ((b"PK\x03\x04", 30, 6), (b"PK\x01\x02", 46, 8)):
        start = 0
        while (pos := blob.find(sig, start)) != -1:
            if blob[pos + name_at : pos + name_at + len(name)] == name:
                blob[pos + flag_at] |= 0x1
            start = pos + 1
    return bytes(blob)


# -- hostile tars ------------------------------------------------------------------------


def targz_with(members: list[tuple[tarfile.TarInfo, bytes | None]], base: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (base if base is not None else model_files(9)).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_member(
    name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    if type_ == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def targz_bomb(size: int) -> bytes:
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name, data in model_files(9).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("variables/zeros")
        info.size = size

        class Zeros(io.RawIOBase):
            def __init__(self) -> None:
                self.left = size

            def readinto(self, b: bytearray) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

            def readable(self) -> bool:
                return True

        tf.addfile(info, io.BufferedReader(Zeros()))
    return gzip.compress(raw.getvalue(), compresslevel=9)


# -- bombs built without compressing what they inflate to ---------------------------------
MiB = 1 << 20


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, row = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[row]
        vector >>= 1
        row += 1
    return out


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` in O(log n): one zero byte maps CRC-32's register
    linearly, so ``n`` of them is that map's ``n``-th power, taken by squaring."""
    one_zero = [zlib.crc32(b"\0", (1 << bit) ^ 0xFFFFFFFF) ^ 0xFFFFFFFF for bit in range(32)]
    register = crc ^ 0xFFFFFFFF
    while n:
        if n & 1:
            register = _gf2_times(one_zero, register)
        one_zero = [_gf2_times(one_zero, row) for row in one_zero]
        n >>= 1
    return register ^ 0xFFFFFFFF


def _deflated(data: bytes, mode: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(mode)


def gzip_with_zeros(head: bytes, zeros: int, tail: bytes = b"") -> bytes:
    """A valid gzip stream of ``head``, ``zeros`` zero bytes and ``tail``, made in
    milliseconds: after a full flush a deflate block never refers back, so the blocks of
    one compressed MiB of zeros are simply repeated (about 1 KB per MiB)."""
    parts = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", _deflated(head, zlib.Z_FULL_FLUSH)]
    mib, rest = divmod(zeros, MiB)
    parts.append(_deflated(bytes(MiB), zlib.Z_FULL_FLUSH) * mib)
    parts.append(_deflated(bytes(rest), zlib.Z_FULL_FLUSH))
    parts.append(_deflated(tail, zlib.Z_FINISH))
    crc = zlib.crc32(tail, crc32_zeros(zlib.crc32(head), zeros))
    parts.append(struct.pack("<II", crc, (len(head) + zeros + len(tail)) & 0xFFFFFFFF))
    return b"".join(parts)


def bzip2_zeros(blocks: int, block_zeros: int = 8 * MiB) -> bytes:
    """A bzip2 stream of ``blocks * block_zeros`` zero bytes, about 30 bytes per block:
    one block is compressed, then repeated bit for bit (bzip2 blocks are independent and
    bit-aligned; the stream CRC is a rotate-and-xor over the block CRCs)."""
    one = bz2.compress(bytes(block_zeros), 9)
    bits = int.from_bytes(one[4:], "big")
    end_magic = 0x177245385090
    pad = next(p for p in range(8) if (bits >> (p + 32)) & ((1 << 48) - 1) == end_magic)
    block_bits = (len(one) - 4) * 8 - pad - 80
    block = bits >> (pad + 80)
    block_crc = (block >> (block_bits - 80)) & 0xFFFFFFFF
    stream, crc = 0, 0
    for _ in range(blocks):
        stream = (stream << block_bits) | block
        crc = (((crc << 1) | (crc >> 31)) & 0xFFFFFFFF) ^ block_crc
    stream = (stream << 80) | (end_magic << 32) | crc
    total = blocks * block_bits + 80
    stream <<= -total % 8
    return b"BZh9" + stream.to_bytes((total + 7) // 8, "big")


def lzma_zip_data(size: int) -> bytes:
    """``size`` zero bytes as a zip LZMA member's data (zipfile's layout: version,
    properties length, properties, raw LZMA1)."""
    import lzma

    props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1})  # type: ignore[attr-defined]
    filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]
    comp = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[{**filters[0], "preset": 0}])
    chunk = bytes(MiB)
    body = b"".join(comp.compress(chunk) for _ in range(size // MiB)) + comp.compress(bytes(size % MiB))
    return struct.pack("<BBH", 9, 4, len(props)) + props + body + comp.flush()


# -- zips written field by field ------------------------------------------------------------


@dataclass
class RawMember:
    """One zip entry as stored: ``data`` is already compressed with ``method``."""

    name: bytes
    data: bytes
    method: int = 0
    crc: int = 0
    size: int = 0
    external_attr: int = 0
    comment: bytes = b""
    zip64: bool = False  # sizes and offset in the directory's zip64 extra field only


def raw_member(name: str, data: bytes, deflate: bool = True) -> RawMember:
    stored = _deflated(data, zlib.Z_FINISH) if deflate else data
    return RawMember(name.encode(), stored, 8 if deflate else 0, zlib.crc32(data), len(data))


def zip_raw(
    members: list[RawMember],
    copies_of_first_record: int = 0,
    declared_entries: int | None = None,
    directory_filler: int = 0,
) -> bytes:
    """A zip written by hand: local headers and data, the central directory (plus
    ``copies_of_first_record`` extra copies of its first record, and ``directory_filler``
    zero bytes counted in its size), then the end record declaring ``declared_entries``
    (default: the records written), with zip64 end records when that needs them."""
    body, directory = [], []
    offset = 0
    for m in members:
        local = struct.pack(
            "<4s5HL2L2H", b"PK\x03\x04", 20, 0, m.method, 0, 0x21, m.crc, len(m.data), m.size, len(m.name), 0
        )
        sizes = (len(m.data), m.size, offset)
        extra = b""
        if m.zip64:
            extra = struct.pack("<HHQQQ", 1, 24, m.size, len(m.data), offset)
            sizes = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        directory.append(
            struct.pack(
                "<4s4B4HL2L5H2L",
                b"PK\x01\x02",
                45,
                3,
                45,
                0,
                0,
                m.method,
                0,
                0x21,
                m.crc,
                sizes[0],
                sizes[1],
                len(m.name),
                len(extra),
                len(m.comment),
                0,
                0,
                m.external_attr,
                sizes[2],
            )
            + m.name
            + extra
            + m.comment
        )
        body += [local, m.name, m.data]
        offset += len(local) + len(m.name) + len(m.data)
    if copies_of_first_record:
        directory.append(directory[0] * copies_of_first_record)
    directory.append(bytes(directory_filler))
    cd = b"".join(directory)
    entries = len(members) + copies_of_first_record if declared_entries is None else declared_entries
    end = b""
    if entries > 0xFFFF:
        end64_at = offset + len(cd)
        end += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(cd), offset)
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, end64_at, 1)
    small = min(entries, 0xFFFF)
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, small, small, len(cd), offset, 0)
    return b"".join(body) + cd + end


def zip_model_and(extra: list[RawMember], first: list[RawMember] | None = None, **kw: int) -> bytes:
    """A hand-written zip: ``first``, a valid SavedModel (version 9), then ``extra``."""
    model = [raw_member(name, data) for name, data in model_files(9).items()]
    return zip_raw([*(first or []), *model, *extra], **kw)


# -- tars written block by block ------------------------------------------------------------

TAR_END = bytes(1024)


def tar_header(name: str, size: int, type_: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = type_
    info.mtime = 0
    return info.tobuf(tarfile.GNU_FORMAT)


def tar_entries(files: dict[str, bytes]) -> bytes:
    """Regular-file members (header, data, padding), no end-of-archive blocks."""
    return b"".join(tar_header(n, len(d)) + d + bytes(-len(d) % 512) for n, d in files.items())


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def tar_metadata(type_: bytes, payload: bytes, declared: int | None = None) -> bytes:
    """A metadata header (GNU long name / link, pax x / g / X) and its payload."""
    name = "././@LongLink" if type_ in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "PaxHeaders/x"
    size = len(payload) if declared is None else declared
    return tar_header(name, size, type_) + payload + bytes(-len(payload) % 512)


def targz_metadata_bomb(type_: bytes, declared: int) -> bytes:
    """A valid SavedModel, then a metadata header of ``declared`` zero bytes in front of
    one more small file: tarfile reads such a payload whole (twice over, as it joins its
    reads) before anything can count it."""
    head = tar_entries(model_files(9)) + tar_metadata(type_, b"", declared)
    tail = tar_entries({"variables/after": b"x"}) + TAR_END
    return gzip_with_zeros(head, declared + (-declared % 512), tail)


def targz_trailing_zeros(n: int) -> bytes:
    """A valid SavedModel tar, its end-of-archive blocks, then ``n`` zero bytes."""
    return gzip_with_zeros(tar_entries(model_files(9)) + TAR_END, n)


def targz_directory_data(n: int) -> bytes:
    """A valid SavedModel, then a directory member declaring ``n`` bytes of data."""
    return gzip_with_zeros(tar_entries(model_files(9)) + tar_header("variables/d", n, tarfile.DIRTYPE), n, TAR_END)


def zip_compressed(method: int, data: bytes, size: int) -> bytes:
    """A valid SavedModel plus ``variables/big``: ``size`` zero bytes compressed as ``data``."""
    return zip_model_and([RawMember(b"variables/big", data, method, crc32_zeros(0, size), size)])


def targz_metadata(type_: bytes, payload: bytes, times: int = 1) -> bytes:
    """A valid SavedModel, then ``times`` metadata headers in front of one more file."""
    raw = tar_entries(model_files(9)) + tar_metadata(type_, payload) * times
    return gzip_with_zeros(raw + tar_entries({"variables/after": b"x"}) + TAR_END, 0)


def targz_pax_globals() -> bytes:
    """Three global pax headers of 30 KiB each, one per file: tarfile keeps them all."""
    raw = tar_entries(model_files(9))
    for i in range(3):
        raw += tar_metadata(b"g", pax_record(f"k{i}", "v" * 30_000)) + tar_entries({f"variables/g{i}": b"x"})
    return gzip_with_zeros(raw + TAR_END, 0)


def targz_pax_sparse() -> bytes:
    """A GNU sparse (pax 1.0) member: tarfile would read its map, of any length."""
    info = tarfile.TarInfo("variables/s")
    info.size = 512
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}
    return targz_with([(info, b"1\n0\n10\n".ljust(512, b"\0"))])


def zip64_end_record_cut_short() -> bytes:
    """A zip whose zip64 locator points at a zip64 end record cut short by the end of the
    object (inside the end record's comment), and whose end record defers to it."""
    data = zip_bytes(model_files(9))
    body = data[: data.rfind(b"PK\x05\x06")]
    comment = b"xxxxPK\x06\x06"
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body) + 20 + 22 + 4, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
    return body + locator + end + comment


def targz_deep_directories(n: int, depth: int = 14, name_bytes: int = 254) -> bytes:
    """A SavedModel, then ``n`` directories side by side under a chain of ``depth``
    directories named with ``name_bytes`` bytes each: a few MB of tar.gz whose every full
    path is ``depth * (name_bytes + 1)`` bytes long, every limit respected (so it installs).
    Written header by header (tarfile's writer takes seconds per 10,000 entries)."""
    chain = "/".join(["p" * name_bytes] * depth)
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [gz.compress(tar_entries(model_files(9)))]
    for i in range(n):
        parts.append(gz.compress(tar_header(f"{chain}/{i:06d}{'x' * 200}", 0, tarfile.DIRTYPE)))
    parts.append(gz.compress(TAR_END))
    parts.append(gz.flush())
    return b"".join(parts)
