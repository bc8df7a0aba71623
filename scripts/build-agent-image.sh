#!/usr/bin/env bash
# Builds the Debian bookworm agent image with the taos-agent sidecar and its systemd service
# baked in, and imports it into incus as `taos-agent` (replacing an older one).
#
#   scripts/build-agent-image.sh [--arch amd64|arm64] [path/to/taos-agent]
#
# Without a path it builds taos-agent in release mode. The service starts only once the host
# has pushed the agent's credentials to /etc/taos/agent.env (ConditionPathExists), and runs
# with the usual systemd hardening.
#
# --arch arm64 on an amd64 machine builds the image for arm64 boards and imports it as
# `taos-agent-arm64` (incus stores it; it can't start it here): taos-agent is cross-compiled
# (lib.sh's cross_env_arm64), debootstrap's first stage runs here with --foreign and its second
# stage runs in the rootfs under qemu-user-static, which needs binfmt_misc (lib.sh's
# binfmt_arm64 says why when it can't register it). The bootstrapped rootfs is cached in
# /var/cache/taos/images (cold: the second stage takes several minutes under qemu; a new
# taos-agent then costs seconds). Before it is imported, the image's own taos-agent --version
# runs in a chroot of it under qemu. Docker gets no arm64 image.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

arch_from_args "$@"
shift "$ARCH_SHIFT"
ALIAS="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
BIN="${1:-}"
TARGET_ARGS=()
BUILT_DIR="$CARGO_TARGET_DIR/release"
if [ -n "$FOREIGN" ]; then
    ALIAS="$ALIAS-arm64"
    cross_env_arm64
    TARGET_ARGS=(--target "$ARM64_TARGET")
    BUILT_DIR="$CARGO_TARGET_DIR/$ARM64_TARGET/release"
fi
if [ -z "$BIN" ]; then
    log "building taos-agent (release, $ARCH)"
    cargo build --release --locked "${TARGET_ARGS[@]}" -p taos-agent
    BIN="$BUILT_DIR/taos-agent"
fi
[ -x "$BIN" ] || { log "no taos-agent binary at $BIN"; exit 1; }
# The recycle bin's restore helper is built with the sidecar (same crate, same target dir).
RECYCLE="$(dirname "$BIN")/taos-recycle"
[ -x "$RECYCLE" ] || { log "no taos-recycle binary at $RECYCLE (cargo build -p taos-agent builds it)"; exit 1; }
# A binary for the wrong machine would only fail when an agent starts.
if [ "$ARCH" = arm64 ]; then WANT_MACHINE=AArch64 IMAGE_ARCH=aarch64; else WANT_MACHINE=X86-64 IMAGE_ARCH="$(uname -m)"; fi
for exe in "$BIN" "$RECYCLE"; do
    readelf -h "$exe" | grep -q "Machine:.*$WANT_MACHINE" || { log "$exe is not an $ARCH ($WANT_MACHINE) binary"; exit 1; }
done
# Rebuild only when the sidecar, the helper, this script or the files baked in with them
# changed. The image goes to every runtime that answers: incus, and Docker (the fallback) when
# dockerd is running (this machine's arch only).
SUM="$(cat "$BIN" "$RECYCLE" "$0" "$REPO_ROOT"/images/agent/* | sha256sum | cut -c1-16)"
NEED_INCUS=""
NEED_DOCKER=""
if command -v incus >/dev/null && incus info >/dev/null 2>&1; then
    if incus image show "$ALIAS" 2>/dev/null | grep -q "taos_agent_sha: $SUM"; then
        log "incus image $ALIAS already has this taos-agent ($SUM)"
    else
        NEED_INCUS=1
    fi
elif [ -n "$FOREIGN" ]; then
    log "incus is not running (scripts/dev-incus.sh starts it): the $ARCH image has nowhere to go"
    exit 1
fi
if [ -z "$FOREIGN" ] && command -v docker >/dev/null && docker version >/dev/null 2>&1; then
    if [ "$(docker image inspect -f '{{index .Config.Labels "taos_agent_sha"}}' "$ALIAS:latest" 2>/dev/null)" = "$SUM" ]; then
        log "docker image $ALIAS already has this taos-agent ($SUM)"
    else
        NEED_DOCKER=1
    fi
