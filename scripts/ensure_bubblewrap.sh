#!/usr/bin/env bash
# The embedded Triton runs model code (Python backends) inside a bubblewrap
# sandbox (mlserve/triton/sandbox.py). Install Debian's `bubblewrap` when
# `bwrap` is absent: CI runs as root on a fresh Debian. Without it MLServe
# refuses to start the embedded Triton unless told --unsafe-shared-user.
set -euo pipefail
if command -v bwrap > /dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bubblewrap is not installed; run as root: apt-get install -y bubblewrap" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends bubblewrap > /dev/null
