"""The ``model-poller-operator`` console script: a thin CLI over ``kopf.run``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import kopf

from model_poller_api import names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="model-poller-operator",
        description="Keeps one tensorflow/serving Deployment (with the model-poller sidecar) per ModelDeployment.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs like 'ml-*' work). "
        "Env: MODEL_POLLER_OPERATOR_NAMESPACES (comma-separated).",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument(
        "--liveness",
        default=os.environ.get("MODEL_POLLER_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="liveness endpoint URL (default %(default)s); empty disables it",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("MODEL_POLLER_OPERATOR_PEERING", ""),
        help="kopf peering object name for several replicas in HA (needs kopf's peering CRDs); "
        "default: standalone",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        env = os.environ.get("MODEL_POLLER_OPERATOR_NAMESPACES", "")
        args.namespace = [ns.strip() for ns in env.split(",") if ns.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
