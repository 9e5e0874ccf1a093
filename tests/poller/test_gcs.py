"""The engine and the command against fake-gcs-server (gs:// sources)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from model_poller.errors import SourceError
from model_poller.policy import Policy
from model_poller.report import source_problem
from model_poller.stores.gcs import _raise_source_error
from model_poller_api.models import ReportReason

from local_services.archives import installed_files, model_files, targz_bytes, zip_bytes
from local_services.json_answer import json_answer
from tests.poller.kit import Dirs, EngineFactory

pytestmark = [pytest.mark.gcs]
Cli = Callable[..., subprocess.CompletedProcess[str]]


def upload(bucket: Any, name: str, data: bytes) -> None:
    bucket.blob(name).upload_from_string(data)


def gs_uri(bucket: Any, prefix: str = "models/") -> str:
    return f"gs://{bucket.name}/{prefix}"


def numeric_dirs(models: Path) -> list[int]:
    return sorted(int(p.name) for p in models.iterdir() if p.name.isdigit())


def test_every_layout_from_gcs(bucket: Any, dirs: Dirs, make_engine: EngineFactory) -> None:
    upload(bucket, "models/0001.zip", zip_bytes(model_files(1), top="0001"))
    upload(bucket, "models/2.zip", zip_bytes(model_files(2)))
    upload(bucket, "models/3.tar.gz", targz_bytes(model_files(3), top="0003"))
    upload(bucket, "models/4.tgz", targz_bytes(model_files(4)))
    for name, data in model_files(5, pbtxt=True).items():
        upload(bucket, f"models/0005/{name}", data)
    upload(bucket, "models/0005/_READY", b"")
    for name, data in model_files(6).items():  # no _READY: still uploading
        upload(bucket, f"models/6/{name}", data)
    upload(bucket, "models/README.md", b"junk")
    upload(bucket, "models/a.b.c", b"junk")
    upload(bucket, "other/9.zip", zip_bytes(model_files(9)))  # outside the prefix
    engine = make_engine(Policy(keep=5), uri=gs_uri(bucket))
    outcome = engine.sync()
    assert outcome.complete, outcome.reason()
    assert numeric_dirs(dirs.models) == [1, 2, 3, 4, 5]
    for v in (1, 2, 3, 4):
        assert installed_files(dirs.models / str(v)) == model_files(v)
    assert installed_files(dirs.models / "5") == model_files(5, pbtxt=True)
    assert engine.sync().installed == []  # nothing downloaded twice


def test_policies_and_rollbacks_from_gcs(bucket: Any, dirs: Dirs, make_engine: EngineFactory) -> None:
    for v in (1, 2, 3):
        upload(bucket, f"models/{v}.zip", zip_bytes(model_files(v)))
    engine = make_engine(Policy(keep=2), uri=gs_uri(bucket))
    assert engine.sync().complete and numeric_dirs(dirs.models) == [2, 3]
    bucket.blob("models/3.zip").delete()  # rollback by deletion at the source
    outcome = engine.sync()
    assert outcome.complete and numeric_dirs(dirs.models) == [1, 2]
    pinned = make_engine(Policy(keep=None, pinned=frozenset({1})), uri=gs_uri(bucket))
    assert pinned.sync().complete and numeric_dirs(dirs.models) == [1]


def test_bucket_root_prefix(bucket: Any, dirs: Dirs, make_engine: EngineFactory) -> None:
    upload(bucket, "7.zip", zip_bytes(model_files(7)))
    assert make_engine(uri=f"gs://{bucket.name}").sync().complete
    assert numeric_dirs(dirs.models) == [7]


def test_once_from_gcs(bucket: Any, dirs: Dirs, cli: Cli) -> None:
    upload(bucket, "m/0003.zip", zip_bytes(model_files(3), top="0003"))
    result = cli("--source", f"gs://{bucket.name}/m/", "--model-dir", str(dirs.models), "--once")
    assert result.returncode == 0, result.stderr
    assert numeric_dirs(dirs.models) == [3]


def test_missing_bucket_is_one_line(fake_gcs: Any, dirs: Dirs, cli: Cli) -> None:
    result = cli("--source", "gs://no-such-bucket-here/m/", "--model-dir", str(dirs.models), "--once")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "bucket 'no-such-bucket-here' does not exist" in errors[0], result.stderr


@pytest.fixture
def refusing_token_server() -> Iterator[str]:
    """An OAuth token endpoint that refuses every credential (no Google service involved)."""
    with json_answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}) as url:
        yield f"{url}/token"


def service_account_key(path: Path, token_uri: str) -> Path:
    """A service-account key file (a fresh RSA key) whose token endpoint is ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "1",
                "private_key": pem.decode(),
                "client_email": "poller@p.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


