#!/usr/bin/env bash
# Benchmarks a release taos-host and writes docs/benchmarks.md:
#   - time from exec to the first 200 on /api/health (fresh and existing data dir)
#   - idle RSS
#   - /api/health requests per second over HTTPS keep-alive (wrk, 64 connections, 2 threads)
# Targets (issue 2): ready < 150 ms, idle RSS < 20 MiB, > 15 000 req/s on 2 cores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

apt_install wrk
log "building release binaries"
cargo build --release --locked -p taos-host -p taos-e2e --bin taos-host --bin taos-bench --bin taos-load --bin taos-llm-bench
BIN="$CARGO_TARGET_DIR/release/taos-host"

log "startup and idle memory"
STARTUP_JSON="$("$CARGO_TARGET_DIR/release/taos-bench" "$BIN" 7)"
echo "$STARTUP_JSON"

log "request rate (wrk)"
WORK="$(mktemp -d)"
trap 'kill "$HOST_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
APORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TAOS_SERVER__BIND="127.0.0.1:$PORT" TAOS_SERVER__AGENT_BIND="127.0.0.1:$APORT" RUST_LOG=warn \
    "$BIN" --data-dir "$WORK/data" serve >"$WORK/out" 2>"$WORK/err" &
HOST_PID=$!
for _ in $(seq 100); do grep -q "taos-host ready" "$WORK/out" 2>/dev/null && break; sleep 0.1; done
wrk -t2 -c64 -d3s "https://127.0.0.1:$PORT/api/health" >/dev/null 2>&1 || true # warm-up
WRK_OUT="$(wrk -t2 -c64 -d10s --latency "https://127.0.0.1:$PORT/api/health")"
echo "$WRK_OUT"
RPS=$(echo "$WRK_OUT" | awk '/Requests\/sec/ {print $2}')
P99=$(echo "$WRK_OUT" | awk '$1=="99%" {print $2}')
LOADED_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$HOST_PID/status")
kill "$HOST_PID"; wait "$HOST_PID" 2>/dev/null || true

log "conversation core load (traces, bridge, WebSocket fan-out)"
LOAD_JSON="$("$CARGO_TARGET_DIR/release/taos-load" "$BIN")"
echo "$LOAD_JSON"

log "LLM gateway overhead (real LiteLLM, fake upstream)"
"$REPO_ROOT/scripts/dev-litellm.sh"
LLM_JSON="$("$CARGO_TARGET_DIR/release/taos-llm-bench" "$BIN" 10000)"
echo "$LLM_JSON"
llm() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$LLM_JSON" "$1"; }

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$STARTUP_JSON" "$1"; }
load() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$LOAD_JSON" "$1"; }
READY=$(json ready_ms_median); READY_MAX=$(json ready_ms_max)
COLD=$(json ready_ms_first_run_median); COLD_MAX=$(json ready_ms_first_run_max)
IDLE_KIB=$(json idle_rss_kib_max)
IDLE_MIB=$(python3 -c "print(round($IDLE_KIB/1024,1))")
LOADED_MIB=$(python3 -c "print(round($LOADED_RSS/1024,1))")
verdict() { python3 -c "print('met' if $1 else 'NOT met')"; }

cat > docs/benchmarks.md <<MD
# Benchmarks

Written by \`scripts/bench.sh\` — do not edit by hand; rerun it. Release build, measured on
$(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM,
$(date -u +%Y-%m-%d). The load generator (wrk) runs on the same cores as the host, so the
request rate is a floor, not a ceiling.

## Host foundation (issue 2)

| what | result | target | |
|---|---|---|---|
| exec → first 200 on \`/api/health\`, existing data dir (median of 7) | ${READY} ms (max ${READY_MAX}) | < 150 ms | $(verdict "$READY < 150") |
| exec → first 200, first run (key generation, migrations; median of 7) | ${COLD} ms (max ${COLD_MAX}) | — | |
| idle RSS, 2 s after ready | ${IDLE_MIB} MiB | < 20 MiB | $(verdict "$IDLE_MIB < 20") |
| \`/api/health\` over HTTPS keep-alive (wrk -t2 -c64, 10 s) | ${RPS} req/s, p99 ${P99} | > 15 000 req/s | $(verdict "$RPS > 15000") |
| RSS right after that load | ${LOADED_MIB} MiB | — | |

How: \`taos-bench\` (tests/src/bin) starts the binary on fresh ports, polls \`/api/health\` every
0.5 ms and reads \`VmRSS\` from \`/proc\`; wrk drives TLS 1.3 keep-alive connections.
MD
log "wrote docs/benchmarks.md"
