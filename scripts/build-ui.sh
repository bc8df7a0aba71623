#!/usr/bin/env bash
# Builds the web UI (ui/dist), which taos-host embeds when it is compiled (host-service/build.rs).
# npm ci runs only when ui/node_modules is missing or older than ui/package-lock.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT/ui"

if ! command -v npm >/dev/null; then
    log "npm is missing: the host will serve a page saying the UI is not built (install Node.js 20+)"
    exit 0
fi
STAMP=node_modules/.taos-lock.sha256
WANT="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    log "npm ci (ui)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$WANT" > "$STAMP"
fi
log "building the UI"
npm run --silent build -- --logLevel warn
