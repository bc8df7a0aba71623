#!/usr/bin/env bash
# Installs what building and testing the Tauri app needs, skipping what is already there:
# WebKitGTK and friends for the build; Xvfb, a D-Bus session, a notification daemon, GNOME
# Keyring (the Secret Service the app keeps its refresh token in) and WebKitWebDriver +
# tauri-driver for the real-window test; and a stand-in aarch64 C compiler, so the app can be
# type-checked for Android (its C dependencies are compiled, never linked).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || { log "dev-app.sh must run as root (apt-get)"; exit 1; }

missing=()
for pkg in libwebkit2gtk-4.1-dev libsoup-3.0-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev \
    libssl-dev pkg-config file xvfb xauth webkit2gtk-driver dbus-x11 dbus-daemon dbus-bin dunst gnome-keyring libglib2.0-bin libayatana-appindicator3-1 python3-xlib \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/var/log/taos-app-install.log 2>&1; then
        cat /var/log/taos-app-install.log >&2
        exit 1
    fi
fi
# tauri-driver bridges WebDriver to WebKitWebDriver. crates.io's newest is a 3.0 alpha: ask for 2.
if ! command -v tauri-driver >/dev/null && [ ! -x "$HOME/.cargo/bin/tauri-driver" ]; then
    log "installing tauri-driver 2"
    cargo install tauri-driver --version '^2' --locked --quiet
fi
# The Android type-check (scripts/test.sh) needs the Rust target. rustup's download server is
# not always reachable from these machines, so this is a try: without it the check is skipped
# and says so.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q '^aarch64-linux-android$'; then
    log "adding the aarch64-linux-android Rust target (for the Android type-check)"
    timeout 180 rustup target add aarch64-linux-android >/dev/null 2>&1 \
        || log "could not add the Android target; the Android check will be skipped"
fi
log "app build and test dependencies ready"
