"""Every flag is checked before anything starts: a bad value is one line on stderr naming
the flag, and exit code 2 (docs/poller.md), from the real ``model-poller`` console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The console script pip installed next to this interpreter (what users run).
MODEL_POLLER = str(Path(sys.executable).with_name("model-poller"))


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_POLLER_")}
    return subprocess.run(
        [MODEL_POLLER, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60
    )


# (extra arguments, environment, what the one line must name). Every case has a valid
# --source and --model-dir unless it is about them (see ``base`` below).
BAD = [
    # URIs
    (["--source", "s3://b/m/"], {}, "--source 's3://b/m/': use gs://"),
    (["--source", "gs:///m/"], {}, "--source 'gs:///m/': name a bucket"),
    (["--source", "gs://b/m/", "--serving-url", "ftp://localhost:8501", "--model-name", "m"], {}, "--serving-url"),
    (["--serving-url", "http://", "--model-name", "m"], {}, "--serving-url 'http://'"),
    (["--serving-url", "http://localhost:99999", "--model-name", "m"], {}, "--serving-url"),
    (["--serving-url", "http://localhost:8501"], {}, "--serving-url needs --model-name"),
    # paths
    (["--model-dir", "SOURCE"], {}, "--model-dir"),
    # choices
    (["--log-level", "BOGUS"], {}, "--log-level 'BOGUS': use one of DEBUG, INFO, WARNING, ERROR"),
    ([], {"MODEL_POLLER_LOG_LEVEL": "loud"}, "--log-level 'loud'"),
    (["--log-format", "xml"], {}, "--log-format 'xml': use one of text, json"),
    ([], {"MODEL_POLLER_ONCE": "maybe"}, "--once 'maybe': use true or false"),
    # numbers
    (["--keep", "0"], {}, "--keep must be at least 1, got 0"),
    (["--keep", "two"], {}, "--keep 'two': use a whole number"),
    (["--keep", "١٢"], {}, "--keep '١٢': use a whole number"),  # Arabic-Indic digits: int() takes them
    (["--max-files", "0"], {}, "--max-files must be at least 1"),
    (["--max-files", "1e6"], {}, "--max-files '1e6'"),
    (["--max-ratio", "1"], {}, "--max-ratio must be above 1"),
    (["--max-ratio", "nan"], {}, "--max-ratio 'nan'"),
    (["--http-port", "70000"], {}, "--http-port must be between 0 and 65535, got 70000"),
    (["--http-port", "eighty"], {}, "--http-port 'eighty'"),
    (["--download-streams", "0"], {}, "--download-streams must be between 1 and 64, got 0"),
    (["--download-streams", "many"], {}, "--download-streams 'many'"),
    # durations
    (["--poll-interval", "soon"], {}, "--poll-interval 'soon': use seconds or a duration"),
    (["--poll-interval", "0"], {}, "--poll-interval '0': must be above 0"),
    (["--poll-interval", "inf"], {}, "--poll-interval 'inf'"),
    (["--fallback-poll-interval", "-1"], {}, "--fallback-poll-interval '-1'"),
    (["--read-timeout", "99999999999"], {}, "--read-timeout '99999999999': must be above 0 and at most"),
    (["--status-heartbeat", "10"], {}, "--status-heartbeat must be at least 300, got 10"),
    (["--status-heartbeat", "1x"], {}, "--status-heartbeat '1x'"),
    # sizes
    (["--max-bytes", "lots"], {}, "--max-bytes 'lots': use bytes or e.g. 500Mi"),
    (["--max-bytes", "0"], {}, "--max-bytes must be at least 1"),
    (["--storage-limit", "0"], {}, "--storage-limit must be at least 1"),
    (["--download-slice", "4K"], {}, "--download-slice must be at least 1Mi, got 4K"),
    # patterns
    (["--pinned", "a"], {}, "--pinned 'a': use e.g. 3 or 3,4"),
    (["--pinned", "-1"], {}, "--pinned '-1'"),
    (["--topic", "t"], {}, "--topic 't': use projects/P/topics/T"),
    (["--subscription", "a/b"], {}, "--subscription 'a/b': use projects/P/subscriptions/S"),
    (["--project", "a/b"], {}, "--project 'a/b'"),
    (["--report-to", "x"], {}, "--report-to 'x': use NAMESPACE/NAME"),
    (["--report-to", "ns/Not_A_Name"], {}, "--report-to 'ns/Not_A_Name'"),
    (["--model-name", "a/b"], {}, "--model-name 'a/b'"),
    # flags that exclude each other
    (["--keep", "2", "--pinned", "1"], {}, "--keep and --pinned are mutually exclusive"),
    (["--topic", "projects/p/topics/t", "--subscription", "projects/p/subscriptions/s"], {}, "mutually exclusive"),
    (["--report-to", "ns/m", "--keep", "3"], {}, "--keep/--pinned cannot be used with --report-to"),
    (["--report-to", "ns/m", "--once"], {}, "--once does not follow a ModelDeployment"),
]


@pytest.mark.parametrize(("args", "env", "needle"), BAD, ids=[" ".join(a) or str(e) for a, e, _ in BAD])
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    base = {"--source": f"file://{src}/", "--model-dir": str(tmp_path / "models")}
    args = [str(src) if a == "SOURCE" else a for a in args]
    for flag in base:
        if flag not in args:
            args += [flag, base[flag]]
    result = run(args, env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "ERROR" in lines[0]
    assert not (tmp_path / "models").exists()  # refused before anything started


@pytest.mark.parametrize("missing", ["--source", "--model-dir"])
def test_a_missing_required_flag_is_one_line_and_exit_2(tmp_path: Path, missing: str) -> None:
    args = {"--source": f"file://{tmp_path}/", "--model-dir": str(tmp_path / "models")}
    del args[missing]
    result = run([part for pair in args.items() for part in pair])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and f"{missing} is required" in lines[0], result.stderr
