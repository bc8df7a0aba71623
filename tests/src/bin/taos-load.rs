//! Load measurements for the conversation core against a release `taos-host`:
//! trace ingest (batch and single), user message → agent SSE delivery latency, reply delta →
//! WebSocket latency, and broadcast to 500 WebSocket clients (latency and host RSS).
//! Prints one JSON object; `scripts/bench.sh` turns it into docs/benchmarks.md.
//!
//! Usage: taos-load <path to taos-host>

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, WsClient};
use tokio::sync::mpsc;

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let index = ((v.len() as f64 - 1.0) * p).round() as usize;
    (v[index] * 100.0).round() / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

async fn trace_batches(agent: &AgentClient, total: usize, batch: usize, workers: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            for b in (w..total / batch).step_by(workers) {
                let events: Vec<Value> = (0..batch)
                    .map(|i| json!({"id": format!("b{b}-{i}"), "trace_id": format!("t{b}"), "kind": "tool_call", "payload": {"tool": "bench", "i": i}}))
                    .collect();
                let r = agent.request(Method::POST, "/api/trace/batch").json(&json!({"events": events})).send().await.expect("batch");
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.expect("batch worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn trace_singles(agent: &AgentClient, total: usize, workers: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(workers) {
                let r = agent
                    .request(Method::POST, "/api/trace")
                    .json(&json!({"id": format!("s-{i}"), "kind": "reasoning", "payload": {"text": "thinking"}}))
                    .send()
                    .await
                    .expect("single");
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.expect("single worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Posts `total` chat messages from `writers` concurrent clients (writer i posts into
/// `channels[i % len]`). Returns (posts per second, p50 ms, p99 ms).
async fn chat_posts(
    host: &Host,
    channels: &[String],
    total: usize,
    writers: usize,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let channel = channels[w % channels.len()].clone();
        let request = host.admin(Method::POST, "/api/chat/messages");
        let n = total / writers;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                let r = request
                    .try_clone()
                    .expect("clonable")
                    .json(&json!({"channel_id": channel, "content": format!("post {w}-{i}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), StatusCode::CREATED);
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("writer"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    (
        rate.round(),
        percentile(latencies.clone(), 0.5),
        percentile(latencies, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-load <taos-host>");
    // Throughput of the store and the listener, not of the per-agent limits: one agent sends
    // far beyond its default rate here, so the limits are raised (the check still runs).
    let host = Host::start_with(
        &bin,
        HostOptions {
            env: vec![
                ("TAOS_TRACES__RATE_PER_SEC".into(), "100000000".into()),
                ("TAOS_TRACES__BURST".into(), "100000000".into()),
                ("TAOS_BRIDGE__REPLY_RATE_PER_SEC".into(), "100000000".into()),
                ("TAOS_BRIDGE__REPLY_BURST".into(), "100000000".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .expect("host starts");
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Bench").await;
    let dm = record["dm_channel_id"].as_str().expect("dm").to_string();
    let pid = host.pid().expect("host pid");

    let batch_rate = trace_batches(&agent, 100_000, 500, 4).await;
    let single_rate = trace_singles(&agent, 10_000, 64).await;

    // Chat posts: sequential, then 16 writers into one channel (the agent's DM: each post
    // also stores its delivery) and 16 writers into 16 group channels.
    let seq_rate = chat_posts(&host, std::slice::from_ref(&dm), 1_000, 1).await;
    let one_channel = chat_posts(&host, std::slice::from_ref(&dm), 2_000, 16).await;
    let mut groups = Vec::new();
    for i in 0..16 {
        let channel: Value = host
            .admin(Method::POST, "/api/chat/channels")
            .json(&json!({"name": format!("posts-{i}"), "members": ["bench"]}))
            .send()
            .await
            .expect("channel")
            .json()
            .await
            .expect("channel json");
        groups.push(channel["id"].as_str().expect("id").to_string());
    }
    let many_channels = chat_posts(&host, &groups, 2_000, 16).await;

    // User message → agent SSE delivery.
    let mut stream = agent.events(None).await;
    let admin = |method: Method, path: &str| host.admin(method, path);
    let mut delivery = Vec::new();
    let mut last_trace = String::new();
    for i in 0..300 {
        let started = Instant::now();
        let post = admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": format!("message {i}")}));
        let (response, event) = tokio::join!(post.send(), stream.next(Duration::from_secs(10)));
        assert_eq!(response.expect("post").status(), StatusCode::CREATED);
        let event = event.expect("delivery");
        delivery.push(started.elapsed().as_secs_f64() * 1000.0);
        let data: Value = serde_json::from_str(&event.data).expect("delivery json");
        last_trace = data["trace_id"].as_str().expect("trace id").to_string();
    }

    // Reply delta → WebSocket client.
    let token = host.local_token();
    let mut ws = WsClient::connect(&host, &token).await.expect("ws");
    ws.subscribe(&dm, None).await;
    let mut delta_latency = Vec::new();
    for i in 0..300 {
        let started = Instant::now();
        let r = agent
            .reply(json!({"kind": "delta", "trace_id": last_trace, "content": format!("t{i} ")}))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        loop {
            let event = ws.next(Duration::from_secs(10)).await.expect("ws event");
            if event["type"] == "message_delta" && event["delta"] == format!("t{i} ") {
                break;
            }
        }
        delta_latency.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(ws);

    // One WebSocket client in a channel of its own: a person's HTTP post until it arrives on
    // the socket (issue 20's "HTTP post → WebSocket broadcast" row).
    let channel: Value = admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "watched"}))
        .send()
        .await
        .expect("channel")
        .json()
        .await
        .expect("channel json");
    let watched = channel["id"].as_str().expect("id").to_string();
    let mut ws = WsClient::connect(&host, &token).await.expect("ws");
    ws.subscribe(&watched, None).await;
    let mut post_to_ws = Vec::new();
    for i in 0..320 {
        let content = format!("watched {i}");
        let started = Instant::now();
        let r = admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": watched, "content": content}))
            .send()
            .await
            .expect("watched post");
        assert_eq!(r.status(), StatusCode::CREATED);
        loop {
            let event = ws.next(Duration::from_secs(10)).await.expect("ws event");
            if event["type"] == "message" && event["message"]["content"] == content {
                break;
            }
        }
        // The first 20 warm up.
        if i >= 20 {
            post_to_ws.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(ws);

    // 500 WebSocket clients in one channel.
    let channel: Value = admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "crowd"}))
        .send()
        .await
        .expect("channel")
        .json()
        .await
        .expect("channel json");
    let crowd = channel["id"].as_str().expect("id").to_string();
    let rss_before_clients = rss_kib(pid);
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut clients = Vec::new();
    for _ in 0..500 {
        let mut ws = WsClient::connect(&host, &token).await.expect("crowd ws");
        ws.subscribe(&crowd, None).await;
        let tx = tx.clone();
        clients.push(tokio::spawn(async move {
            while let Some(event) = ws.next(Duration::from_secs(60)).await {
                if event["type"] == "message" {
                    let content = event["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if tx.send((content, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_with_clients = rss_kib(pid);
    let mut broadcast = Vec::new();
    for i in 0..30 {
        let content = format!("broadcast {i}");
        let started = Instant::now();
        let r = admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": crowd, "content": content}))
            .send()
            .await
            .expect("broadcast post");
        assert_eq!(r.status(), StatusCode::CREATED);
        let mut got = 0;
        while got < 500 {
            let (text, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("broadcast arrives")
                .expect("collector");
            if text == content {
                broadcast.push(at.duration_since(started).as_secs_f64() * 1000.0);
                got += 1;
            }
        }
    }
    let rss_after = rss_kib(pid).max(rss_with_clients);
    for c in clients {
        c.abort();
    }

    println!(
        "{}",
        json!({
            "trace_batch_events_per_s": batch_rate.round(),
            "trace_single_events_per_s": single_rate.round(),
            "chat_post_sequential_per_s": seq_rate.0,
            "chat_post_sequential_ms_p50": seq_rate.1,
            "chat_post_16_one_channel_per_s": one_channel.0,
            "chat_post_16_one_channel_ms_p50": one_channel.1,
            "chat_post_16_one_channel_ms_p99": one_channel.2,
            "chat_post_16_channels_per_s": many_channels.0,
            "chat_post_16_channels_ms_p50": many_channels.1,
            "chat_post_16_channels_ms_p99": many_channels.2,
            "delivery_ms_p50": percentile(delivery.clone(), 0.5),
            "delivery_ms_p99": percentile(delivery, 0.99),
            "delta_ms_p50": percentile(delta_latency.clone(), 0.5),
            "delta_ms_p99": percentile(delta_latency, 0.99),
            "post_to_ws_ms_p50": percentile(post_to_ws.clone(), 0.5),
            "post_to_ws_ms_p99": percentile(post_to_ws, 0.99),
            "broadcast_500_ms_p50": percentile(broadcast.clone(), 0.5),
            "broadcast_500_ms_p99": percentile(broadcast, 0.99),
            "rss_mib_before_clients": (rss_before_clients as f64 / 1024.0 * 10.0).round() / 10.0,
            "rss_mib_with_500_clients": (rss_after as f64 / 1024.0 * 10.0).round() / 10.0,
        })
    );
}
