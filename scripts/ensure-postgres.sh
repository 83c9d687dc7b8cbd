#!/usr/bin/env bash
# The PostgreSQL server binaries the tests start (tests/postgres_server.py). Debian's package
# when they are missing and we may install it; otherwise say what is needed.
set -euo pipefail
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries (Debian package postgresql) for the tests" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    exit 0
fi
echo "the tests need PostgreSQL's server binaries (initdb, pg_ctl): install 'postgresql'" >&2
exit 1
