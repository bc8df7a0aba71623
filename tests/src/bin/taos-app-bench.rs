//! The desktop app, measured: opening a cached 5 000-message channel (the cache reopened, as at
//! app start), cold start of the built app to its first screen through WebDriver, and the idle
//! memory of the app's processes. Prints one JSON object. Run by scripts/bench-app.sh, which
//! provides the display, D-Bus session and tauri-driver.
//!
//! Usage: taos-app-bench <path to taos-app> <tauri-driver port>

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taos_client::cache::Cache;
use taos_proto::chat::{AuthorType, Channel, Message, MessageState};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2] * 10.0).round() / 10.0
}

fn rss_mib(pid: &str) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` memory line in MiB (`VmRSS:`, `RssAnon:`…).
fn status_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}

/// The proportional set size in MiB (`Pss:` of `/proc/<pid>/smaps_rollup`): shared pages split
/// between the processes mapping them, so libraries shared with the web process count once.
fn pss_mib(pid: &str) -> f64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kib: f64 = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}

fn pids(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines().map(String::from).collect()
}

async fn cached_channel() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    let cache = Cache::open(&path).await.unwrap();
    let channel: Channel = serde_json::from_value(json!({
        "id": "c1", "name": "Helper", "type": "dm", "members": ["helper", "user:owner"],
        "settings": {"response_mode": "quiet", "max_hops": 3, "cooldown_seconds": 5}, "created_at": "2026-11-27T10:00:00Z", "last_seq": 5000, "archived": false
    }))
    .unwrap();
    cache.put_channels("h", &[channel]).await.unwrap();
    let start: chrono::DateTime<chrono::Utc> = "2026-11-27T10:00:00Z".parse().unwrap();
    let messages: Vec<Message> = (1..=5000)
        .map(|n| Message {
            id: format!("m{n:05}"),
            channel_id: "c1".into(),
            seq: n,
            author_id: if n % 2 == 0 {
                "helper".into()
            } else {
                "user:owner".into()
            },
            author_type: if n % 2 == 0 {
                AuthorType::Agent
            } else {
                AuthorType::User
            },
            content: format!("message {n}: {}", "lorem ipsum dolor sit amet ".repeat(4)),
            content_type: "text/markdown".into(),
            thread_id: None,
            state: MessageState::Complete,
            client_id: None,
            metadata: json!({}),
            created_at: start + chrono::Duration::seconds(n),
            edited_at: None,
            deleted_at: None,
        })
        .collect();
    cache.put_messages("h", &messages).await.unwrap();
    drop(cache);
    let mut runs = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let cache = Cache::open(&path).await.unwrap();
        let got = cache.messages("h", "c1", 5000, None).await.unwrap();
        assert_eq!(got.len(), 5000);
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    json!({"messages": 5000, "open_ms_median": median(runs.clone()), "open_ms_max": runs.iter().cloned().fold(0.0, f64::max)})
}

async fn window(app: &str, port: u16) -> Value {
    let http = taos_e2e::plain_client(Duration::from_secs(120));
    let base = format!("http://127.0.0.1:{port}");
    let mut starts = Vec::new();
    let mut rss = json!(null);
    for run in 0..3 {
        let started = Instant::now();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(
                &json!({"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"].as_str().unwrap().to_string();
        loop {
            let found: Value = http
                .post(format!("{base}/session/{session}/element"))
                .json(&json!({"using": "css selector", "value": "#pair-token"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if found["value"]
                .get("element-6066-11e4-a52e-4f735466cecf")
                .is_some()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no first screen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        starts.push(started.elapsed().as_secs_f64() * 1000.0);
        if run == 0 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let app_pids = pids(&["-x", "taos-app"]);
            let web = pids(&["-f", "WebKitWebProcess"]);
            let app_rss: f64 = app_pids.iter().map(|p| rss_mib(p)).sum();
            let app_anon: f64 = app_pids.iter().map(|p| status_mib(p, "RssAnon:")).sum();
            let app_pss: f64 = app_pids.iter().map(|p| pss_mib(p)).sum();
            let web_rss: f64 = web.iter().map(|p| rss_mib(p)).sum();
            rss = json!({"app_process_mib": app_rss, "app_private_mib": app_anon,
                         "app_pss_mib": app_pss, "web_processes_mib": web_rss});
        }
        let _ = http
            .delete(format!("{base}/session/{session}"))
            .send()
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    json!({"first_screen_ms_median": median(starts.clone()), "first_screen_ms": starts, "idle_rss": rss})
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let app = args.get(1).expect("path to taos-app");
    let port: u16 = args
        .get(2)
        .and_then(|p| p.parse().ok())
        .expect("tauri-driver port");
    let cache = cached_channel().await;
    let window = window(app, port).await;
    println!("{}", json!({"cache": cache, "window": window}));
}
