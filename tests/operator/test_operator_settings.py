"""The operator's settings: a bad MODEL_POLLER_OPERATOR_* value is one line naming the
variable and exit code 2, from the console script and under `kopf run` alike; every
setting is documented.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_poller_operator.config import ConsoleSettings, OperatorConfig, env_name
from model_poller_operator.webhook_settings import WebhookSettings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "MODEL_POLLER_OPERATOR_"
HOOK = "MODEL_POLLER_OPERATOR_WEBHOOK_"
CLASSES = (ConsoleSettings, OperatorConfig, WebhookSettings)

# One bad value per variable (with the others it needs to be read): what the user sees must
# name the variable. A setting added without a case here fails the coverage test below.
BAD: dict[str, dict[str, str]] = {
    f"{PREFIX}NAMESPACES": {f"{PREFIX}NAMESPACES": "ml,Team_A"},
    f"{PREFIX}LIVENESS": {f"{PREFIX}LIVENESS": "http://0.0.0.0:port/healthz"},
    f"{PREFIX}PEERING": {f"{PREFIX}PEERING": "My_Peering"},
    f"{PREFIX}STATUS_INTERVAL": {f"{PREFIX}STATUS_INTERVAL": "10s"},
    f"{PREFIX}POD_EVENTS_INTERVAL": {f"{PREFIX}POD_EVENTS_INTERVAL": "-1"},
    f"{PREFIX}RETRY_DELAY": {f"{PREFIX}RETRY_DELAY": "nan"},
    f"{PREFIX}CONSISTENCY_TIMEOUT": {f"{PREFIX}CONSISTENCY_TIMEOUT": "a minute"},
    f"{PREFIX}WORKERS": {f"{PREFIX}WORKERS": "abc"},
    f"{PREFIX}WATCH_SERVER_TIMEOUT": {f"{PREFIX}WATCH_SERVER_TIMEOUT": "1.5"},
    f"{PREFIX}WATCH_CLIENT_TIMEOUT": {f"{PREFIX}WATCH_CLIENT_TIMEOUT": "0"},
    f"{PREFIX}WATCH_CONNECT_TIMEOUT": {f"{PREFIX}WATCH_CONNECT_TIMEOUT": "inf"},
    f"{HOOK}PORT": {f"{HOOK}PORT": "70000"},
    f"{HOOK}ADDRESS": {f"{HOOK}ADDRESS": "0.0.0.0:9443"},
    f"{HOOK}SECRET": {f"{HOOK}PORT": "9443", f"{HOOK}SECRET": "webhook-tls", f"{HOOK}HOSTS": "svc.ns.svc"},
    f"{HOOK}HOSTS": {f"{HOOK}HOSTS": "svc.ns.svc,bad host"},
    f"{HOOK}CONFIGURATION": {f"{HOOK}CONFIGURATION": "Model_Poller"},
    f"{HOOK}CERT_DIR": {f"{HOOK}PORT": "9443", f"{HOOK}SECRET": "ns/tls", f"{HOOK}CERT_DIR": "/tls"},
    f"{HOOK}CHECK_INTERVAL": {f"{HOOK}CHECK_INTERVAL": "often"},
    f"{HOOK}LOOKUP_TIMEOUT": {f"{HOOK}LOOKUP_TIMEOUT": "0"},
}


def _variables() -> list[str]:
    return [env_name(cls, f.name) for cls in CLASSES for f in dataclasses.fields(cls)]


def _run(command: list[str], settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    # No cluster: a run that got past its settings would fail later, and differently.
    env.update(settings, KUBECONFIG=os.devnull)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_every_setting_has_a_bad_value_case_and_help() -> None:
    assert sorted(BAD) == sorted(_variables())
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{env_name(cls, f.name)} has no help"


@pytest.mark.parametrize("variable", sorted(BAD))
def test_the_console_script_names_a_bad_variable_in_one_line_and_exits_2(variable: str) -> None:
    result = _run([str(BIN / "model-poller-operator")], BAD[variable])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model-poller-operator: ") and variable in lines[0], result.stderr


@pytest.mark.parametrize("variable", [f"{PREFIX}WORKERS", f"{PREFIX}STATUS_INTERVAL", f"{HOOK}PORT", f"{HOOK}SECRET"])
def test_kopf_run_names_a_bad_variable_in_one_line_and_exits_2(variable: str) -> None:
    """Under plain `kopf run` the startup handler reads the settings (nothing at import)."""
    command = [str(BIN / "kopf"), "run", "-m", "model_poller_operator.handlers", "--standalone", "--all-namespaces"]
    result = _run(command, BAD[variable])
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and f"[ERROR   ] {variable}" in lines[0], output


def test_importing_the_handlers_reads_no_setting() -> None:
    """`kopf run -m ...handlers` imports the module: a bad value must not fail there."""
    code = "import model_poller_operator.handlers"
    result = _run([sys.executable, "-c", code], {f"{PREFIX}WORKERS": "abc", f"{HOOK}PORT": "x"})
    assert result.returncode == 0, result.stderr


def test_good_values_are_read() -> None:
    console = ConsoleSettings.from_env(
        {f"{PREFIX}NAMESPACES": "ml, team-*,!team-x", f"{PREFIX}LIVENESS": "", f"{PREFIX}PEERING": "model-poller"}
    )
    # Empty means the default, as for every setting.
    assert console == ConsoleSettings(namespaces=("ml", "team-*", "!team-x"), peering="model-poller")
    assert ConsoleSettings.from_env({f"{PREFIX}LIVENESS": "http://127.0.0.1:9090/live"}).liveness.endswith(":9090/live")
    hook = WebhookSettings.from_env(
        {
            f"{HOOK}PORT": "9443",
            f"{HOOK}CERT_DIR": "/tls",
            f"{HOOK}HOSTS": "127.0.0.1,svc.ns.svc",
            f"{HOOK}ADDRESS": "::",
        }
    )
    assert (hook.port, hook.hosts, hook.address) == (9443, ("127.0.0.1", "svc.ns.svc"), "::")


def test_docs_list_every_setting_and_say_which_work_only_through_the_console_script() -> None:
    text = (REPO / "docs" / "operator.md").read_text(encoding="utf-8")
    section = text.split("## Running it yourself", 1)[1].split("\n## ", 1)[0]
    for variable in _variables():
        assert f"`{variable}`" in section, f"docs/operator.md does not document {variable}"
    console_only = [env_name(ConsoleSettings, f.name) for f in dataclasses.fields(ConsoleSettings)]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    for line in table:
        variable = line.split("`")[1]
        assert ("console script only" in line) == (variable in console_only), line
