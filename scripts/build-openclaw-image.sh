#!/usr/bin/env bash
# Builds the openclaw agent image and imports it into incus as `taos-openclaw` (replacing an
# older one): the Debian agent image (scripts/build-agent-image.sh: the sidecar, its service and
# the unprivileged `agent` user) plus Node at /opt/node and openclaw at /opt/openclaw.
#
#   scripts/build-openclaw-image.sh
#
# Node and openclaw come from the host's install (scripts/install-openclaw.sh, run first; it
# skips when already done) and are copied in, so nothing is fetched inside a container, at build
# or at deploy time. In the image:
#   /opt/node/bin/node             Node 24
#   /opt/openclaw/bin/openclaw     a wrapper running openclaw.mjs with /opt/node/bin/node
#   /opt/openclaw/lib/node_modules/openclaw
#   /usr/local/bin/{node,openclaw} links to those two, for anything that looks them up on PATH
# Rebuilt only when the agent image, the two versions or these scripts change. About 10 s and
# 300 MB (zstd: on two cores gzip takes 13-31 s for a 10-20 % smaller file).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ALIAS="${TAOS_OPENCLAW_IMAGE_ALIAS:-taos-openclaw}"
BASE="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
PREFIX="${TAOS_OPENCLAW_PREFIX:-/var/cache/taos/openclaw}"

if ! { command -v incus >/dev/null && incus info >/dev/null 2>&1; }; then
    log "incus is not running (scripts/dev-incus.sh starts it)"
    exit 1
fi
BASE_FP="$(incus query "/1.0/images/aliases/$BASE" 2>/dev/null | awk -F'"' '/"target"/ {print $4}')"
[ -n "$BASE_FP" ] || { log "no incus image $BASE: run scripts/build-agent-image.sh first"; exit 1; }
"$REPO_ROOT/scripts/install-openclaw.sh" "$PREFIX"
# The install's stamp names both versions (.taos-installed-node-<v>-openclaw-<v>).
STAMPS=("$PREFIX"/.taos-installed-*)
STAMP="$(basename "${STAMPS[0]}")"
[ -f "${STAMPS[0]}" ] || { log "no finished install in $PREFIX (scripts/install-openclaw.sh)"; exit 1; }
SUM="$( { echo "$BASE_FP $STAMP"; cat "$0" "$REPO_ROOT/scripts/install-openclaw.sh"; } | sha256sum | cut -c1-16)"
if incus image show "$ALIAS" 2>/dev/null | grep -q "taos_openclaw_sha: $SUM"; then
    log "incus image $ALIAS is up to date ($SUM: $BASE ${BASE_FP:0:12}, ${STAMP#.taos-installed-})"
    exit 0
fi
command -v zstd >/dev/null || apt_install zstd

STARTED=$SECONDS
# 1.4 GB of scratch: not /tmp, which may be a tmpfs in RAM.
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
log "unpacking $BASE (${BASE_FP:0:12})"
incus image export "$BASE" "$WORK/base" >/dev/null
# A unified image (metadata.yaml + rootfs/), as build-agent-image.sh makes it.
tar -C "$WORK" --numeric-owner -xf "$WORK"/base.tar*
rm -f "$WORK"/base.tar*
ROOTFS="$WORK/rootfs"
if [ ! -d "$ROOTFS/usr/local/bin" ] || [ ! -f "$WORK/metadata.yaml" ]; then
    log "$BASE is not a unified image with a rootfs"
    exit 1
fi
BASE_AGENT_SHA="$(awk '/taos_agent_sha:/ {print $2}' "$WORK/metadata.yaml")"

log "copying node and openclaw from $PREFIX into /opt"
mkdir -p "$ROOTFS/opt"
cp -a "$PREFIX/node" "$ROOTFS/opt/node"
cp -a "$PREFIX/openclaw" "$ROOTFS/opt/openclaw"
# npm's launcher is a link to openclaw.mjs, whose `#!/usr/bin/env node` would depend on PATH:
# the wrapper names the node it was installed for.
rm -f "$ROOTFS/opt/openclaw/bin/openclaw"
cat > "$ROOTFS/opt/openclaw/bin/openclaw" <<'WRAPPER'
#!/bin/sh
exec /opt/node/bin/node /opt/openclaw/lib/node_modules/openclaw/openclaw.mjs "$@"
WRAPPER
chmod 0755 "$ROOTFS/opt/openclaw/bin/openclaw"
ln -sf /opt/node/bin/node "$ROOTFS/usr/local/bin/node"
ln -sf /opt/openclaw/bin/openclaw "$ROOTFS/usr/local/bin/openclaw"
# Everyone may run it, nobody but root may change it (the agent user included).
chown -R 0:0 "$ROOTFS/opt/node" "$ROOTFS/opt/openclaw"
chmod -R go-w "$ROOTFS/opt/node" "$ROOTFS/opt/openclaw"

# The sidecar's unit (build-agent-image.sh) sets RestrictSUIDSGID=yes. systemd enforces it with a
# seccomp filter that answers every openat2() with ENOSYS (it can't see openat2's mode argument),
# so libc callers fall back to openat(); openclaw 2026.9.6 creates its state lock with
# openat2(RESOLVE_BENEATH) and reads that ENOSYS as "another process owns this state directory",
# so its gateway refuses to start (exit 78, "Failed migrating legacy shared auth store"). Found
# with strace in the unit; every other sandbox setting is kept. What is given up is only the
# refusal to *create* setuid/setgid files: NoNewPrivileges=yes still makes such bits inert for
# everything the unit starts, and the container is unprivileged.
mkdir -p "$ROOTFS/etc/systemd/system/taos-agent.service.d"
cat > "$ROOTFS/etc/systemd/system/taos-agent.service.d/openclaw.conf" <<'DROPIN'
# openclaw's state lock uses openat2(), which RestrictSUIDSGID's seccomp filter refuses with
# ENOSYS (see scripts/build-openclaw-image.sh). NoNewPrivileges=yes stays.
[Service]
RestrictSUIDSGID=no
DROPIN

cat > "$WORK/metadata.yaml" <<META
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  description: taos openclaw agent (Debian bookworm + taos-agent + ${STAMP#.taos-installed-})
  os: debian
  release: bookworm
  taos_agent_sha: $BASE_AGENT_SHA
  taos_openclaw_sha: $SUM
META
log "packing the image (zstd)"
tar -C "$WORK" --numeric-owner -c metadata.yaml rootfs | zstd -3 -T2 -q -o "$WORK/image.tar.zst"
incus image delete "$ALIAS" >/dev/null 2>&1 || true
incus image import "$WORK/image.tar.zst" --alias "$ALIAS" >/dev/null
log "imported incus image $ALIAS ($SUM, $(du -m "$WORK/image.tar.zst" | cut -f1) MB, rootfs $(du -sm "$ROOTFS" | cut -f1) MB) in $((SECONDS - STARTED)) s"
