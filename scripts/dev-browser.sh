#!/usr/bin/env bash
# What the UI's tests need, skipping what is there: Debian's chromium (playwright-core drives it;
# no browser download), an emoji font for readable screenshots, certutil (libnss3-tools: the
# offline-reading check trusts the host's certificate in an NSS database, as people do), the
# UI's node_modules, and a built ui/dist (so the taos-host that cargo builds next embeds it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

apt_install chromium fonts-noto-color-emoji libnss3-tools
"$(dirname "$0")/build-ui.sh"
