#!/usr/bin/env bash
# Packs the agent image for one architecture as taos-agent-image_<version>_<arch>.deb, so a
# board gets it with apt beside taos-host and `taos-host setup` imports it from where it looks
# by default (/usr/share/taos-host/images/taos-agent_<arch>.tar.gz). There is no image server
# to pull it from, and building it on a board means debootstrap and a Rust toolchain there.
#
#   scripts/build-image-deb.sh [--arch amd64|arm64]
#
# The image is the one scripts/build-agent-image.sh imported into incus: `taos-agent`, or
# `taos-agent-arm64` for --arch arm64 on an amd64 machine (TAOS_AGENT_IMAGE_ALIAS names
# another, as for that script). It is exported as incus's unified tarball and packed with
# dpkg-deb, Debian's own tool: the package is one data file, so there is nothing for cargo-deb
# to build. It lands beside the other packages: $CARGO_TARGET_DIR/debian/ (this machine's
# arch) or $CARGO_TARGET_DIR/debian/<arch>/, packed again only when the image or this script
# changed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

NATIVE_ARCH="$(dpkg --print-architecture)"
ARCH="$NATIVE_ARCH"
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="${2:-}"; shift ;;
        *) log "usage: scripts/build-image-deb.sh [--arch amd64|arm64]"; exit 2 ;;
    esac
    shift
done
ALIAS="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
if [ "$ARCH" = "$NATIVE_ARCH" ]; then
    OUT="$CARGO_TARGET_DIR/debian"
elif [ "$ARCH" = arm64 ] && [ "$NATIVE_ARCH" = amd64 ]; then
    ALIAS="$ALIAS-arm64"
    OUT="$CARGO_TARGET_DIR/debian/arm64"
else
    log "--arch $ARCH on an $NATIVE_ARCH machine is not supported (amd64 packs amd64 and arm64)"
    exit 2
fi
case "$ARCH" in
    amd64) IMAGE_ARCH=x86_64 ;;
    arm64) IMAGE_ARCH=aarch64 ;;
    *) log "no agent image for $ARCH"; exit 2 ;;
esac

incus info >/dev/null 2>&1 || { log "incus is not running (scripts/dev-incus.sh starts it): no $ALIAS image to pack"; exit 1; }
FINGERPRINT="$(incus image info "$ALIAS" 2>/dev/null | awk '/^Fingerprint:/ {print $2}')"
[ -n "$FINGERPRINT" ] || { log "no incus image $ALIAS: run scripts/build-agent-image.sh$([ "$ARCH" = "$NATIVE_ARCH" ] || echo " --arch $ARCH") first"; exit 1; }
GOT_ARCH="$(incus image info "$ALIAS" | awk '/^Architecture:/ {print $2}')"
[ "$GOT_ARCH" = "$IMAGE_ARCH" ] || { log "incus image $ALIAS is for $GOT_ARCH, not $ARCH ($IMAGE_ARCH)"; exit 1; }

# The workspace's version (taos-host's): the image carries the sidecar built with it.
VERSION="$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)-1"
DEB="$OUT/taos-agent-image_${VERSION}_$ARCH.deb"
SUM="$(echo "$FINGERPRINT $VERSION $(sha256sum "$0" | cut -c1-16)" | sha256sum | cut -c1-16)"
STAMP="$OUT/.taos-image-deb-sha"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$SUM" ] && [ -f "$DEB" ]; then
    log "$DEB is up to date (image ${FINGERPRINT:0:12})"
    exit 0
fi

STARTED=$SECONDS
mkdir -p "$OUT"
rm -f "$OUT"/taos-agent-image_*.deb "$STAMP"
# Not /tmp, which may be a tmpfs in RAM (the image is ~150 MB).
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
log "exporting incus image $ALIAS (${FINGERPRINT:0:12})"
incus image export -q "$ALIAS" "$WORK/image" >/dev/null
[ -f "$WORK/image.tar.gz" ] || { log "incus exported $ALIAS as something other than one unified tarball: $(ls "$WORK")"; exit 1; }

TREE="$WORK/tree"
install -D -m 0644 "$WORK/image.tar.gz" "$TREE/usr/share/taos-host/images/taos-agent_$ARCH.tar.gz"
rm -f "$WORK/image.tar.gz"
mkdir -p "$TREE/DEBIAN" "$TREE/usr/share/doc/taos-agent-image"
cat > "$TREE/usr/share/doc/taos-agent-image/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: taos
Comment: The image is Debian bookworm (minbase, from the Debian archive: each package keeps
 its own copyright in the image's /usr/share/doc) with the taos-agent sidecar added.

Files: *
Copyright: taos developers
License: see the taos repository
COPYRIGHT
cat > "$TREE/DEBIAN/control" <<CONTROL
Package: taos-agent-image
Version: $VERSION
Architecture: $ARCH
Maintainer: taos developers
Installed-Size: $(du -sk "$TREE/usr" | cut -f1)
Section: net
Priority: optional
Enhances: taos-host
Description: the taos agent image (Debian bookworm with the taos-agent sidecar)
 The container image taos-host deploys its agents from, for $ARCH, as an incus unified
 tarball in /usr/share/taos-host/images. \`sudo taos-host setup\` imports it into incus
 as taos-agent (image fingerprint ${FINGERPRINT:0:12}).
CONTROL
# Already gzip inside: compressing again would only cost time.
dpkg-deb --root-owner-group -Znone --build "$TREE" "$DEB" >/dev/null
[ "$(dpkg-deb -f "$DEB" Architecture)" = "$ARCH" ] || { log "$DEB is not for $ARCH"; exit 1; }
echo "$SUM" > "$STAMP"
log "packed $DEB ($(du -m "$DEB" | cut -f1) MB) in $((SECONDS - STARTED)) s"
