#!/usr/bin/env bash
# The tests start a throwaway PostgreSQL cluster with the server binaries of
# Debian's `postgresql` package (/usr/lib/postgresql/*/bin). Install it when
# they are absent: CI runs as root on a fresh Debian. No cluster is started
# or enabled here; the test fixture makes its own in a temporary directory.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL's server is not installed; run as root: apt-get install -y postgresql" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql > /dev/null
