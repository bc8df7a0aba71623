//! The home screen's data: `GET /api/host/overview`, the live `host.overview` event, and the
//! sampled history (`GET /api/host/samples`) with its 7-day retention, on a real host and its
//! real SQLite file. Samples are taken every second here (`[overview] sample_secs = 1`), and
//! each test waits for the event that follows a sample rather than for time to pass.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use taos_e2e::fixtures::{create_agent, with_fake_provider};
use taos_e2e::{Host, HostOptions, SseReader};
use taos_proto::llm::LlmState;
use taos_proto::ops::{HostOverview, SampleHistory};

use crate::llm::gateway;
use crate::{host_with, BIN};

const FAST: (&str, &str) = ("TAOS_OVERVIEW__SAMPLE_SECS", "1");
const DAY_MS: i64 = 24 * 3600 * 1000;

async fn events(host: &Host) -> SseReader {
    let r = host
        .admin(Method::GET, "/api/events")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    SseReader::new(r)
}

/// The next `host.overview` event: sent without an SSE id (it isn't stored), its data the
/// overview itself.
async fn next_overview(stream: &mut SseReader) -> HostOverview {
    loop {
        let event = stream
            .next(Duration::from_secs(30))
            .await
            .expect("a host.overview event within 30 s of 1 s samples");
        if event.event.as_deref() != Some("host.overview") {
            continue;
        }
        assert_eq!(event.id, None, "a transient event carries no id");
        return serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("not an overview ({e}): {}", event.data));
    }
}

fn mem_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

async fn open_db(host: &Host) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(host.data_dir.join("taos.db"))
        .connect()
        .await
        .expect("open the host's database")
}

