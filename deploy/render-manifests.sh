#!/usr/bin/env bash
# Render deploy/manifests/ from the Helm chart (default values), for `kubectl apply` users.
#   bash deploy/render-manifests.sh   (uses helm from PATH, else the one hack/build-test-binaries.sh builds)
set -euo pipefail
cd "$(dirname "$0")/.."
HELM="${HELM:-$(command -v helm || echo "$(bash hack/build-test-binaries.sh)/helm")}"
"$HELM" lint deploy/chart >&2
{
    cat <<'HEADER'
# The model-poller operator for `kubectl apply` users: the Helm chart in deploy/chart rendered
# with its default values (release model-poller-operator, namespace model-poller-system) by
# deploy/render-manifests.sh; do not edit by hand. Install:
#   kubectl apply -f crds/modeldeployments.modelpoller.dev.yaml
#   kubectl create namespace model-poller-system
#   kubectl apply -f deploy/manifests/model-poller-operator.yaml
HEADER
    "$HELM" template model-poller-operator deploy/chart --namespace model-poller-system
} > deploy/manifests/model-poller-operator.yaml
cp crds/modeldeployments.modelpoller.dev.yaml deploy/chart/crds/
echo "rendered deploy/manifests/model-poller-operator.yaml" >&2
