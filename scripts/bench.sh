#!/usr/bin/env bash
# Benchmarks a release taos-host and writes docs/benchmarks.md (the web UI part: bench-ui.sh):
#   - time from exec to the first 200 on /api/health (fresh and existing data dir)
#   - idle RSS
#   - /api/health requests per second over HTTPS keep-alive (wrk, 64 connections, 2 threads)
#   - floods: RSS after logins (sequential, and 300 concurrent bad ones), /api/health on a new
#     connection with 1 000 silent connections open (taos-flood-bench)
# Targets (issue 2): ready < 150 ms, idle RSS < 20 MiB, > 15 000 req/s on 2 cores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

apt_install wrk
log "building release binaries"
cargo build --release --locked -p taos-host -p taos-e2e --bin taos-host --bin taos-bench --bin taos-load --bin taos-trace-bench --bin taos-llm-bench --bin taos-deploy-bench --bin taos-flood-bench --bin taos-guard
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

log "floods (logins, silent connections)"
FLOOD_JSON="$("$CARGO_TARGET_DIR/release/taos-flood-bench" "$BIN")"
echo "$FLOOD_JSON"
flood() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$FLOOD_JSON" "$1"; }

# Runs a bench binary ROUNDS times and prints, for each figure, its median over the rounds (the
# issue 20 method: a moment of load on a shared 2-core machine moves one round, not the median).
median_of() { # ROUNDS COMMAND...
    local rounds="$1"; shift
    local outs=()
    for _ in $(seq "$rounds"); do outs+=("$("$@")"); done
    python3 -c '
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
print(json.dumps({k: (statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) else v)
                  for k, v in runs[0].items()}, indent=2))' "${outs[@]}"
}
BENCH_ROUNDS="${TAOS_BENCH_ROUNDS:-3}"

log "conversation core load (traces, bridge, WebSocket fan-out; median of $BENCH_ROUNDS rounds)"
LOAD_JSON="$(median_of "$BENCH_ROUNDS" "$CARGO_TARGET_DIR/release/taos-load" "$BIN")"
echo "$LOAD_JSON"

log "trace queries (the hour index; issue 20)"
TRACEQ_JSON="$("$CARGO_TARGET_DIR/release/taos-trace-bench" "$BIN")"
echo "$TRACEQ_JSON"
tq() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$TRACEQ_JSON" "$1"; }
# TinyAgentOS's p50s for the same queries, measured side by side on this machine (issue 20).
TAO_NEWEST=18.4; TAO_COMMON=21.6; TAO_RARE=11.2; TAO_WINDOW=16.0
ratio() { python3 -c "print(round($1/$2, 3))"; }

log "ratios to same-run references (taos-guard, median of $BENCH_ROUNDS rounds; the regression guard in test.sh checks these on debug)"
GUARD_JSON="$(median_of "$BENCH_ROUNDS" "$CARGO_TARGET_DIR/release/taos-guard" "$BIN")"
echo "$GUARD_JSON"
guard() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$GUARD_JSON" "$1"; }

log "LLM gateway overhead (real LiteLLM, fake upstream)"
"$REPO_ROOT/scripts/dev-litellm.sh"
LLM_JSON="$("$CARGO_TARGET_DIR/release/taos-llm-bench" "$BIN" 10000)"
echo "$LLM_JSON"
llm() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$LLM_JSON" "$1"; }

