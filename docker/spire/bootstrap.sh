#!/bin/sh
# One-shot bootstrap for the compose stack (runs in docker:cli with the
# Docker socket): the agent's trust bundle, the registration entries, and the
# dev IdP's trust of SPIRE's JWT keys and app registrations. (The agent's join
# token is minted by agent-start.sh at each agent start.)
set -eu

TD=aim.microsoft.com
NODE=spiffe://$TD/node/docker
AGENTS=spiffe://$TD/ests/bp/b1/aid
IDP=http://dev-idp:9400
server() { docker exec a2a-spire-server /opt/spire/bin/spire-server "$@"; }

echo "waiting for the SPIRE server..."
i=0
until server healthcheck >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt 120 ] || { echo "SPIRE server not healthy after 120 s" >&2; exit 1; }
    sleep 1
done

server bundle show > /bootstrap/bundle.pem

# One entry per workload, selected by the container label `a2a.workload`.
for workload in budget-backend budget-report employee-menus; do
    if ! server entry show -spiffeID "$AGENTS/$workload" | grep -q "Entry ID"; then
        server entry create -parentID "$NODE" -spiffeID "$AGENTS/$workload" \
            -selector "docker:label:a2a.workload:$workload" -x509SVIDTTL 600
    fi
done

# The dev IdP (standing in for Entra): trust the trust domain's JWT-SVID keys
# as client assertions (what a federated credential does), as SPIRE's OIDC
# discovery provider publishes them (refetched on an unknown key: they rotate),
# and register the apps.
apk add --no-cache curl >/dev/null
i=0
until curl -fsS -o /dev/null "$IDP/admin/stats"; do
    i=$((i + 1)); [ "$i" -lt 60 ] || { echo "dev IdP not up after 60 s" >&2; exit 1; }
    sleep 1
done
curl -fsS -X POST --data 'http://127.0.0.1:8008' "$IDP/admin/trust-issuer"
curl -fsS -X PUT "$IDP/admin/apps/budget-report-client" \
    -d '{"oid":"00000000-0000-4000-8000-0000000000a1","roles":["Budget.Read"]}'
curl -fsS -X PUT "$IDP/admin/apps/budget-backend-client" -d '{"oid":"00000000-0000-4000-8000-0000000000b0","roles":[]}'
echo "bootstrap done"