def test_denied_credential_is_one_line(tmp_path: Path, dirs: Dirs, cli: Cli, refusing_token_server: str) -> None:
    creds = service_account_key(tmp_path / "key.json", refusing_token_server)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(creds), "STORAGE_EMULATOR_HOST": "", "NO_PROXY": "*"}
    result = cli("--source", "gs://some-bucket/m/", "--model-dir", str(dirs.models), "--once", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert "credential refused by the token endpoint: invalid_grant: Invalid JWT Signature." in errors[0]


def test_a_refused_credential_is_access_denied(tmp_path: Path, refusing_token_server: str) -> None:
    """The token endpoint's invalid_grant, as google-auth raises it, is AccessDenied."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    key = service_account_key(tmp_path / "key.json", refusing_token_server)
    credentials = service_account.Credentials.from_service_account_file(str(key), scopes=["https://x/scope"])
    with pytest.raises(Exception) as refused:
        credentials.refresh(google.auth.transport.requests.Request())
    with pytest.raises(SourceError) as raised:
        _raise_source_error(refused.value, "cannot list gs://b/m/", "b")
    problem = source_problem(raised.value)
    assert problem.reason == ReportReason.ACCESS_DENIED, problem
    assert problem.message == (
        "cannot list gs://b/m/: credential refused by the token endpoint: invalid_grant: Invalid JWT Signature."
    )


@pytest.mark.slow
def test_an_unreachable_metadata_server_is_an_outage_not_access_denied() -> None:
    """On GKE with Workload Identity the token comes from the metadata server; google-auth
    raises a RefreshError not marked retryable when it cannot reach it, as for a refused
    credential. A child process (google-auth reads GCE_METADATA_HOST when imported) refreshes
    compute-engine credentials against a closed port (google-auth retries for ~15 s)."""
    probe = (
        "import os\n"
        "os.environ['GCE_METADATA_HOST'] = os.environ['GCE_METADATA_IP'] = '127.0.0.1:1'\n"
        "import google.auth.transport.requests\n"
        "from google.auth import compute_engine\n"
        "from model_poller.errors import SourceError\n"
        "from model_poller.report import source_problem\n"
        "from model_poller.stores.gcs import _raise_source_error\n"
        "try:\n"
        "    compute_engine.Credentials().refresh(google.auth.transport.requests.Request())\n"
        "except Exception as refused:\n"
        "    try:\n"
        "        _raise_source_error(refused, 'cannot list gs://b/m/', 'b')\n"
        "    except SourceError as exc:\n"
        "        print(type(exc).__name__, source_problem(exc).reason.value)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "SourceError SourceUnreachable", (result.stdout, result.stderr[-2000:])


def test_no_credentials_is_one_line(tmp_path: Path, dirs: Dirs, cli: Cli) -> None:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json"), "STORAGE_EMULATOR_HOST": ""}
    result = cli("--source", "gs://some-bucket/m/", "--model-dir", str(dirs.models), "--once", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "credentials" in errors[0].lower(), result.stderr