log "container agents (real incus, the taos-agent image)"
"$REPO_ROOT/scripts/dev-incus.sh"
cargo build --release --locked -p taos-agent
"$REPO_ROOT/scripts/build-agent-image.sh" "$CARGO_TARGET_DIR/release/taos-agent"
DEPLOY_JSON="$("$CARGO_TARGET_DIR/release/taos-deploy-bench" "$BIN" 20)"
echo "$DEPLOY_JSON"
dep() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$DEPLOY_JSON" "$1"; }

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$STARTUP_JSON" "$1"; }
load() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$LOAD_JSON" "$1"; }
READY=$(json ready_ms_median); READY_MAX=$(json ready_ms_max)
COLD=$(json ready_ms_first_run_median); COLD_MAX=$(json ready_ms_first_run_max)
IDLE_KIB=$(json idle_rss_kib_max)
IDLE_MIB=$(python3 -c "print(round($IDLE_KIB/1024,1))")
LOADED_MIB=$(python3 -c "print(round($LOADED_RSS/1024,1))")
verdict() { python3 -c "print('met' if $1 else 'NOT met')"; }
# goal CONDITION REASON: "met", or "NOT met: REASON" (why it can't be, or what bounds it).
goal() { python3 -c "import sys; print('met' if $1 else 'NOT met: ' + sys.argv[1])" "$2"; }
# TinyAgentOS's figures from issue 20's side-by-side run on this machine.
TAO_INGEST=209; TAO_CHAT16=121; TAO_CHATSEQ=102; TAO_WS_P99=9.9

# TAOS_BENCH_HOST_ONLY=1 measures the host only and keeps the Web UI and Desktop app sections
# already in docs/benchmarks.md (they take long to build and don't change with host code).
KEPT_SECTIONS=""
if [[ "${TAOS_BENCH_HOST_ONLY:-}" == 1 ]]; then
    KEPT_SECTIONS="$(python3 -c '
import sys
doc = open("docs/benchmarks.md").read()
start = doc.find("## Web UI (issue 7)")
print(doc[start:] if start >= 0 else "", end="")
')"
fi
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

## Floods (issue 12)