fi
[ -n "$NEED_INCUS$NEED_DOCKER" ] || exit 0

STARTED=$SECONDS
# Not /tmp, which may be a tmpfs in RAM (the rootfs is ~300 MB).
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
URI="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
# procps gives the agent `free` and `ps`, which the memory-audit and health-report admin
# prompts ask it to run.
INCLUDE=systemd-sysv,systemd-resolved,udev,dbus,iproute2,ca-certificates,procps
if [ -z "$FOREIGN" ]; then
    log "debootstrap bookworm (about two minutes)"
    debootstrap --variant=minbase --include="$INCLUDE" \
        bookworm "$ROOTFS" "${URI:-http://deb.debian.org/debian}" >/dev/null
else
    # The bootstrapped system is the same until its release, arch or package list changes
    # (bump BOOTSTRAP_REV when the bootstrapping itself changes).
    CACHE=/var/cache/taos/images
    BOOTSTRAP_REV=1
    BASE_SUM="$(echo "bookworm minbase $ARCH $INCLUDE $BOOTSTRAP_REV" | sha256sum | cut -c1-16)"
    BASE_TAR="$CACHE/bookworm-$ARCH-$BASE_SUM.tar"
    # Every step below that runs a program of the rootfs (useradd, systemctl) runs it under qemu.
    binfmt_arm64 || { log "can't build the $ARCH image without running $ARCH binaries (binfmt_misc + qemu-user-static)"; exit 1; }
    if [ -f "$BASE_TAR" ]; then
        log "unpacking the bootstrapped bookworm $ARCH from $BASE_TAR"
        mkdir -p "$ROOTFS"
        tar -C "$ROOTFS" --numeric-owner -xf "$BASE_TAR"
    else
        log "debootstrap --foreign bookworm $ARCH (the first stage)"
        debootstrap --variant=minbase --foreign --arch "$ARCH" --include="$INCLUDE" \
            bookworm "$ROOTFS" "${URI:-http://deb.debian.org/debian}" >/dev/null
        log "debootstrap --second-stage under qemu-user (several minutes; cached afterwards)"
        if ! chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >"$WORK/second-stage.log" 2>&1; then
            tail -n 30 "$WORK/second-stage.log" >&2
            tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true
            log "debootstrap's second stage failed under qemu-user"
            exit 1
        fi
        mkdir -p "$CACHE"
        rm -f "$CACHE/bookworm-$ARCH-"*.tar
        tar -C "$ROOTFS" --numeric-owner -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
        log "bootstrapped bookworm $ARCH in $((SECONDS - STARTED)) s (cached in $BASE_TAR)"
    fi
fi

# /root/.taos is the agent's own state (writable under the unit's ProtectHome); the host shares
# no folder with it: traces go over HTTP.
mkdir -p "$ROOTFS/etc/systemd/network" "$ROOTFS/etc/taos" "$ROOTFS/root/.taos"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$ROOTFS/etc/systemd/network/eth0.network"
ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOTFS/etc/resolv.conf"
: > "$ROOTFS/etc/machine-id"
# debootstrap copies the build machine's /etc/hostname; without one each container keeps the
# name its runtime gives it (its container name), which is what an agent should call itself.
rm -f "$ROOTFS/etc/hostname"
chmod 0700 "$ROOTFS/etc/taos"
install -m 0755 "$BIN" "$ROOTFS/usr/local/bin/taos-agent"
# The recycle bin: a soft-delete rm first on PATH, its helper, and a daily sweep.
install -m 0755 "$REPO_ROOT/images/agent/rm" "$ROOTFS/usr/local/bin/rm"
install -D -m 0755 "$REPO_ROOT/images/agent/recycle" "$ROOTFS/usr/local/lib/taos/recycle"
install -m 0755 "$RECYCLE" "$ROOTFS/usr/local/lib/taos/taos-recycle"
install -m 0644 "$REPO_ROOT/images/agent/taos-recycle-sweep.service" "$REPO_ROOT/images/agent/taos-recycle-sweep.timer" \
    "$ROOTFS/etc/systemd/system/"
