#!/usr/bin/env bash
# Builds kustomize (sigs.k8s.io/kustomize/kustomize/v5 at the version go.mod
# pins, as a Go tool) into target/kustomize/, to render deploy/k8s in CI
# (`kustomize build` is what `kubectl kustomize` runs), and copies the
# CustomResourceDefinitions the manifests use (ClusterSPIFFEID, PodMonitor,
# PrometheusRule) out of their projects' Go modules, at the versions pinned
# below, into target/kustomize/crds/, so docker/check.py validates those
# resources against their real schemas. Built once: reused while this
# script, go.mod and go.sum are unchanged. .ci/run calls this.
#
# Needs the Go toolchain (1.26) and the Go module proxy; says which is
# missing and fails otherwise.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${A2A_KUSTOMIZE_BIN:-$root/target/kustomize}"
module="sigs.k8s.io/kustomize/kustomize/v5"
# module@version:path of each CRD, read from the module's zip as the Go proxy serves it.
crds=(
    github.com/spiffe/spire-controller-manager@v0.7.0:config/crd/bases/spire.spiffe.io_clusterspiffeids.yaml
    github.com/prometheus-operator/prometheus-operator@v0.85.0:example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml
    github.com/prometheus-operator/prometheus-operator@v0.85.0:example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
)
version="$(awk -v m="$module" '$1 == m {print $2}' "$here/go.mod")"

if ! command -v go >/dev/null 2>&1; then
    echo "tools/kustomize/build.sh: the Go toolchain ('go') is not on PATH: install Go 1.26 to build kustomize" >&2
    exit 1
fi
want="$(cat "$here/build.sh" "$here/go.mod" "$here/go.sum" | sha256sum | cut -d' ' -f1)"
stamp="$out/.built-from"
if [ -x "$out/kustomize" ] && [ -d "$out/crds" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "tools/kustomize/build.sh: reusing kustomize $version in $out (go.mod and go.sum unchanged)"
    exit 0
fi
mkdir -p "$out"
started=$(date +%s)
cd "$here"
export GOTOOLCHAIN=local
if ! go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$version" -o "$out/kustomize" "$module"; then
    echo "tools/kustomize/build.sh: building kustomize $version failed (see above; the Go module proxy must serve it)" >&2
    exit 1
fi
rm -rf "$out/crds" && mkdir -p "$out/crds"
for crd in "${crds[@]}"; do
    mod="${crd%%:*}"
    dir="$(go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ -z "$dir" ] || [ ! -f "$dir/${crd#*:}" ]; then
        echo "tools/kustomize/build.sh: the Go module proxy did not serve $mod, or it has no ${crd#*:}" >&2
        exit 1
    fi
    cp "$dir/${crd#*:}" "$out/crds/"
done
echo "$want" > "$stamp"
echo "tools/kustomize/build.sh: built kustomize $version (and ${#crds[@]} CRDs) into $out in $(( $(date +%s) - started )) s"
