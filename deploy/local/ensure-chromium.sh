#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the dashboard's browser test
# (tests/integration/test_dashboard_browser.py drives it through Playwright; `playwright install` is never run).
# Installs the `chromium` package with apt-get once if it is missing; nothing is cached in the repository.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
log() { echo "[chromium] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$CHROMIUM" ]] && exit 0
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "$CHROMIUM is missing and we are not root (apt-get install chromium)"
  sudo=(sudo -n)
fi
command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and apt-get is unavailable (install Chromium)"
log "installing chromium with apt-get (one-time) ..."
aptlog="$(mktemp)"
trap 'rm -f "$aptlog"' EXIT
if ! { "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq &&
       "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
         --no-install-recommends chromium; } >"$aptlog" 2>&1; then
  cat "$aptlog" >&2
  die "apt-get install chromium failed"
fi
[[ -x "$CHROMIUM" ]] || die "$CHROMIUM still missing after apt-get install chromium"
