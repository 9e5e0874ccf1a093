"""The ``model-poller-operator`` console script: a thin CLI over ``kopf.run``.

Every setting is read and checked here, before kopf starts: a bad value is one line that
names the variable, and exit code 2 (as for a bad flag), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import kopf
from model_poller_api import names

from model_poller_operator.config import EXIT_BAD_SETTING, ConsoleSettings, OperatorConfig, SettingsError, env_name
from model_poller_operator.webhook_settings import WebhookSettings

PROG = "model-poller-operator"


def parse_args(argv: Sequence[str] | None = None, console: ConsoleSettings | None = None) -> argparse.Namespace:
    """The flags; their defaults come from ``console`` (read from the environment if None)."""
    console = ConsoleSettings.from_env() if console is None else console
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keeps one tensorflow/serving Deployment (with the model-poller sidecar) per ModelDeployment.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs like 'ml-*' work). "
        f"Env: {env_name(ConsoleSettings, 'namespaces')} (comma-separated).",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--liveness",
        default=console.liveness,
        help="liveness endpoint URL (default %(default)s); --liveness= (empty) disables it. "
        f"Env: {env_name(ConsoleSettings, 'liveness')}",
    )
    parser.add_argument(
        "--peering",
        default=console.peering,
        help="kopf peering object name for several replicas in HA (needs kopf's peering CRDs); "
        f"default: standalone. Env: {env_name(ConsoleSettings, 'peering')}",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        args.namespace = list(console.namespaces)
    return args


def check_settings() -> ConsoleSettings:
    """Read every MODEL_POLLER_OPERATOR_* setting (the handlers read theirs again at startup,
    as under ``kopf run``); raises SettingsError naming the first bad variable."""
    console = ConsoleSettings.from_env()
    OperatorConfig.from_env()
    WebhookSettings.from_env()
    return console


def main(argv: Sequence[str] | None = None) -> int:
    try:
        console = check_settings()
    except SettingsError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_BAD_SETTING
    args = parse_args(argv, console)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    # Registers the handlers in kopf's default registry.
    import model_poller_operator.handlers  # noqa: F401

    logging.getLogger(__name__).info(
        "%s watching %s", names.MANAGER, ", ".join(args.namespace) if args.namespace else "all namespaces"
    )
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        standalone=not args.peering,
        peering_name=args.peering or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
