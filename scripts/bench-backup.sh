#!/usr/bin/env bash
# Benchmarks backups (issue 18) on a release taos-host with real incus, real restic, real
# LiteLLM and the fake upstream, and writes the "Backups" section of docs/benchmarks.md
# (scripts/bench.sh runs this after writing the rest; it also runs on its own):
#   - first and incremental backup of 5 deployed agents with chat and traces: time, repository size
#   - the host's RSS and CPU during the first backup, and chat post latency during it against
#     idle (target: p99 within 2× of idle)
#   - a whole-host restore into a fresh data dir and a fresh incus, until all 5 agents answer
#     (target: ≤ 10 min)
# The machine's load average is written next to the figures: the two cores are often shared.
# TAOS_BENCH_REUSE_IMAGE=1 keeps the local taos-agent image as it is (when others use it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/dev-litellm.sh"
"$REPO_ROOT/scripts/dev-incus.sh"
apt_install restic
log "building release binaries"
cargo build --release --locked -p taos-host -p taos-e2e -p taos-agent --bin taos-host \
    --bin taos-backup-bench --bin taos-agent --bin taos-recycle
if [[ "${TAOS_BENCH_REUSE_IMAGE:-}" == 1 ]] && incus image show taos-agent >/dev/null 2>&1; then
    log "keeping the taos-agent image as it is (TAOS_BENCH_REUSE_IMAGE=1)"
else
    "$REPO_ROOT/scripts/build-agent-image.sh" "$CARGO_TARGET_DIR/release/taos-agent"
fi
BIN="$CARGO_TARGET_DIR/release/taos-host"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "backups (load average $LOAD_BEFORE)"
JSON="$("$CARGO_TARGET_DIR/release/taos-backup-bench" "$BIN")"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "$JSON"
j() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$JSON" "$1"; }
verdict() { python3 -c "import sys; print('met' if eval(sys.argv[1]) else 'NOT met')" "$1"; }
RATIO="$(python3 -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 2))" \
    "$(j during_post_ms_p99)" "$(j idle_post_ms_p99)")"

# The p99 during each phase of the first backup, in the order the phases ran.
PHASES="$(python3 -c '
import json, sys
phases = json.loads(sys.argv[1])["during_by_phase"]
parts = []
for key, v in phases.items():
    name = key.split(":", 1)[1]
    parts.append("%s %s ms (%s s, %s posts)" % (name, v["p99"], v["s"], v["posts"]))
print("; ".join(parts))
' "$JSON")"

SECTION="$(cat <<MD
## Backups (issue 18)

Measured $(date -u +%Y-%m-%d) with the load average (1, 5, 15 min) at $LOAD_BEFORE before and
$LOAD_AFTER after, on $(nproc) cores; restic $(restic version | cut -d' ' -f2).

| what | result | target | |
|---|---|---|---|
| first backup of $(j agents) deployed agents (containers exported live), API start → \`succeeded\` | $(j first_s) s | — | |
| repository after the first backup (\`du\` of the folder, compressed and deduplicated) / the snapshot's files | $(j first_repo_mib) / $(j first_snapshot_mib) MiB | — | |
| incremental backup after a little more chat (one answer per agent, 50 posts) | $(j incremental_s) s (host CPU $(j incremental_host_cpu_s) s, restic $(j incremental_restic_cpu_s) s) | — | |
| incremental: new data restic stored, before compression / repository growth (\`du\`) | $(j incremental_added_mib) / $(j incremental_repo_growth_mib) MiB (repository $(j repo_mib) MiB) | — | |
| host RSS during the first backup: before / max (sampled every 50 ms) | $(j rss_mib_before) / $(j rss_mib_max_during) MiB | — | |
| host CPU during the first backup: the host's threads (serving the chat posts too) / restic (its child) | $(j host_cpu_s) s ($(j host_cpu_percent) % of one core) / $(j restic_cpu_s) s | — | |
| chat post p50 / p99, idle for 20 s before the backup ($(j idle_posts) posts) | $(j idle_post_ms_p50) / $(j idle_post_ms_p99) ms | — | |
| chat post p50 / p99 during the first backup ($(j during_posts) posts) | $(j during_post_ms_p50) / $(j during_post_ms_p99) ms ($RATIO× idle p99) | p99 ≤ 2× idle | $(verdict "$(j during_post_ms_p99) <= 2 * $(j idle_post_ms_p99)") |
| chat post p99 during each phase of the first backup (its length, posts sent in it) | $PHASES | — | |
| whole-host restore: \`taos-host restore\` (fresh data dir, $(j agents) containers imported) | $(j restore_cmd_s) s | — | |
| restore → LiteLLM ready / all $(j agents) agents answered (the host itself starts in $(j restore_host_start_ms) ms) | $(j restore_llm_ready_s) / $(j restore_to_answers_s) s | answers ≤ 10 min | $(verdict "$(j restore_to_answers_s) <= 600") |

How: \`taos-backup-bench <taos-host>\` (tests/src/bin) starts a release host with real LiteLLM and
the fake upstream, deploys $(j agents) \`direct\` agents into incus from the local \`taos-agent\`
image, and fills it: per agent $(j answered_per_agent) answered messages in its DM (LLM calls and their
trace events) and $(j room_messages_per_agent) messages in a group channel, plus $(j traces) trace events
from an external agent. The destination is a local folder (a USB disk's stand-in) on the same
disk. Before the first backup, one client posts chat messages one after another into a channel
of no agent and times each; during the backup the same client keeps posting, while the host's
\`VmRSS\` is sampled and its utime + stime (and its waited-for children's, restic's) are read
before and after; incus exports the containers in its own daemon, which neither counts. The
phase each post was sent in is the one the run's last \`backup.progress\` event on \`/api/events\` named. The
incremental follows a little more chat, with nothing else asking the host anything (its CPU
figure is the backup's own); every backup exports each container in full again (restic
deduplicates the tarballs), so an incremental's time is mostly incus's exports. While a person
posted in the last minute, exports give way to chat (\`paused_for_chat\`: after each, the next
waits nine times as long, or until nobody posts for a minute), so both backups' times include
those waits: the first one's client never stops posting, and the incremental starts within a
minute of the last answer. Then the host is stopped, its data dir and its agents'
containers deleted, \`taos-host restore --from <folder>\` run into a fresh data dir (it imports
and starts the containers), a host started on it, and each agent asked a question at once; the
time runs from the restore command to the last answer.
MD
)"
write_bench_section "## Backups (issue 18)" "$SECTION"
