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

# write_bench_section TITLE SECTION replaces the section of docs/benchmarks.md titled TITLE
# (e.g. "## Backups (issue 18)") with SECTION if it is there, else puts it before the Web UI
# section (or at the end). The benchmark scripts that run after scripts/bench.sh rewrote the
# file use it to add their own sections.
write_bench_section() {
    python3 - "$1" "$2" "$REPO_ROOT/docs/benchmarks.md" <<'PY'
import re, sys
title, section, path = sys.argv[1], sys.argv[2].rstrip() + "\n", sys.argv[3]
doc = open(path).read()
start = doc.find(title)
if start >= 0:
    rest = doc[start + 1:]
    m = re.search(r"^## ", rest, re.M)
    end = start + 1 + m.start() if m else len(doc)
    doc = doc[:start] + section + ("\n" + doc[end:] if m else "")
else:
    ui = doc.find("## Web UI (issue 7)")
    if ui >= 0:
        doc = doc[:ui] + section + "\n" + doc[ui:]
    else:
        doc = doc.rstrip() + "\n\n" + section
open(path, "w").write(doc)
PY
    log "wrote the ${1#\#\# } section of docs/benchmarks.md"
}
