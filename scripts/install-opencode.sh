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
#
#   scripts/install-opencode.sh [--arch amd64|arm64] [PREFIX]
#
# --arch arm64 on an amd64 machine installs `opencode-linux-arm64` for the arm64 image (default
# prefix /var/cache/taos/opencode-arm64) and checks it under qemu-user (binfmt_misc). The
# registry this project builds from holds that package only up to 1.18.18 (1.18.33 was never
# published for it there), so arm64 pins 1.18.18: ARM64_VERSION below, until a newer one is there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

arch_from_args "$@"
shift "$ARCH_SHIFT"
if [ -n "$FOREIGN" ]; then
    binfmt_arm64 || { log "can't check opencode for $ARCH without running $ARCH binaries"; exit 1; }
    arm64_host_libs
fi
PREFIX="${1:-/var/cache/taos/opencode$([ -z "$FOREIGN" ] || echo "-$ARCH")}"
OPENCODE_VERSION="1.18.33"
ARM64_VERSION="1.18.18"
case "$ARCH" in
    amd64) PACKAGE="opencode-linux-x64-baseline" ;;
    arm64)
        PACKAGE="opencode-linux-arm64"
        OPENCODE_VERSION="$ARM64_VERSION"
        ;;
    *)
        log "opencode ships no Linux build for $ARCH"
        exit 1
        ;;
esac
STAMP="$PREFIX/.taos-installed-$PACKAGE-$OPENCODE_VERSION"
BIN="$PREFIX/bin/opencode"

installed() {
    [ -f "$STAMP" ] || return 1
    # Another arch's binary runs only under qemu-user, ~20 s for a --version: it ran once
    # after its install (below) and scripts/check-arm64.sh runs it in the image; a later run
    # checks that the stamp's binary is still the AArch64 one.
    if [ -n "$FOREIGN" ] && [ "${1:-}" != --run ]; then
        readelf -h "$BIN" 2>/dev/null | grep -q 'Machine:.*AArch64'
        return
    fi
    # Its own scratch HOME: `--version` creates opencode's folders in the home it runs with.
    local home
    home="$(mktemp -d)"
    local version
    version="$(HOME="$home" "$BIN" --version 2>/dev/null || true)"
    rm -rf "$home"
    [ "$version" = "$OPENCODE_VERSION" ]
}

if installed; then
    log "opencode $OPENCODE_VERSION ($ARCH) already in $PREFIX"
    exit 0
fi
command -v npm >/dev/null || apt_install npm
mkdir -p "$PREFIX"

log "installing opencode $OPENCODE_VERSION ($PACKAGE, ~60 MB download) into $PREFIX"
STARTED=$SECONDS
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
if [ -n "$FOREIGN" ]; then
    # Another arch's package: fetched and unpacked, not installed (lib.sh's npm_unpack).
    npm_unpack "$PACKAGE@$OPENCODE_VERSION" "$WORK/node_modules/$PACKAGE.tmp"
    mv "$WORK/node_modules/$PACKAGE.tmp/package" "$WORK/node_modules/$PACKAGE"
    readelf -h "$WORK/node_modules/$PACKAGE/bin/opencode" | grep -q 'Machine:.*AArch64' \
        || { log "$PACKAGE@$OPENCODE_VERSION's binary is not AArch64 code"; exit 1; }
else
    npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$WORK" \
        "$PACKAGE@$OPENCODE_VERSION"
fi
rm -rf "${PREFIX:?}/bin"
mkdir -p "$PREFIX/bin"
cp "$WORK/node_modules/$PACKAGE/bin/opencode" "$BIN"
chmod 0755 "$BIN"
rm -f "$PREFIX"/.taos-installed-*
touch "$STAMP"
installed --run || { log "opencode $OPENCODE_VERSION did not install (or does not run)"; exit 1; }
log "opencode ready ($ARCH): $BIN ($(du -m "$BIN" | cut -f1) MB) in $((SECONDS - STARTED)) s"
