#!/usr/bin/env bash
# Benchmarks the built-in tool agent (`tools` framework, issue 16) on a release taos-host and
# real incus, and writes the "Built-in tool agent" section of docs/benchmarks.md
# (scripts/bench.sh runs this after writing the rest; it also runs on its own):
#   - deploy → `running` from the local taos-agent image (target: ≤ 5 s)
#   - the sidecar's idle RSS inside its container (target: ≤ 10 MiB)
#   - what the host spends on one tool step, without the model (target: < 20 ms)
# and the "openclaw" and "opencode" sections: deploy time (openclaw's target: ≤ 30 s) and the
# container's memory, idle and after a few turns (the manifest's ram_mb is the picker's
# requirement).
# The machine's load average is written next to the figures: the two cores are often shared.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/dev-incus.sh"
log "building release binaries and the agent image"
cargo build --release --locked -p taos-host -p taos-e2e -p taos-agent --bin taos-host \
    --bin taos-deploy-bench --bin taos-agent --bin taos-recycle
"$REPO_ROOT/scripts/build-agent-image.sh" "$CARGO_TARGET_DIR/release/taos-agent"
BIN="$CARGO_TARGET_DIR/release/taos-host"

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "the built-in tool agent (load average $LOAD_BEFORE)"
JSON="$("$CARGO_TARGET_DIR/release/taos-deploy-bench" "$BIN" tools)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "$JSON"
j() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$JSON" "$1"; }
verdict() { python3 -c "import sys; print('met' if eval(sys.argv[1]) else 'NOT met')" "$1"; }

SECTION="$(cat <<MD
## Built-in tool agent (issue 16)

Measured $(date -u +%Y-%m-%d) with the load average (1, 5, 15 min) at $LOAD_BEFORE before and
$LOAD_AFTER after, on $(nproc) cores.

