#!/bin/sh
# The SPIRE agent's entrypoint in the compose stack: a fresh join token at
# every start. A join token is single-use: an agent restarted after its own
# SVID expired (a stopped laptop, a crash loop) must attest again, and a
# token saved from the first start would be refused for good. This runs in
# docker:cli (a shell and the Docker CLI); the agent binary comes from the
# official image through the `spire-agent-bin-<version>` volume.
set -eu

NODE=spiffe://aim.microsoft.com/node/docker
server() { docker exec a2a-spire-server /opt/spire/bin/spire-server "$@"; }

i=0
until server healthcheck >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt 120 ] || { echo "SPIRE server not healthy after 120 s" >&2; exit 1; }
    sleep 1
done
# The token maps this attestation onto $NODE, the parent of the workload entries.
token=$(server token generate -spiffeID "$NODE" -ttl 600 | awk '/Token/ {print $2}')
[ -n "$token" ] || { echo "the SPIRE server issued no join token" >&2; exit 1; }
exec /opt/spire/bin/spire-agent run -config /spire/agent.conf -joinToken "$token"
