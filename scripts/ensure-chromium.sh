#!/usr/bin/env bash
# The headless browser the status-page test drives (tests/test_status_page.py): Debian's
# chromium package when it is missing and we may install it; otherwise say what is needed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium (Debian package chromium) for the status-page test" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "the status-page test needs a headless Chromium: install 'chromium'" >&2
exit 1
