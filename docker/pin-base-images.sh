#!/usr/bin/env bash
# Re-pins the Dockerfile's base images (ARG RUST_IMAGE, ARG RUNTIME_IMAGE) to
# the digest their tag points at now. Needs Docker with buildx (or crane).
#   docker/pin-base-images.sh && git diff docker/Dockerfile
set -euo pipefail
file="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/Dockerfile"
for arg in RUST_IMAGE RUNTIME_IMAGE; do
    current="$(sed -n "s/^ARG $arg=//p" "$file")"
    tag="${current%@*}"
    if command -v crane >/dev/null; then
        digest="$(crane digest "$tag")"
    else
        digest="$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')"
    fi
    case "$digest" in sha256:*) ;; *) echo "no digest for $tag: '$digest'" >&2; exit 1 ;; esac
    sed -i "s|^ARG $arg=.*|ARG $arg=$tag@$digest|" "$file"
    echo "$arg=$tag@$digest"
done
