"""The operator's settings: typed dataclasses read from ``MODEL_POLLER_OPERATOR_*`` variables.

Every setting is a dataclass field with ``metadata["help"]``; its variable is the module's
(and class's) ``ENV_PREFIX`` plus the field name in upper case (:func:`env_name`), so a
reference can be generated from the classes (here :class:`ConsoleSettings` and
:class:`OperatorConfig`; the webhook's are ``webhook_settings.WebhookSettings``). Settings are read once at
startup (the console script before anything else, and kopf's startup handler under
``kopf run``); a value that cannot be used is a :class:`SettingsError` whose message names
the variable, reported as one line with exit code 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

ENV_PREFIX: Final = "MODEL_POLLER_OPERATOR_"
# The exit code of a bad setting (as argparse's for a bad flag).
EXIT_BAD_SETTING: Final = 2

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable holds a value the operator cannot use; the message names it."""


# A check of a text setting: why the value cannot be used, or None.
Check = Callable[[str], "str | None"]


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Check | None = None,
) -> Any:
    """A settings field: its default, what it means (for the reference), and what a value
    must be (for numbers, the range; for text, a ``check`` of each value or item)."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "check": check})


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# kopf's namespace patterns: a name or a glob, "!" to exclude (kopf's references.match_namespace).
_NAMESPACE_PATTERN = re.compile(r"!?[-a-z0-9*?\[\]]+")
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")


def object_name(value: str) -> str | None:
    """A Kubernetes object name (DNS-1123 subdomain)."""
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        return "must be a Kubernetes object name (lower case letters, digits, '-' and '.')"
    return None


def namespace_pattern(value: str) -> str | None:
    if not _NAMESPACE_PATTERN.fullmatch(value):
        return "must be a namespace name or glob (lower case letters, digits, '-', '*', '?'; '!' to exclude)"
    return None


def host(value: str) -> str | None:
    """A host name or an IP address."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return None
    except ValueError:
        pass
    return None if _HOST.fullmatch(value) and len(value) <= 253 else "must be a host name or an IP address"


def http_url(value: str) -> str | None:
    """What kopf's liveness endpoint takes: http://HOST:PORT/PATH (or empty: none)."""
    if not value:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "must be a URL like http://0.0.0.0:8080/healthz (the port is not a number from 0 to 65535)"
    if parts.scheme != "http" or not parts.hostname or host(parts.hostname) is not None:
        return "must be a URL like http://0.0.0.0:8080/healthz (plain http, a host, a port), or empty"
    return None


@dataclass(frozen=True)
class OperatorConfig:
    """What the handlers use; works under the console script and under ``kopf run`` alike."""

    ENV_PREFIX: typing.ClassVar[str] = ENV_PREFIX

    status_interval: float = setting(
        10.0,
        "seconds between two passes of the operator-wide status loop, which recomputes every "
        "ModelDeployment's status in memory and writes only what changed (events recompute at once anyway)",
        minimum=0.1,
    )
    pod_events_interval: float = setting(
        30.0,
        "seconds one list of a namespace's FailedMount Events is reused (listed only while a pod with a "
        "credentials Secret waits to start: the operator may not read Secrets)",
        minimum=0,
    )
    retry_delay: float = setting(
        15.0, "seconds before the first retry of a failed apply of the children (doubles, up to 300 s)", minimum=0.1
    )
    consistency_timeout: float = setting(
        60.0, "seconds kopf waits for the echo of its own patch before handling a stale version", minimum=0
    )
    workers: int = setting(8, "threads running the (synchronous) handlers", minimum=1)
    watch_server_timeout: int = setting(
        300, "seconds the API server keeps one watch request open (then it is renewed)", minimum=1
    )
    watch_client_timeout: float = setting(
        330.0, "seconds the operator waits on one watch request (a bit more than the server's)", minimum=1
    )
    watch_connect_timeout: float = setting(10.0, "seconds to connect for one watch request", minimum=1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """``MODEL_POLLER_OPERATOR_STATUS_INTERVAL=5`` etc.; unset or empty means default."""
        return read_env(cls, environ)


@dataclass(frozen=True)
class ConsoleSettings:
    """Read by the ``model-poller-operator`` console script only: under ``kopf run``, its own
    flags say the same (``--namespace``/``--all-namespaces``, ``--liveness``, ``--peering``)."""

    ENV_PREFIX: typing.ClassVar[str] = ENV_PREFIX

    namespaces: tuple[str, ...] = setting(
        (),
        "comma-separated namespaces to watch (globs like ml-* work) when no --namespace/-A is given; empty: all",
        check=namespace_pattern,
    )
    liveness: str = setting(
        "http://0.0.0.0:8080/healthz",
        "liveness endpoint URL (--liveness; the flag given empty, --liveness=, disables it)",
        check=http_url,
    )
    peering: str = setting(
        "",
        "kopf peering object name for several replicas in HA (--peering; needs kopf's peering CRDs); empty: standalone",
        check=object_name,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleSettings:
        return read_env(cls, environ)


def env_name(cls: type, name: str) -> str:
    """The variable of setting ``name`` of the settings class ``cls``."""
    prefix: str = getattr(cls, "ENV_PREFIX")  # noqa: B009 - any settings class; mypy sees only `type`
    return prefix + name.upper()


def read_env(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """An instance of the settings dataclass ``cls`` from the environment: unset or empty
    means the default; a value that cannot be used raises :class:`SettingsError`."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = env.get(env_name(cls, item.name), "").strip()
        if raw:
            values[item.name] = _parse(env_name(cls, item.name), raw, hints[item.name], item.metadata)
    return cls(**values)


def _parse(variable: str, raw: str, kind: Any, metadata: Mapping[str, Any]) -> Any:
    if kind is str:
        _check(variable, raw, raw, metadata)
        return raw
    if kind == tuple[str, ...]:
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        for item in items:
            _check(variable, raw, item, metadata)
        return items
    return _number(variable, raw, int if kind is int else float, metadata)


def _check(variable: str, raw: str, value: str, metadata: Mapping[str, Any]) -> None:
    check: Check | None = metadata.get("check")
    problem = check(value) if check is not None else None
    if problem:
        item = f" ({value!r})" if value != raw else ""
        raise SettingsError(f"{variable}={raw!r}{item} {problem}")


def _number(variable: str, raw: str, kind: type[int] | type[float], metadata: Mapping[str, Any]) -> int | float:
    what = "a whole number" if kind is int else "a finite number"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not {what}") from None
    minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
    if (
        not math.isfinite(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        bounds = [f">= {minimum:g}" if minimum is not None else "", f"<= {maximum:g}" if maximum is not None else ""]
        raise SettingsError(f"{variable}={raw!r} must be {what} {' and '.join(b for b in bounds if b)}".rstrip())
    return value
