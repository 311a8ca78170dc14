#!/usr/bin/env bash
# Installs Debian's Chromium and its ChromeDriver (packages chromium,
# chromium-driver) for the console's browser tests
# (proxy/tests/sidecar/browser.rs). Nothing is done when both are there.
# .ci/run calls this; so do the tests, once, when chromedriver is missing.
set -euo pipefail
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
chromium --version
chromedriver --version
