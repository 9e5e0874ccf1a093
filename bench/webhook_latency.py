"""Admission latency the poller injection adds to a pod creation.

    .venv/bin/python bench/webhook_latency.py --pods 200

Starts its own etcd + kube-apiserver (local_services/), the chart's webhook objects and the
real operator serving the webhook under the chart's identity (tests/operator/webhook_kit.py:
the API server calls it over TLS on loopback), an external-mode ModelDeployment, then
creates ``--pods`` labelled pods (each one injected: two API lookups, the patch) and as many
unlabelled ones (never sent to the webhook), interleaved. For each create it records the
client's wall time and the API server's own time (the audit log's requestReceivedTimestamp
to ResponseComplete). Then it posts as many AdmissionReviews straight to the webhook (one
kept-alive TLS connection, as the API server does): the webhook's own share. Prints a
Markdown table; writes bench/results/webhook_latency.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from operator_scale import apply_crd  # noqa: E402

from local_services import operator_kit as kit  # noqa: E402
from local_services import webhook_kit as wk  # noqa: E402
from local_services.kube import KubeControlPlane  # noqa: E402

NAMESPACE = "bench"
MD = "resnet"
TARGET_P99 = 0.050


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def server_times(audit_log: Path, since: int) -> dict[str, float]:
    """Pod name -> seconds the API server spent on its create (audit timestamps)."""
    times: dict[str, float] = {}
    with open(audit_log, "rb") as fh:
        fh.seek(since)
        for line in fh.read().splitlines():
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if (
                entry.get("verb") != "create"
                or ref.get("resource") != "pods"
                or entry.get("stage") != "ResponseComplete"
            ):
                continue
            name = ref.get("name") or (entry.get("responseObject") or {}).get("metadata", {}).get("name")
            received = dt.datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
            done = dt.datetime.fromisoformat(entry["stageTimestamp"].replace("Z", "+00:00"))
            if name:
                times[name] = (done - received).total_seconds()
    return times


def direct(port: int, count: int) -> list[float]:
    """Seconds per AdmissionReview posted straight to the webhook (keep-alive TLS)."""
    review = json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                    "namespace": NAMESPACE, "object": wk.user_pod("direct", MD)},
    })  # fmt: skip
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    took = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", "/mutate", review, {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
        took.append(time.perf_counter() - started)
        assert answer["response"]["allowed"] and answer["response"]["patch"], answer
    connection.close()
    return took


def run(pods: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        plane = KubeControlPlane(Path(tmp) / "kube").start()
        try:
            apply_crd(plane)
            cluster = kit.Cluster(plane)
            port = kit.free_port()
            with wk.run(plane, Path(tmp), port=port):
                cluster.core.create_namespace({"metadata": {"name": NAMESPACE}})
                wk.ensure_default_service_account(plane, NAMESPACE)
                wk.create_external_md(cluster, NAMESPACE, MD)
                for i in range(warmup):
                    cluster.core.create_namespaced_pod(NAMESPACE, wk.user_pod(f"warm-l-{i}", MD))
                    cluster.core.create_namespaced_pod(NAMESPACE, wk.user_pod(f"warm-u-{i}"))
                since = kit.audit_offset(plane.audit_log)
                client: dict[str, list[float]] = {"labelled": [], "unlabelled": []}
                for i in range(pods):
                    for kind, pod in (("labelled", wk.user_pod(f"l-{i}", MD)), ("unlabelled", wk.user_pod(f"u-{i}"))):
                        started = time.perf_counter()
                        created = cluster.core.create_namespaced_pod(NAMESPACE, pod)
                        client[kind].append(time.perf_counter() - started)
                        if kind == "labelled":
                            assert created.spec.init_containers[0].name == "poller", "not injected"
                time.sleep(1)  # the audit log is written in blocking mode; let the last lines land
                server = server_times(plane.audit_log, since)
                alone = direct(port, pods)
        finally:
            plane.stop()
    by_kind = {
        "labelled": [server[f"l-{i}"] for i in range(pods)],
        "unlabelled": [server[f"u-{i}"] for i in range(pods)],
    }
    result: dict[str, Any] = {"pods": pods, "client": {}, "server": {}}
    for where, samples in (("client", client), ("server", by_kind)):
        for kind, values in samples.items():
            result[where][kind] = summary(values)
        result[where]["added"] = {
            q: result[where]["labelled"][q] - result[where]["unlabelled"][q] for q in ("p50", "p99", "mean")
        }
    result["webhook_alone"] = summary(alone)
    result["load_average"] = os.getloadavg()
    result["target_p99_added"] = TARGET_P99
    result["met"] = result["server"]["added"]["p99"] < TARGET_P99 and result["client"]["added"]["p99"] < TARGET_P99
    return result


def table(result: dict[str, Any]) -> str:
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    lines = [
        "| measured at | pods | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for where in ("server", "client"):
        for kind in ("unlabelled", "labelled"):
            s = result[where][kind]
            lines.append(f"| {where} | {kind} | {ms(s['p50'])} | {ms(s['p99'])} | {ms(s['max'])} |")
        added = result[where]["added"]
        lines.append(f"| {where} | **added by the webhook** | {ms(added['p50'])} | **{ms(added['p99'])}** | |")
    alone = result["webhook_alone"]
    lines.append(
        f"| webhook alone (direct POST) | labelled | {ms(alone['p50'])} | {ms(alone['p99'])} | {ms(alone['max'])} |"
    )
    verdict = "met" if result["met"] else "NOT met"
    lines.append(
        f"\nTarget: p99 added < {result['target_p99_added'] * 1000:.0f} ms: **{verdict}** "
        f"(load average during the run: {', '.join(f'{v:.1f}' for v in result['load_average'])})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=200, help="labelled pods (and as many unlabelled ones)")
    parser.add_argument("--warmup", type=int, default=10, help="pods of each kind created first, not measured")
    args = parser.parse_args(argv)
    result = run(args.pods, args.warmup)
    out = REPO / "bench" / "results" / "webhook_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\n(written to {out.relative_to(REPO)})")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
