//! Trace query latency against a release `taos-host` (issue 20's table): one agent with 4 800
//! events over the last 24 hours (200 an hour; one in 200 an `error`, the rare kind; half
//! `tool_call`, the common one), then the owner's reads over TLS keep-alive on one connection:
//! the newest 100, the newest 100 of the common kind, of the rare kind, a 1-hour window,
//! 16 clients asking for the newest 100 at once, and the per-day totals of the whole day.
//! Prints one JSON object; `scripts/bench.sh` turns it into docs/benchmarks.md.
//!
//! Usage: taos-trace-bench <path to taos-host> [rounds, default 400]

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark that can't measure stops with the reason"
)]

use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::procstat;
use taos_e2e::{AgentClient, Host, HostOptions};

const HOURS: i64 = 24;
const PER_HOUR: i64 = 200;
const RARE_EVERY: i64 = 200;
const CONCURRENT: usize = 16;

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let index = ((v.len() as f64 - 1.0) * p).round() as usize;
    (v[index] * 100.0).round() / 100.0
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Owner reads on one kept-alive TLS connection.
#[derive(Clone)]
struct Reader {
    client: reqwest::Client,
    host_url: String,
    token: String,
    pid: u32,
}

impl Reader {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .request(Method::GET, format!("{}{path}", self.host_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("trace read");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.expect("trace json")
    }

    /// Milliseconds per read of `path`, `rounds` times after a warm-up; checks each answer holds
    /// `expect` events.
    async fn time(&self, path: &str, rounds: usize, expect: usize) -> Vec<f64> {
        self.time_cpu(path, rounds, expect).await.0
    }

    /// As [`Reader::time`], and the host's CPU time per read in microseconds (all threads).
    async fn time_cpu(&self, path: &str, rounds: usize, expect: usize) -> (Vec<f64>, f64) {
        for _ in 0..20 {
            self.get(path).await;
        }
        let cpu_before = procstat::cpu_ms(self.pid);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            let body = self.get(path).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let got = body["events"].as_array().map_or(0, Vec::len);
            assert_eq!(got, expect, "{path}");
        }
        let cpu_us = (procstat::cpu_ms(self.pid) - cpu_before) * 1000.0 / rounds as f64;
        (times, cpu_us.round())
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .expect("usage: taos-trace-bench <taos-host> [rounds]");
    let rounds: usize = args.next().map_or(400, |r| r.parse().expect("rounds"));
    let host = Host::start_with(
        &bin,
        HostOptions {
            env: vec![
                ("TAOS_TRACES__RATE_PER_SEC".into(), "100000000".into()),
                ("TAOS_TRACES__BURST".into(), "100000000".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .expect("host starts");
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Bench").await;

    // 4 800 events, oldest 24 hours back, evenly spread.
    let this_hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    let first = this_hour - TimeDelta::hours(HOURS - 1);
    let step = 3_600_000 / PER_HOUR;
    let events: Vec<Value> = (0..HOURS * PER_HOUR)
        .map(|i| {
            let kind = if i % RARE_EVERY == RARE_EVERY - 1 {
                "error"
            } else if i % 2 == 0 {
                "tool_call"
            } else {
                "llm_call"
            };
            let at = first + TimeDelta::milliseconds(i * step);
            json!({
                "id": format!("ev-{i:05}"),
                "trace_id": format!("t-{}", i / 10),
                "kind": kind,
                "created_at": at.to_rfc3339(),
                "tokens_in": 120,
                "tokens_out": 40,
                "payload": {"tool": "search", "query": format!("query number {i}"), "ok": true},
            })
        })
        .collect();
    for batch in events.chunks(500) {
        let r = agent
            .request(Method::POST, "/api/trace/batch")
            .json(&json!({ "events": batch }))
            .send()
            .await
            .expect("batch");
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Let the writer seal the old hours (it checks after its first round), as they would be.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let reader = Reader {
        client: host.client(),
        host_url: host.url(""),
        token: host.local_token(),
        pid: host.pid().expect("host pid"),
    };
    let base = format!("/api/agents/{}/trace", agent.slug);
    let rare_total = (HOURS * PER_HOUR / RARE_EVERY) as usize;
    let (newest, newest_cpu) = reader
        .time_cpu(&format!("{base}?limit=100"), rounds, 100)
        .await;
    let (common, common_cpu) = reader
        .time_cpu(&format!("{base}?kind=tool_call&limit=100"), rounds, 100)
        .await;
    let (rare, rare_cpu) = reader
        .time_cpu(&format!("{base}?kind=error&limit=100"), rounds, rare_total)
        .await;
    // One hour in the middle of the day: 200 events, the newest 100 of them.
    let since = first + TimeDelta::hours(12) + TimeDelta::minutes(30);
    let until = since + TimeDelta::hours(1) - TimeDelta::milliseconds(1);
    let (window, window_cpu) = reader
        .time_cpu(
            &format!(
                "{base}?since={}&until={}&limit=100",
                urlencode(&since.to_rfc3339()),
                urlencode(&until.to_rfc3339())
            ),
            rounds,
            100,
        )
        .await;

    // 16 clients, each on its own connection, asking for the newest 100 at once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENT {
        let reader = Reader {
            client: host.client(),
            ..reader.clone()
        };
        let path = format!("{base}?limit=100");
        tasks.push(tokio::spawn(async move {
            reader.time(&path, rounds / 4, 100).await
        }));
    }
    let mut concurrent = Vec::new();
    for task in tasks {
        concurrent.extend(task.await.expect("concurrent reader"));
    }
    let concurrent_rps = concurrent.len() as f64 / started.elapsed().as_secs_f64();

    // Per-day totals of the whole range (no filter by channel: the index answers).
    let totals_path = format!(
        "{base}/totals?since={}&until={}",
        urlencode(&first.to_rfc3339()),
        urlencode(&(this_hour + TimeDelta::hours(1)).to_rfc3339())
    );
    let body = reader.get(&totals_path).await;
    let counted: u64 = body["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| d["events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        counted,
        (HOURS * PER_HOUR) as u64,
        "totals count every event"
    );
    let mut totals = Vec::new();
    for _ in 0..(rounds / 4).max(10) {
        let started = Instant::now();
        reader.get(&totals_path).await;
        totals.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    println!(
        "{}",
        json!({
            "events": HOURS * PER_HOUR,
            "rounds": rounds,
            "newest_cpu_us": newest_cpu,
            "common_cpu_us": common_cpu,
            "rare_cpu_us": rare_cpu,
            "window_cpu_us": window_cpu,
            "newest_ms_p50": percentile(newest.clone(), 0.5),
            "newest_ms_p99": percentile(newest, 0.99),
            "common_ms_p50": percentile(common.clone(), 0.5),
            "common_ms_p99": percentile(common, 0.99),
            "rare_ms_p50": percentile(rare.clone(), 0.5),
            "rare_ms_p99": percentile(rare, 0.99),
            "window_ms_p50": percentile(window.clone(), 0.5),
            "window_ms_p99": percentile(window, 0.99),
            "concurrent_ms_p50": percentile(concurrent.clone(), 0.5),
            "concurrent_ms_p99": percentile(concurrent, 0.99),
            "concurrent_per_s": concurrent_rps.round(),
            "totals_day_ms_p50": percentile(totals.clone(), 0.5),
            "totals_day_ms_p99": percentile(totals, 0.99),
        })
    );
}
