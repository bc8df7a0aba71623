#!/usr/bin/env bash
# Runs the arm64 build on this amd64 machine under qemu-user (issue 17), and fails loudly when
# it can't: CI installs qemu-user-static and registers binfmt_misc itself, so a missing piece
# is a broken machine, not a reason to skip.
#
#   scripts/check-arm64.sh [DIR]    DIR holds the arm64 taos-host_*.deb, taos-agent_*.deb,
#                                   taos-agent-image_*.deb, taos-openclaw-image_*.deb and
#                                   taos-opencode-image_*.deb (default
#                                   $CARGO_TARGET_DIR/debian/arm64, made by
#                                   scripts/build-deb.sh [--debug] --arch arm64 and
#                                   scripts/build-image-deb.sh --arch arm64)
#
# Checks, with the binaries unpacked from the packages:
#   - both packages say Architecture: arm64 and carry AArch64 binaries;
#   - taos-host --version and taos-agent --version (qemu-aarch64-static -L /usr/aarch64-linux-gnu:
#     the cross toolchain's arm64 libc);
#   - taos-host serve on a temporary data dir, with no container runtime: it prints its ready
#     line, /api/health answers over its TLS listener and / is the embedded web UI (SQLite,
#     rustls/ring and the UI all run as arm64 code);
#   - the arm64 agent image, as the taos-agent-image package holds it for setup (packed from the
#     incus image taos-agent-arm64, scripts/build-agent-image.sh --arch arm64), is an aarch64
#     image of the same version whose own /usr/local/bin/taos-agent --version runs in a chroot
#     of its rootfs under qemu-user (binfmt_misc). incus here refuses to start a container of
#     another architecture ("Requested architecture isn't supported by this host"), so the
#     chroot is as far as it boots on this machine;
#   - dpkg installs both packages into that image's (unpacked, throwaway) Debian;
#   - the taos-openclaw-image and taos-opencode-image packages (scripts/build-image-deb.sh
#     --image openclaw|opencode --arch arm64) hold aarch64 images in whose rootfs, in a chroot
#     with its own /proc under qemu-user, taos-agent --version, node --version, and (as the
#     agent user) openclaw --version and opencode --version say the versions the image's
#     metadata names. A package that passed before (same bytes, same check) is not unpacked
#     again.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

DIR="${1:-$CARGO_TARGET_DIR/debian/arm64}"
IMAGE="${TAOS_AGENT_IMAGE_ALIAS:-taos-agent}-arm64"
fail() { log "FAIL (arm64): $*"; exit 1; }
pass() { log "ok (arm64): $*"; }

apt_install qemu-user-static libc6-dev-arm64-cross || fail "qemu-user-static and the arm64 libc are needed"
QEMU=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
HOST_DEB="$(ls "$DIR"/taos-host_*_arm64.deb 2>/dev/null)" || fail "no taos-host arm64 package in $DIR (scripts/build-deb.sh --arch arm64)"
AGENT_DEB="$(ls "$DIR"/taos-agent_*_arm64.deb 2>/dev/null)" || fail "no taos-agent arm64 package in $DIR"

