//! Backups (issue 18), timed against a release host, real incus, real restic, real LiteLLM and
//! the fake upstream: five deployed agents with chat and traces are backed up to a local folder
//! (first and incremental: time and repository size), the host's memory and CPU are sampled and
//! chat posts timed while the first backup runs (against the same posts idle), and the whole host
//! is restored with `taos-host restore` into a fresh data dir and a fresh incus, timed until all
//! five agents answer again. Prints one JSON object.
//!
//! Usage: taos-backup-bench <path to taos-host>

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{ask_and_wait, deploy_succeeded, incus, require_image, wait_ready};
use taos_e2e::procstat;
use taos_e2e::{AgentClient, Host, HostOptions};
use taos_host::runtime::Runtime;

const AGENTS: usize = 5;
/// Messages stored per agent in its group channel (not addressed to it: stored, not answered).
const MESSAGES: usize = 300;
/// Messages each agent answers in its DM, through LiteLLM and the fake upstream.
const ANSWERED: usize = 5;
/// Trace events an external agent sends (the deployed agents' answers add their own).
const TRACES: usize = 5000;
/// How long chat posts are timed idle, before the first backup (about as long as a backup, so
/// both figures' p99 stand on as many posts).
const IDLE: Duration = Duration::from_secs(20);
const PASSPHRASE: &str = "a long backup passphrase for the bench";

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Chat latencies to the hundredth of a millisecond: their ratio is a goal, and at a tenth a
/// p99 near 1 ms moves it by 10 %.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The bytes under `path`, as `du` counts them (blocks on disk, what the user's disk loses).
fn du_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .expect("du");
    assert!(out.status.success(), "du {path:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du's figure")
}

fn mib(bytes: u64) -> f64 {
    round1(bytes as f64 / 1048576.0)
}

/// A chat post as a user makes it: the milliseconds from request to the 201.
async fn timed_post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    channel: &str,
    n: usize,
) -> f64 {
    let started = Instant::now();
    let r = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({"channel_id": channel, "content": format!("probe message {n}")}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED, "chat post refused");
    started.elapsed().as_secs_f64() * 1000.0
}

