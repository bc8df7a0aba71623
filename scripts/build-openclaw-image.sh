#!/usr/bin/env bash
# Builds the openclaw agent image and imports it into incus as `taos-openclaw` (replacing an
# older one): the Debian agent image (scripts/build-agent-image.sh: the sidecar, its service and
# the unprivileged `agent` user) plus Node at /opt/node and openclaw at /opt/openclaw.
#
#   scripts/build-openclaw-image.sh [--arch amd64|arm64]
#
# --arch arm64 on an amd64 machine builds `taos-openclaw-arm64` from `taos-agent-arm64`
# (scripts/build-agent-image.sh --arch arm64) and the arm64 install in $PREFIX-arm64
# (scripts/install-openclaw.sh --arch arm64, which fetches the arm64 builds from the npm registry);
# incus stores it but can't start it here: scripts/check-arm64.sh runs it in a chroot under qemu.
#
# Node and openclaw come from the host's install (scripts/install-openclaw.sh, run first; it
# skips when already done) and are copied in, so nothing is fetched inside a container, at build
# or at deploy time. In the image:
#   /opt/node/bin/node             Node 24
#   /opt/openclaw/bin/openclaw     a wrapper running openclaw.mjs with /opt/node/bin/node
#   /opt/openclaw/lib/node_modules/openclaw
#   /usr/local/bin/{node,openclaw} links to those two, for anything that looks them up on PATH
# Rebuilt only when the agent image, the two versions or these scripts change (lib.sh's
# derived_image does the unpacking, hashing, packing and importing). About 10 s and 300 MB.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

arch_from_args "$@"
PREFIX="${TAOS_OPENCLAW_PREFIX:-/var/cache/taos/openclaw}"
[ -z "$FOREIGN" ] || PREFIX="$PREFIX-$ARCH"

# Called by derived_image (lib.sh) with the unpacked agent image's rootfs.
add_openclaw() {
    local rootfs="$1"
    log "copying node and openclaw from $PREFIX into /opt"
    mkdir -p "$rootfs/opt"
    cp -a "$PREFIX/node" "$rootfs/opt/node"
    cp -a "$PREFIX/openclaw" "$rootfs/opt/openclaw"
    # npm's launcher is a link to openclaw.mjs, whose `#!/usr/bin/env node` would depend on PATH:
    # the wrapper names the node it was installed for.
    rm -f "$rootfs/opt/openclaw/bin/openclaw"
    cat > "$rootfs/opt/openclaw/bin/openclaw" <<'WRAPPER'
#!/bin/sh
exec /opt/node/bin/node /opt/openclaw/lib/node_modules/openclaw/openclaw.mjs "$@"
WRAPPER
    chmod 0755 "$rootfs/opt/openclaw/bin/openclaw"
    ln -sf /opt/node/bin/node "$rootfs/usr/local/bin/node"
    ln -sf /opt/openclaw/bin/openclaw "$rootfs/usr/local/bin/openclaw"
    # Everyone may run it, nobody but root may change it (the agent user included).
    chown -R 0:0 "$rootfs/opt/node" "$rootfs/opt/openclaw"
    chmod -R go-w "$rootfs/opt/node" "$rootfs/opt/openclaw"

    # The sidecar's unit (build-agent-image.sh) sets RestrictSUIDSGID=yes. systemd enforces it with a
    # seccomp filter that answers every openat2() with ENOSYS (it can't see openat2's mode argument),
    # so libc callers fall back to openat(); openclaw 2026.9.6 creates its state lock with
    # openat2(RESOLVE_BENEATH) and reads that ENOSYS as "another process owns this state directory",
    # so its gateway refuses to start (exit 78, "Failed migrating legacy shared auth store"). Found
    # with strace in the unit; every other sandbox setting is kept. What is given up is only the
    # refusal to *create* setuid/setgid files: NoNewPrivileges=yes still makes such bits inert for
    # everything the unit starts, and the container is unprivileged.
    mkdir -p "$rootfs/etc/systemd/system/taos-agent.service.d"
    cat > "$rootfs/etc/systemd/system/taos-agent.service.d/openclaw.conf" <<'DROPIN'
# openclaw's state lock uses openat2(), which RestrictSUIDSGID's seccomp filter refuses with
# ENOSYS (see scripts/build-openclaw-image.sh). NoNewPrivileges=yes stays.
[Service]
RestrictSUIDSGID=no
DROPIN
}

derived_image openclaw "${TAOS_OPENCLAW_IMAGE_ALIAS:-taos-openclaw}" "$PREFIX" \
    "$REPO_ROOT/scripts/install-openclaw.sh" add_openclaw "$ARCH"
