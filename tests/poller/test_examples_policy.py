"""Each example in deploy/examples/ promises a version policy: apply it to the real API
server and check what reaches the poller, through the poller's own watch with the poller's
own (rendered) identity; then a `kubectl patch`-style change of spec.versions arrives live."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from model_poller.config import Target
from model_poller.kube import Kube
from model_poller.policy import Policy
from model_poller.policy_watch import PolicyWatcher

from tests.poller import kube_identity as ki

pytestmark = [pytest.mark.kube]

EXAMPLES = sorted(
    path
    for path in (Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("*.yaml")
    # The ModelDeployments only (external-deployment.yaml is a team's own Deployment).
    if yaml.safe_load(path.read_text()).get("kind") == "ModelDeployment"
)


def promised(spec: dict[str, Any]) -> Policy:
    """What the example's text says, read independently of the poller's parser."""
    versions = spec.get("versions") or {}
    if "pinned" in versions:
        return Policy(keep=None, pinned=frozenset(versions["pinned"]))
    return Policy(keep=versions.get("keep", 2))


def poller_kube(kubeconfig: Path, target: Target) -> Kube:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return Kube(kubernetes.client.ApiClient(configuration), target)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_policy_reaches_the_poller_and_follows_changes(
    example: Path, kube: Any, namespace: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load(example.read_text())
    name = doc["metadata"]["name"]
    md = ki.create_md(kube, namespace, name, doc["spec"])
    ki.apply_identity(kube, md)
    kube_client = poller_kube(ki.poller_kubeconfig(kube, md, tmp_path / "poller.kubeconfig"), Target(namespace, name))
    seen: queue.Queue[Policy] = queue.Queue()
    watcher = PolicyWatcher(kube_client, seen.put)
    watcher.start()
    try:
        assert seen.get(timeout=15) == promised(doc["spec"]), example.name

        changed = {"keep": 1} if "pinned" in (doc["spec"].get("versions") or {}) else {"pinned": [1]}
        started = time.monotonic()
        ki.patch_md(kube, namespace, name, {"spec": {"versions": {"keep": None, "pinned": None, **changed}}})
        assert seen.get(timeout=5) == promised({"versions": changed})
        took = time.monotonic() - started
        print(f"{example.name}: spec.versions change reached the poller in {took:.2f}s")
        assert took < 1.0, f"the change took {took:.2f}s to reach the poller"
    finally:
        watcher.stop()
        kube_client.close()
