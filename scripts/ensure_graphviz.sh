#!/usr/bin/env bash
# `make docs` draws the README's diagrams with Graphviz's `dot` (Debian's
# `graphviz`) in the DejaVu fonts. Install them when absent: CI and developers
# run as root on Debian.
set -euo pipefail
if command -v dot > /dev/null && fc-list 2> /dev/null | grep -qi "DejaVuSans"; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "Graphviz is not installed; run as root: apt-get install -y graphviz fonts-dejavu-core" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends graphviz fonts-dejavu-core > /dev/null
