"""The serving container's TF Serving flags: what the injection adds (--model_name,
--model_base_path, --rest_api_port) and what it refuses because it contradicts the
ModelDeployment (flags, the stock entrypoint's variables, a shell it cannot read through)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any, Final

from model_poller_api import models, names

from model_poller_operator.refusals import RefusalReason, Refused
from model_poller_operator.render import pod_containers

Obj = dict[str, Any]

_SHELLS: Final = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh"})
# The stock image's entrypoint runs tensorflow_model_server with
# --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@".
ENTRYPOINT: Final = "tf_serving_entrypoint.sh"
ENTRYPOINT_MODEL_NAME: Final = "MODEL_NAME"
ENTRYPOINT_BASE_PATH: Final = "MODEL_BASE_PATH"
FLAG_MODEL_NAME: Final = "--model_name"
FLAG_BASE_PATH: Final = "--model_base_path"
FLAG_REST_PORT: Final = "--rest_api_port"
FLAG_CONFIG_FILE: Final = "--model_config_file"


def _flags(container: Mapping[str, Any]) -> dict[str, str]:
    """TF Serving's ``--flag=value`` arguments in the container's command and args (the last wins)."""
    found: dict[str, str] = {}
    for arg in [*(container.get("command") or ())[1:], *(container.get("args") or ())]:
        flag, sep, value = str(arg).partition("=")
        if sep and flag.startswith("--"):
            found[flag] = value
    return found


def set_flags(serving: Obj, spec: models.ModelDeploymentSpec) -> None:
    """Add --model_name, --model_base_path and --rest_api_port when absent; refuse what
    contradicts the spec. (tensorflow_model_server serves no REST API unless
    --rest_api_port is given, and the poller asks TF Serving there which version it
    serves; the stock image's entrypoint gives 8501.)"""
    where = f"container {serving.get('name')!r}"
    command = [str(c) for c in serving.get("command") or ()]
    if command and posixpath.basename(command[0]) in _SHELLS:
        raise Refused(
            RefusalReason.UNSUPPORTED_COMMAND,
            f"{where} runs a shell ({command[0]}): the webhook can neither read nor set TF Serving's flags through "
            "it; run tensorflow_model_server (or the image's entrypoint) directly, with the flags as args",
        )
    base_path = pod_containers.model_dir(spec)
    flags = _flags(serving)
    if FLAG_CONFIG_FILE in flags:
        raise Refused(
            RefusalReason.CONTRADICTING_FLAG,
            f"{where}: {FLAG_CONFIG_FILE}={flags[FLAG_CONFIG_FILE]} serves the models a config file names, but the "
            f"poller fills one model at {base_path}: remove the flag",
        )
    expected = {FLAG_MODEL_NAME: spec.model_name, FLAG_BASE_PATH: base_path}
    for flag, want in expected.items():
        have = flags.get(flag)
        if have is not None and have.rstrip("/") != want:
            raise Refused(
                RefusalReason.CONTRADICTING_FLAG,
                f"{where}: {flag}={have} contradicts the ModelDeployment, which serves model {spec.model_name!r} "
                f"from {base_path}: remove the flag (the webhook sets {flag}={want}) or set it to {want}",
            )
    rest = flags.get(FLAG_REST_PORT)
    if rest is not None and rest != str(names.SERVING_REST_PORT):
        raise Refused(
            RefusalReason.CONTRADICTING_FLAG,
            f"{where}: {FLAG_REST_PORT}={rest}: the poller asks TF Serving which version it serves at "
            f"{pod_containers.SERVING_URL}: remove the flag or set it to {names.SERVING_REST_PORT}",
        )
    if not command or posixpath.basename(command[0]) == ENTRYPOINT:
        _check_entrypoint_env(serving, spec, where)
    expected[FLAG_REST_PORT] = str(names.SERVING_REST_PORT)
    missing = [f"{flag}={want}" for flag, want in expected.items() if flag not in flags]
    if missing:
        serving["args"] = [*(serving.get("args") or ()), *missing]


def _check_entrypoint_env(serving: Mapping[str, Any], spec: models.ModelDeploymentSpec, where: str) -> None:
    """The stock image's entrypoint turns MODEL_NAME and MODEL_BASE_PATH into flags: they
    must not say something else than the ModelDeployment (a contradiction is refused, as
    for flags, rather than silently overridden by the flags the webhook adds)."""
    env = {e.get("name"): e.get("value") for e in serving.get("env") or () if "value" in e}
    expected = {ENTRYPOINT_MODEL_NAME: spec.model_name, ENTRYPOINT_BASE_PATH: names.MODELS_MOUNT}
    for variable, want in expected.items():
        have = env.get(variable)
        if have is not None and str(have).rstrip("/") != want:
            raise Refused(
                RefusalReason.CONTRADICTING_FLAG,
                f"{where}: env {variable}={have} contradicts the ModelDeployment, which serves model "
                f"{spec.model_name!r} from {pod_containers.model_dir(spec)}: remove the variable or set it to {want}",
            )
