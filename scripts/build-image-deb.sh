#!/usr/bin/env bash
# Packs an image for one architecture as taos-<image>-image_<version>_<arch>.deb, so a board
# gets it with apt beside taos-host and `taos-host setup` imports it from where it looks by
# default (/usr/share/taos-host/images/taos-<image>_<arch>.tar.gz, or .tar.zst for the
# framework images). There is no image server to pull it from, and building it on a board
# means debootstrap, a Rust toolchain and the npm registry there.
#
#   scripts/build-image-deb.sh [--image agent|openclaw|opencode] [--arch amd64|arm64]
#
# The image (default: agent) is the one scripts/build-<image>-image.sh imported into incus:
# `taos-<image>`, or `taos-<image>-arm64` for --arch arm64 on an amd64 machine
# (TAOS_AGENT_IMAGE_ALIAS, TAOS_OPENCLAW_IMAGE_ALIAS, TAOS_OPENCODE_IMAGE_ALIAS name others, as
# for those scripts). It is exported as incus's unified tarball and packed with
# dpkg-deb, Debian's own tool: the package is one data file, so there is nothing for cargo-deb
# to build. It lands beside the other packages: $CARGO_TARGET_DIR/debian/ (this machine's
# arch) or $CARGO_TARGET_DIR/debian/<arch>/, packed again only when the image or this script
# changed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

NATIVE_ARCH="$(dpkg --print-architecture)"
ARCH="$NATIVE_ARCH"
IMAGE=agent
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="${2:-}"; shift ;;
        --image) IMAGE="${2:-}"; shift ;;
        *) log "usage: scripts/build-image-deb.sh [--image agent|openclaw|opencode] [--arch amd64|arm64]"; exit 2 ;;
    esac
    shift
done
# What each image is, for the package's description.
case "$IMAGE" in
    agent)
        ALIAS="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}"
        WHAT="the taos-agent sidecar"
        ;;
    openclaw)
        ALIAS="${TAOS_OPENCLAW_IMAGE_ALIAS:-taos-openclaw}"
        WHAT="the taos-agent sidecar, Node and openclaw (from the npm registry)"
        ;;
    opencode)
        ALIAS="${TAOS_OPENCODE_IMAGE_ALIAS:-taos-opencode}"
        WHAT="the taos-agent sidecar and opencode (from the npm registry)"
        ;;
    *) log "no image called $IMAGE (agent, openclaw or opencode)"; exit 2 ;;
esac
PACKAGE="taos-$IMAGE-image"
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
    *) log "no $IMAGE image for $ARCH"; exit 2 ;;
esac

incus info >/dev/null 2>&1 || { log "incus is not running (scripts/dev-incus.sh starts it): no $ALIAS image to pack"; exit 1; }
FINGERPRINT="$(incus image info "$ALIAS" 2>/dev/null | awk '/^Fingerprint:/ {print $2}')"
[ -n "$FINGERPRINT" ] || { log "no incus image $ALIAS: run scripts/build-$IMAGE-image.sh$([ "$ARCH" = "$NATIVE_ARCH" ] || echo " --arch $ARCH") first"; exit 1; }
GOT_ARCH="$(incus image info "$ALIAS" | awk '/^Architecture:/ {print $2}')"
[ "$GOT_ARCH" = "$IMAGE_ARCH" ] || { log "incus image $ALIAS is for $GOT_ARCH, not $ARCH ($IMAGE_ARCH)"; exit 1; }

# The workspace's version (taos-host's): the image carries the sidecar built with it.
VERSION="$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)-1"
DEB="$OUT/${PACKAGE}_${VERSION}_$ARCH.deb"
SUM="$(echo "$FINGERPRINT $VERSION $(sha256sum "$0" | cut -c1-16)" | sha256sum | cut -c1-16)"
STAMP="$OUT/.$PACKAGE-deb-sha"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$SUM" ] && [ -f "$DEB" ]; then
    log "$DEB is up to date (image ${FINGERPRINT:0:12})"
    exit 0
fi

STARTED=$SECONDS
mkdir -p "$OUT"
rm -f "$OUT/${PACKAGE}_"*.deb "$STAMP"
# Not /tmp, which may be a tmpfs in RAM (the image is ~150 MB).
WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
trap 'rm -rf "$WORK"' EXIT
log "exporting incus image $ALIAS (${FINGERPRINT:0:12})"
incus image export -q "$ALIAS" "$WORK/image" >/dev/null
# The agent image is gzip (build-agent-image.sh), the framework images zstd (lib.sh's
# derived_image); the file keeps its compression's extension, and setup looks for both.
TARBALLS=("$WORK"/image.tar.*)
case "${TARBALLS[*]}" in
    "$WORK/image.tar.gz") EXT=tar.gz ;;
    "$WORK/image.tar.zst") EXT=tar.zst ;;
    *) log "incus exported $ALIAS as something other than one unified tarball: $(ls "$WORK")"; exit 1 ;;
esac

TREE="$WORK/tree"
install -D -m 0644 "$WORK/image.$EXT" "$TREE/usr/share/taos-host/images/taos-${IMAGE}_$ARCH.$EXT"
rm -f "$WORK/image.$EXT"
mkdir -p "$TREE/DEBIAN" "$TREE/usr/share/doc/$PACKAGE"
cat > "$TREE/usr/share/doc/$PACKAGE/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: taos
Comment: The image is Debian bookworm (minbase, from the Debian archive: each package keeps
 its own copyright in the image's /usr/share/doc) with $WHAT added.

Files: *
Copyright: taos developers
License: see the taos repository
COPYRIGHT
cat > "$TREE/DEBIAN/control" <<CONTROL
Package: $PACKAGE
Version: $VERSION
Architecture: $ARCH
Maintainer: taos developers
Installed-Size: $(du -sk "$TREE/usr" | cut -f1)
Section: net
Priority: optional
Enhances: taos-host
Description: the taos $IMAGE image (Debian bookworm with $WHAT)
 A container image taos-host deploys its $IMAGE agents from, for $ARCH, as an incus unified
 tarball in /usr/share/taos-host/images. \`sudo taos-host setup\` imports it into incus
 as taos-$IMAGE (image fingerprint ${FINGERPRINT:0:12}).
CONTROL
# Already gzip or zstd inside: compressing again would only cost time.
dpkg-deb --root-owner-group -Znone --build "$TREE" "$DEB" >/dev/null
[ "$(dpkg-deb -f "$DEB" Architecture)" = "$ARCH" ] || { log "$DEB is not for $ARCH"; exit 1; }
echo "$SUM" > "$STAMP"
log "packed $DEB ($(du -m "$DEB" | cut -f1) MB) in $((SECONDS - STARTED)) s"
