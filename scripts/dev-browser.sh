#!/usr/bin/env bash
# What the UI's tests need, skipping what is there: Debian's chromium (playwright-core drives it;
# no browser download), an emoji font for readable screenshots, the UI's node_modules, and a
# built ui/dist (so the taos-host that cargo builds next embeds it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

apt_install chromium fonts-noto-color-emoji
"$(dirname "$0")/build-ui.sh"