# Root-owned, sticky and not listable (1733): the tools user can file its own deletions (each
# entry is its own, 0700) but can't see, change or remove anyone else's.
mkdir -p "$ROOTFS/var/recycle-bin" && chmod 1733 "$ROOTFS/var/recycle-bin"
# The tools user (the `tools` framework): an unprivileged account with its own home, which is
# its workspace. It can't read /etc/taos (0700 root) or the sidecar's environment.
chroot "$ROOTFS" useradd --create-home --uid 1000 --user-group --shell /bin/bash agent
chmod 0700 "$ROOTFS/home/agent"
cat > "$ROOTFS/etc/systemd/system/taos-agent.service" <<'UNIT'
[Unit]
Description=taos agent sidecar
# It reaches the host through proxy devices on its own loopback, so it needs no network (an
# agent deployed with `network: none` has none) and retries until the host answers.
After=network.target
# The host pushes the agent's own credentials here; no file, no start.
ConditionPathExists=/etc/taos/agent.env

[Service]
EnvironmentFile=/etc/taos/agent.env
ExecStart=/usr/local/bin/taos-agent
Restart=on-failure
RestartSec=2
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=strict
ProtectHome=read-only
# /home/agent: the tools user's home and workspace (tools mode runs its tools there, as that
# user, under this same sandbox).
ReadWritePaths=/root/.taos /var/recycle-bin /home/agent
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictSUIDSGID=true
LockPersonality=true
RestrictRealtime=true
RestrictNamespaces=true
SystemCallArchitectures=native
# Only what tools mode needs to start its tools as the `agent` user (setuid, setgid) and to
# kill what they leave behind (kill). Nothing else, in either mode.
CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
UNIT
chroot "$ROOTFS" systemctl enable systemd-networkd systemd-resolved taos-agent taos-recycle-sweep.timer >/dev/null 2>&1
if [ -n "$FOREIGN" ]; then
    # incus here can't start an arm64 container: the image's own sidecar runs in a chroot of
    # it, under qemu-user, before it is imported.
    VERSION="$(chroot "$ROOTFS" /usr/local/bin/taos-agent --version 2>&1)" \
        || { log "taos-agent --version failed in the $ARCH rootfs: $VERSION"; exit 1; }
    log "in the $ARCH rootfs (chroot, qemu-user): $VERSION"
fi
cat > "$WORK/metadata.yaml" <<META
architecture: $IMAGE_ARCH
creation_date: $(date +%s)
properties:
  description: taos agent (Debian bookworm + taos-agent)
  os: debian
  release: bookworm
  taos_agent_sha: $SUM
META
if [ -n "$NEED_INCUS" ]; then
    tar -C "$WORK" --numeric-owner -czf "$WORK/image.tar.gz" metadata.yaml rootfs
    incus image delete "$ALIAS" >/dev/null 2>&1 || true
    incus image import "$WORK/image.tar.gz" --alias "$ALIAS" >/dev/null
    log "imported incus image $ALIAS (taos-agent $SUM, $ARCH) in $((SECONDS - STARTED)) s"
fi
if [ -n "$NEED_DOCKER" ]; then
    # Docker runs no systemd: the sidecar is the main process and reads the credentials file
    # the host pushes (TAOS_ENV_FILE). Docker provides resolv.conf itself.
    rm -f "$ROOTFS/etc/resolv.conf" && : > "$ROOTFS/etc/resolv.conf"
    OLD_ID="$(docker image inspect -f '{{.Id}}' "$ALIAS:latest" 2>/dev/null || true)"
    tar -C "$ROOTFS" --numeric-owner -c . | docker import \
        --change 'CMD ["/usr/local/bin/taos-agent"]' \
        --change "LABEL taos_agent_sha=$SUM" - "$ALIAS:latest" >/dev/null
    # The replaced image would stay as an untagged 300 MB copy (Docker's vfs driver here keeps
    # whole copies); a container still using it keeps it, and that is fine.
    if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$ALIAS:latest")" ]; then
        docker image rm "$OLD_ID" >/dev/null 2>&1 || true
    fi
    log "imported docker image $ALIAS (taos-agent $SUM)"
fi
