#!/usr/bin/env bash
# Headless Chromium for the web-page test (tests/test_server.py). Installed from Debian's packages when it is
# missing and we may (CI, or FEWSTEP_INSTALL_BROWSER=1, as root with apt-get); otherwise that one test skips
# with its reason. Never needed to use fewstep.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ -z "${CI:-}" ] && [ "${FEWSTEP_INSTALL_BROWSER:-0}" != "1" ]; then
  echo "install: no Chromium; the web-page test will skip (FEWSTEP_INSTALL_BROWSER=1 make test installs it)"
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install: cannot install Chromium here (needs root and apt-get); the web-page test will skip"
  exit 0
fi
echo "install: Debian's chromium for the headless web-page test"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
  >/dev/null; }; then
  echo "install: installing Chromium failed; the web-page test will skip"
fi
