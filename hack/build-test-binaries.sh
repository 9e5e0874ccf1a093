#!/usr/bin/env bash
# Build the real services the test suite runs against, from their Go modules, and cache
# them under ~/.cache so only the first run pays for the build (like envtest's assets).
#
#   kube-apiserver  k8s.io/kubernetes      (staging modules replaced by matching v0.x.y tags)
#   kube-controller-manager  the same module; tests run only its garbage collector
#   etcd            go.etcd.io/etcd/server/v3
#   fake-gcs-server github.com/fsouza/fake-gcs-server
#   helm            helm.sh/helm/v3 (chart lint and template in the tests)
#   toxiproxy-server, toxiproxy-cli  github.com/Shopify/toxiproxy/v2 (a real network: latency,
#                   bandwidth, resets and stalls between the poller and its services)
#   rclone          github.com/rclone/rclone (the copy tool the download benchmark compares with;
#                   about 5 minutes cold on 2 cores, module download included)
#
# Prints the binary directory on stdout; everything else goes to stderr.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
RCLONE_VERSION="${RCLONE_VERSION:-v1.76.0}"

CACHE="${MODEL_POLLER_CACHE:-$HOME/.cache/model-poller}"
# Each binary is cached per version; BIN holds links to the pinned set, so changing one
# pin rebuilds only that binary.
BUILDS="$CACHE/build"
BIN="$CACHE/bin/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-fakegcs-$FAKE_GCS_VERSION-helm-$HELM_VERSION-toxiproxy-$TOXIPROXY_VERSION-rclone-$RCLONE_VERSION"
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE/gomod}"
export GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
export GOFLAGS="-modcacherw"
export CGO_ENABLED=0
mkdir -p "$BIN"

log() { echo "build-test-binaries: $*" >&2; }

# Builds one package in a throwaway module whose go.mod pins the given requirement.
# $1 output name, $2 package to build, $3 module@version, $4 extra go.mod lines (replaces).
build() {
    local out="$1" pkg="$2" modver="$3" extra="${4:-}"
    local dest="$BUILDS/$out-${modver##*@}"
    if [ -x "$dest/$out" ]; then
        log "$out: cached at $dest/$out"
        ln -sfn "$dest/$out" "$BIN/$out"
        return
    fi
    mkdir -p "$dest"
    local work
    work="$(mktemp -d)"
    log "$out: building $pkg from $modver (first run only; a few minutes)"
    (
        cd "$work"
        printf 'module modelpoller.dev/testbin/%s\n\ngo 1.26\n\n%s\n' "$out" "$extra" > go.mod
        printf 'package main\n\nimport _ "%s"\n' "$pkg" > tools.go
        sed -i '1i //go:build tools' tools.go
        go get "$modver" >&2
        go mod tidy -e >&2 || true
        go build -trimpath -ldflags "-s -w" -o "$dest/$out.tmp" "$pkg" >&2
    )
    mv "$dest/$out.tmp" "$dest/$out"
    ln -sfn "$dest/$out" "$BIN/$out"
    rm -rf "$work"
    log "$out: built"
}

# k8s.io/kubernetes requires its ~30 staging modules at v0.0.0 and replaces them with local
# folders; replace each with the matching published v0.Y.Z tag, read from its own go.mod.
kube_replaces() {
    local staging_version="v0.${KUBE_VERSION#v1.}"
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    python3 - "$gomod" "$staging_version" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", text, re.M)))
print("replace (")
for mod in staging:
    print(f"\t{mod} => {mod} {sys.argv[2]}")
print(")")
PY
}

# Only compute the replace list (a module download) when the binary is not cached.
if [ -x "$BUILDS/kube-apiserver-$KUBE_VERSION/kube-apiserver" ]; then
    build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "k8s.io/kubernetes@$KUBE_VERSION"
else
    build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "k8s.io/kubernetes@$KUBE_VERSION" "$(kube_replaces)"
fi
if [ -x "$BUILDS/kube-controller-manager-$KUBE_VERSION/kube-controller-manager" ]; then
    build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "k8s.io/kubernetes@$KUBE_VERSION"
else
    build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "k8s.io/kubernetes@$KUBE_VERSION" "$(kube_replaces)"
fi
build etcd go.etcd.io/etcd/server/v3 "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
build fake-gcs-server github.com/fsouza/fake-gcs-server "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
build helm helm.sh/helm/v3/cmd/helm "helm.sh/helm/v3@$HELM_VERSION"
build toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server "github.com/Shopify/toxiproxy/v2@$TOXIPROXY_VERSION"
build toxiproxy-cli github.com/Shopify/toxiproxy/v2/cmd/cli "github.com/Shopify/toxiproxy/v2@$TOXIPROXY_VERSION"
build rclone github.com/rclone/rclone "github.com/rclone/rclone@$RCLONE_VERSION"

echo "$BIN"
