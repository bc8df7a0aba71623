#!/usr/bin/env bash
# Builds the Debian packages taos-host_<version>_<arch>.deb and taos-agent_<version>_<arch>.deb
# with cargo-deb (installed once, pinned, into /var/cache/taos/tools; re-runs reuse it), and
# for users (release) taos-agent-image_<version>_<arch>.deb, the agent image `taos-host setup`
# imports (scripts/build-image-deb.sh; building it needs incus and debootstrap here).
#
#   scripts/build-deb.sh [--arch amd64|arm64]            for users: builds the web UI and the
#                                                         release binaries
#   scripts/build-deb.sh --debug [--arch amd64|arm64]    the debug binaries (the install test
#                                                         and CI; for this machine's arch
#                                                         `cargo build --workspace --bins` first,
#                                                         a cross arch is built here)
#
# --arch defaults to this machine's. arm64 on an amd64 machine is cross-compiled for
# aarch64-unknown-linux-gnu: the aarch64 gcc links it and compiles the C parts (SQLite, ring),
# set for this script only (lib.sh's cross_env_arm64), so x86_64 builds are untouched.
# scripts/check-arm64.sh runs the result under qemu-user.
#
# The packages land in $CARGO_TARGET_DIR/debian/ (this machine's arch) or
# $CARGO_TARGET_DIR/debian/<arch>/ (a cross arch). They are packed again only when the
# binaries, the package metadata or this script changed. What they install: docs/install.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

CARGO_DEB_VERSION=3.8.0
MODE=release
ARCH="$(dpkg --print-architecture)"
while [ $# -gt 0 ]; do
    case "$1" in
        --debug) MODE=debug ;;
        --arch) ARCH="${2:-}"; shift ;;
        *) log "usage: scripts/build-deb.sh [--debug] [--arch amd64|arm64]"; exit 2 ;;
    esac
    shift
done

NATIVE_ARCH="$(dpkg --print-architecture)"
TARGET_ARGS=()
if [ "$ARCH" = "$NATIVE_ARCH" ]; then
    OUT="$CARGO_TARGET_DIR/debian"
    BIN_DIR="$CARGO_TARGET_DIR"
elif [ "$ARCH" = arm64 ] && [ "$NATIVE_ARCH" = amd64 ]; then
    cross_env_arm64
    TARGET_ARGS=(--target "$ARM64_TARGET")
    OUT="$CARGO_TARGET_DIR/debian/arm64"
    BIN_DIR="$CARGO_TARGET_DIR/$ARM64_TARGET"
else
    log "--arch $ARCH on an $NATIVE_ARCH machine is not supported (amd64 builds amd64 and arm64; arm64 builds arm64)"
    exit 2
fi

if mkdir -p /var/cache/taos/tools 2>/dev/null && [ -w /var/cache/taos/tools ]; then
    TOOLS=/var/cache/taos/tools
else
    TOOLS="$CARGO_TARGET_DIR/tools"
fi
CARGO_DEB="$TOOLS/cargo-deb-$CARGO_DEB_VERSION/bin/cargo-deb"
if [ "$("$CARGO_DEB" --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    log "installing cargo-deb $CARGO_DEB_VERSION into $TOOLS (about a minute and a half)"
    # Its own temporary target dir: the tool's build has nothing to share with ours.
    env -u CARGO_TARGET_DIR cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet \
        --root "$TOOLS/cargo-deb-$CARGO_DEB_VERSION"
fi

# The binaries: built here except this machine's debug build, which the caller built (CI's
# `cargo build --workspace --bins`, whose artifacts the tests share).
case "$MODE" in
    release)
        # The UI is compiled into the host, so it is built first.
        "$REPO_ROOT/scripts/build-ui.sh"
        log "cargo build --release ${TARGET_ARGS[*]} (taos-host, taos-agent)"
        cargo build --release --locked "${TARGET_ARGS[@]}" -p taos-host -p taos-agent --bins
        PROFILE_DIR=release
        CARGO_DEB_ARGS=(--profile release)
        ;;
    debug)
        if [ ${#TARGET_ARGS[@]} -gt 0 ]; then
            log "cargo build ${TARGET_ARGS[*]} (taos-host, taos-agent; debug)"
            cargo build --locked "${TARGET_ARGS[@]}" -p taos-host -p taos-agent --bins
        fi
        PROFILE_DIR=debug
        # cargo-deb 3.8 warns that the dev profile is meant for releases only (and will be
        # refused by a later version); this package is for tests, never shipped. --fast skips
        # xz's slowest level.
        CARGO_DEB_ARGS=(--profile dev --fast)
        ;;
esac
for package in taos-host taos-agent; do
    [ -x "$BIN_DIR/$PROFILE_DIR/$package" ] || {
        log "no $BIN_DIR/$PROFILE_DIR/$package: run cargo build --workspace --bins first"
        exit 1
    }
done

# The agent image package, with the release sidecar just built (a debug build's image comes from
# test.sh, which builds it for the tests anyway). Its own alias, so a developer's `taos-agent`
# image (what the tests deploy) is left as it is.
if [ "$MODE" = release ]; then
    TAOS_AGENT_IMAGE_ALIAS=taos-agent-release "$REPO_ROOT/scripts/build-agent-image.sh" \
        --arch "$ARCH" "$BIN_DIR/release/taos-agent"
    TAOS_AGENT_IMAGE_ALIAS=taos-agent-release "$REPO_ROOT/scripts/build-image-deb.sh" --arch "$ARCH"
fi
# Packed again only when something that goes into the packages changed.
SUM="$(cat "$BIN_DIR/$PROFILE_DIR/taos-host" "$BIN_DIR/$PROFILE_DIR/taos-agent" "$0" \
    host-service/Cargo.toml crates/agent/Cargo.toml Cargo.toml docs/install.md packaging/deb/*/* \
    | sha256sum | cut -c1-16)"
STAMP="$OUT/.taos-deb-sha"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$SUM" ] \
    && ls "$OUT"/taos-host_*_"$ARCH".deb "$OUT"/taos-agent_*_"$ARCH".deb >/dev/null 2>&1; then
    log "the $ARCH packages in $OUT are up to date ($SUM)"
    ls -1 "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb
    exit 0
fi
mkdir -p "$OUT"
rm -f "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb "$STAMP"
STARTED=$SECONDS
for package in taos-host taos-agent; do
    # Stripped by cargo-deb (with aarch64-linux-gnu-strip for arm64).
    log "cargo deb -p $package ($ARCH, the $PROFILE_DIR build)"
    if ! "$CARGO_DEB" -p "$package" --no-build "${TARGET_ARGS[@]}" "${CARGO_DEB_ARGS[@]}" -o "$OUT/" 2>"$OUT/cargo-deb.err"; then
        cat "$OUT/cargo-deb.err" >&2
        exit 1
    fi
    grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' "$OUT/cargo-deb.err" >&2 || true
done
for deb in "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb; do
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$ARCH" ] || { log "$deb is not for $ARCH"; exit 1; }
done
# For the figures the install test writes (docs/benchmarks.md).
if [ "$MODE" = release ]; then echo "the release build" > "$OUT/build-mode"; else echo "the debug build (stripped)" > "$OUT/build-mode"; fi
echo "$SUM" > "$STAMP"
log "packed the $ARCH packages in $((SECONDS - STARTED)) s"
ls -1 "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb
