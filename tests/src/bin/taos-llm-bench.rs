//! Gateway overhead against calling LiteLLM directly, same fake upstream, same run:
//! p50 latency and time to first chunk, and host RSS before and after 10 000 gateway calls.
//! Needs LiteLLM (scripts/dev-litellm.sh). Prints one JSON object.
//!
//! Usage: taos-llm-bench <path to taos-host> [calls for the RSS check]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use taos_e2e::fake_llm::FakeLlm;
use taos_e2e::procstat;
use taos_e2e::Host;

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    (v[i] * 1000.0).round() / 1000.0
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

/// LiteLLM's port, read off the command line of the host's LiteLLM child.
fn litellm_port(host: &Host) -> u16 {
    let host_pid = host.pid().expect("host pid").to_string();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"));
        if ppid.map(str::trim) != Some(host_pid.as_str()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .map(String::from)
            .collect();
        if args.iter().any(|a| a == "--config") {
            if let Some(i) = args.iter().position(|a| a == "--port") {
                return args[i + 1].parse().expect("port");
            }
        }
    }
    panic!("LiteLLM is not running");
}

/// (total ms, ms to first body chunk)
async fn timed(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> (f64, f64) {
    let started = Instant::now();
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("call");
    assert!(response.status().is_success(), "{}", response.status());
    let mut stream = response.bytes_stream();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        chunk.expect("chunk");
        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
    }
    (
        started.elapsed().as_secs_f64() * 1000.0,
        first.unwrap_or(0.0),
    )
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: taos-llm-bench <taos-host> [calls]");
    let calls: usize = std::env::args()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    let fake = FakeLlm::start("bench-key", &["fake-gpt"]).await;
    // 16 calls at a time from one agent: above the default cap of calls in flight.
    let host = Host::start_with(
        &bin,
        taos_e2e::HostOptions {
            env: vec![("TAOS_LLM__MAX_CONCURRENT_CALLS".into(), "64".into())],
            ..Default::default()
        },
    )
    .await
    .expect("host starts");
    host.setup_owner().await;
    let r = host.admin(Method::POST, "/api/providers").json(&json!({"name": "fake", "type": "openai-compatible", "url": fake.url(), "api_key": "bench-key"})).send().await.expect("provider");
    assert!(r.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if status["state"] == "ready" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "LiteLLM never became ready: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let agent: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Bench", "model": "fake-gpt"}))
        .send()
        .await
        .expect("agent")
        .json()
        .await
        .expect("json");
    let key = agent["llm_key"].as_str().expect("key").to_string();
    let master = std::fs::read_to_string(host.data_dir.join("llm/master-key"))
        .expect("master key")
        .trim()
        .to_string();
    let direct = format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        litellm_port(&host)
    );
    let gateway = format!("{}/v1/chat/completions", host.agent_url);
    let client = taos_e2e::http_client();
    let plain = json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]});
    // What the gateway forwards for `plain`: a chat call without `max_tokens` gets the
    // default cap ([llm] default_max_tokens), which LiteLLM then handles too. Timing it
    // directly tells the gateway's own cost from the cost of the cap's handling in LiteLLM.
    let forwarded = json!({"model": "fake-gpt", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]});
    let streamed = json!({"model": "fake-gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]});

    // Warm both paths, then interleave so drift hits both equally.
    for _ in 0..20 {
        timed(&client, &direct, &master, &plain).await;
        timed(&client, &gateway, &key, &plain).await;
    }
    let (mut d_total, mut g_total, mut d_first, mut g_first) = (vec![], vec![], vec![], vec![]);
    let mut d_forwarded = vec![];
    for _ in 0..200 {
        d_total.push(timed(&client, &direct, &master, &plain).await.0);
        d_forwarded.push(timed(&client, &direct, &master, &forwarded).await.0);
        g_total.push(timed(&client, &gateway, &key, &plain).await.0);
        d_first.push(timed(&client, &direct, &master, &streamed).await.1);
        g_first.push(timed(&client, &gateway, &key, &streamed).await.1);
    }

    let pid = host.pid().expect("pid");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mib(pid);
    let cpu_before = procstat::cpu_ms(pid);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, gateway, key, body, done) = (
            client.clone(),
            gateway.clone(),
            key.clone(),
            plain.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                let r = client
                    .post(&gateway)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .expect("call");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let cpu_per_call_ms = (procstat::cpu_ms(pid) - cpu_before) / calls as f64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_mib(pid);
    let (dp99, gp99) = (
        percentile(d_total.clone(), 0.99),
        percentile(g_total.clone(), 0.99),
    );
    let (dp50, gp50) = (percentile(d_total, 0.5), percentile(g_total, 0.5));
    let (sp50, sp99) = (
        percentile(d_forwarded.clone(), 0.5),
        percentile(d_forwarded, 0.99),
    );
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    let (df50, gf50) = (percentile(d_first, 0.5), percentile(g_first, 0.5));
    println!(
        "{}",
        json!({
            "direct_p50_ms": dp50, "gateway_p50_ms": gp50, "added_p50_ms": ((gp50 - dp50) * 1000.0).round() / 1000.0,
            "direct_p99_ms": dp99, "gateway_p99_ms": gp99, "added_p99_ms": ((gp99 - dp99) * 1000.0).round() / 1000.0,
            "direct_forwarded_body_p50_ms": sp50, "direct_forwarded_body_p99_ms": sp99,
            "added_over_forwarded_body_p50_ms": round(gp50 - sp50),
            "added_over_forwarded_body_p99_ms": round(gp99 - sp99),
            "max_tokens_in_litellm_p50_ms": round(sp50 - dp50),
            "host_cpu_ms_per_call": (cpu_per_call_ms * 1000.0).round() / 1000.0,
            "direct_first_chunk_p50_ms": df50, "gateway_first_chunk_p50_ms": gf50,
            "added_first_chunk_ms": ((gf50 - df50) * 1000.0).round() / 1000.0,
            "calls": calls, "rss_mib_before": rss_before, "rss_mib_after": rss_after,
            "rss_growth_mib": ((rss_after - rss_before) * 10.0).round() / 10.0,
        })
    );
}
