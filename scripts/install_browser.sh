#!/usr/bin/env bash
# Install Debian's chromium for the UI test when it is missing (root only; the test itself is skipped
# outside CI when no browser is present). Playwright drives this binary; it never downloads one.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is not installed and this is not root: the UI test will be skipped" >&2
  exit 0
fi
echo "installing chromium (Debian package) for the UI test ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
