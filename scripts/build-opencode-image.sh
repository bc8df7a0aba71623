#!/usr/bin/env bash
# Builds the opencode agent image and imports it into incus as `taos-opencode` (replacing an
# older one): the Debian agent image (scripts/build-agent-image.sh: the sidecar, its service and
# the unprivileged `agent` user) plus opencode's native binary at /opt/opencode/bin/opencode.
#
#   scripts/build-opencode-image.sh [--arch amd64|arm64]
#
# --arch arm64 on an amd64 machine builds `taos-opencode-arm64` from `taos-agent-arm64`
# (scripts/build-agent-image.sh --arch arm64) and the arm64 install in $PREFIX-arm64
# (scripts/install-opencode.sh --arch arm64, which fetches the arm64 builds from the npm registry);
# incus stores it but can't start it here: scripts/check-arm64.sh runs it in a chroot under qemu.
#
# The binary comes from the host's install (scripts/install-opencode.sh, run first; it skips
# when already done) and is copied in, so nothing is fetched inside a container, at build or at
# deploy time. In the image:
#   /opt/opencode/bin/opencode     opencode (self-contained: no node)
#   /usr/local/bin/opencode        a link to it, for anything that looks it up on PATH
# Rebuilt only when the agent image, the version or these scripts change (lib.sh's derived_image
# does the unpacking, hashing, packing and importing). About 10 s; 190 MB (zstd), 530 MB unpacked.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

arch_from_args "$@"
PREFIX="${TAOS_OPENCODE_PREFIX:-/var/cache/taos/opencode}"
[ -z "$FOREIGN" ] || PREFIX="$PREFIX-$ARCH"

# Called by derived_image (lib.sh) with the unpacked agent image's rootfs.
add_opencode() {
    local rootfs="$1"
    log "copying opencode from $PREFIX into /opt/opencode"
    mkdir -p "$rootfs/opt/opencode/bin"
    cp "$PREFIX/bin/opencode" "$rootfs/opt/opencode/bin/opencode"
    ln -sf /opt/opencode/bin/opencode "$rootfs/usr/local/bin/opencode"
    # Everyone may run it, nobody but root may change it (the agent user included).
    chown -R 0:0 "$rootfs/opt/opencode"
    chmod -R go-w "$rootfs/opt/opencode"
    chmod 0755 "$rootfs/opt/opencode/bin/opencode"
}

derived_image opencode "${TAOS_OPENCODE_IMAGE_ALIAS:-taos-opencode}" "$PREFIX" \
    "$REPO_ROOT/scripts/install-opencode.sh" add_opencode "$ARCH"
