#!/usr/bin/env bash
# Builds the Debian packages taos-host_<version>_<arch>.deb and taos-agent_<version>_<arch>.deb
# with cargo-deb (installed once, pinned, into /var/cache/taos/tools; re-runs reuse it).
#
#   scripts/build-deb.sh            for users: builds the web UI and the release binaries
#   scripts/build-deb.sh --debug    packages the debug binaries already built (the install test;
#                                   `cargo build --workspace --bins` first)
#
# The packages land in $CARGO_TARGET_DIR/debian/. What they install: docs/install.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

CARGO_DEB_VERSION=3.8.0
MODE="${1:-release}"
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

OUT="$CARGO_TARGET_DIR/debian"
mkdir -p "$OUT"
rm -f "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb
case "$MODE" in
    release)
        # The UI is compiled into the host, so it is built first.
        "$REPO_ROOT/scripts/build-ui.sh"
        for package in taos-host taos-agent; do
            log "cargo deb -p $package (release build)"
            "$CARGO_DEB" -p "$package" --locked -o "$OUT/"
        done
        ;;
    --debug)
        for package in taos-host taos-agent; do
            [ -x "$CARGO_TARGET_DIR/debug/$package" ] || {
                log "no $CARGO_TARGET_DIR/debug/$package: run cargo build --workspace --bins first"
                exit 1
            }
            # cargo-deb 3.8 warns that the dev profile is meant for releases only (and will be
            # refused by a later version); this package is for the install test, never shipped.
            # --fast skips xz's slowest level.
            log "cargo deb -p $package (the debug build, stripped)"
            if ! "$CARGO_DEB" -p "$package" --no-build --profile dev --fast -o "$OUT/" 2>"$OUT/cargo-deb.err"; then
                cat "$OUT/cargo-deb.err" >&2
                exit 1
            fi
            grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' "$OUT/cargo-deb.err" >&2 || true
        done
        ;;
    *)
        log "usage: scripts/build-deb.sh [--debug]"
        exit 2
        ;;
esac
# For the figures the install test writes (docs/benchmarks.md).
if [ "$MODE" = release ]; then echo "the release build" > "$OUT/build-mode"; else echo "the debug build (stripped)" > "$OUT/build-mode"; fi
ls -1 "$OUT"/taos-host_*.deb "$OUT"/taos-agent_*.deb
