"""Operator scale benchmark: N ModelDeployments created at once against a local API server.

    .venv/bin/python bench/operator_scale.py --count 300 --idle 60

Starts its own etcd + kube-apiserver (local_services/), runs the real operator (the
``model-poller-operator`` console script, default settings) under its own ServiceAccount
with the chart's ClusterRole, creates N ModelDeployments from a thread pool, and measures:

- time from the first create until every ModelDeployment has its five children and a
  status.observedGeneration equal to its generation;
- API writes made by the operator per ModelDeployment (from the API server's audit log);
- the operator's peak RSS (VmHWM);
- the operator's writes per minute once idle.

Prints a Markdown table and writes bench/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from model_poller_api import names  # noqa: E402

from local_services import operator_kit as kit  # noqa: E402
from local_services.kube import KubeControlPlane  # noqa: E402

CHILD_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def apply_crd(plane: KubeControlPlane) -> None:
    api = client.ApiextensionsV1Api(plane.api_client())
    body = yaml.safe_load((REPO / "crds" / "modeldeployments.modelpoller.dev.yaml").read_text())
    api.create_custom_resource_definition(body)

    def established() -> bool:
        crd = api.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True"
            for c in (crd.status.conditions if crd.status else None) or []
        )

    kit.wait_for("the CRD", established, 30)


def complete(cluster: kit.Cluster, namespace: str) -> tuple[int, int]:
    """(MDs with a current observedGeneration, MDs with all five children); cheap requests
    (metadata-only lists, no model deserialization) so that polling does not slow the run."""
    mds = cluster.raw_get(f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.PLURAL}") or {}
    observed = sum(
        1
        for md in mds.get("items") or []
        if (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]
    )
    owners: collections.Counter[str] = collections.Counter()
    selector = f"?labelSelector={names.LABEL_MANAGED_BY}%3D{names.MANAGER}"
    for path in CHILD_PATHS.values():
        listed = cluster.raw_get(path.format(ns=namespace) + selector, accept=METADATA_LIST) or {}
        for item in listed.get("items") or []:
            owners[item["metadata"]["labels"][names.LABEL_INSTANCE]] += 1
    with_children = sum(1 for n in owners.values() if n == len(CHILD_PATHS))
    return observed, with_children


def run(count: int, idle: float, workdir: Path, verbose: bool = False) -> dict[str, Any]:
    plane = KubeControlPlane(workdir / "kube").start()
    try:
        apply_crd(plane)
        cluster = kit.Cluster(plane)
        kubeconfig = kit.install_operator_identity(plane, workdir)
        namespace = "bench"
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        # Production defaults for the operator's intervals (status every 10 s, secrets 60 s).
        env = {
            "MODEL_POLLER_OPERATOR_STATUS_INTERVAL": "10",
            "MODEL_POLLER_OPERATOR_SECRET_CHECK_INTERVAL": "60",
            "MODEL_POLLER_OPERATOR_RETRY_DELAY": "15",
        }
        command = [str(Path(sys.executable).parent / "model-poller-operator"), "--all-namespaces"]
        with kit.run_operator(
            kubeconfig, workdir, env=env, command=command + (["--verbose"] if verbose else [])
        ) as operator:
            rss_before = operator.rss_kib()
            start_offset = kit.audit_offset(plane.audit_log)
            specs = [
                (
                    f"model-{i:04d}",
                    {
                        "replicas": 1 + i % 3,
                        "source": {
                            "uri": f"gs://bench-models/model-{i:04d}/",
                            **({"credentialsSecret": "gcs-key"} if i % 5 == 0 else {}),
                            **({"pubsub": {"topic": "projects/p/topics/models"}} if i % 2 else {}),
                        },
                        "storage": {"sizeLimit": "10Gi"},
                    },
                )
                for i in range(count)
            ]
            cluster.core.create_namespaced_secret(
                namespace, {"metadata": {"name": "gcs-key"}, "stringData": {"key.json": "{}"}}
            )
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda s: cluster.create_md(namespace, s[0], s[1]), specs))
            created_in = time.monotonic() - t0
            progress = []
            while True:
                observed, with_children = complete(cluster, namespace)
                elapsed = time.monotonic() - t0
                progress.append((round(elapsed, 1), observed, with_children))
                if observed == count and with_children == count:
                    break
                if elapsed > 600:
                    raise RuntimeError(f"not converged after 600 s: {progress[-1]}; log:\n{operator.log()[-3000:]}")
                time.sleep(1.0)
            converged_in = time.monotonic() - t0
            time.sleep(15)  # let the first status timers and our own write echoes pass
            settled_offset = kit.audit_offset(plane.audit_log)
            creation_writes = kit.audit_writes(plane.audit_log, start_offset, end=settled_offset)
            time.sleep(idle)
            idle_writes = kit.audit_writes(plane.audit_log, settled_offset)
            peak = operator.peak_rss_kib()
            rss_after = operator.rss_kib()
            alive = operator.process.poll() is None
            log_text = operator.log()
        (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (REPO / "bench" / "results" / "operator_scale.log").write_text(log_text)
        problems = [line for line in log_text.splitlines() if " ERROR " in line or " WARNING " in line]
        by_kind = collections.Counter(
            f"{w['verb']} {w['objectRef'].get('resource')}"
            + (f"/{w['objectRef']['subresource']}" if w["objectRef"].get("subresource") else "")
            for w in creation_writes
        )
        return {
            "count": count,
            "create_requests_seconds": round(created_in, 2),
            "converged_seconds": round(converged_in, 2),
            "writes_total": len(creation_writes),
            "writes_per_md": round(len(creation_writes) / count, 2),
            "writes_by_kind": dict(sorted(by_kind.items())),
            "peak_rss_mib": round(peak / 1024, 1),
            "rss_start_mib": round(rss_before / 1024, 1),
            "rss_end_mib": round(rss_after / 1024, 1),
            "idle_seconds": idle,
            "idle_writes": len(idle_writes),
            "idle_writes_per_minute": round(len(idle_writes) * 60 / idle, 2),
            "idle_write_samples": kit.describe_writes(idle_writes)[:10],
            "operator_alive": alive,
            "operator_log_warnings_and_errors": len(problems),
            "operator_log_problem_samples": problems[:5],
            "progress_tail": progress[-5:],
        }
    finally:
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="ModelDeployments created at once (default 300)")
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle measurement (default 60)")
    parser.add_argument("--verbose", action="store_true", help="run the operator with debug logs (slower)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="operator-bench-") as tmp:
        result = run(args.count, args.idle, Path(tmp), args.verbose)
    out = REPO / "bench" / "results" / "operator_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    targets = [
        (
            "time to children + observedGeneration",
            f"{result['converged_seconds']} s",
            "< 60 s",
            result["converged_seconds"] < 60,
        ),
        ("API writes per ModelDeployment", str(result["writes_per_md"]), "<= 8", result["writes_per_md"] <= 8),
        ("operator peak RSS", f"{result['peak_rss_mib']} MiB", "< 200 MiB", result["peak_rss_mib"] < 200),
        ("writes per minute once idle", str(result["idle_writes_per_minute"]), "0", result["idle_writes"] == 0),
    ]
    print(f"| {args.count} ModelDeployments | result | target | met |")
    print("|---|---|---|---|")
    for what, value, target, met in targets:
        print(f"| {what} | {value} | {target} | {'yes' if met else 'NO'} |")
    print(json.dumps(result, indent=2))
    return 0 if all(met for *_, met in targets) and result["operator_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
