"""``kopf run -m model_poller_operator.handlers --namespace NS``: only that namespace is served."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import operator_testkit as kit

pytestmark = pytest.mark.kube


def test_kopf_run_with_a_namespace_serves_only_that_namespace(
    kube: Any, operator_kubeconfig: Path, cluster: kit.Cluster, tmp_path: Path
) -> None:
    served, ignored = f"ns-{uuid.uuid4().hex[:8]}", f"ns-{uuid.uuid4().hex[:8]}"
    for ns in (served, ignored):
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    kopf = str(Path(sys.executable).parent / "kopf")
    command = [kopf, "run", "-m", "model_poller_operator.handlers", "--namespace", served, "--standalone"]
    with kit.run_operator(operator_kubeconfig, tmp_path, command=command) as running:
        cluster.create_md(served, "m", {"source": {"uri": "gs://bkt/m/"}})
        cluster.create_md(ignored, "m", {"source": {"uri": "gs://bkt/m/"}})
        cluster.wait_observed(served, "m")
        kit.wait_for("the Deployment", lambda: cluster.child("Deployment", served, "m"))
        time.sleep(3)
        assert cluster.child("Deployment", ignored, "m") is None
        assert "status" not in cluster.get_md(ignored, "m")
        assert running.process.poll() is None, running.log()[-3000:]