WORK="$(mktemp -d -p "${TMPDIR:-/var/tmp}")"
HOST_PID=""
cleanup() {
    if [ -n "$HOST_PID" ]; then kill "$HOST_PID" 2>/dev/null || true; wait "$HOST_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
dpkg-deb -x "$HOST_DEB" "$WORK/host"
dpkg-deb -x "$AGENT_DEB" "$WORK/agent"
HOST="$WORK/host/usr/bin/taos-host"
AGENT="$WORK/agent/usr/bin/taos-agent"
for deb in "$HOST_DEB" "$AGENT_DEB"; do
    [ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || fail "$deb: Architecture is $(dpkg-deb -f "$deb" Architecture)"
done
for exe in "$HOST" "$AGENT"; do
    readelf -h "$exe" | grep -q 'Machine:.*AArch64' || fail "$exe is not an AArch64 binary"
done
pass "$(basename "$HOST_DEB") and $(basename "$AGENT_DEB") are arm64 packages of AArch64 binaries"

VERSION="$(dpkg-deb -f "$HOST_DEB" Version)"
OUT="$("${QEMU[@]}" "$HOST" --version 2>&1)" || fail "taos-host --version under qemu: $OUT"
[ "$OUT" = "taos-host ${VERSION%%-*}" ] || fail "taos-host --version says '$OUT', the package is $VERSION"
pass "taos-host --version under qemu-user: $OUT"
OUT="$("${QEMU[@]}" "$AGENT" --version 2>&1)" || fail "taos-agent --version under qemu: $OUT"
[ "$OUT" = "taos-agent ${VERSION%%-*}" ] || fail "taos-agent --version says '$OUT'"
pass "taos-agent --version under qemu-user: $OUT"

# A start on an empty data dir: no container runtime (this check must not touch the machine's
# incus), ephemeral loopback ports. Under qemu a debug build takes seconds to start.
mkdir -p "$WORK/data"
TAOS_SERVER__BIND=127.0.0.1:0 TAOS_SERVER__AGENT_BIND=127.0.0.1:0 TAOS_RUNTIME__KIND=none RUST_LOG=info \
    "${QEMU[@]}" "$HOST" --data-dir "$WORK/data" serve >"$WORK/host.out" 2>"$WORK/host.err" </dev/null &
HOST_PID=$!
URL=""
for _ in $(seq 1 240); do
    URL="$(sed -n 's/^taos-host ready public=\(https:\/\/[^ ]*\) .*/\1/p' "$WORK/host.out")"
    [ -n "$URL" ] && break
    kill -0 "$HOST_PID" 2>/dev/null || { tail -n 20 "$WORK/host.err" >&2; fail "taos-host serve exited before it was ready"; }
    sleep 0.5
done
[ -n "$URL" ] || { tail -n 20 "$WORK/host.err" >&2; fail "taos-host serve printed no ready line within 120 s"; }
# The host's own key signs its certificate; its fingerprint is in the ready line (checked by
# the install test). Here the TLS handshake itself is what is checked, so -k.
HEALTH="$(curl -sk --max-time 30 "$URL/api/health")" || fail "no answer from $URL/api/health"
# "degraded" only says LiteLLM (an x86_64 child here) is not ready yet: the host answered.
grep -Eq '^\{"status":"(ok|degraded)"' <<<"$HEALTH" || fail "/api/health answered: $HEALTH"
pass "taos-host serve under qemu-user: ready at $URL, /api/health answers $HEALTH"
# The web UI is compiled into the binary: the package serves the built page, not the page that
# says the UI was not built.
PAGE="$(curl -sk --max-time 30 "$URL/")" || fail "no answer from $URL/"
grep -q 'name="theme-color"' <<<"$PAGE" || fail "$URL/ is not the built web UI: $(head -c 300 <<<"$PAGE")"
pass "taos-host serves the embedded web UI at $URL/"
kill -TERM "$HOST_PID"
wait "$HOST_PID" 2>/dev/null || true
HOST_PID=""

# The agent image, as a board gets it (the taos-agent-image package), as far as this machine
# can boot it.
binfmt_arm64 || fail "binfmt_misc can't run arm64 binaries here (see above), so the arm64 image can't be checked"
IMAGE_DEB="$(ls "$DIR"/taos-agent-image_*_arm64.deb 2>/dev/null)" || fail "no taos-agent-image arm64 package in $DIR (scripts/build-image-deb.sh --arch arm64)"
[ "$(dpkg-deb -f "$IMAGE_DEB" Architecture)" = arm64 ] || fail "$IMAGE_DEB: Architecture is $(dpkg-deb -f "$IMAGE_DEB" Architecture)"
[ "$(dpkg-deb -f "$IMAGE_DEB" Version)" = "$VERSION" ] || fail "$IMAGE_DEB is version $(dpkg-deb -f "$IMAGE_DEB" Version), taos-host is $VERSION"
dpkg-deb -x "$IMAGE_DEB" "$WORK/image"
# Where `taos-host setup` looks for it by default.
TARBALL="$WORK/image/usr/share/taos-host/images/taos-agent_arm64.tar.gz"
[ -f "$TARBALL" ] || fail "$IMAGE_DEB has no usr/share/taos-host/images/taos-agent_arm64.tar.gz"
mkdir -p "$WORK/unpacked"
tar -C "$WORK/unpacked" --numeric-owner -xzf "$TARBALL"
rm -rf "$WORK/image"
grep -qx 'architecture: aarch64' "$WORK/unpacked/metadata.yaml" || fail "$IMAGE's metadata does not say aarch64: $(grep architecture "$WORK/unpacked/metadata.yaml")"
ROOTFS="$WORK/unpacked/rootfs"
readelf -h "$ROOTFS/usr/bin/systemctl" | grep -q 'Machine:.*AArch64' || fail "$IMAGE's systemd is not AArch64"
OUT="$(chroot "$ROOTFS" /usr/local/bin/taos-agent --version 2>&1)" || fail "taos-agent --version in $IMAGE's rootfs: $OUT"
grep -q '^taos-agent ' <<<"$OUT" || fail "taos-agent --version in $IMAGE's rootfs says: $OUT"
# The image's own userland runs too (its libc, its shell), not just a static-enough binary.
OUT2="$(chroot "$ROOTFS" /bin/sh -c 'uname -m; id -u agent' 2>&1)" || fail "a shell in $IMAGE's rootfs: $OUT2"
[ "$OUT2" = "$(printf 'aarch64\n1000')" ] || fail "in $IMAGE's rootfs uname -m / id -u agent say: $OUT2"
pass "$(basename "$IMAGE_DEB") holds $IMAGE (aarch64): its taos-agent --version in a chroot under qemu-user says '$OUT'; its shell sees aarch64 and the agent user"
# The packages on that arm64 Debian: dpkg resolves their dependencies (libc6:arm64, passwd,
# systemd) against the image's own and runs the maintainer scripts (no systemd runs in a
# chroot, so nothing starts); the installed taos-host then runs from /usr/bin. The unpacked
# image is thrown away afterwards. restic is the one dependency the agent image lacks: on a
# board apt brings it from Debian (arm64 has it; the install test takes that path on amd64),
# and the chroot has no package lists to resolve it from, so it alone is not checked here.
cp "$HOST_DEB" "$AGENT_DEB" "$ROOTFS/tmp/"
OUT="$(chroot "$ROOTFS" dpkg -i --ignore-depends=restic \
    "/tmp/$(basename "$HOST_DEB")" "/tmp/$(basename "$AGENT_DEB")" 2>&1)" \
    || fail "dpkg -i of the arm64 packages in $IMAGE's rootfs: $OUT"
OUT="$(chroot "$ROOTFS" /usr/bin/taos-host --version 2>&1)" || fail "the installed taos-host --version: $OUT"
pass "dpkg installs both arm64 packages in $IMAGE's Debian, and its /usr/bin/taos-host --version says '$OUT'"

# The framework images, as their packages hold them for setup (scripts/build-image-deb.sh
# --image openclaw|opencode --arch arm64, packed from taos-openclaw-arm64 and
# taos-opencode-arm64), in a chroot of each rootfs under qemu-user: the sidecar, and the
# framework's own binaries at the versions the image's metadata names (its install stamp).
# in_rootfs ROOTFS CMD... runs CMD in a chroot of ROOTFS with its own /proc (opencode's Bun
# runtime aborts without one), in a mount and PID namespace that end with it: nothing stays
# mounted under the work dir.
in_rootfs() {
    local rootfs="$1"
    shift
    unshare --mount --pid --fork --mount-proc="$rootfs/proc" chroot "$rootfs" "$@"
}
check_framework_image() {
    local name="$1" started=$SECONDS
    local deb
    deb="$(ls "$DIR"/taos-"$name"-image_*_arm64.deb 2>/dev/null)" \
        || fail "no taos-$name-image arm64 package in $DIR (scripts/build-image-deb.sh --image $name --arch arm64)"
    [ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || fail "$deb: Architecture is $(dpkg-deb -f "$deb" Architecture)"
    [ "$(dpkg-deb -f "$deb" Version)" = "$VERSION" ] || fail "$deb is version $(dpkg-deb -f "$deb" Version), taos-host is $VERSION"
    # The same package already passed this same check: its result can't differ, and the
    # unpacking and qemu runs cost a minute or more. TAOS_CHECK_ARM64_FORCE=1 checks anyway.
    local sum stamp="$DIR/.check-arm64-$name-sha"
    sum="$(cat "$deb" "$0" | sha256sum | cut -c1-16)"
    if [ "${TAOS_CHECK_ARM64_FORCE:-}" != 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
        pass "$(basename "$deb") passed this check before ($sum: the same package and check; TAOS_CHECK_ARM64_FORCE=1 runs it again)"
        return 0
    fi
    rm -f "$stamp"
    local dir="$WORK/$name"
    rm -rf "$WORK/unpacked"
    dpkg-deb -x "$deb" "$dir"
    local tarball
    tarball="$(ls "$dir"/usr/share/taos-host/images/taos-"$name"_arm64.tar.* 2>/dev/null)" \
        || fail "$deb has no usr/share/taos-host/images/taos-${name}_arm64.tar.*"
    mkdir -p "$dir/unpacked"
    tar -C "$dir/unpacked" --numeric-owner -a -xf "$tarball"
    rm -f "$tarball"
    grep -qx 'architecture: aarch64' "$dir/unpacked/metadata.yaml" || fail "taos-$name-arm64's metadata does not say aarch64"
    local installed
    installed="$(sed -n 's/.*taos-agent + \(.*\))$/\1/p' "$dir/unpacked/metadata.yaml")"
    local rootfs="$dir/unpacked/rootfs" out said=()
    out="$(in_rootfs "$rootfs" /usr/local/bin/taos-agent --version 2>&1)" || fail "taos-agent --version in taos-$name-arm64: $out"
    [ "$out" = "taos-agent ${VERSION%%-*}" ] || fail "taos-agent --version in taos-$name-arm64 says: $out"
    said+=("$out")
    case "$name" in
        openclaw)
            # node-24.21.0-openclaw-2026.9.6
            local node_v="${installed#node-}" openclaw_v="${installed#*-openclaw-}"
            node_v="${node_v%%-*}"
            readelf -h "$rootfs/opt/node/bin/node" | grep -q 'Machine:.*AArch64' || fail "taos-openclaw-arm64's node is not AArch64"
            out="$(in_rootfs "$rootfs" /usr/local/bin/node --version 2>&1)" || fail "node --version in taos-openclaw-arm64: $out"
            [ "$out" = "v$node_v" ] || fail "node --version in taos-openclaw-arm64 says '$out', the image has $node_v"
            said+=("node $out")
            # As the agent user, as the sidecar runs it in openclaw mode; HOME for openclaw's state.
            out="$(in_rootfs "$rootfs" /usr/sbin/runuser -u agent -- env HOME=/home/agent /usr/local/bin/openclaw --version 2>&1)" \
                || fail "openclaw --version in taos-openclaw-arm64: $out"
            grep -q "^OpenClaw $openclaw_v" <<<"$out" || fail "openclaw --version in taos-openclaw-arm64 says '$out', the image has $openclaw_v"
            said+=("$out")
            ;;
        opencode)
            # opencode-linux-arm64-1.18.18
            local opencode_v="${installed##*-}"
            readelf -h "$rootfs/opt/opencode/bin/opencode" | grep -q 'Machine:.*AArch64' || fail "taos-opencode-arm64's opencode is not AArch64"
            out="$(in_rootfs "$rootfs" /usr/sbin/runuser -u agent -- env HOME=/home/agent /usr/local/bin/opencode --version 2>&1)" \
                || fail "opencode --version in taos-opencode-arm64: $out"
            [ "$out" = "$opencode_v" ] || fail "opencode --version in taos-opencode-arm64 says '$out', the image has $opencode_v"
            said+=("opencode $out")
            ;;
    esac
    rm -rf "$dir"
    echo "$sum" > "$stamp"
    local joined
    joined="$(printf '%s, ' "${said[@]}")"
    pass "$(basename "$deb") holds taos-$name-arm64 (aarch64, $installed): in a chroot under qemu-user, ${joined%, } ($((SECONDS - started)) s)"
}
rm -rf "$WORK/unpacked"
check_framework_image openclaw
check_framework_image opencode
