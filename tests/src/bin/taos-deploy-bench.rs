//! Container agents, timed against a release host and real incus: deploy to `running` (sidecar
//! connected) from the local `taos-agent` image, a bare busybox container create, archive and
//! restore, and host RSS with N running agents. Prints one JSON object.
//!
//! With `tools` instead of a count it measures the built-in tool agent instead (issue 16): its
//! deploy time, the sidecar's idle RSS inside its container, and the host's cost per tool step.
//!
//! With `openclaw` or `opencode` it measures that framework (issue 16): deploy time from its
//! local image (`taos-openclaw`, `taos-opencode`), the container's memory idle and after a few
//! turns (through real LiteLLM and the fake upstream), and the first answer's latency.
//!
//! Usage: taos-deploy-bench <path to taos-host> [agents | tools | openclaw | opencode]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use taos_e2e::procstat;
use taos_e2e::{AgentClient, Host, HostOptions};
use taos_host::runtime::incus::{Incus, DEFAULT_SOCKET};
use taos_host::runtime::{CreateSpec, Runtime};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2] * 10.0).round() / 10.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}

async fn wait_deploy(host: &Host, slug: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status: Value = host
            .admin(Method::GET, &format!("/api/agents/{slug}/deploy"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        match status["status"].as_str() {
            Some("succeeded") => return,
            Some("running") => {}
            _ => panic!("deploy of {slug} failed: {status}"),
        }
        assert!(Instant::now() < deadline, "deploy of {slug} too slow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A release host without LiteLLM, with one provider for deploys to name (never called).
async fn bench_host(bin: &str) -> Host {
    let host = Host::start_with(
        bin,
        HostOptions {
            env: vec![("TAOS_LLM__LITELLM_BIN".into(), "/nonexistent".into())],
            ..Default::default()
        },
    )
    .await
    .expect("host");
    host.setup_owner().await;
    host.admin(Method::POST, "/api/providers")
        .json(&json!({"name": "stub", "type": "openai-compatible", "url": "http://127.0.0.1:9/v1", "models": [{"id": "m"}]}))
        .send()
        .await
        .expect("provider");
    host
}

/// The `taos-agent` process's VmRSS inside `container`, in MiB.
fn sidecar_rss_mib(container: &str) -> f64 {
    let out = std::process::Command::new("incus")
        .args([
            "exec",
            container,
            "--",
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = taos-agent ] && \
             awk '/^VmRSS:/ {print $2}' $p/status; done; true",
        ])
        .output()
        .expect("incus exec");
    let kib: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no taos-agent in {container}: {out:?}"));
    (kib / 1024.0 * 10.0).round() / 10.0
}

/// Deploys a small agent and waits for it: its slug and the milliseconds from request to ready.
async fn deploy_timed(host: &Host, name: &str, framework: &str) -> (String, f64) {
    let started = Instant::now();
    let accepted: Value = host
        .admin(Method::POST, "/api/agents/deploy")
        .json(&json!({"name": name, "framework": framework, "model": "m", "memory_limit_mib": 128, "disk_quota_gib": 1}))
        .send()
        .await
        .expect("deploy")
        .json()
        .await
        .expect("json");
    let slug = accepted["agent"]["slug"]
        .as_str()
        .expect("slug")
        .to_string();
    wait_deploy(host, &slug).await;
    (slug, started.elapsed().as_secs_f64() * 1000.0)
}

/// The built-in tool agent: deploy time from the local image, the sidecar's idle RSS in its
/// container, and what the host spends on each tool step (without the model).
async fn built_in_agent(bin: &str) {
    const DEPLOYS: usize = 5;
    const TURNS: usize = 10;
    const STEPS: usize = 20;
    let host = bench_host(bin).await;
    let pid = host.pid().expect("pid");

    let mut deploy_ms = Vec::new();
    let mut slugs = Vec::new();
    for i in 0..DEPLOYS {
        let (slug, ms) = deploy_timed(&host, &format!("tools bench {i}"), "tools").await;
        deploy_ms.push(ms);
        slugs.push(slug);
    }
    // Idle: connected, nothing to answer.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sidecar_rss: Vec<f64> = slugs
        .iter()
        .map(|slug| sidecar_rss_mib(&format!("taos-{slug}")))
        .collect();
    for slug in &slugs {
        let _ = std::process::Command::new("incus")
            .args(["delete", "--force", &format!("taos-{slug}")])
            .output();
    }

    // A tool step as the host sees it: the sidecar's `tool_call` and `tool_result` replies
    // (each a trace event, a step on the answer's `metadata.tools` and a chat event). This
    // process plays the sidecar, so the model's time is not in it at all; each step's model
    // call also crosses the LLM gateway, whose added latency is the LLM section's figure.
    let (agent, record) = AgentClient::create(&host, "Stepper").await;
    let dm = record["dm_channel_id"].as_str().expect("dm").to_string();
    let mut events = agent.events(None).await;
    let reply = |body: Value| {
        let request = agent.request(
            Method::POST,
            &format!("/api/openclaw/sessions/{}/reply", agent.slug),
        );
        async move {
            let r = request.json(&body).send().await.expect("reply");
            assert!(r.status().is_success(), "reply refused: {}", r.status());
        }
    };
    let mut step_ms = Vec::new();
    let mut cpu_ticks_steps = 0;
    for turn in 0..TURNS {
        let sent = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": format!("turn {turn}")}))
            .send()
            .await
            .expect("post");
        assert!(sent.status().is_success());
        let delivery = loop {
            let event = events
                .next(Duration::from_secs(30))
                .await
                .expect("delivery");
            if event.event.as_deref() == Some("user_message") {
                break event;
            }
        };
        let delivery: Value = serde_json::from_str(&delivery.data).expect("delivery json");
        let trace_id = delivery["trace_id"].as_str().expect("trace_id").to_string();
        let before = procstat::cpu_ticks(pid).0;
        for n in 0..STEPS {
            let call_id = format!("call-{turn}-{n}");
            let started = Instant::now();
            reply(
                json!({"kind": "tool_call", "trace_id": trace_id, "channel_id": dm,
                "call_id": call_id, "tool": "shell", "args": {"command": "du -sh ~"}}),
            )
            .await;
            reply(
                json!({"kind": "tool_result", "trace_id": trace_id, "channel_id": dm,
                "call_id": call_id, "tool": "shell", "success": true,
                "result": {"exit_code": 0, "stdout": "1.2M\t/home/agent\n", "stderr": ""}}),
            )
            .await;
            step_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        cpu_ticks_steps += procstat::cpu_ticks(pid).0 - before;
        reply(json!({"kind": "final", "trace_id": trace_id, "channel_id": dm, "content": "done"}))
            .await;
    }
    let steps = (TURNS * STEPS) as f64;
    let mut sorted = step_ms;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    println!(
        "{}",
        json!({
            "tools_deploys": DEPLOYS,
            "tools_deploy_ms_median": median(deploy_ms.clone()),
            "tools_deploy_ms_max": (deploy_ms.iter().cloned().fold(0.0, f64::max) * 10.0).round() / 10.0,
            "sidecar_rss_mib_median": median(sidecar_rss.clone()),
            "sidecar_rss_mib_max": sidecar_rss.iter().cloned().fold(0.0, f64::max),
            "tool_steps": TURNS * STEPS,
            "tool_step_ms_median": (sorted[sorted.len() / 2] * 100.0).round() / 100.0,
            "tool_step_ms_p99": (p99 * 100.0).round() / 100.0,
            // utime + stime ticks are 10 ms each.
            "tool_step_host_cpu_ms": (cpu_ticks_steps as f64 * 10.0 / steps * 100.0).round() / 100.0,
        })
    );
}

/// A container's memory: (use, anonymous memory), in MiB. Use is incus's figure (the cgroup's
/// usage, page cache included, which the kernel can take back); anonymous memory is what the
/// processes really hold (cgroup v2 `anon`, v1 `total_rss`), the figure a limit must leave
/// room for.
fn container_memory_mib(container: &str) -> (f64, f64) {
    let usage = incus_memory(container)["usage"]
        .as_f64()
        .unwrap_or_else(|| panic!("no memory usage for {container}"));
    let stat = [
        ("/sys/fs/cgroup/memory.stat", "anon "),
        ("/sys/fs/cgroup/memory/memory.stat", "total_rss "),
    ]
    .iter()
    .find_map(|(file, key)| {
        container_file(container, file)
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
    .unwrap_or_else(|| panic!("no anonymous memory figure in {container}'s memory.stat"));
    (mib(usage), mib(stat))
}

/// incus's memory figures for a container (`usage`, `usage_peak`, bytes).
fn incus_memory(container: &str) -> Value {
    let out = std::process::Command::new("incus")
        .args(["query", &format!("/1.0/instances/{container}/state")])
        .output()
        .expect("incus query");
    let state: Value = serde_json::from_slice(&out.stdout).expect("instance state");
    state["memory"].clone()
}

fn mib(bytes: f64) -> f64 {
    (bytes / 1048576.0).round()
}

fn container_file(container: &str, file: &str) -> String {
    let out = std::process::Command::new("incus")
        .args(["exec", container, "--", "cat", file])
        .output()
        .expect("incus exec");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn delete_container(container: &str) {
    let _ = std::process::Command::new("incus")
        .args(["delete", "--force", container])
        .output();
}

/// Says `text` in `dm` and waits for `slug`'s settled answer: the milliseconds it took.
async fn answer_ms(host: &Host, dm: &str, slug: &str, text: &str) -> f64 {
    let started = Instant::now();
    let sent: Value = host
        .post(
            "/api/chat/messages",
            &json!({"channel_id": dm, "content": text}),
        )
        .await;
    let trace_id = sent["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let messages: Vec<Value> = host
            .get(&format!(
                "/api/chat/channels/{dm}/messages?after_seq={}&limit=500",
                sent["seq"]
            ))
            .await;
        if let Some(m) = messages.iter().find(|m| {
            m["author_id"] == slug
                && m["metadata"]["trace_id"] == trace_id.as_str()
                && m["state"] != "streaming"
        }) {
            assert_eq!(m["state"], "complete", "{slug} failed to answer: {m}");
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(Instant::now() < deadline, "{slug} did not answer {text:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A framework with an image of its own (openclaw, opencode): deploy time from the local
/// image, the container's memory idle (30 s after the deploy) and after turns, and the answers'
/// latency through LiteLLM and the fake upstream (whose reply is immediate, so the figure is
/// the framework's and the gateway's). The JSON's keys start with the framework's id.
async fn framework_agent(bin: &str, framework: &str) {
    const DEPLOYS: usize = 3;
    const TURNS: usize = 3;
    let (_turn, host, _fake) = taos_e2e::fixtures::with_fake_provider(bin, &[]).await;
    let mut deploy_ms = Vec::new();
    let mut idle_current = Vec::new();
    let mut idle_anon = Vec::new();
    let mut last = None;
    for i in 0..DEPLOYS {
        let started = Instant::now();
        let accepted: Value = host
            .admin(Method::POST, "/api/agents/deploy")
            .json(&json!({"name": format!("{framework} bench {i}"), "framework": framework, "model": "fake-gpt"}))
            .send()
            .await
            .expect("deploy")
            .json()
            .await
            .expect("json");
        let slug = accepted["agent"]["slug"]
            .as_str()
            .unwrap_or_else(|| panic!("deploy refused: {accepted}"))
            .to_string();
        wait_deploy(&host, &slug).await;
        deploy_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let container = format!("taos-{slug}");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (current, anon) = container_memory_mib(&container);
        idle_current.push(current);
        idle_anon.push(anon);
        if i + 1 < DEPLOYS {
            delete_container(&container);
        } else {
            last = Some(slug);
        }
    }
    let slug = last.expect("a deployed agent");
    let container = format!("taos-{slug}");
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().expect("dm").to_string();
    let mut answers = Vec::new();
    for t in 0..TURNS {
        answers.push(answer_ms(&host, &dm, &slug, &format!("turn {t}: hello")).await);
    }
    let (turns_current, turns_anon) = container_memory_mib(&container);
    let peak = mib(incus_memory(&container)["usage_peak"]
        .as_f64()
        .unwrap_or(f64::NAN));
    delete_container(&container);
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let figures = json!({
        "deploys": DEPLOYS,
        "deploy_ms_median": median(deploy_ms.clone()).round(),
        "deploy_ms_max": max(&deploy_ms).round(),
        "idle_current_mib_median": median(idle_current),
        "idle_anon_mib_median": median(idle_anon),
        "turns": TURNS,
        "first_answer_ms": answers[0].round(),
        "later_answer_ms_median": median(answers[1..].to_vec()).round(),
        "turns_current_mib": turns_current,
        "turns_anon_mib": turns_anon,
        "peak_mib": peak,
    });
    let named: serde_json::Map<String, Value> = figures
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| (format!("{framework}_{k}"), v.clone()))
        .collect();
    println!("{}", Value::Object(named));
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-deploy-bench <taos-host> [agents | tools | openclaw | opencode]");
    let rt = Incus::new(DEFAULT_SOCKET, None, "default");
    assert!(
        rt.available().await,
        "incus is not running (scripts/dev-incus.sh)"
    );
    let count: usize = std::env::args()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);

    // A run killed part way (Ctrl-C, a frozen machine) leaves its containers running; the next
    // run would collide with their names and measure a host sharing the CPU with them.
    for i in 0..count.max(5) {
        for name in [
            format!("taos-bench-{i}"),
            format!("taos-bench-bare-{i}"),
            format!("taos-tools-bench-{i}"),
            format!("taos-openclaw-bench-{i}"),
            format!("taos-opencode-bench-{i}"),
        ] {
            if !rt.exists(&name).await.unwrap_or(false) {
                continue;
            }
            // Stop fails on a stopped container; the delete that follows is what counts.
            let _stopped = rt.stop(&name, true).await;
            if rt.delete(&name).await.is_ok() {
                eprintln!("removed {name}, left by an earlier run");
            }
        }
    }

    if std::env::args().nth(2).as_deref() == Some("tools") {
        built_in_agent(&bin).await;
        return;
    }
    if let Some(framework @ ("openclaw" | "opencode")) = std::env::args().nth(2).as_deref() {
        framework_agent(&bin, framework).await;
        return;
    }

    // A bare busybox container.
    let mut bare = Vec::new();
    for i in 0..5 {
        let name = format!("taos-bench-bare-{i}");
        let started = Instant::now();
        rt.create(&CreateSpec {
            name: name.clone(),
            image: "busybox".into(),
            ..Default::default()
        })
        .await
        .expect("create");
        bare.push(started.elapsed().as_secs_f64() * 1000.0);
        rt.delete(&name).await.expect("delete");
    }

    let host = bench_host(&bin).await;
    let pid = host.pid().expect("pid");
    let rss_idle = rss_mib(pid);

    let mut deploy_ms = Vec::new();
    let mut slugs = Vec::new();
    for i in 0..count {
        let (slug, ms) = deploy_timed(&host, &format!("bench {i}"), "direct").await;
        deploy_ms.push(ms);
        slugs.push(slug);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_agents = rss_mib(pid);

    // Disk quota: a scan of every agent, then the host's CPU while idle with the monitor on.
    let mut scan_ms = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let scan: Value = host
            .admin(Method::POST, "/api/disk-quota/scan")
            .send()
            .await
            .expect("scan")
            .json()
            .await
            .expect("json");
        assert_eq!(scan["scanned"].as_u64(), Some(count as u64), "{scan}");
        scan_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu_before = procstat::cpu_ticks(pid).0;
    let idle = Duration::from_secs(60);
    tokio::time::sleep(idle).await;
    let idle_cpu_percent =
        (procstat::cpu_ticks(pid).0 - cpu_before) as f64 / 100.0 / idle.as_secs_f64() * 100.0;

    let mut archive_ms = Vec::new();
    let mut restore_ms = Vec::new();
    for slug in slugs.iter().take(3) {
        let started = Instant::now();
        let archived: Value = host
            .admin(Method::DELETE, &format!("/api/agents/{slug}"))
            .send()
            .await
            .expect("archive")
            .json()
            .await
            .expect("json");
        archive_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let restored = host
            .admin(
                Method::POST,
                &format!(
                    "/api/agents/archived/{}/restore",
                    archived["id"].as_str().expect("id")
                ),
            )
            .send()
            .await
            .expect("restore");
        assert!(restored.status().is_success(), "restore failed");
        restore_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    // Clean up every container this run made.
    for slug in &slugs {
        let _ = std::process::Command::new("incus")
            .args(["delete", "--force", &format!("taos-{slug}")])
            .output();
    }
    println!(
        "{}",
        json!({
            "bare_create_ms_median": median(bare),
            "deploy_ms_median": median(deploy_ms.clone()),
            "deploy_ms_max": (deploy_ms.iter().cloned().fold(0.0, f64::max) * 10.0).round() / 10.0,
            "archive_ms_median": median(archive_ms),
            "restore_ms_median": median(restore_ms),
            "agents": count,
            "rss_mib_idle": rss_idle,
            "scan_ms_median": median(scan_ms),
            "idle_cpu_percent": (idle_cpu_percent * 100.0).round() / 100.0,
            "rss_mib_with_agents": rss_agents,
        })
    );
}