| what | result | target | |
|---|---|---|---|
| host RSS idle (owner set up) | $(flood rss_mib_idle) MiB | — | |
| … after 20 sequential logins | $(flood rss_mib_after_20_logins) MiB | within 10 MiB of idle | $(verdict "$(flood rss_mib_after_20_logins) - $(flood rss_mib_idle) < 10") |
| … after 300 concurrent bad logins (60 addresses × 5) | $(flood rss_mib_after_300_bad_logins) MiB ($(flood flood_checked) checked, $(flood flood_refused) refused with 429/503) | within 10 MiB of idle | $(verdict "$(flood rss_mib_after_300_bad_logins) - $(flood rss_mib_idle) < 10") |
| peak RSS (\`VmHWM\`) over all of the above | $(flood rss_mib_peak) MiB | < 60 MiB | $(verdict "$(flood rss_mib_peak) < 60") |
| \`/api/health\` on a new TLS connection (50 in a row) | p50 $(flood health_new_conn_ms_p50) ms, p99 $(flood health_new_conn_ms_p99) ms | — | |
| … with 1 000 silent TCP connections open | p50 $(flood health_new_conn_1000_silent_ms_p50) ms, p99 $(flood health_new_conn_1000_silent_ms_p99) ms (host RSS $(flood rss_mib_with_1000_silent) MiB) | < 100 ms | $(verdict "$(flood health_new_conn_1000_silent_ms_p99) < 100") |

How: \`taos-flood-bench\` (tests/src/bin) starts a release host, signs in through the API from
loopback source addresses of its own (127.0.x.y), and reads \`VmRSS\`/\`VmHWM\` from \`/proc\`. Each
password check needs argon2id's 19 MiB; one worker thread owns that block and gives its pages
back when idle. Health times include TCP connect, TLS handshake and the request.

## Conversation core (issue 3)

| what | result | target | |
|---|---|---|---|
| trace ingest, batch endpoint (100 000 events, batches of 500, 4 clients) | $(load trace_batch_events_per_s) events/s | > 20 000 | $(verdict "$(load trace_batch_events_per_s) > 20000") |
| trace ingest, single POSTs (10 000 events, 64 clients) | $(load trace_single_events_per_s) events/s | > 3 000 | $(verdict "$(load trace_single_events_per_s) > 3000") |
| chat post, sequential (1 000 into the agent's DM) | $(load chat_post_sequential_per_s) posts/s, p50 $(load chat_post_sequential_ms_p50) ms | — | |
| chat post, 16 writers into one channel (the DM, 2 000) | $(load chat_post_16_one_channel_per_s) posts/s, p50 $(load chat_post_16_one_channel_ms_p50) ms, p99 $(load chat_post_16_one_channel_ms_p99) ms | — | |
| chat post, 16 writers into 16 channels (2 000) | $(load chat_post_16_channels_per_s) posts/s, p50 $(load chat_post_16_channels_ms_p50) ms, p99 $(load chat_post_16_channels_ms_p99) ms | — | |
| user message POST → agent SSE delivery (300 messages) | p50 $(load delivery_ms_p50) ms, p99 $(load delivery_ms_p99) ms | p99 < 5 ms | $(verdict "$(load delivery_ms_p99) < 5") |
| agent reply delta POST → WebSocket client (300 deltas) | p50 $(load delta_ms_p50) ms, p99 $(load delta_ms_p99) ms | p99 < 5 ms | $(verdict "$(load delta_ms_p99) < 5") |
| message POST → all of 500 WebSocket clients in one channel (30 messages) | p50 $(load broadcast_500_ms_p50) ms, p99 $(load broadcast_500_ms_p99) ms | p99 < 50 ms | $(verdict "$(load broadcast_500_ms_p99) < 50") |
| host RSS with those 500 clients connected | $(load rss_mib_with_500_clients) MiB (before they connected: $(load rss_mib_before_clients) MiB) | < 60 MiB | $(verdict "$(load rss_mib_with_500_clients) < 60") |

How: \`taos-load\` (tests/src/bin) drives a release host through the real APIs: agent-listener
trace posts over plain HTTP on loopback, chat posts and WebSockets over TLS pinned to the host
key, the bridge stream as an agent reads it. Latencies include the POST's own handling: a message and its deliveries commit in one
fsynced SQLite transaction shared with the messages sent meanwhile (group commit), and the POST
is answered once that is on disk (\`synchronous=FULL\`). Each figure is the median of
${BENCH_ROUNDS} runs of \`taos-load\` (as issue 20 measured TinyAgentOS: rounds, medians), since
a p99 of 300 sequential posts is their third slowest, which one busy moment of the shared
2-core machine decides.

## Trace queries (issue 20)

| what ($(tq events) events over 24 hours, one agent) | taos p50 (p99) | TinyAgentOS p50 | ratio | goal |
|---|---|---|---|---|
| newest 100 | $(tq newest_ms_p50) ms ($(tq newest_ms_p99)) | ${TAO_NEWEST} ms | $(ratio "$(tq newest_ms_p50)" $TAO_NEWEST) | ≤ 0.1: $(verdict "$(tq newest_ms_p50) <= $TAO_NEWEST / 10") |
| newest 100 of a common kind (1 in 2) | $(tq common_ms_p50) ms ($(tq common_ms_p99)) | ${TAO_COMMON} ms | $(ratio "$(tq common_ms_p50)" $TAO_COMMON) | ≤ 0.1: $(verdict "$(tq common_ms_p50) <= $TAO_COMMON / 10") |
| newest 100 of a rare kind (1 in 200: 24 events, one an hour) | $(tq rare_ms_p50) ms ($(tq rare_ms_p99)) | ${TAO_RARE} ms | $(ratio "$(tq rare_ms_p50)" $TAO_RARE) | ≤ 0.1: $(verdict "$(tq rare_ms_p50) <= $TAO_RARE / 10") |
| a 1-hour window (newest 100 of its 200) | $(tq window_ms_p50) ms ($(tq window_ms_p99)) | ${TAO_WINDOW} ms | $(ratio "$(tq window_ms_p50)" $TAO_WINDOW) | ≤ 0.1: $(verdict "$(tq window_ms_p50) <= $TAO_WINDOW / 10") |
| newest 100, 16 clients at once | $(tq concurrent_ms_p50) ms ($(tq concurrent_ms_p99)), $(tq concurrent_per_s) req/s | — | | |
| per-day totals of the 24 hours (\`/trace/totals\`) | $(tq totals_day_ms_p50) ms ($(tq totals_day_ms_p99)) | — | | |

How: \`taos-trace-bench\` (tests/src/bin) posts 4 800 events (200 an hour) through the agent
listener to a release host, then reads as the owner over TLS keep-alive, one connection per
client, $(tq rounds) reads per query after a warm-up (the concurrent row: 16 × $(tq rounds)/4).
Reads open only the hours the per-agent hour index says can answer and stop once the page is
full; the rare kind needs every hour that has one (24 here), but an hour's few events of a
kind are kept in memory between reads (dropped when the writer commits to that hour), so a
repeated read costs a \`stat\` per hour instead of a SQLite round trip per hour. Host CPU per
read (all threads, from \`/proc\`, steadier than latency on a busy machine): newest 100
$(tq newest_cpu_us) µs, common kind $(tq common_cpu_us) µs, rare kind $(tq rare_cpu_us) µs,
1-hour window $(tq window_cpu_us) µs.

## Ratios to references in the same run (issue 20)

Each figure divided by what the same machine does in the same run with the work taken out, so
a slower or busier machine moves both sides; each is the median of ${BENCH_ROUNDS} runs of \`taos-guard\`. \`scripts/test.sh\` runs the same measurement on
the debug build and fails when a ratio falls below half of \`tests/guard-baseline.json\`.

| figure | reference | ratio |
|---|---|---|
| single trace POSTs per second (16 clients) | empty authenticated POSTs per second on the agent listener: $(guard ref_empty_post_per_s)/s, p50 $(guard ref_empty_post_ms_p50) ms | $(guard trace_single_vs_empty_post) |
| chat posts per second, sequential: $(guard ref_chat_sequential_per_s)/s | empty POSTs per second from one client | $(guard chat_sequential_vs_empty_post) |
| chat posts per second, 16 writers in one channel (group commit): $(guard ref_chat_16_one_channel_per_s)/s | empty POSTs per second from 16 clients | $(guard chat_16_one_channel_vs_empty_post) |
| (for context) one-row SQLite commits per second, WAL, \`synchronous=FULL\`, on the data dir's disk | — | $(guard ref_sqlite_commits_per_s)/s |
| trace query (newest 100) p50 | an empty request's p50 (inverted: higher is better) | $(guard empty_request_vs_trace_query_p50) |

Host CPU per request in the same run (all threads, from \`/proc\`): an empty authenticated POST
$(guard ref_empty_post_cpu_us) µs, a single trace POST $(guard ref_trace_single_cpu_us) µs, a chat post (sequential,
into the agent's DM) $(guard ref_chat_sequential_cpu_us) µs. So single-POST ingest runs at
$(guard trace_single_vs_empty_post) of the empty-POST limit, and at
$(python3 -c "print(round($(guard ref_trace_single_per_s) / $(load trace_batch_events_per_s), 3))") of the trace writer's batch limit (the batch endpoint's
$(load trace_batch_events_per_s) events/s, group-committed with \`synchronous=FULL\`).

*Where it goes* (\`perf record\`, cpu-clock at 2 kHz, on the release host during \`taos-guard\`,
2026-12-06, a shared machine; not rerun by this script). A chat post's CPU: kernel thread
wake-ups and switches 19 %, malloc/free 16 %, SQLite 13 %, other kernel work 12 %, HTTP (hyper,
axum) 7 %, sqlx 5 %, the async runtime and its channels 4 %, JSON 1.5 %, TLS 1.3 %. The fsync
is not the cost: each SQL statement is a round trip to its connection's sqlx worker thread (a
wake-up each way, and the rows copied across), and a post to a DM makes about a dozen — the
channel, its members, the recent context and the agent before the commit; BEGIN, the channel
seq, the message, the delivery seq, the delivery, COMMIT inside it; the \`message_in\` trace's
own commit after. A single trace POST looks the same at a smaller scale (wake-ups 19 %, malloc
16 %, SQLite 8 %, HTTP 7 %). Fewer statements per request (an in-memory channel and agent,
statements batched per round trip) is what would move these figures next. (Profiled before
the savepoints of a lone post and of a new message's deliveries were dropped: four statements
fewer per post.)

## Against TinyAgentOS (issue 20's table)

Every row of issue 20's table with its goal; TinyAgentOS's figures are from that issue's
side-by-side run on this machine (plain HTTP on loopback for both).

| workload | taos | TinyAgentOS | ratio | goal | |
|---|---|---|---|---|---|
| trace ingest, 16 concurrent single POSTs | $(guard ref_trace_single_per_s) req/s ($(guard ref_trace_single_cpu_us) µs host CPU each) | ${TAO_INGEST} req/s | $(ratio "$(guard ref_trace_single_per_s)" $TAO_INGEST)× | ≥ 40× | $(goal "$(guard ref_trace_single_per_s) >= 40 * $TAO_INGEST" "an empty authenticated POST on the same listener manages $(guard ref_empty_post_per_s)/s ($(guard ref_empty_post_cpu_us) µs host CPU), $(ratio "$(guard ref_empty_post_per_s)" $TAO_INGEST)× TinyAgentOS, with the load client on the same 2 cores; a stored event adds $(python3 -c "print(round($(guard ref_trace_single_cpu_us) - $(guard ref_empty_post_cpu_us)))") µs") |
| trace query: newest 100 of 4 800 over 24 hours | p50 $(tq newest_ms_p50) ms | ${TAO_NEWEST} ms | $(ratio "$(tq newest_ms_p50)" $TAO_NEWEST) | ≤ 0.1 | $(goal "$(tq newest_ms_p50) <= $TAO_NEWEST / 10" "see Trace queries") |
| trace query: newest 100 of a common kind | p50 $(tq common_ms_p50) ms | ${TAO_COMMON} ms | $(ratio "$(tq common_ms_p50)" $TAO_COMMON) | ≤ 0.1 | $(goal "$(tq common_ms_p50) <= $TAO_COMMON / 10" "see Trace queries") |
| trace query: newest 100 of a rare kind (1 in 200) | p50 $(tq rare_ms_p50) ms | ${TAO_RARE} ms | $(ratio "$(tq rare_ms_p50)" $TAO_RARE) | ≤ 0.1 | $(goal "$(tq rare_ms_p50) <= $TAO_RARE / 10" "24 hours hold one each; host CPU per read $(tq rare_cpu_us) µs vs $(tq newest_cpu_us) µs for the newest 100") |
| trace query: a 1-hour window | p50 $(tq window_ms_p50) ms | ${TAO_WINDOW} ms | $(ratio "$(tq window_ms_p50)" $TAO_WINDOW) | ≤ 0.1 | $(goal "$(tq window_ms_p50) <= $TAO_WINDOW / 10" "see Trace queries") |
| chat post, 16 concurrent (one channel) | $(load chat_post_16_one_channel_per_s) req/s, p99 $(load chat_post_16_one_channel_ms_p99) ms | ${TAO_CHAT16} req/s | $(ratio "$(load chat_post_16_one_channel_per_s)" $TAO_CHAT16)× | ≥ 10×, p99 ≤ 10 ms | $(goal "$(load chat_post_16_one_channel_per_s) >= 10 * $TAO_CHAT16 and $(load chat_post_16_one_channel_ms_p99) <= 10" "posts to one channel queue behind one group commit; the p99 is the 16th writer's wait for the batches ahead of it") |
| chat post, sequential | $(load chat_post_sequential_per_s) req/s ($(guard ref_chat_sequential_cpu_us) µs host CPU each) | ${TAO_CHATSEQ} req/s | $(ratio "$(load chat_post_sequential_per_s)" $TAO_CHATSEQ)× | ≥ 10× | $(goal "$(load chat_post_sequential_per_s) >= 10 * $TAO_CHATSEQ" "the host's CPU per post is most of the 0.98 ms a post may take at 10×: handing each statement to SQLite's worker thread and back (about 70 context switches per post) and the post's message_in trace with its own commit; an empty POST from one client costs $(guard ref_empty_post_cpu_us) µs host CPU") |
| HTTP post → WebSocket (one client) | p99 $(load post_to_ws_ms_p99) ms (p50 $(load post_to_ws_ms_p50)) | p99 ${TAO_WS_P99} ms | $(ratio "$(load post_to_ws_ms_p99)" $TAO_WS_P99) | ≤ 0.2 | $(goal "$(load post_to_ws_ms_p99) <= 0.2 * $TAO_WS_P99" "the post's own fsynced commit comes first, and TLS on both sides") |
| idle RSS | ${IDLE_MIB} MiB (heap and stacks $(python3 -c "print(round($(json idle_rss_anon_kib)/1024,1))") MiB, the binary's and libraries' pages $(python3 -c "print(round($(json idle_rss_file_kib)/1024,1))") MiB) | 96.6 MB | $(python3 -c "print(round($IDLE_KIB/1024/96.6*1.048576, 3))") | ≤ 16 MiB | $(goal "$IDLE_MIB <= 16" "most of it is the binary's own code pages, clean and file-backed: the kernel maps 64 KiB around each page the host runs (fault-around), so a few MiB of code used at start-up make most of the binary's text resident (the kernel drops such pages first when memory runs short); allocator settings move the heap by under 1 MiB (one malloc arena instead of one per thread: −0.7 MiB, measured 2026-12-06)") |
| LLM gateway, added to a call (non-streamed) | p50 $(llm added_p50_ms) ms, p99 $(llm added_p99_ms) ms over the same call sent to LiteLLM directly; of that, LiteLLM's handling of the \`max_tokens\` cap the gateway adds: p50 $(llm max_tokens_in_litellm_p50_ms) ms; the gateway's own: p50 $(llm added_over_forwarded_body_p50_ms) ms, p99 $(llm added_over_forwarded_body_p99_ms) ms ($(llm host_cpu_ms_per_call) ms host CPU per call) | — | | ≤ 0.5 ms p50, ≤ 1 ms p99 | $(goal "$(llm added_over_forwarded_body_p50_ms) <= 0.5 and $(llm added_over_forwarded_body_p99_ms) <= 1" "the gateway's own cost, measured against LiteLLM given the very body the gateway forwards: per call one key read, the budget and the catalog from memory, the body parsed once and re-serialized, and the HTTP hop on loopback; LiteLLM's own jitter is in the p99 difference") |

## LLM gateway (issue 4)

| what | result | target | |
|---|---|---|---|
| non-streamed call, p50 (200 calls each, interleaved) | gateway $(llm gateway_p50_ms) ms vs LiteLLM direct $(llm direct_p50_ms) ms: $(llm added_p50_ms) ms added | < 1 ms added | $(verdict "$(llm added_p50_ms) < 1") |
| streamed call, time to first chunk, p50 | gateway $(llm gateway_first_chunk_p50_ms) ms vs direct $(llm direct_first_chunk_p50_ms) ms: $(llm added_first_chunk_ms) ms added | < 2 ms added | $(verdict "$(llm added_first_chunk_ms) < 2") |
| host RSS across $(llm calls) gateway calls (16 at a time) | $(llm rss_mib_before) → $(llm rss_mib_after) MiB ($(llm rss_growth_mib) MiB) | within 5 MiB | $(verdict "abs($(llm rss_growth_mib)) < 5") |

How: \`taos-llm-bench\` (tests/src/bin) runs the fake OpenAI-compatible upstream in process,
starts a release host that supervises real LiteLLM, and calls LiteLLM both directly (master key)
and through the gateway (agent LLM key: model and budget checks, usage and trace recording).
LiteLLM itself adds about 20 ms per call; the gateway's share is what the table shows.

## Agents in containers (issue 5)

| what | result | target | |
|---|---|---|---|
| deploy → \`running\` (sidecar connected), local \`taos-agent\` image (median of $(dep agents)) | $(dep deploy_ms_median) ms (max $(dep deploy_ms_max)) | < 10 s | $(verdict "$(dep deploy_ms_median) < 10000") |
| create a bare container from the busybox test image (median of 5) | $(dep bare_create_ms_median) ms | < 1 s | $(verdict "$(dep bare_create_ms_median) < 1000") |
| archive (median of 3) | $(dep archive_ms_median) ms | < 5 s | $(verdict "$(dep archive_ms_median) < 5000") |
| restore, until the agent is connected again (median of 3) | $(dep restore_ms_median) ms | < 5 s | $(verdict "$(dep restore_ms_median) < 5000") |
| host RSS with $(dep agents) running agents | $(dep rss_mib_with_agents) MiB (idle: $(dep rss_mib_idle) MiB) | < 50 MiB | $(verdict "$(dep rss_mib_with_agents) < 50") |

## Disk quota monitor (issue 6)

| what | result | target | |
|---|---|---|---|
| \`POST /api/disk-quota/scan\` of $(dep agents) running agents (median of 5) | $(dep scan_ms_median) ms | < 1 s | $(verdict "$(dep scan_ms_median) < 1000") |
| host CPU while idle with $(dep agents) agents, monitor every 10 s (30× the default rate), 60 s | $(dep idle_cpu_percent) % of one core | < 1 % | $(verdict "$(dep idle_cpu_percent) < 1") |

How: \`taos-deploy-bench\` (tests/src/bin) deploys agents one after another through the API on a
release host and real incus (btrfs pool), archives and restores three of them, and reads the
host's \`VmRSS\`. The containers' own memory (about 27 MiB each for Debian with systemd) is incus's,
not the host's.
MD
log "wrote docs/benchmarks.md"
if [[ "${TAOS_BENCH_HOST_ONLY:-}" == 1 ]]; then
    if [[ -n "$KEPT_SECTIONS" ]]; then
        printf '\n%s\n' "$KEPT_SECTIONS" >> docs/benchmarks.md
    fi
    log "host only: kept the Web UI and Desktop app sections as they were"
    "$REPO_ROOT/scripts/bench-tools.sh"
    "$REPO_ROOT/scripts/bench-backup.sh"
    exit 0
fi
# The web UI's section (bundle size, first screen, a 5 000-message channel), in real chromium.
"$REPO_ROOT/scripts/bench-ui.sh"
# The desktop app (release build and .deb, cold start, idle memory, the offline cache).
"$REPO_ROOT/scripts/bench-app.sh"
# The packages (release build) on a clean Debian container: sizes, install, restart and reboot
# times, and the service's systemd-analyze exposure.
"$REPO_ROOT/scripts/build-deb.sh"
"$REPO_ROOT/scripts/install-test.sh" "$CARGO_TARGET_DIR/debian" --write-benchmarks
# The built-in tool agent (deploy, sidecar RSS, host cost per tool step), in real incus.
"$REPO_ROOT/scripts/bench-tools.sh"
# Backups: first and incremental, the host's responsiveness during one, a whole-host restore.
"$REPO_ROOT/scripts/bench-backup.sh"
