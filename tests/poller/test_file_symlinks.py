"""A file:// source never follows symbolic links: not in the listing, not when reading.

A link in a version folder (``variables/secret -> /var/run/secrets/.../token``) would
otherwise copy a file the poller can read, and the uploader cannot, into the model dir.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from model_poller.errors import SourceError
from model_poller.stores.file import FileStore
from model_poller.versions import SourceObject

from local_services.archives import installed_files, model_files, write_folder, zip_bytes
from tests.poller.kit import Dirs

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def secret(dirs: Dirs) -> bytes:
    """A file outside the source dir, like a service-account token."""
    data = f"SECRET-{uuid.uuid4()}".encode()
    outside = dirs.root / "outside"
    outside.mkdir()
    (outside / "token").write_bytes(data)
    return data


def everything_under(path: Path) -> tuple[list[Path], bytes]:
    """Every path under ``path`` (hidden staging included) and all file contents joined."""
    paths: list[Path] = []
    contents = bytearray()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            paths.append(full)
            if full.is_file() and not full.is_symlink():
                contents += full.read_bytes()
    return paths, bytes(contents)


def test_once_skips_linked_files_archives_and_folders(dirs: Dirs, cli: Cli, secret: bytes) -> None:
    outside = dirs.root / "outside"
    version = write_folder(dirs.src, 3, model_files(3))
    (version / "variables" / "secret").symlink_to(outside / "token")
    # A valid archive and a complete folder version, both outside, linked in.
    (outside / "4.zip").write_bytes(zip_bytes({**model_files(4), "token": secret}))
    (dirs.src / "4.zip").symlink_to(outside / "4.zip")
    write_folder(outside, 5, {**model_files(5), "token": secret})
    (dirs.src / "0005").symlink_to(outside / "0005")
    (dirs.src / "6.zip").symlink_to(dirs.root / "nowhere.zip")  # dangling

    result = cli("--source", dirs.uri, "--model-dir", str(dirs.models), "--once", "--keep", "5")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert sorted(p.name for p in dirs.models.iterdir() if p.name.isdigit()) == ["3"], log
    assert installed_files(dirs.models / "3") == model_files(3)
    paths, contents = everything_under(dirs.models)
    assert secret not in contents
    assert not [p for p in paths if p.is_symlink()]
    for name in ("0003/variables/secret", "4.zip", "0005", "6.zip"):
        assert f"skipping {dirs.uri}{name}: a symbolic link" in log, log
    assert "Traceback" not in log


def test_each_link_is_logged_once(dirs: Dirs, secret: bytes, caplog: pytest.LogCaptureFixture) -> None:
    version = write_folder(dirs.src, 3, model_files(3))
    (version / "variables" / "secret").symlink_to(dirs.root / "outside" / "token")
    source = FileStore.from_uri(dirs.uri)
    with caplog.at_level(logging.INFO, logger="model_poller.stores.file"):
        for _ in range(3):
            names = {obj.name for obj in source.list_objects()}
            assert "0003/variables/secret" not in names
            assert "0003/saved_model.pb" in names
    skipped = [r for r in caplog.records if "0003/variables/secret" in r.getMessage()]
    assert len(skipped) == 1


def _listed(source: FileStore, name: str) -> SourceObject:
    return next(obj for obj in source.list_objects() if obj.name == name)


def _read_all(source: FileStore, obj: SourceObject) -> bytes:
    chunks: list[bytes] = []
    source.download(obj, chunks.append, threading.Event())
    return b"".join(chunks)


def _same_mtime(path: Path, like: Path) -> None:
    # An uploader owns the files it uploads and can give them any mtime: here the
    # target's, so the generation check alone cannot tell the swap.
    st = like.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_file_swapped_for_a_link_after_listing_is_not_read(dirs: Dirs, secret: bytes) -> None:
    token = dirs.root / "outside" / "token"
    write_folder(dirs.src, 3, model_files(3))
    index = dirs.src / "0003" / "variables" / "variables.index"
    _same_mtime(index, token)
    source = FileStore.from_uri(dirs.uri)
    obj = _listed(source, "0003/variables/variables.index")
    assert _read_all(source, obj) == model_files(3)["variables/variables.index"]

    index.unlink()
    index.symlink_to(token)
    with pytest.raises(SourceError, match="0003/variables/variables.index is now a symbolic link"):
        _read_all(source, obj)
    with pytest.raises(SourceError, match="symbolic link"):
        source.read_range(obj, 0, 4)


def test_folder_swapped_for_a_link_after_listing_is_not_read(dirs: Dirs, secret: bytes) -> None:
    # O_NOFOLLOW guards only the last component: the folders on the way must be guarded too.
    token = dirs.root / "outside" / "token"
    write_folder(dirs.src, 3, model_files(3))
    index = dirs.src / "0003" / "variables" / "variables.index"
    _same_mtime(index, token)
    source = FileStore.from_uri(dirs.uri)
    obj = _listed(source, "0003/variables/variables.index")

    decoy = dirs.root / "outside" / "variables"
    decoy.mkdir()
    shutil.copy2(token, decoy / "variables.index")  # the secret, under the listed name and mtime
    (dirs.src / "0003" / "variables").rename(dirs.root / "moved-away")
    (dirs.src / "0003" / "variables").symlink_to(decoy)
    with pytest.raises(SourceError, match="symbolic link"):
        _read_all(source, obj)
    with pytest.raises(SourceError, match="symbolic link"):
        source.read_range(obj, 0, 4)


@pytest.mark.timeout(20)
def test_file_swapped_for_a_fifo_fails_without_blocking(dirs: Dirs) -> None:
    write_folder(dirs.src, 3, model_files(3))
    index = dirs.src / "0003" / "variables" / "variables.index"
    source = FileStore.from_uri(dirs.uri)
    obj = _listed(source, "0003/variables/variables.index")
    before = index.stat()
    index.unlink()
    os.mkfifo(index)
    os.utime(index, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(SourceError, match="changed since it was listed"):
        _read_all(source, obj)


def test_linked_root_is_followed(dirs: Dirs) -> None:
    # The user named the root: a link there (macOS /tmp, a mounted volume) is theirs.
    write_folder(dirs.src, 3, model_files(3))
    link = dirs.root / "src-link"
    link.symlink_to(dirs.src)
    source = FileStore.from_uri(f"file://{link}/")
    obj = _listed(source, "0003/saved_model.pb")
    assert _read_all(source, obj) == model_files(3)["saved_model.pb"]
    assert source.read_range(obj, 0, 5) == b"saved"


def test_a_source_the_pollers_user_may_not_read_is_access_denied() -> None:
    """A file:// source folder the poller's user cannot list (mode 0700, another owner) is
    AccessDenied, as a 403 is for gs://, not SourceUnreachable. The tests run as root, whom
    no file mode stops, so the store runs in a child process without the capabilities that
    let root past file modes (setpriv), on a folder owned by nobody."""
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        src = Path(top) / "src"
        src.mkdir(mode=0o700)
        (src / "1.zip").write_bytes(b"x")
        os.chown(src, 65534, 65534)
        probe = (
            "import sys\n"
            "from model_poller.errors import SourceError\n"
            "from model_poller.report import source_problem\n"
            "from model_poller.stores import open_store\n"
            "try:\n"
            "    open_store(sys.argv[1]).list_objects()\n"
            "except SourceError as exc:\n"
            "    print(type(exc).__name__, source_problem(exc).reason.value, exc)\n"
        )
        caps = "-dac_override,-dac_read_search"
        result = subprocess.run(
            ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", probe, f"file://{src}/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    expected = f"SourceAccessDenied AccessDenied cannot list {src}: Permission denied"
    assert result.stdout.startswith(expected), result.stdout
