"""The command: flags, MODEL_POLLER_* variables, the proof of concept's environment,
--once exit codes and one-line errors (never a traceback)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from model_poller.cli import FLAGS, make_parser, resolve
from model_poller.config import build_settings
from model_poller.errors import ConfigError
from model_poller.parsers import parse_interval, parse_size

from local_services.archives import model_files, zip_bytes
from tests.poller.kit import Dirs

Cli = Callable[..., subprocess.CompletedProcess[str]]


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def test_once_installs_and_exits_zero(dirs: Dirs, cli: Cli) -> None:
    (dirs.src / "0002.zip").write_bytes(zip_bytes(model_files(2), top="0002"))
    result = cli("--source", dirs.uri, "--model-dir", str(dirs.models), "--once")
    assert result.returncode == 0, result.stderr
    assert (dirs.models / "2" / "saved_model.pb").read_bytes() == b"saved model 2"


def test_once_fails_with_one_line_when_nothing_valid(dirs: Dirs, cli: Cli) -> None:
    (dirs.src / "1.zip").write_bytes(b"broken")
    result = cli("--source", dirs.uri, "--model-dir", str(dirs.models), "--once")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "not in sync: version 1 (" in last and "rejected: corrupt" in last


def test_once_missing_source_dir(dirs: Dirs, cli: Cli) -> None:
    result = cli("--source", f"file://{dirs.root}/nope/", "--model-dir", str(dirs.models), "--once")
    assert_one_line_error(result, 1, "does not exist")


def test_once_unwritable_model_dir(dirs: Dirs, cli: Cli) -> None:
    (dirs.src / "1.zip").write_bytes(zip_bytes(model_files(1)))
    blocker = dirs.root / "file"
    blocker.write_text("not a directory")
    result = cli("--source", dirs.uri, "--model-dir", str(blocker / "models"), "--once")
    assert_one_line_error(result, 1, "is not writable")


def test_env_vars_and_json_logs(dirs: Dirs, cli: Cli) -> None:
    for v in (1, 2, 3):
        (dirs.src / f"{v}.zip").write_bytes(zip_bytes(model_files(v)))
    env = {
        "MODEL_POLLER_SOURCE": dirs.uri,
        "MODEL_POLLER_MODEL_DIR": str(dirs.models),
        "MODEL_POLLER_ONCE": "true",
        "MODEL_POLLER_PINNED": "1,2",
        "MODEL_POLLER_LOG_FORMAT": "json",
    }
    result = cli(env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dirs.models.iterdir() if p.name.isdigit()) == ["1", "2"]
    import json

    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_proof_of_concept_environment(dirs: Dirs, cli: Cli) -> None:
    (dirs.src / "0004.zip").write_bytes(zip_bytes(model_files(4), top="0004"))
    result = cli("--source", dirs.uri, "--once", env={"SAVE_DIR": str(dirs.models), "PROJECT_ID": "p"})
    assert result.returncode == 0, result.stderr
    assert (dirs.models / "4").is_dir()
    values = resolve(
        make_parser().parse_args([]),
        {"PROJECT_ID": "p", "SUBSCRIPTION": "s", "SAVE_DIR": "/m", "MODEL_POLLER_SOURCE": "gs://b/x/"},
    )
    settings = build_settings(values, {})
    assert settings.subscription == "projects/p/subscriptions/s"
    assert settings.model_dir == Path("/m") and settings.project == "p"


def test_flag_beats_env_beats_legacy() -> None:
    args = make_parser().parse_args(["--model-dir", "/flag"])
    values = resolve(args, {"MODEL_POLLER_MODEL_DIR": "/env", "SAVE_DIR": "/legacy"})
    assert values["model_dir"] == "/flag"
    values = resolve(make_parser().parse_args([]), {"MODEL_POLLER_MODEL_DIR": "/env", "SAVE_DIR": "/legacy"})
    assert values["model_dir"] == "/env"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model-dir", "/m"], "--source is required"),
        (["--source", "s3://b/", "--model-dir", "/m"], "use gs://"),
        (["--source", "gs:///x", "--model-dir", "/m"], "name a bucket"),
        (["--source", "file:///s/"], "--model-dir is required"),
        (["--source", "file:///s/", "--model-dir", "/m", "--keep", "2", "--pinned", "1"], "mutually exclusive"),
        (["--source", "file:///s/", "--model-dir", "/m", "--keep", "0"], "at least 1"),
        (["--source", "file:///s/", "--model-dir", "/m", "--pinned", "a"], "--pinned"),
        # Version numbers are ASCII digits within int64, here as at the source.
        (["--source", "file:///s/", "--model-dir", "/m", "--pinned", "١٢"], "--pinned"),
        (["--source", "file:///s/", "--model-dir", "/m", "--pinned", "3,²"], "--pinned"),
        (["--source", "file:///s/", "--model-dir", "/m", "--pinned", "99999999999999999999"], "--pinned"),
        (["--source", "file:///s/", "--model-dir", "/m", "--pinned", "-1"], "--pinned"),
        (["--source", "file:///s/", "--model-dir", "/m", "--max-bytes", "١٢Mi"], "--max-bytes"),
        (["--source", "file:///s/", "--model-dir", "/m", "--poll-interval", "soon"], "--poll-interval"),
        (["--source", "file:///s/", "--model-dir", "/m", "--topic", "t"], "projects/P/topics/T"),
        (
            [
                "--source",
                "file:///s/",
                "--model-dir",
                "/m",
                "--topic",
                "projects/p/topics/t",
                "--subscription",
                "projects/p/subscriptions/s",
            ],
            "mutually exclusive",
        ),
        (["--source", "file:///s/", "--model-dir", "/m", "--max-bytes", "lots"], "--max-bytes"),
        (["--source", "file:///s/", "--model-dir", "/m", "--log-format", "xml"], "--log-format"),
    ],
)
def test_config_errors(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("/", "/")):
        build_settings(resolve(make_parser().parse_args(argv), {}), {})


def test_config_error_exit_code(cli: Cli) -> None:
    result = cli("--model-dir", "/tmp/x")
    assert_one_line_error(result, 2, "--source is required")


def test_every_flag_has_an_env_var() -> None:
    help_text = make_parser().format_help()
    for flag in FLAGS:
        assert "MODEL_POLLER_" + flag[2:].upper().replace("-", "_") in help_text


def test_parsers() -> None:
    assert parse_size("50Gi") == 50 << 30
    assert parse_size("1000") == 1000
    assert parse_size("500MiB") == 500 << 20
    assert parse_interval("90s") == 90 and parse_interval("2.5") == 2.5 and parse_interval("5m") == 300
