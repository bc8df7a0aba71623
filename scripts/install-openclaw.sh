#!/usr/bin/env bash
# Installs Node 24 and a pinned openclaw from the npm registry, idempotently, into
# /var/cache/taos/openclaw/{node,openclaw} (or the prefix given as the first argument). The sidecar
# tests run this openclaw as a host process, and the openclaw image copies the same two trees to
# /opt/node and /opt/openclaw, so nothing is fetched inside a container.
#
# Layout (the same under /opt in the image):
#   PREFIX/node/bin/node           the node binary (npm's `node` package ships it)
#   PREFIX/openclaw/bin/openclaw   openclaw's launcher (a node script: `#!/usr/bin/env node`)
#   PREFIX/openclaw/lib/node_modules/openclaw
# A stamp file names both versions; a present stamp plus working binaries skips the install.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PREFIX="${1:-/var/cache/taos/openclaw}"
NODE_VERSION="24.21.0"
OPENCLAW_VERSION="2026.9.6"
STAMP="$PREFIX/.taos-installed-node-$NODE_VERSION-openclaw-$OPENCLAW_VERSION"
NODE_DIR="$PREFIX/node"
OPENCLAW_DIR="$PREFIX/openclaw"

installed() {
    [ -f "$STAMP" ] || return 1
    [ "$("$NODE_DIR/bin/node" --version 2>/dev/null)" = "v$NODE_VERSION" ] || return 1
    PATH="$NODE_DIR/bin:$PATH" "$OPENCLAW_DIR/bin/openclaw" --version 2>/dev/null |
        grep -q "OpenClaw $OPENCLAW_VERSION"
}

if installed; then
    log "node $NODE_VERSION and openclaw $OPENCLAW_VERSION already in $PREFIX"
    exit 0
fi
command -v npm >/dev/null || apt_install npm
mkdir -p "$PREFIX"

log "installing node $NODE_VERSION into $NODE_DIR"
rm -rf "$NODE_DIR.tmp"
npm install --silent --no-audit --no-fund --prefix "$NODE_DIR.tmp" "node@$NODE_VERSION"
real_node="$(readlink -f "$NODE_DIR.tmp/node_modules/node/bin/node")"
[ "$("$real_node" --version)" = "v$NODE_VERSION" ] || { log "node $NODE_VERSION did not install"; exit 1; }
# Keep only the binary in the /opt-like layout: the image copies this tree as /opt/node.
rm -rf "$NODE_DIR"
mkdir -p "$NODE_DIR/bin"
cp "$real_node" "$NODE_DIR/bin/node"
rm -rf "$NODE_DIR.tmp"

log "installing openclaw $OPENCLAW_VERSION into $OPENCLAW_DIR (about a minute)"
rm -rf "$OPENCLAW_DIR"
# npm 11 skips dependency install scripts unless allowed; these four are the ones openclaw needs.
PATH="$NODE_DIR/bin:$PATH" npm install -g --silent --no-audit --no-fund --prefix "$OPENCLAW_DIR" \
    --allow-scripts=@google/genai,koffi,protobufjs,openclaw "openclaw@$OPENCLAW_VERSION"
rm -f "$PREFIX"/.taos-installed-*
touch "$STAMP"
installed || { log "openclaw $OPENCLAW_VERSION did not install"; exit 1; }
log "openclaw ready: $OPENCLAW_DIR/bin/openclaw (node $NODE_DIR/bin/node)"
