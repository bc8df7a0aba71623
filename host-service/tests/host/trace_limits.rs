//! Trace ingest and bridge reply limits (issue 12, item 8), against the real binary: times far
//! from the host's clock, floods, oversized events, the per-agent byte quota.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host};

/// Every file name anywhere under `root` (not following links).
fn all_file_names(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            }
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names
}

async fn trace(host: &Host, slug: &str) -> Vec<Value> {
    let body: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/trace?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["events"].as_array().unwrap().clone()
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Attack: events stamped 1971, 2099 and 9998 used to create bucket files for those hours
/// (spreading an agent's trace over files retention would never reach). Now their time is
/// clamped to the host's now ± 24 h, which picks the bucket, and the given time is kept.
#[tokio::test]
async fn events_far_from_the_host_clock_are_clamped_and_keep_their_time() {
    let host = crate::start_with_env(&[]).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Skewed").await;
    let stamps = [
        ("y1971", "1971-01-01T00:30:00Z"),
        ("y2099", "2099-06-01T12:00:00Z"),
        ("y9998", "9998-12-31T23:00:00Z"),
    ];
    let before = Utc::now();
    let events: Vec<Value> = stamps
        .iter()
        .map(|(id, at)| json!({"id": id, "kind": "error", "created_at": at}))
        .chain([json!({"id": "normal", "kind": "error"})])
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after = Utc::now();

    let names = all_file_names(&host.data_dir);
    for year in ["1971-", "2099-", "9998-"] {
        assert!(
            !names.iter().any(|n| n.starts_with(year)),
            "a bucket for {year}: {names:?}"
        );
    }
    let stored = trace(&host, "skewed").await;
    assert_eq!(stored.len(), 4);
    let store = host.data_dir.join("traces").join("skewed");
    for (id, given) in stamps {
        let event = stored.iter().find(|e| e["id"] == id).unwrap();
        assert_eq!(
            time(&event["agent_created_at"]),
            time(&json!(given)),
            "{event}"
        );
        let at = time(&event["created_at"]);
        let day = TimeDelta::hours(24);
        // Stored times are in milliseconds: `before` may be a fraction of one later.
        let before = before - TimeDelta::milliseconds(1);
        if id == "y1971" {
            assert!(at >= before - day && at <= after - day, "{event}");
        } else {
            assert!(at >= before + day && at <= after + day, "{event}");
        }
        let bucket = format!("{}.db", at.format("%Y-%m-%dT%H"));
        assert!(store.join(&bucket).is_file(), "{id} lands in {bucket}");
    }
    let normal = stored.iter().find(|e| e["id"] == "normal").unwrap();
    assert!(normal.get("agent_created_at").is_none(), "{normal}");
}

/// Attack: one agent floods trace ingest. Beyond its burst and rate it gets 429 with
/// Retry-After, and what was refused is not stored; a batch counts each of its events.
#[tokio::test]
async fn a_trace_flood_gets_429_and_nothing_beyond_the_limit_is_stored() {
    let host = crate::start_with_env(&[
        ("TAOS_TRACES__RATE_PER_SEC", "1"),
        ("TAOS_TRACES__BURST", "20"),
    ])
    .await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Flooder").await;
    let (other, _) = AgentClient::create(&host, "Bystander").await;
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    for i in 0..60 {
        let id = format!("s{i:02}");
        let r = agent
            .request(Method::POST, "/api/trace")
            .json(&json!({"id": id, "kind": "reasoning", "payload": {"i": i}}))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => {
                accepted.insert(id);
            }
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(accepted.len() >= 20, "the burst passes: {}", accepted.len());
    assert!(refused > 0, "the flood is refused");
    // A batch takes one token per event: ten at once don't fit in what is left.
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("b{i}"), "kind": "reasoning"}))
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({ "events": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // More events than the burst in one batch could never pass: a clear 400.
    let too_big: Vec<Value> = (0..21)
        .map(|i| json!({"id": format!("x{i}"), "kind": "reasoning"}))
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({ "events": too_big }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        ids(&trace(&host, "flooder").await),
        accepted,
        "exactly what was accepted"
    );
    // Another agent has its own budget.
    let r = other
        .request(Method::POST, "/api/trace")
        .json(&json!({"kind": "reasoning"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Attack: one huge event (within the request size limit). It is refused with 413 and a clear
/// message, and nothing of its request is written.
#[tokio::test]
async fn an_oversized_trace_event_is_refused_and_nothing_is_written() {
    let host = crate::start_with_env(&[]).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Verbose").await;
    let huge = "x".repeat(100 * 1024);
    for body in [
        (
            "/api/trace",
            json!({"id": "big", "kind": "tool_result", "payload": {"out": huge}}),
        ),
        (
            "/api/trace",
            json!({"id": "big-error", "kind": "error", "error": huge}),
        ),
        (
            "/api/trace/batch",
            json!({"events": [
                {"id": "small", "kind": "reasoning"},
                {"id": "big2", "kind": "tool_result", "payload": {"out": huge}}
            ]}),
        ),
    ] {
        let r = agent
            .request(Method::POST, body.0)
            .json(&body.1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], "event_too_large");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_event_bytes"),
            "{error}"
        );
    }
    assert!(trace(&host, "verbose").await.is_empty());
    assert!(
        !host.data_dir.join("traces").join("verbose").exists(),
        "not even a bucket file was made"
    );
}

/// Attack: an agent fills the disk with traces. Over its quota its oldest closed hours are
/// deleted (and the owner is told); once only open hours are left, it gets 507.
#[tokio::test]
async fn over_its_quota_an_agent_loses_its_oldest_hours_and_the_owner_is_told() {
    let host = crate::start_with_env(&[("TAOS_TRACES__QUOTA_MIB", "1")]).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Hoarder").await;
    let now = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    let closed: Vec<DateTime<Utc>> = (0..3).map(|h| now - TimeDelta::hours(20 - h)).collect();
    let big = |id: String, at: DateTime<Utc>| {
        json!({"id": id, "kind": "tool_result", "created_at": (at + TimeDelta::minutes(1)).to_rfc3339(),
               "payload": {"out": "x".repeat(60 * 1024)}})
    };
    let post = |events: Vec<Value>| {
        agent
            .request(Method::POST, "/api/trace/batch")
            .json(&json!({ "events": events }))
            .send()
    };
    // Three closed hours (the agent's first write, so its writer seals them right after): a big
    // one of eight 60 KiB events and two small ones, so deleting the oldest is enough to get
    // under 90 % whatever SQLite's page overhead.
    let mut events: Vec<Value> = (0..8)
        .map(|i| big(format!("old0-{i}"), closed[0]))
        .collect();
    for (h, at) in closed.iter().enumerate().skip(1) {
        events.push(
            json!({"id": format!("old{h}-0"), "kind": "error", "created_at": at.to_rfc3339()}),
        );
    }
    assert_eq!(post(events).await.unwrap().status(), StatusCode::OK);
    // This hour, past the quota.
    let events = (0..8).map(|i| big(format!("now{i}"), now)).collect();
    assert_eq!(post(events).await.unwrap().status(), StatusCode::OK);
    // The next write makes room first.
    let r = post(vec![json!({"id": "small", "kind": "reasoning"})])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let left = ids(&trace(&host, "hoarder").await);
    assert!(
        !left.contains("old0-0"),
        "the oldest hour's events are gone"
    );
    assert!(left.contains("old1-0") && left.contains("old2-0") && left.contains("small"));
    let store = host.data_dir.join("traces").join("hoarder");
    let db = |at: DateTime<Utc>| store.join(format!("{}.db", at.format("%Y-%m-%dT%H")));
    assert!(!db(closed[0]).exists(), "the oldest hour's file is gone");
    assert!(
        db(closed[1]).exists() && db(closed[2]).exists(),
        "only what was needed went"
    );
    assert!(db(now).exists());

    let list: Vec<Value> = host
        .admin(Method::GET, "/api/notifications")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deleted = list
        .iter()
        .find(|n| n["source"] == "trace.retention" && n["data"]["deleted_hours"].is_array())
        .unwrap_or_else(|| panic!("no retention notification: {list:?}"));
    assert_eq!(deleted["data"]["agent"], "hoarder");
    assert_eq!(
        deleted["data"]["deleted_hours"],
        json!([closed[0].format("%Y-%m-%dT%H").to_string()])
    );

    // Filling the open hours alone: once nothing closed is left, 507 and nothing stored.
    let mut full = None;
    for round in 0..30 {
        let events = (0..8)
            .map(|i| big(format!("fill{round}-{i}"), now))
            .collect();
        let r = post(events).await.unwrap();
        if r.status() != StatusCode::OK {
            full = Some((round, r.status(), r.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (round, status, body) = full.expect("the quota fills up");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "trace_quota_full");
    assert!(!ids(&trace(&host, "hoarder").await).contains(&format!("fill{round}-0")));
    for at in &closed {
        assert!(
            !db(*at).exists(),
            "closed hours went before anything was refused"
        );
    }
}

/// Attack: an agent floods the bridge with replies. Beyond its reply burst and rate: 429 with
/// Retry-After, and the refused replies leave no trace.
#[tokio::test]
async fn a_reply_flood_gets_429() {
    let host = crate::start_with_env(&[
        ("TAOS_BRIDGE__REPLY_RATE_PER_SEC", "1"),
        ("TAOS_BRIDGE__REPLY_BURST", "5"),
    ])
    .await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Chatty").await;
    let dm = record["dm_channel_id"].as_str().unwrap();
    let mut stream = agent.events(None).await;
    let r = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let delivery = stream
        .next(Duration::from_secs(10))
        .await
        .expect("delivery");
    let trace_id = serde_json::from_str::<Value>(&delivery.data).unwrap()["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A reply that only becomes a trace event has the trace event size limit.
    let huge = agent
        .reply(json!({"kind": "tool_result", "trace_id": trace_id, "tool": "cat", "result": "x".repeat(100 * 1024)}))
        .await;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..30 {
        let r = agent
            .reply(json!({"kind": "reasoning", "trace_id": trace_id, "content": format!("thought {i}")}))
            .await;
        match r.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(r.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst of 5, less the token the oversized reply took.
    assert!(
        accepted >= 4 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    // Reply traces are written in the background: wait for the accepted ones, then compare.
    let reasoning = taos_e2e::wait_for_trace(&host, "chatty", "?kind=reasoning&limit=1000", |e| {
        e.len() >= accepted
    })
    .await;
    assert_eq!(
        reasoning.len(),
        accepted,
        "only accepted replies left a trace"
    );
}
