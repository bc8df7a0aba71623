//! Container agents, timed against a release host and real incus: deploy to `running` (sidecar
//! connected) from the local `taos-agent` image, a bare busybox container create, archive and
//! restore, and host RSS with N running agents. Prints one JSON object.
//!
//! Usage: taos-deploy-bench <path to taos-host> [agents]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use taos_e2e::{Host, HostOptions};
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

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
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

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-deploy-bench <taos-host> [agents]");
    let count: usize = std::env::args()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    let rt = Incus::new(DEFAULT_SOCKET, None, "default");
    assert!(
        rt.available().await,
        "incus is not running (scripts/dev-incus.sh)"
    );

    // A run killed part way (Ctrl-C, a frozen machine) leaves its containers running; the next
    // run would collide with their names and measure a host sharing the CPU with them.
    for i in 0..count.max(5) {
        for name in [format!("taos-bench-{i}"), format!("taos-bench-bare-{i}")] {
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

    let host = Host::start_with(
        &bin,
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
    let pid = host.pid().expect("pid");
    let rss_idle = rss_mib(pid);

    let mut deploy_ms = Vec::new();
    let mut slugs = Vec::new();
    for i in 0..count {
        let started = Instant::now();
        let accepted: Value = host
            .admin(Method::POST, "/api/agents/deploy")
            .json(&json!({"name": format!("bench {i}"), "framework": "direct", "model": "m", "memory_limit_mib": 128, "disk_quota_gib": 1}))
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
        wait_deploy(&host, &slug).await;
        deploy_ms.push(started.elapsed().as_secs_f64() * 1000.0);
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
    let cpu_before = cpu_ticks(pid);
    let idle = Duration::from_secs(60);
    tokio::time::sleep(idle).await;
    let idle_cpu_percent =
        (cpu_ticks(pid) - cpu_before) as f64 / 100.0 / idle.as_secs_f64() * 100.0;

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
