#!/usr/bin/env bash
# Builds and runs the host with its data under ./data in the repo (override with TAOS_DATA_DIR).
# Everything else is the embedded default: SQLite, a self-signed TLS key made on first run,
# HTTPS on 0.0.0.0:6969. Extra arguments go to `taos-host serve`'s environment as usual
# (e.g. TAOS_SERVER__BIND=127.0.0.1:7443 scripts/run.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# The web UI first: the host embeds ui/dist when it is compiled.
"$REPO_ROOT/scripts/build-ui.sh"
log "building taos-host and the taos-agent sidecar (release)"
cargo build --release --locked -p taos-host -p taos-agent
BIN="$CARGO_TARGET_DIR/release/taos-host"
AGENT_BIN="$CARGO_TARGET_DIR/release/taos-agent"
DATA="${TAOS_DATA_DIR:-$REPO_ROOT/data}"

cat >&2 <<MSG

  taos host: data in $DATA
  When it prints "taos-host ready", open the public URL it shows (https://<this machine>:6969).
  First run: create the owner in the browser with the setup code it prints (also in
  $DATA/setup-code), or from another terminal:
      $BIN --data-dir $DATA user create owner
  Pair the app:        $BIN --data-dir $DATA pair
  Pin for the app:     $BIN --data-dir $DATA fingerprint
  Scripts on this machine can use the local admin token in $DATA/local-token.
  An agent running outside a container: create it (POST /api/agents), then run the sidecar
  with its credentials (see README.md, "Connect an agent that runs elsewhere"):
      $AGENT_BIN

MSG
exec "$BIN" --data-dir "$DATA" serve