/// A gateway call through real LiteLLM shows as today's spend of that agent and in the total;
/// the host's figures are this machine's; the event and the endpoint say the same.
#[tokio::test]
async fn the_overview_shows_the_board_and_follows_live() {
    let (_turn, host, _fake) = with_fake_provider(BIN, &[FAST]).await;
    let thinker = create_agent(&host, "Thinker").await;
    create_agent(&host, "Idle").await;
    let set = host
        .admin(Method::PATCH, "/api/agents/thinker")
        .json(&json!({"model": "fake-gpt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    // $0.02 (see add_fake_provider's prices).
    let r = gateway(
        &host,
        thinker.llm_key.as_deref().unwrap(),
        "/v1/chat/completions",
    )
    .json(&json!({"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let mut stream = events(&host).await;
    let live = next_overview(&mut stream).await;
    let sample = live.sample.clone().expect("a sample was taken");
    assert_eq!(sample.memory_total_bytes, Some(mem_total()));
    assert!(sample.memory_used_bytes.unwrap() <= mem_total());
    let (_, data_total) = taos_host::sys::filesystem_space(&host.data_dir).unwrap();
    assert_eq!(sample.data_disk_total_bytes, Some(data_total));
    assert!(sample.data_disk_used_bytes.unwrap() <= data_total);
    assert!(sample
        .cpu_percent
        .is_some_and(|p| (0.0..=100.0).contains(&p)));
    assert_eq!(live.sample_secs, 1);
    assert_eq!(live.llm, LlmState::Ready);
    assert!(live.llm_error.is_none());
    assert!(
        live.runtime.starts_with("ok") || live.runtime.starts_with("disabled"),
        "{}",
        live.runtime
    );

    let usage: serde_json::Value = host.get("/api/agents/thinker/usage").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let spent_today: f64 = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["day"] == today.as_str())
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((spent_today - 0.02).abs() < 1e-9, "{usage}");
    // Stored events still come with their ids between the figures, and a stream resumed after
    // one of them gets the next stored event, not a figure replayed.
    let r = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "between the samples"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored = loop {
        let event = stream
            .next(Duration::from_secs(30))
            .await
            .expect("the notification's event");
        if event.event.as_deref() == Some("notification.created") {
            break event;
        }
    };
    let id = stored.id.clone().expect("a stored event has an id");
    next_overview(&mut stream).await;
    host.admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "info", "title": "after the figure"}))
        .send()
        .await
        .unwrap();
    let resumed = host
        .admin(Method::GET, "/api/events")
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    let first = SseReader::new(resumed)
        .next(Duration::from_secs(30))
        .await
        .expect("the missed event");
    assert_eq!(first.event.as_deref(), Some("notification.created"));
    assert!(first.data.contains("after the figure"), "{}", first.data);

    let view: HostOverview = host.get("/api/host/overview").await;
    for overview in [&live, &view] {
        let slugs: Vec<&str> = overview.agents.iter().map(|a| a.slug.as_str()).collect();
        assert_eq!(slugs, ["thinker", "idle"]);
        let t = &overview.agents[0];
        assert!((t.spend_today_usd - spent_today).abs() < 1e-9);
        assert_eq!(overview.agents[1].spend_today_usd, 0.0);
        assert!((overview.spend_today_usd - spent_today).abs() < 1e-9);
        // External agents: no container, so no memory or disk figures.
        assert_eq!(t.memory_used_bytes, None);
        assert_eq!(t.disk_quota_bytes, None);
        assert!(!t.connected);
    }
    assert!(view.sample.is_some());

    // Owner side only.
    let anonymous = host
        .client()
        .get(host.url("/api/host/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    host.create_user("carol", "carol-password-1");
    let carol = host.session("carol", "carol-password-1").await;
    for path in ["/api/host/overview", "/api/host/samples"] {
        let r = carol.request(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
}

/// History comes in buckets, refuses bad ranges with 400 (and an unknown agent with 404), and
/// a sample prunes what is older than 7 days, here rows written 8 days back into the real file
/// while the host was stopped.
#[tokio::test]
async fn history_is_bucketed_checked_and_pruned_after_a_week() {
    let mut host = host_with(&[FAST]).await;
    host.setup_owner().await;
    let keeper = create_agent(&host, "Keeper").await;
    let mut stream = events(&host).await;
    next_overview(&mut stream).await;
    next_overview(&mut stream).await;

    let history: SampleHistory = host.get("/api/host/samples?hours=1&points=60").await;
    assert_eq!(history.hours, 1);
    assert_eq!(history.bucket_secs, 60);
    assert!(!history.host.is_empty());
    assert!(history.host.len() <= 60);
    assert!(history
        .host
        .iter()
        .all(|s| s.memory_total_bytes == Some(mem_total())));
    assert_eq!(history.agents.len(), 1);
    assert_eq!(history.agents[0].slug, "keeper");
    assert!(!history.agents[0].samples.is_empty());
    let only: SampleHistory = host.get("/api/host/samples?agent=keeper").await;
    assert_eq!(only.hours, 24);
    assert_eq!(only.agents.len(), 1);

    for (query, status, code) in [
        ("hours=0", StatusCode::BAD_REQUEST, "bad_request"),
        ("hours=169", StatusCode::BAD_REQUEST, "bad_request"),
        ("points=0", StatusCode::BAD_REQUEST, "bad_request"),
        ("points=1001", StatusCode::BAD_REQUEST, "bad_request"),
        ("hours=-1", StatusCode::BAD_REQUEST, "invalid_query"),
        ("hours=soon", StatusCode::BAD_REQUEST, "invalid_query"),
        ("days=2", StatusCode::BAD_REQUEST, "invalid_query"),
        ("agent=nobody", StatusCode::NOT_FOUND, "not_found"),
    ] {
        host.expect_error(
            Method::GET,
            &format!("/api/host/samples?{query}"),
            None,
            status,
            code,
        )
        .await;
    }

    // Stop, write rows 8 and 6 days old, start again on the same file.
    let temp = host.take_temp();
    let data_dir = host.data_dir.clone();
    host.terminate().await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let (old, recent) = (now - 8 * DAY_MS, now - 6 * DAY_MS);
    {
        let mut db = open_db(&host).await;
        for at in [old, recent] {
            sqlx::query("INSERT INTO host_samples (at, cpu_percent, memory_total_bytes) VALUES (?, 12.5, 1)")
                .bind(at)
                .execute(&mut db)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO agent_samples (agent_id, at, memory_used_bytes) VALUES (?, ?, 7)",
            )
            .bind(keeper.agent.id.to_string())
            .bind(at)
            .execute(&mut db)
            .await
            .unwrap();
        }
    }
    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data_dir),
            ..HostOptions::with_env(&[taos_e2e::fixtures::NO_LITELLM, FAST])
        },
    )
    .await
    .unwrap();
    let _temp = temp;
    let mut stream = events(&host).await;
    next_overview(&mut stream).await;

    let mut db = open_db(&host).await;
    for table in ["host_samples", "agent_samples"] {
        let older: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE at < ?"))
            .bind(now - 7 * DAY_MS)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(older, 0, "{table}: the 8-day-old row was pruned");
        let kept: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE at = ?"))
            .bind(recent)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(kept, 1, "{table}: the 6-day-old row is kept");
    }
    let week: SampleHistory = host.get("/api/host/samples?hours=168&points=1000").await;
    let oldest = week.host.first().unwrap();
    assert!(oldest.at.timestamp_millis() <= recent);
    assert!(oldest.at.timestamp_millis() > now - 7 * DAY_MS);
    assert_eq!(oldest.cpu_percent, Some(12.5));
    assert_eq!(week.agents[0].samples[0].memory_used_bytes, Some(7));
}
