# Shared by the scripts: repo root, a cargo target dir outside the clone, and quiet installs.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# CI and developers share one target dir outside the clone, so a fresh clone reuses old builds.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    if mkdir -p /var/cache/taos/target 2>/dev/null && [ -w /var/cache/taos/target ]; then
        export CARGO_TARGET_DIR=/var/cache/taos/target
    else
        export CARGO_TARGET_DIR="$REPO_ROOT/target"
    fi
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

APT_UPDATED=""
# apt_install PKG... installs the Debian packages that are missing, once per run.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing packages: ${missing[*]} (run as root or install them)"
        return 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
