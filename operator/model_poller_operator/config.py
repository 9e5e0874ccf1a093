"""The operator's own settings: a typed dataclass read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Mapping

ENV_PREFIX: Final = "MODEL_POLLER_OPERATOR_"


@dataclass(frozen=True)
class OperatorConfig:
    # Period of the operator-wide status loop, which recomputes every ModelDeployment's
    # status from the indexes (in memory; a write only when something changed). Events of
    # ModelDeployments, Deployments and pods trigger a recomputation at once anyway.
    status_interval: float = 10.0
    # While a pod of a ModelDeployment with spec.source.credentialsSecret waits to start, how
    # long one list of its namespace's FailedMount Events is reused (the operator may not
    # read Secrets: a missing one shows in those Events).
    pod_events_interval: float = 30.0
    # Delay before retrying a failed apply of the children.
    retry_delay: float = 15.0
    # How long kopf waits for the echo of its own patch before handling a stale version.
    consistency_timeout: float = 60.0
    # Threads running the (synchronous) handlers.
    workers: int = 8
    # Server-side timeout of one watch request, and the client-side one (a bit longer).
    watch_server_timeout: int = 300
    watch_client_timeout: float = 330.0
    watch_connect_timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """``MODEL_POLLER_OPERATOR_STATUS_INTERVAL=5`` etc.; unset or empty means default."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for name, field in cls.__dataclass_fields__.items():
            raw = env.get(ENV_PREFIX + name.upper(), "").strip()
            if not raw:
                continue
            try:
                values[name] = int(raw) if field.type == "int" else float(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]
