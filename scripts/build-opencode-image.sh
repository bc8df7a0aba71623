#!/usr/bin/env bash
# Builds the opencode agent image and imports it into incus as `taos-opencode` (replacing an
# older one): the Debian agent image (scripts/build-agent-image.sh: the sidecar, its service and
# the unprivileged `agent` user) plus opencode's native binary at /opt/opencode/bin/opencode.
#
#   scripts/build-opencode-image.sh
#
# The binary comes from the host's install (scripts/install-opencode.sh, run first; it skips
# when already done) and is copied in, so nothing is fetched inside a container, at build or at
# deploy time. In the image:
#   /opt/opencode/bin/opencode     opencode (self-contained: no node)
#   /usr/local/bin/opencode        a link to it, for anything that looks it up on PATH
# Rebuilt only when the agent image, the version or these scripts change. About 10 s; 190 MB (zstd), 530 MB unpacked.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ALIAS="${TAOS_OPENCODE_IMAGE_ALIAS:-taos-opencode}"
BASE="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
PREFIX="${TAOS_OPENCODE_PREFIX:-/var/cache/taos/opencode}"

if ! { command -v incus >/dev/null && incus info >/dev/null 2>&1; }; then
    log "incus is not running (scripts/dev-incus.sh starts it)"
    exit 1
fi
BASE_FP="$(incus query "/1.0/images/aliases/$BASE" 2>/dev/null | awk -F'"' '/"target"/ {print $4}')"
[ -n "$BASE_FP" ] || { log "no incus image $BASE: run scripts/build-agent-image.sh first"; exit 1; }
"$REPO_ROOT/scripts/install-opencode.sh" "$PREFIX"
# The install's stamp names the package and version (.taos-installed-<package>-<version>).
STAMPS=("$PREFIX"/.taos-installed-*)
STAMP="$(basename "${STAMPS[0]}")"
[ -f "${STAMPS[0]}" ] || { log "no finished install in $PREFIX (scripts/install-opencode.sh)"; exit 1; }
SUM="$( { echo "$BASE_FP $STAMP"; cat "$0" "$REPO_ROOT/scripts/install-opencode.sh"; } | sha256sum | cut -c1-16)"
if incus image show "$ALIAS" 2>/dev/null | grep -q "taos_opencode_sha: $SUM"; then
    log "incus image $ALIAS is up to date ($SUM: $BASE ${BASE_FP:0:12}, ${STAMP#.taos-installed-})"
    exit 0
fi
command -v zstd >/dev/null || apt_install zstd

STARTED=$SECONDS
# ~600 MB of scratch: not /tmp, which may be a tmpfs in RAM.
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

log "copying opencode from $PREFIX into /opt/opencode"
mkdir -p "$ROOTFS/opt/opencode/bin"
cp "$PREFIX/bin/opencode" "$ROOTFS/opt/opencode/bin/opencode"
ln -sf /opt/opencode/bin/opencode "$ROOTFS/usr/local/bin/opencode"
# Everyone may run it, nobody but root may change it (the agent user included).
chown -R 0:0 "$ROOTFS/opt/opencode"
chmod -R go-w "$ROOTFS/opt/opencode"
chmod 0755 "$ROOTFS/opt/opencode/bin/opencode"

cat > "$WORK/metadata.yaml" <<META
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  description: taos opencode agent (Debian bookworm + taos-agent + ${STAMP#.taos-installed-})
  os: debian
  release: bookworm
  taos_agent_sha: $BASE_AGENT_SHA
  taos_opencode_sha: $SUM
META
log "packing the image (zstd)"
tar -C "$WORK" --numeric-owner -c metadata.yaml rootfs | zstd -3 -T2 -q -o "$WORK/image.tar.zst"
log "importing it into incus as $ALIAS"
incus image delete "$ALIAS" >/dev/null 2>&1 || true
incus image import "$WORK/image.tar.zst" --alias "$ALIAS" >/dev/null
log "imported incus image $ALIAS ($SUM, $(du -m "$WORK/image.tar.zst" | cut -f1) MB, rootfs $(du -sm "$ROOTFS" | cut -f1) MB) in $((SECONDS - STARTED)) s"
