//! Floods against a release `taos-host`: what logins cost in memory, and how fast a new client
//! is answered while the listener is full of silent connections.
//!
//! - host RSS idle, after 20 sequential logins, after 300 concurrent bad logins (60 source
//!   addresses, 5 each), and the peak (`VmHWM`);
//! - `/api/health` on a new TLS connection (handshake included), with nothing else open and
//!   with 1 000 silent TCP connections open.
//!
//! Prints one JSON object; `scripts/bench.sh` turns it into docs/benchmarks.md.
//!
//! Usage: taos-flood-bench <path to taos-host>

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use taos_e2e::{Host, HostOptions, OWNER, OWNER_PASSWORD};
use tokio::net::{TcpSocket, TcpStream};

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let index = ((v.len() as f64 - 1.0) * p).round() as usize;
    (v[index] * 100.0).round() / 100.0
}

fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

fn client_from(host: &Host, source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(taos_pin::pinned_client_config(host.pin))
        .http1_only()
        .local_address(source)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn login(client: &reqwest::Client, host: &Host, password: &str) -> StatusCode {
    client
        .post(host.url("/api/auth/login"))
        .json(&json!({"username": OWNER, "password": password}))
        .send()
        .await
        .expect("login")
        .status()
}

/// Milliseconds for `/api/health` on a fresh connection (TCP + TLS + request), `n` times.
async fn fresh_health_ms(host: &Host, n: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..n {
        // A new client each time: no pooled connection.
        let client = client_from(host, loopback(1, 1));
        let started = Instant::now();
        let r = client
            .get(host.url("/api/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), StatusCode::OK);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times
}

async fn silent_connection(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-flood-bench <taos-host>");
    let host = Host::start_with(
        &bin,
        HostOptions {
            env: vec![
                ("RUST_LOG".into(), "warn".into()),
                (
                    "TAOS_LLM__LITELLM_BIN".into(),
                    "/nonexistent/litellm".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await
    .expect("host starts");
    let pid = host.pid().expect("pid");
    host.setup_owner().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kib(pid, "VmRSS:");

    let owner = client_from(&host, loopback(2, 1));
    for _ in 0..20 {
        assert_eq!(login(&owner, &host, OWNER_PASSWORD).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_sequential = status_kib(pid, "VmRSS:");

    let mut tasks = Vec::new();
    for i in 0..300usize {
        let client = client_from(&host, loopback(3, u8::try_from(1 + i / 5).unwrap()));
        let url = host.url("/api/auth/login");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"username": OWNER, "password": "not the password at all"}))
                .send()
                .await
                .expect("login")
                .status()
        }));
    }
    let mut checked = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("login task") {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("unexpected login answer {other}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_flood = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");

    let quiet = fresh_health_ms(&host, 50).await;
    let public: SocketAddr = host
        .public_url
        .trim_start_matches("https://")
        .parse()
        .expect("address");
    let mut silent = Vec::new();
    for i in 0..1000usize {
        silent
            .push(silent_connection(loopback(10, u8::try_from(1 + i / 50).unwrap()), public).await);
    }
    let crowded = fresh_health_ms(&host, 50).await;
    let rss_with_silent = status_kib(pid, "VmRSS:");
    drop(silent);

    println!(
        "{}",
        json!({
            "rss_mib_idle": mib(idle),
            "rss_mib_after_20_logins": mib(after_sequential),
            "rss_mib_after_300_bad_logins": mib(after_flood),
            "rss_mib_peak": mib(peak),
            "flood_checked": checked,
            "flood_refused": refused,
            "health_new_conn_ms_p50": percentile(quiet.clone(), 0.5),
            "health_new_conn_ms_p99": percentile(quiet, 0.99),
            "health_new_conn_1000_silent_ms_p50": percentile(crowded.clone(), 0.5),
            "health_new_conn_1000_silent_ms_p99": percentile(crowded, 0.99),
            "rss_mib_with_1000_silent": mib(rss_with_silent),
        })
    );
}