/// The posts timed during a backup grouped by the phase the backup was in when each was sent
/// (the host's `backup.progress` events): per phase, its seconds, posts, p50, p99 and worst.
fn by_phase(timed: &[(Instant, f64)], phases: &[(Instant, String)], started: Instant) -> Value {
    let mut out = serde_json::Map::new();
    for (i, (from, phase)) in phases.iter().enumerate() {
        let until = phases.get(i + 1).map(|(t, _)| *t);
        let mut ms: Vec<f64> = timed
            .iter()
            .filter(|(sent, _)| sent >= from && until.map(|u| *sent < u).unwrap_or(true))
            .map(|(_, ms)| *ms)
            .collect();
        if ms.is_empty() {
            continue;
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let end = until.unwrap_or_else(|| timed.last().map(|(t, _)| *t).unwrap_or(*from));
        out.insert(
            format!("{i}:{phase}"),
            json!({
                "from_s": round1(from.duration_since(started).as_secs_f64()),
                "s": round1(end.duration_since(*from).as_secs_f64()),
                "posts": ms.len(),
                "p50": round2(percentile(&ms, 50)),
                "p99": round2(percentile(&ms, 99)),
                "max": round2(*ms.last().unwrap()),
            }),
        );
    }
    Value::Object(out)
}

/// Starts a backup; returns its id.
async fn start_backup(host: &Host) -> String {
    let run: Value = host
        .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
        .await;
    run["id"].as_str().expect("run id").to_string()
}

/// Polls the run until it ends; expects it succeeded with every agent's container in it.
async fn wait_backup(host: &Host, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let run: Value = host.get(&format!("/api/backups/{id}")).await;
        match run["state"].as_str() {
            Some("succeeded") => {
                assert_eq!(run["containers"], AGENTS as u64, "{run}");
                assert_eq!(run["warnings"], json!([]), "{run}");
                return run;
            }
            Some("failed") => panic!("backup failed: {run}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "backup {id} never ended: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the incus containers a run killed part way left behind: the next run would collide
/// with their names and measure a host sharing the CPU with them.
async fn remove_leftovers() {
    let rt = incus();
    for i in 0..AGENTS {
        let name = format!("taos-bbench-{i}");
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

async fn delete_containers(slugs: &[String]) {
    let rt = incus();
    for slug in slugs {
        let name = format!("taos-{slug}");
        let _stopped = rt.stop(&name, true).await;
        rt.delete(&name).await.expect("delete the container");
    }
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-backup-bench <taos-host>");
    assert!(
        incus().available().await,
        "incus is not running (scripts/dev-incus.sh)"
    );
    require_image().await;
    remove_leftovers().await;

    let (_turn, mut host, _fake) = taos_e2e::fixtures::with_fake_provider(&bin, &[]).await;
    let pid = host.pid().expect("pid");

    // Five agents in incus; the guards delete their containers whatever happens below.
    let mut slugs = Vec::new();
    let mut guards = Vec::new();
    for i in 0..AGENTS {
        let (slug, guard) = deploy_succeeded(
            &host,
            json!({"name": format!("bbench {i}"), "framework": "direct", "model": "fake-gpt",
                   "memory_limit_mib": 256, "disk_quota_gib": 2}),
        )
        .await;
        slugs.push(slug);
        guards.push(guard);
    }
    eprintln!("deployed {slugs:?}");

    // Chat: each agent answers a few messages in its DM (LLM calls, trace events), and holds a
    // group channel of messages not addressed to it (stored, not answered).
    let client = host.client();
    let token = host.local_token();
    let post_url = host.url("/api/chat/messages");
    for (i, slug) in slugs.iter().enumerate() {
        for n in 0..ANSWERED {
            let answer = ask_and_wait(&host, slug, &format!("question {n}")).await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        }
        let channel: Value = host
            .post(
                "/api/chat/channels",
                &json!({"name": format!("bbench room {i}"), "members": [slug],
                        "settings": {"response_mode": "quiet"}}),
            )
            .await;
        let channel = channel["id"].as_str().expect("channel id").to_string();
        for n in 0..MESSAGES {
            timed_post(&client, &post_url, &token, &channel, n).await;
        }
    }
    // Traces: an external agent's batches, a few hundred bytes each.
    let (tracer, _) = AgentClient::create(&host, "bbench tracer").await;
    let events: Vec<Value> = (0..TRACES)
        .map(|i| {
            json!({"id": format!("bb-{i:05}"), "trace_id": format!("t-{}", i / 10),
                   "kind": if i % 2 == 0 { "tool_call" } else { "llm_call" },
                   "tokens_in": 120, "tokens_out": 40,
                   "payload": {"tool": "search", "query": format!("query number {i}"), "ok": true}})
        })
        .collect();
    for batch in events.chunks(500) {
        let r = tracer
            .request(Method::POST, "/api/trace/batch")
            .json(&json!({ "events": batch }))
            .send()
            .await
            .expect("trace batch");
        assert_eq!(r.status(), StatusCode::OK, "trace batch refused");
    }
    eprintln!("chat and traces in");

    // A local folder (a USB disk's stand-in) outside the data dir, and the passphrase's file.
    let outside = tempfile::tempdir().expect("temp dir");
    let repo = outside.path().join("usb").join("taos-backups");
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    let password_file = outside.path().join("passphrase");
    std::fs::write(&password_file, PASSPHRASE).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _: Value = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({
                "destination": {"kind": "local", "path": repo.display().to_string()},
                "passphrase": PASSPHRASE,
            })),
            StatusCode::OK,
        )
        .await;

    // Chat posts idle, into a channel of no agent (so nothing answers them).
    let probe: Value = host
        .post("/api/chat/channels", &json!({"name": "bbench probe"}))
        .await;
    let probe = probe["id"].as_str().expect("probe id").to_string();
    let mut idle = Vec::new();
    let idle_started = Instant::now();
    while idle_started.elapsed() < IDLE {
        idle.push(timed_post(&client, &post_url, &token, &probe, idle.len()).await);
    }
    idle.sort_by(|a, b| a.total_cmp(b));

    // The first backup, with the host's RSS sampled and chat posts timed while it runs.
    let rss_before = rss_kib(pid);
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while running.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let poster = {
        let running = running.clone();
        let (client, token, url, probe) = (
            client.clone(),
            token.clone(),
            post_url.clone(),
            probe.clone(),
        );
        tokio::spawn(async move {
            // (when it was sent, since the backup started; its milliseconds)
            let mut during = Vec::new();
            let mut n = 1_000_000;
            while running.load(Ordering::Relaxed) {
                let sent = Instant::now();
                during.push((sent, timed_post(&client, &url, &token, &probe, n).await));
                n += 1;
            }
            during
        })
    };
    // The backup's phases as /api/events tells them, to see which part the slow posts fall in.
    let mut events = taos_e2e::SseReader::new(
        host.admin(Method::GET, "/api/events")
            // The client's 30 s would end the stream while a backup that gives way to
            // chat is still running.
            .timeout(Duration::from_secs(1800))
            .send()
            .await
            .expect("events"),
    );
    let phases = tokio::spawn(async move {
        let mut phases: Vec<(Instant, String)> = Vec::new();
        while let Some(event) = events.next(Duration::from_secs(1800)).await {
            let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
            match event.event.as_deref() {
                Some("backup.progress") => {
                    let phase = data["data"]["phase"].as_str().unwrap_or("?").to_string();
                    if phases.last().map(|(_, p)| p != &phase).unwrap_or(true) {
                        phases.push((Instant::now(), phase));
                    }
                }
                Some("backup.finished") => break,
                _ => {}
            }
        }
        phases
    });
    let (cpu_before, children_before) = procstat::cpu_ticks(pid);
    let started = Instant::now();
    let id = start_backup(&host).await;
    let first = wait_backup(&host, &id).await;
    let first_s = started.elapsed().as_secs_f64();
    let (cpu_after, children_after) = procstat::cpu_ticks(pid);
    running.store(false, Ordering::Relaxed);
    let rss_max = sampler.await.expect("sampler");
    let timed = poster.await.expect("poster");
    let phases = phases.await.expect("phases");
    let by_phase = by_phase(&timed, &phases, started);
    let mut during: Vec<f64> = timed.iter().map(|(_, ms)| *ms).collect();
    during.sort_by(|a, b| a.total_cmp(b));
    let repo_first = du_bytes(&repo);
    eprintln!("first backup: {first}");

    // A little more chat, then the incremental.
    for (i, slug) in slugs.iter().enumerate() {
        let answer = ask_and_wait(&host, slug, &format!("after the first backup {i}")).await;
        assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    }
    for n in 0..50 {
        timed_post(&client, &post_url, &token, &probe, 100_000 + n).await;
    }
    // Nothing else asks the host anything while this one runs: its CPU is the backup's own.
    let (inc_cpu_before, inc_children_before) = procstat::cpu_ticks(pid);
    let started = Instant::now();
    let id = start_backup(&host).await;
    let second = wait_backup(&host, &id).await;
    let second_s = started.elapsed().as_secs_f64();
    let (inc_cpu_after, inc_children_after) = procstat::cpu_ticks(pid);
    let repo_second = du_bytes(&repo);
    eprintln!("incremental backup: {second}");

    // The restore: the host stopped, its data dir and its agents' containers gone (a new
    // board), `taos-host restore` into a fresh data dir, a host started on it, until every
    // agent answers.
    let dms: Vec<String> = {
        let mut dms = Vec::new();
        for slug in &slugs {
            let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
            dms.push(agent["dm_channel_id"].as_str().expect("dm").to_string());
        }
        dms
    };
    assert_eq!(host.terminate().await.expect("stop the host"), Some(0));
    std::fs::remove_dir_all(&host.data_dir).expect("remove the old data dir");
    delete_containers(&slugs).await;
    let fresh_temp = tempfile::tempdir().expect("temp dir");
    let fresh = fresh_temp.path().join("data");
    let started = Instant::now();
    let restored = tokio::process::Command::new(&bin)
        .arg("--data-dir")
        .arg(&fresh)
        .arg("restore")
        .arg("--from")
        .arg(&repo)
        .arg("--password-file")
        .arg(&password_file)
        .output()
        .await
        .expect("taos-host restore");
    assert!(
        restored.status.success(),
        "restore: {} {}",
        String::from_utf8_lossy(&restored.stdout),
        String::from_utf8_lossy(&restored.stderr)
    );
    let restore_cmd_s = started.elapsed().as_secs_f64();
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(
        said.contains(&format!("{AGENTS} agent container(s) imported")),
        "{said}"
    );
    let restored_host = Host::start_with(
        &bin,
        HostOptions {
            data_dir: Some(fresh.clone()),
            env: Vec::new(),
        },
    )
    .await
    .expect("the restored host starts");
    let host_ready_s = started.elapsed().as_secs_f64();
    wait_ready(&restored_host, &taos_e2e::fixtures::FAKE_MODELS).await;
    let llm_ready_s = started.elapsed().as_secs_f64();
    let answers = slugs
        .iter()
        .map(|slug| ask_and_wait(&restored_host, slug, "after the restore"));
    for answer in futures::future::join_all(answers).await {
        assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    }
    let answer_s = started.elapsed().as_secs_f64();
    // The history came back: each DM holds the answered turns of before the backup.
    for dm in &dms {
        let messages: Vec<Value> = restored_host
            .get(&format!(
                "/api/chat/channels/{dm}/messages?after_seq=0&limit=500"
            ))
            .await;
        assert!(messages.len() > 2 * ANSWERED, "{dm}: {}", messages.len());
    }
    drop(restored_host);
    // The restored containers carry the same names: the guards delete them.
    drop(guards);

    let ticks = (cpu_after - cpu_before) as f64;
    let child_ticks = (children_after - children_before) as f64;
    println!(
        "{}",
        json!({
            "agents": AGENTS,
            "room_messages_per_agent": MESSAGES,
            "answered_per_agent": ANSWERED,
            "traces": TRACES,
            "first_s": round1(first_s),
            "first_repo_mib": mib(repo_first),
            "first_snapshot_mib": mib(first["total_bytes"].as_u64().unwrap_or(0)),
            "incremental_s": round1(second_s),
            "incremental_added_mib": mib(second["data_added"].as_u64().unwrap_or(0)),
            "incremental_repo_growth_mib": mib(repo_second.saturating_sub(repo_first)),
            "repo_mib": mib(repo_second),
            "incremental_host_cpu_s": round1((inc_cpu_after - inc_cpu_before) as f64 / 100.0),
            "incremental_restic_cpu_s": round1((inc_children_after - inc_children_before) as f64 / 100.0),
            "rss_mib_before": round1(rss_before as f64 / 1024.0),
            "rss_mib_max_during": round1(rss_max as f64 / 1024.0),
            // Ticks are 10 ms; the host's own threads, and restic (its child, waited for).
            "host_cpu_s": round1(ticks / 100.0),
            "host_cpu_percent": round1(ticks / 100.0 / first_s * 100.0),
            "restic_cpu_s": round1(child_ticks / 100.0),
            "idle_posts": idle.len(),
            "idle_post_ms_p50": round2(percentile(&idle, 50)),
            "idle_post_ms_p99": round2(percentile(&idle, 99)),
            "during_posts": during.len(),
            "during_post_ms_p50": round2(percentile(&during, 50)),
            "during_post_ms_p99": round2(percentile(&during, 99)),
            "during_by_phase": by_phase,
            "restore_cmd_s": round1(restore_cmd_s),
            "restore_host_start_ms": ((host_ready_s - restore_cmd_s) * 1000.0).round(),
            "restore_llm_ready_s": round1(llm_ready_s),
            "restore_to_answers_s": round1(answer_s),
        })
    );
}
