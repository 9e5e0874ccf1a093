"""Builders for SavedModel-shaped versions and hostile archives, made in the tests."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import time
import zipfile
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


def write_folder(root: Path, version: int, files: dict[str, bytes], ready: bool = True, name: str | None = None) -> Path:
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


def tar_member(name: str, type_: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
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
