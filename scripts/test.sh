#!/usr/bin/env bash
# Runs every test: provisioning, formatting, lints, unit and integration tests.
# Integration tests start the real taos-host binary on ephemeral loopback ports.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/provision.sh"
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (every binary: tests start taos-host and taos-agent as real processes)"
cargo build --workspace --bins --locked
# The agent image carries the sidecar just built (rebuilt only when the binary changed).
"$REPO_ROOT/scripts/build-agent-image.sh" "$CARGO_TARGET_DIR/debug/taos-agent"
log "cargo test"
OUT="$(mktemp -d)/test-output"
trap 'rm -rf "$(dirname "$OUT")"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$OUT"
STATUS=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo ends with its doctest summary, often "0 passed").
awk '/^test result:/ {passed += $4; failed += $6} END {printf "total: %d passed, %d failed\n", passed, failed}' "$OUT"
exit "$STATUS"
