#!/usr/bin/env bash
# Installs the peers a2a-bench compares against in the same run (Debian).
# nginx and HAProxy are wired into the harness; Envoy is not yet.
set -euo pipefail
SUDO=$(command -v sudo || true)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx-light haproxy
# The packages enable system services; the harness starts its own instances.
$SUDO systemctl disable --now nginx haproxy 2>/dev/null || true
