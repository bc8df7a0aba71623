#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, skipping what is already there: the Rust
# toolchain's components, shellcheck, LiteLLM, node, openclaw and opencode, incus, Docker (the fallback runtime),
# chromium and a built ui/dist for the UI, WebKitGTK, Xvfb and tauri-driver for the app, and restic for backups.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v cargo >/dev/null; then
    log "cargo is missing; install Rust (rustup) first"
    exit 1
fi
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        log "adding rust component $component"
        rustup component add "$component"
    fi
done
# scripts/test.sh checks these scripts with it.
apt_install shellcheck
# The backup engine (host-service/src/backup/): the host drives Debian's restic binary.
apt_install restic
# Backups to SFTP: restic's sftp backend runs the ssh client; the tests start their own sshd
# (openssh-server) on a loopback port with a throwaway host key and config.
apt_install openssh-client openssh-server
# Backups to S3-compatible storage: the tests run a real S3 server, s3s-fs from crates.io (0.14.1
# is the newest that builds with this toolchain; 0.15+ needs Rust 1.96), installed once.
S3S_FS_VERSION=0.14.1
S3S_FS_ROOT=/var/cache/taos/tools/s3s-fs
if [ "$(cat "$S3S_FS_ROOT/version" 2>/dev/null)" != "$S3S_FS_VERSION" ]; then
    log "installing s3s-fs $S3S_FS_VERSION"
    mkdir -p "$S3S_FS_ROOT"
    env -u CARGO_TARGET_DIR cargo install --locked --root "$S3S_FS_ROOT" \
        "s3s-fs@$S3S_FS_VERSION" --features binary
    echo "$S3S_FS_VERSION" >"$S3S_FS_ROOT/version"
fi
# ...and moto's S3 server (PyPI `moto[server]`), which the S3 round trip uses: s3s-fs lists no
# objects for the empty `delimiter=` restic 0.14's minio-go sends, so `restic check` fails there.
# A venv of its own, installed once per version (the stamp file).
MOTO_VERSION=5.2.5
MOTO_ROOT=/var/cache/taos/tools/moto
if [ "$(cat "$MOTO_ROOT/version" 2>/dev/null)" != "$MOTO_VERSION" ]; then
    log "installing moto[server] $MOTO_VERSION"
    if [ -x /usr/bin/python3 ]; then MOTO_PYTHON=/usr/bin/python3; else MOTO_PYTHON=python3; fi
    "$MOTO_PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    "$MOTO_PYTHON" -m venv --clear "$MOTO_ROOT"
    "$MOTO_ROOT/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    echo "$MOTO_VERSION" >"$MOTO_ROOT/version"
fi

# LiteLLM for the LLM gateway tests, incus (with the busybox test image) for the runtime
# tests. Both skip what is already there.
"$(dirname "$0")/dev-litellm.sh"
# Node 24 and the pinned openclaw, for the sidecar's openclaw-mode tests (and copied into the
# openclaw image).
"$(dirname "$0")/install-openclaw.sh"
# The pinned opencode (a real ACP agent), for the sidecar's acp-mode test (and copied into the
# opencode image). Cold: one 60 MB package from the npm registry, a few seconds.
"$(dirname "$0")/install-opencode.sh"
"$(dirname "$0")/dev-incus.sh"
# After incus, so dockerd finds forwarding on and leaves incus's bridge alone.
"$(dirname "$0")/dev-docker.sh"
"$(dirname "$0")/dev-browser.sh"
"$(dirname "$0")/dev-app.sh"
