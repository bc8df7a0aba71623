#!/usr/bin/env bash
# Installs a pinned opencode (an ACP agent: `opencode acp`) from the npm registry, idempotently,
# into /var/cache/taos/opencode (or the prefix given as the first argument). The sidecar's tests
# run this opencode as a host process, and the opencode image copies the same tree to
# /opt/opencode, so nothing is fetched inside a container.
#
# Layout (the same under /opt in the image):
#   PREFIX/bin/opencode   the native binary (a self-contained Bun build; glibc, no node needed)
# npm's `opencode-ai` package is only a launcher whose install script picks one of its optional
# per-platform packages (`opencode-linux-x64`, `…-baseline`, `…-arm64`, …) and links its binary;
# those packages hold the binary itself. So the platform's package is installed directly, from
# the registry, with install scripts off, and its binary kept. On x86-64 it is the `baseline`
# build, which needs no AVX2: the image may run on an older CPU than the one that built it.
# A stamp file names the version; a present stamp plus a working binary skips the install.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PREFIX="${1:-/var/cache/taos/opencode}"
OPENCODE_VERSION="1.18.33"
case "$(uname -m)" in
    x86_64) PACKAGE="opencode-linux-x64-baseline" ;;
    aarch64) PACKAGE="opencode-linux-arm64" ;;
    *)
        log "opencode ships no Linux build for $(uname -m)"
        exit 1
        ;;
esac
STAMP="$PREFIX/.taos-installed-$PACKAGE-$OPENCODE_VERSION"
BIN="$PREFIX/bin/opencode"

installed() {
    [ -f "$STAMP" ] || return 1
    # Its own scratch HOME: `--version` creates opencode's folders in the home it runs with.
    local home
    home="$(mktemp -d)"
    local version
    version="$(HOME="$home" "$BIN" --version 2>/dev/null || true)"
    rm -rf "$home"
    [ "$version" = "$OPENCODE_VERSION" ]
}

if installed; then
    log "opencode $OPENCODE_VERSION already in $PREFIX"
    exit 0
fi
command -v npm >/dev/null || apt_install npm
mkdir -p "$PREFIX"

log "installing opencode $OPENCODE_VERSION ($PACKAGE, ~60 MB download) into $PREFIX"
STARTED=$SECONDS
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$WORK" \
    "$PACKAGE@$OPENCODE_VERSION"
rm -rf "${PREFIX:?}/bin"
mkdir -p "$PREFIX/bin"
cp "$WORK/node_modules/$PACKAGE/bin/opencode" "$BIN"
chmod 0755 "$BIN"
rm -f "$PREFIX"/.taos-installed-*
touch "$STAMP"
installed || { log "opencode $OPENCODE_VERSION did not install"; exit 1; }
log "opencode ready: $BIN ($(du -m "$BIN" | cut -f1) MB) in $((SECONDS - STARTED)) s"
