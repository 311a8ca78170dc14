#!/usr/bin/env bash
# Installs the peers a2a-bench compares against, where this machine allows.
# Only nginx is wired into the harness so far; HAProxy and Envoy are next.
set -euo pipefail
SUDO=$(command -v sudo || true)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx-light
