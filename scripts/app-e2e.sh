#!/usr/bin/env bash
# The app's real-window test: builds the UI and the app, then runs the test under a virtual
# display (Xvfb) and a private D-Bus session with an unlocked GNOME Keyring (the Secret Service
# the app keeps its refresh token in) and a notification daemon. Screenshots and the D-Bus log
# go to $TAOS_APP_E2E_OUT (default target/app-e2e under the cargo target dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

export TAOS_APP_E2E_OUT="${TAOS_APP_E2E_OUT:-$CARGO_TARGET_DIR/app-e2e}"
[ -d ui/node_modules ] || (cd ui && npm ci --no-audit --no-fund)
log "building the UI and the app"
(cd ui && npm run build >/dev/null)
cargo build --locked -p taos-app -p taos-host
log "running the app in a real window (Xvfb, D-Bus session, GNOME Keyring)"
# The keyring gets a throwaway HOME; cargo and rustup keep theirs.
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
# shellcheck disable=SC2016 # the inner script expands its own variables, inside the session
xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- bash -c '
    set -e
    export HOME="$(mktemp -d)"
    echo -n "taos-test-keyring" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    dunst >/dev/null 2>&1 & notifications=$!
    rc=0
    TAOS_APP_E2E=1 cargo test --locked -p taos-e2e --test app_window -- --ignored --nocapture || rc=$?
    kill $notifications 2>/dev/null || true
    exit $rc
'
