//! Traces over HTTP: ingest from agents and the owner, reads with filters, crash safety.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions};

use chrono::DurationRound;

use crate::{start, BIN};

/// An RFC 3339 time in a query string (`+00:00` must not turn into a space).
fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn every_acknowledged_event_survives_a_sigkill() {
    // Crash safety, not rate limits: let the writers run flat out.
    let mut host = Host::start_with(
        BIN,
        HostOptions {
            env: vec![
                ("TAOS_TRACES__RATE_PER_SEC".into(), "1000000".into()),
                ("TAOS_TRACES__BURST".into(), "1000000".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Crashy").await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    const GROUPS: usize = 100; // 100 trace ids × 100 events = 10 000 events
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let agent = agent.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for group in (worker..GROUPS).step_by(8) {
                let events: Vec<Value> = (0..100)
                    .map(|i| json!({"id": format!("e-{group}-{i}"), "trace_id": format!("t-{group}"), "kind": "tool_call", "payload": {"tool": "x", "i": i}}))
                    .collect();
                let result = if worker % 2 == 0 {
                    agent.request(Method::POST, "/api/trace/batch").json(&json!({"events": events})).send().await
                } else {
                    // Odd workers post one event at a time.
                    let mut last = None;
                    for event in events {
                        let id = event["id"].as_str().unwrap().to_string();
                        match agent.request(Method::POST, "/api/trace").json(&event).send().await {
                            Ok(r) if r.status() == StatusCode::OK => {
                                acked.lock().unwrap().insert(id);
                            }
                            _ => return,
                        }
                        last = Some(());
                    }
                    let _ = last;
                    continue;
                };
                match result {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let ack: Value = r.json().await.unwrap();
                        let mut set = acked.lock().unwrap();
                        for id in ack["ids"].as_array().unwrap() {
                            set.insert(id.as_str().unwrap().to_string());
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill the host mid-stream, once a good share has been acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 3000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill9().await;
    for task in tasks {
        let _ = task.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 3000,
        "the crash came mid-stream: {}",
        acked.len()
    );
    assert!(acked.len() < GROUPS * 100, "the crash came before the end");

    let restarted = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut found = HashSet::new();
    for group in 0..GROUPS {
        let body: Value = restarted
            .admin(
                Method::GET,
                &format!("/api/agents/crashy/trace?trace_id=t-{group}&limit=1000"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in body["events"].as_array().unwrap() {
            assert!(
                found.insert(e["id"].as_str().unwrap().to_string()),
                "no duplicates after restart"
            );
        }
    }
    let lost: Vec<&String> = acked.difference(&found).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}

/// Events committed to an hour's bucket while the index was not yet told (the host killed
/// between the two) are neither lost nor misreported: the next start counts that hour again.
#[tokio::test]
async fn a_crash_between_the_bucket_and_its_index_is_healed_at_the_next_start() {
    let mut host = Host::start_with(BIN, HostOptions::default()).await.unwrap();
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Healer").await;
    let this_hour = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::hours(1))
        .unwrap();
    let last_hour = this_hour - chrono::TimeDelta::hours(1);
    let events: Vec<Value> = (0..30)
        .map(|i| {
            let at = if i < 20 { last_hour } else { this_hour };
            json!({
                "id": format!("tool-{i:02}"),
                "kind": "tool_call",
                "created_at": (at + chrono::TimeDelta::seconds(i)).to_rfc3339(),
                "payload": {}
            })
        })
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A clean stop: the index file now holds both hours as written.
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    let data = host.data_dir.clone();

    // Started again, paused right after the next bucket commit, before the index hears of it.
    let mut paused = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data.clone()),
            env: vec![(
                taos_host::faults::PAUSE_ENV.into(),
                "trace-index:committed".into(),
            )],
        },
    )
    .await
    .unwrap();
    let ghost = json!({
        "id": "ghost",
        "kind": "error",
        "created_at": (last_hour + chrono::TimeDelta::minutes(30)).to_rfc3339(),
        "payload": {}
    });
    let posting = {
        let agent = agent.with_base(&paused.agent_url);
        tokio::spawn(async move {
            agent
                .request(Method::POST, "/api/trace")
                .json(&ghost)
                .send()
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&paused.stderr_log).unwrap_or_default();
        if log.contains("fault injection: paused at trace-index:committed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never paused: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    paused.kill9().await;
    let answer = posting.await.unwrap();
    assert!(
        answer.is_err(),
        "the post was never acknowledged: {answer:?}"
    );

    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let get = |q: String| {
        let request = host.admin(Method::GET, &format!("/api/agents/healer/trace{q}"));
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    // The committed event is in its bucket, so a read finds it; a kind the index had no count
    // of for that hour must not make the read skip it.
    assert_eq!(get("?kind=error".into()).await, ["ghost"]);
    assert_eq!(get("?kind=tool_call&limit=1000".into()).await.len(), 30);
    assert_eq!(get("?limit=1000".into()).await.len(), 31);
    let totals: Value = host
        .admin(
            Method::GET,
            &format!(
                "/api/agents/healer/trace/totals?since={}&until={}",
                urlencode(&last_hour.to_rfc3339()),
                urlencode(&(this_hour + chrono::TimeDelta::hours(1)).to_rfc3339())
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut events = 0;
    let mut errors = 0;
    for day in totals["days"].as_array().unwrap() {
        events += day["events"].as_u64().unwrap();
        errors += day["by_kind"]["error"].as_u64().unwrap_or(0);
    }
    assert_eq!((events, errors), (31, 1), "{totals}");
}

#[tokio::test]
async fn trace_reads_filter_limit_and_refuse_path_tricks() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Tracer").await;
    // Times are kept within a day of the host's clock, so the test works from a recent hour:
    // `base` plays 10:00, and the events run from 10:30 two minutes apart.
    let base = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::hours(1))
        .unwrap()
        - chrono::TimeDelta::hours(5);
    let at = |minutes: i64| (base + chrono::TimeDelta::minutes(minutes)).to_rfc3339();
    let events: Vec<Value> = (0..30)
        .map(|i| {
            json!({
                "id": format!("ev-{i:02}"),
                "kind": if i % 3 == 0 { "llm_call" } else { "tool_call" },
                "channel_id": if i < 10 { "c1" } else { "c2" },
                // Two minutes apart from 10:30, so they span the 10:00 and 11:00 buckets.
                "created_at": at(30 + 2 * i),
                "payload": {}
            })
        })
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Idempotent by id.
    let again = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);

    let get = |q: &str| {
        let request = host.admin(Method::GET, &format!("/api/agents/tracer/trace{q}"));
        async move { request.send().await.unwrap() }
    };
    let all: Value = get("?limit=1000").await.json().await.unwrap();
    assert_eq!(all["schema_version"], 1);
    assert_eq!(all["agent_name"], "tracer");
    let ids: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 30);
    assert_eq!(
        ids[0], "ev-29",
        "newest first, across the 10:00 and 11:00 buckets"
    );
    let llm: Value = get("?kind=llm_call").await.json().await.unwrap();
    assert_eq!(llm["events"].as_array().unwrap().len(), 10);
    let c1: Value = get("?channel_id=c1&limit=5").await.json().await.unwrap();
    assert_eq!(c1["events"].as_array().unwrap().len(), 5);
    let window: Value = get(&format!(
        "?since={}&until={}",
        urlencode(&at(58)),
        urlencode(&at(61))
    ))
    .await
    .json()
    .await
    .unwrap();
    let w: Vec<&str> = window["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        w,
        ["ev-15", "ev-14"],
        "inclusive window across the hour boundary"
    );
    let epoch = (base + chrono::TimeDelta::minutes(87)).timestamp();
    let since_epoch: Value = get(&format!("?since={epoch}")).await.json().await.unwrap();
    assert_eq!(since_epoch["events"].as_array().unwrap().len(), 1);

    let inverted = format!("?since={}&until={}", urlencode(&at(61)), urlencode(&at(58)));
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?kind=dream",
        "?since=yesterday",
        &inverted,
    ] {
        assert_eq!(get(bad).await.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // The per-hour histogram (from the hour index), newest hour first, with a kind or a
    // channel too (c1's ten events are all in the first hour).
    let histogram = |q: String| {
        let request = host.admin(
            Method::GET,
            &format!("/api/agents/tracer/trace/histogram{q}"),
        );
        async move { request.send().await.unwrap() }
    };
    let range = format!("?since={}&until={}", urlencode(&at(0)), urlencode(&at(180)));
    let hour = |h: i64| {
        (base + chrono::TimeDelta::hours(h))
            .format("%Y-%m-%dT%H")
            .to_string()
    };
    for (filter, want) in [
        ("", vec![(hour(1), 15), (hour(0), 15)]),
        ("&kind=llm_call", vec![(hour(1), 5), (hour(0), 5)]),
        ("&channel_id=c1", vec![(hour(0), 10)]),
        ("&channel_id=c1&kind=llm_call", vec![(hour(0), 4)]),
        ("&channel_id=nowhere", vec![]),
    ] {
        let r = histogram(format!("{range}{filter}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        let hours: Vec<(String, u64)> = body["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["hour"].as_str().unwrap().to_string(),
                    h["events"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(hours, want, "{filter}: {body}");
    }
    let too_long = format!(
        "?since={}&until={}",
        urlencode(&(base - chrono::TimeDelta::days(93)).to_rfc3339()),
        urlencode(&at(0))
    );
    for bad in [
        "?kind=dream".to_string(),
        format!("?since={}&until={}", urlencode(&at(61)), urlencode(&at(58))),
        "?since=yesterday".to_string(),
        too_long,
    ] {
        let r = histogram(bad.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        host.admin(Method::GET, "/api/agents/nobody/trace/histogram")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    for path in [
        "/api/agents/..%2F..%2Fetc/trace",
        "/api/agents/%2e%2e/trace",
        "/api/agents/a%00b/trace",
        "/api/agents/Tracer/trace",
    ] {
        // Clients may normalise dot segments before sending (then another route refuses it);
        // either way the answer is a 4xx, never a trace.
        let r = host.admin(Method::GET, path).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    assert_eq!(
        host.admin(Method::GET, "/api/agents/nobody/trace")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let outside: Vec<_> = std::fs::read_dir(host.data_dir.join("traces"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("tracer")],
        "nothing but the agent's own folder"
    );

    // Unknown kinds and bad bodies are 400 and store nothing.
    for body in [
        json!({"kind": "dream"}),
        json!({"kind": "error", "payload": [1]}),
        json!({"kind": "error", "id": "../x"}),
        json!({"kind": "error", "v": 2}),
    ] {
        let r = agent
            .request(Method::POST, "/api/trace")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let after: Value = get("?limit=1000").await.json().await.unwrap();
    assert_eq!(after["events"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn the_owner_posts_traces_for_existing_agents_only() {
    let host = start().await;
    host.setup_owner().await;
    AgentClient::create(&host, "Known").await;
    let ok = host
        .admin(Method::POST, "/api/trace")
        .json(&json!({"agent_name": "known", "kind": "lifecycle", "payload": {"event": "note"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    for name in ["unknown", "../etc", "Known", ""] {
        let r = host
            .admin(Method::POST, "/api/trace")
            .json(&json!({"agent_name": name, "kind": "lifecycle"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{name:?}");
    }
    let missing = host
        .admin(Method::POST, "/api/trace")
        .json(&json!({"kind": "lifecycle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let device = host.pair_device("phone").await;
    let by_device = host
        .client()
        .post(host.url("/api/trace"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .json(&json!({"agent_name": "known", "kind": "lifecycle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_device.status(), StatusCode::FORBIDDEN);
}

/// Agents written for TinyAgentOS stamp traces with `time.time()`: epoch seconds, a float.
/// The envelope takes those (and integers) as well as RFC 3339, and stores the same instant.
#[tokio::test]
async fn trace_created_at_may_be_epoch_seconds() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Tiny").await;
    // A minute ago, so no rule about times far from now can interfere.
    let base = chrono::Utc::now().timestamp() - 60;
    let float = base as f64 + 0.25;
    let cases = [
        ("tiny-float", json!(float), base * 1000 + 250),
        ("tiny-int", json!(base), base * 1000),
        (
            "tiny-text",
            json!(chrono::DateTime::from_timestamp(base, 500_000_000)
                .unwrap()
                .to_rfc3339()),
            base * 1000 + 500,
        ),
    ];
    let one = agent
        .request(Method::POST, "/api/trace")
        .json(&json!({"id": cases[0].0, "kind": "lifecycle", "created_at": cases[0].1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        one.status(),
        StatusCode::OK,
        "{}",
        one.text().await.unwrap()
    );
    let batch: Vec<Value> = cases[1..]
        .iter()
        .map(|(id, at, _)| json!({"id": id, "kind": "lifecycle", "created_at": at}))
        .collect();
    let r = agent
        .request(Method::POST, "/api/trace/batch")
        .json(&json!({"events": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let bad = agent
        .request(Method::POST, "/api/trace")
        .json(&json!({"kind": "lifecycle", "created_at": "yesterday"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let read: Value = host
        .admin(
            Method::GET,
            "/api/agents/tiny/trace?kind=lifecycle&limit=100",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (id, _, want_ms) in cases {
        let event = read["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} not stored: {read}"));
        let at =
            chrono::DateTime::parse_from_rfc3339(event["created_at"].as_str().unwrap()).unwrap();
        assert_eq!(at.timestamp_millis(), want_ms, "{id}: {event}");
    }
}

/// An agent reads its own trace on the agent listener with its token (the weekly-summary
/// prompt's `read_trace` tool), with the owner's filters; another agent's trace is refused,
/// and bad filters get 400.
#[tokio::test]
async fn an_agent_reads_its_own_trace_and_no_one_elses() {
    let host = start().await;
    host.setup_owner().await;
    let (diarist, _) = AgentClient::create(&host, "Diarist").await;
    let (other, _) = AgentClient::create(&host, "Other").await;
    for (agent, kind) in [
        (&diarist, "tool_call"),
        (&diarist, "reasoning"),
        (&other, "tool_call"),
    ] {
        let r = agent
            .request(Method::POST, "/api/trace")
            .json(&json!({"kind": kind, "payload": {"by": agent.slug}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let read = |agent: &AgentClient, path: String| agent.request(Method::GET, &path).send();

    let page: Value = read(&diarist, "/api/agents/diarist/trace?kind=tool_call".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["payload"]["by"], "diarist");
    assert_eq!(page["agent_name"], "diarist");

    let theirs = read(&diarist, "/api/agents/other/trace".into())
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::FORBIDDEN);
    for bad in [
        "limit=0",
        "limit=1001",
        "kind=nonsense",
        "since=yesterday",
        "cursor=zzz",
    ] {
        let r = read(&diarist, format!("/api/agents/diarist/trace?{bad}"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let traversal = read(&diarist, "/api/agents/..%2Fother/trace".into())
        .await
        .unwrap();
    assert!(
        traversal.status().is_client_error(),
        "{}",
        traversal.status()
    );
}

/// Reading its own trace costs the agent a token of its reply rate, taken before the read: a
/// loop of reads is refused with 429, not served.
#[tokio::test]
async fn an_agents_trace_reads_are_rate_limited() {
    let host = Host::start_with(
        BIN,
        HostOptions {
            env: vec![
                ("TAOS_BRIDGE__REPLY_RATE_PER_SEC".into(), "1".into()),
                ("TAOS_BRIDGE__REPLY_BURST".into(), "3".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Reader").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = agent
            .request(Method::GET, "/api/agents/reader/trace")
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3], "{statuses:?}");
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
}