| what | result | target | |
|---|---|---|---|
| deploy → \`running\` (sidecar connected), \`tools\` framework, local \`taos-agent\` image (median of $(j tools_deploys)) | $(j tools_deploy_ms_median) ms (max $(j tools_deploy_ms_max)) | ≤ 5 s | $(verdict "$(j tools_deploy_ms_median) <= 5000") |
| sidecar (\`taos-agent\`, tools mode) RSS inside its container, idle and connected (median of $(j tools_deploys)) | $(j sidecar_rss_mib_median) MiB (max $(j sidecar_rss_mib_max)) | ≤ 10 MiB | $(verdict "$(j sidecar_rss_mib_median) <= 10") |
| host time per tool step: the \`tool_call\` and \`tool_result\` replies (trace events, the answer's \`metadata.tools\`, chat events), round trip, median / p99 of $(j tool_steps) | $(j tool_step_ms_median) / $(j tool_step_ms_p99) ms | < 20 ms | $(verdict "$(j tool_step_ms_p99) < 20") |
| host CPU per tool step (utime + stime over the same steps) | $(j tool_step_host_cpu_ms) ms | < 20 ms | $(verdict "$(j tool_step_host_cpu_ms) < 20") |

How: \`taos-deploy-bench <taos-host> tools\` (tests/src/bin) deploys $(j tools_deploys) \`tools\` agents one
after another on a release host (no LiteLLM: nothing here calls a model), waits 10 s, and reads
the \`taos-agent\` process's \`VmRSS\` in each container. For the step cost the bench itself plays the
sidecar of an agent: per turn, 20 steps of a \`tool_call\` and its \`tool_result\` reply, as the
sidecar sends them, so the model's time is not in the figure at all. Each step's model call also
crosses the LLM gateway, whose added latency is the LLM gateway section's figure.
MD
)"

write_bench_section "## Built-in tool agent (issue 16)" "$SECTION"

"$REPO_ROOT/scripts/install-openclaw.sh"
"$REPO_ROOT/scripts/build-openclaw-image.sh"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "openclaw (load average $LOAD_BEFORE)"
JSON="$("$CARGO_TARGET_DIR/release/taos-deploy-bench" "$BIN" openclaw)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "$JSON"
REQUIRED_MIB="$(awk -F'= *' '/^ram_mb/ {print $2; exit}' manifests/openclaw/*.toml)"
SECTION="$(cat <<MD
## openclaw (issue 16)

Measured $(date -u +%Y-%m-%d) with the load average (1, 5, 15 min) at $LOAD_BEFORE before and
$LOAD_AFTER after, on $(nproc) cores.

| what | result | target | |
|---|---|---|---|
| deploy → \`running\` (sidecar connected), \`openclaw\` framework, local \`taos-openclaw\` image (median of $(j openclaw_deploys)) | $(j openclaw_deploy_ms_median) ms (max $(j openclaw_deploy_ms_max)) | ≤ 30 s | $(verdict "$(j openclaw_deploy_ms_median) <= 30000") |
| container memory idle, 30 s after the deploy: anonymous / with page cache (median of $(j openclaw_deploys)) | $(j openclaw_idle_anon_mib_median) / $(j openclaw_idle_current_mib_median) MiB | below the manifest's $REQUIRED_MIB MiB | $(verdict "$(j openclaw_idle_anon_mib_median) < $REQUIRED_MIB") |
| container memory after $(j openclaw_turns) turns: anonymous / with page cache / peak | $(j openclaw_turns_anon_mib) / $(j openclaw_turns_current_mib) / $(j openclaw_peak_mib) MiB | below the manifest's $REQUIRED_MIB MiB | $(verdict "$(j openclaw_turns_anon_mib) < $REQUIRED_MIB") |
| first answer after the deploy / later answers (median), fake upstream answering at once | $(j openclaw_first_answer_ms) / $(j openclaw_later_answer_ms_median) ms | — | |

How: \`taos-deploy-bench <taos-host> openclaw\` (tests/src/bin) starts a release host with real
LiteLLM and the fake upstream, deploys $(j openclaw_deploys) openclaw agents one after another
(each removed before the next), reads the container's memory 30 s after each deploy (incus's
usage, which counts page cache, and the cgroup's anonymous memory, which is what the processes
hold), then says $(j openclaw_turns) messages to the last one and reads it again. The manifest's
\`ram_mb\` ($REQUIRED_MIB) is the picker's requirement and the default memory limit: it leaves room
for the anonymous figure after turns plus page cache.
MD
)"
write_bench_section "## openclaw (issue 16)" "$SECTION"

"$REPO_ROOT/scripts/build-opencode-image.sh"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "opencode (load average $LOAD_BEFORE)"
JSON="$("$CARGO_TARGET_DIR/release/taos-deploy-bench" "$BIN" opencode)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "$JSON"
REQUIRED_MIB="$(awk -F'= *' '/^ram_mb/ {print $2; exit}' manifests/opencode/*.toml)"
SECTION="$(cat <<MD
## opencode (issue 16)

Measured $(date -u +%Y-%m-%d) with the load average (1, 5, 15 min) at $LOAD_BEFORE before and
$LOAD_AFTER after, on $(nproc) cores.

| what | result | target | |
|---|---|---|---|
| deploy → \`running\` (sidecar connected), \`opencode\` framework, local \`taos-opencode\` image (median of $(j opencode_deploys)) | $(j opencode_deploy_ms_median) ms (max $(j opencode_deploy_ms_max)) | ≤ 30 s (openclaw's) | $(verdict "$(j opencode_deploy_ms_median) <= 30000") |
| container memory idle, 30 s after the deploy (opencode not started yet): anonymous / with page cache (median of $(j opencode_deploys)) | $(j opencode_idle_anon_mib_median) / $(j opencode_idle_current_mib_median) MiB | below the manifest's $REQUIRED_MIB MiB | $(verdict "$(j opencode_idle_anon_mib_median) < $REQUIRED_MIB") |
| container memory after $(j opencode_turns) turns: anonymous / with page cache / peak | $(j opencode_turns_anon_mib) / $(j opencode_turns_current_mib) / $(j opencode_peak_mib) MiB | below the manifest's $REQUIRED_MIB MiB | $(verdict "$(j opencode_turns_anon_mib) < $REQUIRED_MIB") |
| first answer after the deploy (starts opencode) / later answers (median), fake upstream answering at once | $(j opencode_first_answer_ms) / $(j opencode_later_answer_ms_median) ms | — | |

How: \`taos-deploy-bench <taos-host> opencode\` (tests/src/bin), as for openclaw: a release host
with real LiteLLM and the fake upstream, $(j opencode_deploys) opencode agents deployed one after
another (each removed before the next), the container's memory read 30 s after each deploy and
again after $(j opencode_turns) messages to the last one. The sidecar starts opencode on the first
message, so the idle figure is the container without it and the first answer includes its start.
MD
)"
write_bench_section "## opencode (issue 16)" "$SECTION"
