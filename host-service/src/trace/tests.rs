use std::fs;
use std::path::Path;

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use serde_json::json;
use sqlx::{ConnectOptions, Connection};
use taos_proto::trace::{TraceEvent, TraceKind};

use super::bucket::{db_path, jsonl_path, late_path};
use super::*;
use crate::fsutil::mode_of;

const SLUG: &str = "scout";

fn event(id: &str, kind: TraceKind, at: DateTime<Utc>) -> TraceEvent {
    TraceEvent {
        v: 1,
        id: id.to_string(),
        trace_id: None,
        parent_id: None,
        created_at: at,
        agent_name: SLUG.to_string(),
        kind,
        channel_id: None,
        thread_id: None,
        backend_name: None,
        model: None,
        duration_ms: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        error: None,
        payload: json!({}),
        agent_created_at: None,
    }
}

/// Start of the current UTC hour. Tests write near now so the writer's own periodic sealing
/// (which uses the real clock) never seals their buckets behind their back.
fn this_hour() -> DateTime<Utc> {
    Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap()
}

fn query(limit: usize) -> TraceQuery {
    TraceQuery {
        limit,
        ..TraceQuery::default()
    }
}

fn ids(events: &[TraceEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn store() -> (tempfile::TempDir, TraceStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = TraceStore::open(dir.path().join("trace")).unwrap();
    (dir, store)
}

async fn count_rows(path: &Path) -> i64 {
    let mut conn = bucket::open_for_read(path, bucket::is_sealed(path))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM trace_events")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn jsonl_ids(path: &Path) -> Vec<String> {
    jsonl::read(path)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[test]
fn bucket_names_are_utc_hours() {
    let t = Utc.with_ymd_and_hms(2026, 11, 27, 10, 59, 59).unwrap() + TimeDelta::milliseconds(999);
    assert_eq!(bucket_name(t), "2026-11-27T10");
    assert_eq!(bucket_name(t + TimeDelta::milliseconds(1)), "2026-11-27T11");
    assert_eq!(
        bucket::bucket_start("2026-11-27T10"),
        Some(Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap())
    );
    assert_eq!(bucket::bucket_start("2026-11-27T1"), None);
    assert_eq!(bucket::bucket_start("2026-11-27T24"), None);
    assert_eq!(
        bucket::bucket_of_file("2026-11-27T10.late.jsonl"),
        Some(("2026-11-27T10", false))
    );
    assert_eq!(
        bucket::bucket_of_file("2026-11-27T10.db"),
        Some(("2026-11-27T10", true))
    );
    assert_eq!(bucket::bucket_of_file("2026-11-27T10.db-wal"), None);
}

#[test]
fn parse_time_accepts_epoch_and_rfc3339() {
    let base = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
    assert_eq!(parse_time("1795773600"), Some(base));
    assert_eq!(
        parse_time("1795773600.25"),
        Some(base + TimeDelta::milliseconds(250))
    );
    assert_eq!(parse_time("2026-11-27T10:00:00Z"), Some(base));
    assert_eq!(parse_time("2026-11-27T12:00:00+02:00"), Some(base));
    assert_eq!(
        parse_time("2026-11-27T10:00:00.5Z"),
        Some(base + TimeDelta::milliseconds(500))
    );
    for bad in ["", "abc", "1e9", "-5", "1.", ".5", "12:00", "NaN", "inf"] {
        assert_eq!(parse_time(bad), None, "{bad:?}");
    }
}

#[test]
fn slug_rules() {
    for good in [
        "a",
        "scout",
        "agent-1",
        "0",
        "a-",
        &"a".repeat(MAX_SLUG_LEN),
    ] {
        assert!(validate_slug(good).is_ok(), "{good:?}");
    }
    let too_long = "a".repeat(MAX_SLUG_LEN + 1);
    for bad in [
        "", "..", ".", "../x", "a/b", "/abs", "%2e%2e", "a\0b", "A", "Scout", "-a", "a_b", "a.b",
        "a b", "é", &too_long,
    ] {
        assert!(
            matches!(validate_slug(bad), Err(TraceError::BadSlug)),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn slug_path_tricks_touch_nothing() {
    let (dir, store) = store();
    let too_long = "a".repeat(59);
    for bad in [
        "..", ".", "../x", "a/b", "%2e%2e", "a\0b", "A", "", &too_long,
    ] {
        let mut e = event("x", TraceKind::Lifecycle, Utc::now());
        e.agent_name = bad.to_string();
        let appended = store.append(bad, vec![e]).await;
        assert!(matches!(appended, Err(TraceError::BadSlug)), "{bad:?}");
        let listed = store.list(bad, &query(10)).await;
        assert!(matches!(listed, Err(TraceError::BadSlug)), "{bad:?}");
    }
    // Only the (empty) store root exists, nothing beside or inside it.
    let outside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec!["trace"]);
    assert_eq!(fs::read_dir(store.root()).unwrap().count(), 0);
    assert_eq!(store.seal_old_buckets(Utc::now()).await.unwrap(), 0);
}

#[tokio::test]
async fn events_route_by_their_own_hour() {
    let (_dir, store) = store();
    let hour = this_hour();
    let before = hour - TimeDelta::milliseconds(1);
    let (early, late) = (bucket_name(before), bucket_name(hour));
    assert_ne!(early, late);

    store
        .append(
            SLUG,
            vec![
                event("a", TraceKind::MessageIn, before),
                event("b", TraceKind::MessageOut, hour),
            ],
        )
        .await
        .unwrap();

    let agent = store.root().join(SLUG);
    assert_eq!(count_rows(&db_path(&agent, &early)).await, 1);
    assert_eq!(count_rows(&db_path(&agent, &late)).await, 1);
    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["b", "a"]);
    assert_eq!(listed[1].created_at, before);
    assert_eq!(listed[0].created_at, hour);
    assert_eq!(listed[0].kind, TraceKind::MessageOut);
    assert_eq!(listed[0].agent_name, SLUG);
}

#[tokio::test]
async fn full_event_round_trips() {
    let (_dir, store) = store();
    let mut e = event(
        "full",
        TraceKind::LlmCall,
        this_hour() + TimeDelta::microseconds(1500),
    );
    e.trace_id = Some("t1".into());
    e.parent_id = Some("p1".into());
    e.channel_id = Some("c1".into());
    e.thread_id = Some("th".into());
    e.backend_name = Some("openai".into());
    e.model = Some("gpt".into());
    e.duration_ms = Some(1234);
    e.tokens_in = Some(10);
    e.tokens_out = Some(20);
    e.cost_usd = Some(0.0125);
    e.error = Some("none".into());
    e.payload = json!({"prompt": "hi", "n": [1, 2]});
    store.append(SLUG, vec![e.clone()]).await.unwrap();
    let listed = store.list(SLUG, &query(1)).await.unwrap();
    // Stored with millisecond precision.
    e.created_at = this_hour() + TimeDelta::milliseconds(1);
    assert_eq!(listed, vec![e]);
}

#[tokio::test]
async fn bad_events_are_refused() {
    let (_dir, store) = store();
    let mut other = event("x", TraceKind::Error, Utc::now());
    other.agent_name = "someone-else".into();
    let mut array = event("y", TraceKind::Error, Utc::now());
    array.payload = json!([1]);
    let mut version = event("z", TraceKind::Error, Utc::now());
    version.v = 2;
    let empty_id = event("", TraceKind::Error, Utc::now());
    for e in [other, array, version, empty_id] {
        let result = store.append(SLUG, vec![e]).await;
        assert!(matches!(result, Err(TraceError::BadInput(_))), "{result:?}");
    }
    assert!(store.list(SLUG, &query(10)).await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_agent_has_empty_trace() {
    let (_dir, store) = store();
    assert!(store.list("nobody", &query(10)).await.unwrap().is_empty());
    assert!(!store.root().join("nobody").exists());
}

#[tokio::test]
async fn append_is_idempotent_by_id() {
    let (_dir, store) = store();
    let at = this_hour() + TimeDelta::seconds(5);
    let mut first = event("same", TraceKind::ToolCall, at);
    first.payload = json!({"copy": 1});
    let mut second = first.clone();
    second.payload = json!({"copy": 2});
    store.append(SLUG, vec![first]).await.unwrap();
    store
        .append(SLUG, vec![second.clone(), second])
        .await
        .unwrap();

    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["same"]);
    assert_eq!(listed[0].payload, json!({"copy": 1}));
    let db = db_path(&store.root().join(SLUG), &bucket_name(at));
    assert_eq!(count_rows(&db).await, 1);
}

#[tokio::test]
async fn filters_and_limit() {
    let (_dir, store) = store();
    let base = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::minutes(90);
    let mut events = Vec::new();
    for i in 0..10 {
        let kind = if i % 2 == 0 {
            TraceKind::LlmCall
        } else {
            TraceKind::ToolCall
        };
        let mut e = event(&format!("e{i}"), kind, base + TimeDelta::minutes(10 * i));
        e.channel_id = Some(if i < 5 { "c-a" } else { "c-b" }.into());
        e.trace_id = Some(format!("t{}", i / 3));
        events.push(e);
    }
    store.append(SLUG, events).await.unwrap();

    let all = store.list(SLUG, &query(100)).await.unwrap();
    assert_eq!(
        ids(&all),
        ["e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1", "e0"]
    );

    let q = TraceQuery {
        kind: Some(TraceKind::ToolCall),
        ..query(100)
    };
    assert_eq!(
        ids(&store.list(SLUG, &q).await.unwrap()),
        ["e9", "e7", "e5", "e3", "e1"]
    );

    let q = TraceQuery {
        channel_id: Some("c-a".into()),
        kind: Some(TraceKind::LlmCall),
        ..query(100)
    };
    assert_eq!(
        ids(&store.list(SLUG, &q).await.unwrap()),
        ["e4", "e2", "e0"]
    );

    let q = TraceQuery {
        trace_id: Some("t1".into()),
        ..query(100)
    };
    assert_eq!(
        ids(&store.list(SLUG, &q).await.unwrap()),
        ["e5", "e4", "e3"]
    );

    // Both bounds inclusive, exactly on event times.
    let q = TraceQuery {
        since: Some(base + TimeDelta::minutes(20)),
        until: Some(base + TimeDelta::minutes(50)),
        ..query(100)
    };
    assert_eq!(
        ids(&store.list(SLUG, &q).await.unwrap()),
        ["e5", "e4", "e3", "e2"]
    );
    // A bound a hair past an event excludes it.
    let q = TraceQuery {
        since: Some(base + TimeDelta::minutes(20) + TimeDelta::microseconds(1)),
        until: Some(base + TimeDelta::minutes(50) - TimeDelta::microseconds(1)),
        ..query(100)
    };
    assert_eq!(ids(&store.list(SLUG, &q).await.unwrap()), ["e4", "e3"]);

    assert_eq!(
        ids(&store.list(SLUG, &query(3)).await.unwrap()),
        ["e9", "e8", "e7"]
    );
    // Out-of-range limits are clamped, not trusted.
    assert_eq!(store.list(SLUG, &query(0)).await.unwrap().len(), 1);
    let q = TraceQuery {
        since: Some(base + TimeDelta::minutes(30)),
        ..query(2)
    };
    assert_eq!(ids(&store.list(SLUG, &q).await.unwrap()), ["e9", "e8"]);
    let q = TraceQuery {
        until: Some(base + TimeDelta::minutes(30)),
        ..query(2)
    };
    assert_eq!(ids(&store.list(SLUG, &q).await.unwrap()), ["e3", "e2"]);
}

#[tokio::test]
async fn old_buckets_are_sealed_and_late_events_kept() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    store
        .append(
            SLUG,
            vec![
                event("old-1", TraceKind::MessageIn, hour + TimeDelta::minutes(1)),
                event("old-2", TraceKind::MessageOut, hour + TimeDelta::minutes(2)),
            ],
        )
        .await
        .unwrap();
    // A JSONL side file of the same hour is sealed with it. Written behind the store's back, so
    // a new store (as after a restart) must notice it.
    store.shutdown().await;
    let store = TraceStore::open(store.root().to_path_buf()).unwrap();
    jsonl::append(
        &jsonl_path(&agent, &name),
        &[event(
            "side",
            TraceKind::Error,
            hour + TimeDelta::minutes(3),
        )],
    )
    .unwrap();

    // Exactly two hours after the hour ended is not yet "more than two hours".
    let edge = hour + TimeDelta::hours(3);
    assert_eq!(store.seal_old_buckets(edge).await.unwrap(), 0);
    assert_eq!(mode_of(&db_path(&agent, &name)).unwrap(), 0o600);

    let later = hour + TimeDelta::hours(4);
    assert_eq!(store.seal_old_buckets(later).await.unwrap(), 1);
    let db = db_path(&agent, &name);
    assert_eq!(mode_of(&db).unwrap(), 0o400);
    assert_eq!(mode_of(&jsonl_path(&agent, &name)).unwrap(), 0o400);
    assert!(!agent.join(format!("{name}.db-wal")).exists());
    assert_eq!(count_rows(&db).await, 2);
    let db_bytes = fs::read(&db).unwrap();
    assert_eq!(store.seal_old_buckets(later).await.unwrap(), 0);

    // We run as root in CI, where a write to the 0400 file would succeed; the store must still
    // route by mode and leave the sealed file alone.
    store
        .append(
            SLUG,
            vec![
                event("late-1", TraceKind::ToolCall, hour + TimeDelta::minutes(30)),
                event("old-1", TraceKind::MessageIn, hour + TimeDelta::minutes(1)),
            ],
        )
        .await
        .unwrap();
    let late = late_path(&agent, &name);
    assert_eq!(jsonl_ids(&late), ["late-1", "old-1"]);
    assert_eq!(mode_of(&late).unwrap(), 0o600);
    assert_eq!(
        fs::read(&db).unwrap(),
        db_bytes,
        "sealed database unchanged"
    );
    assert!(!agent.join(format!("{name}.db-wal")).exists());
    assert!(!agent.join(format!("{name}.db-shm")).exists());

    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["late-1", "side", "old-2", "old-1"]);
    assert!(
        !agent.join(format!("{name}.db-wal")).exists(),
        "reader made no WAL"
    );
}

#[tokio::test]
async fn garbage_database_falls_back_to_jsonl() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    fsutil::ensure_private_dir(&agent).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
    fs::write(db_path(&agent, &name), &garbage).unwrap();

    store
        .append(
            SLUG,
            vec![event("g1", TraceKind::Error, hour + TimeDelta::seconds(1))],
        )
        .await
        .unwrap();
    store
        .append(
            SLUG,
            vec![event("g2", TraceKind::Error, hour + TimeDelta::seconds(2))],
        )
        .await
        .unwrap();

    let side = jsonl_path(&agent, &name);
    assert_eq!(jsonl_ids(&side), ["g1", "g2"]);
    assert_eq!(mode_of(&side).unwrap(), 0o600);
    assert_eq!(fs::read(db_path(&agent, &name)).unwrap(), garbage);
    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["g2", "g1"]);
}

#[tokio::test]
async fn directory_in_place_of_database_falls_back_to_jsonl() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    fs::create_dir_all(db_path(&agent, &name)).unwrap();

    store
        .append(SLUG, vec![event("d1", TraceKind::Reasoning, hour)])
        .await
        .unwrap();
    assert_eq!(jsonl_ids(&jsonl_path(&agent, &name)), ["d1"]);
    assert_eq!(ids(&store.list(SLUG, &query(10)).await.unwrap()), ["d1"]);
    // Never sealed as if it were a database file.
    assert_eq!(
        store
            .seal_old_buckets(hour + TimeDelta::hours(10))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn database_corrupted_after_use_falls_back_to_jsonl() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    store
        .append(SLUG, vec![event("before", TraceKind::Lifecycle, hour)])
        .await
        .unwrap();
    // Close the writer's connection so the damage is seen on the next open.
    store.shutdown().await;
    let db = db_path(&agent, &name);
    fs::write(&db, vec![0xA5u8; 8192]).unwrap();

    store
        .append(
            SLUG,
            vec![event(
                "after",
                TraceKind::Lifecycle,
                hour + TimeDelta::seconds(1),
            )],
        )
        .await
        .unwrap();
    assert_eq!(jsonl_ids(&jsonl_path(&agent, &name)), ["after"]);
    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["after"]);
}

#[tokio::test]
async fn merge_prefers_database_then_jsonl_then_late() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    let at = |s| hour + TimeDelta::seconds(s);

    let mut in_db = event("one", TraceKind::LlmCall, at(1));
    in_db.payload = json!({"from": "db"});
    store.append(SLUG, vec![in_db]).await.unwrap();
    // The side files below are written behind the store's back: a restarted store notices them.
    store.shutdown().await;

    let mut one_jsonl = event("one", TraceKind::LlmCall, at(1));
    one_jsonl.payload = json!({"from": "jsonl"});
    let mut two_jsonl = event("two", TraceKind::LlmCall, at(2));
    two_jsonl.payload = json!({"from": "jsonl"});
    jsonl::append(&jsonl_path(&agent, &name), &[one_jsonl, two_jsonl]).unwrap();

    let mut one_late = event("one", TraceKind::LlmCall, at(1));
    one_late.payload = json!({"from": "late"});
    let mut two_late = event("two", TraceKind::LlmCall, at(2));
    two_late.payload = json!({"from": "late"});
    let mut three_late = event("three", TraceKind::LlmCall, at(3));
    three_late.payload = json!({"from": "late"});
    jsonl::append(&late_path(&agent, &name), &[one_late, two_late, three_late]).unwrap();
    let store = TraceStore::open(store.root().to_path_buf()).unwrap();

    let listed = store.list(SLUG, &query(10)).await.unwrap();
    assert_eq!(ids(&listed), ["three", "two", "one"]);
    let from: Vec<_> = listed.iter().map(|e| e.payload["from"].clone()).collect();
    assert_eq!(from, [json!("late"), json!("jsonl"), json!("db")]);

    // The database copy wins even when a filter or the limit kept it out of the fetched page:
    // the JSONL copy of "one" must not sneak in under a filter only it matches.
    let mut disguised = event("one", TraceKind::Error, at(1));
    disguised.payload = json!({"from": "jsonl"});
    jsonl::append(&jsonl_path(&agent, &name), &[disguised]).unwrap();
    let store = TraceStore::open(store.root().to_path_buf()).unwrap();
    let q = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(10)
    };
    assert!(store.list(SLUG, &q).await.unwrap().is_empty());
}

#[tokio::test]
async fn torn_jsonl_line_does_not_swallow_the_next_event() {
    let (_dir, store) = store();
    let hour = this_hour();
    let name = bucket_name(hour);
    let agent = store.root().join(SLUG);
    fsutil::ensure_private_dir(&agent).unwrap();
    let side = jsonl_path(&agent, &name);
    fs::write(&side, b"{\"v\":1,\"id\":\"torn").unwrap();
    jsonl::append(&side, &[event("whole", TraceKind::Error, hour)]).unwrap();
    assert_eq!(jsonl_ids(&side), ["whole"]);
    assert_eq!(ids(&store.list(SLUG, &query(10)).await.unwrap()), ["whole"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_appends_are_all_kept() {
    let (_dir, store) = store();
    let base = this_hour();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = event(
                &format!("c{i:03}"),
                TraceKind::ToolResult,
                base + TimeDelta::milliseconds(i),
            );
            store.append(SLUG, vec![e]).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let listed = store.list(SLUG, &query(1000)).await.unwrap();
    assert_eq!(listed.len(), 300);
    let expected: Vec<String> = (0..300).rev().map(|i| format!("c{i:03}")).collect();
    assert_eq!(ids(&listed), expected);
}

#[tokio::test]
async fn files_and_directories_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("trace");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let store = TraceStore::open(root.clone()).unwrap();
    assert_eq!(mode_of(&root).unwrap(), 0o700);

    let hour = this_hour();
    let name = bucket_name(hour);
    store
        .append(SLUG, vec![event("m1", TraceKind::Lifecycle, hour)])
        .await
        .unwrap();
    let agent = root.join(SLUG);
    assert_eq!(mode_of(&agent).unwrap(), 0o700);
    assert_eq!(mode_of(&db_path(&agent, &name)).unwrap(), 0o600);
    let wal = agent.join(format!("{name}.db-wal"));
    assert!(wal.exists(), "writer keeps the bucket open in WAL mode");
    assert_eq!(mode_of(&wal).unwrap(), 0o600);
    for entry in fs::read_dir(&agent).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode_of(&path).unwrap(), 0o600, "{}", path.display());
    }
}

fn mkfifo(path: &Path) {
    let out = std::process::Command::new("mkfifo")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfifo: {out:?}");
}

fn host_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, b"").unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

/// An agent folder holding what an agent could plant while the folder was mounted into its
/// container: a symlink to a host file named like this hour's database, a hard link to another
/// host file named like an old hour's database, FIFOs named like side files, a symlink named like
/// an old bucket's JSONL. Nothing is written, chmod-ed or hung on through them.
#[tokio::test]
async fn planted_links_and_fifos_are_never_followed() {
    let (dir, store) = store();
    let agent = store.root().join(SLUG);
    fs::create_dir_all(&agent).unwrap();
    let hour = this_hour();
    let old = hour - TimeDelta::hours(5);
    let older = hour - TimeDelta::hours(6);
    let written = host_file(dir.path(), "written-through-a-symlink");
    let chmodded = host_file(dir.path(), "chmod-ed-through-a-hard-link");
    let chmodded_jsonl = host_file(dir.path(), "chmod-ed-through-a-jsonl-symlink");
    std::os::unix::fs::symlink(&written, db_path(&agent, &bucket_name(hour))).unwrap();
    fs::hard_link(&chmodded, db_path(&agent, &bucket_name(old))).unwrap();
    mkfifo(&jsonl_path(&agent, &bucket_name(old)));
    mkfifo(&late_path(&agent, &bucket_name(hour)));
    // A real bucket of ours whose side file is a symlink: it is sealed, the target is not.
    store
        .append(SLUG, vec![event("real-old", TraceKind::Lifecycle, older)])
        .await
        .unwrap();
    std::os::unix::fs::symlink(&chmodded_jsonl, jsonl_path(&agent, &bucket_name(older))).unwrap();

    // A write for this hour: not through the symlink (its database is refused, the events go
    // to the hour's JSONL file instead).
    store
        .append(SLUG, vec![event("now", TraceKind::Lifecycle, hour)])
        .await
        .unwrap();
    assert_eq!(
        fs::read(&written).unwrap(),
        b"",
        "nothing written through the symlink"
    );
    assert!(!dir.path().join("written-through-a-symlink-wal").exists());

    // Sealing: the hard-linked file keeps its mode, so does the symlink's target.
    store.seal_old_buckets(Utc::now()).await.unwrap();
    assert_eq!(
        mode_of(&chmodded).unwrap(),
        0o644,
        "no chmod through a hard link"
    );
    assert_eq!(
        mode_of(&chmodded_jsonl).unwrap(),
        0o644,
        "no chmod through a symlink"
    );
    assert_eq!(mode_of(&written).unwrap(), 0o644);
    assert!(
        bucket::is_sealed(&db_path(&agent, &bucket_name(older))),
        "ours is sealed"
    );

    // Reads don't hang on the FIFOs and list only what the host wrote.
    let listed = store.list(SLUG, &query(100)).await.unwrap();
    assert_eq!(ids(&listed), ["now", "real-old"]);
    // The planted entries are still there, untouched and unread.
    for planted in [
        db_path(&agent, &bucket_name(hour)),
        jsonl_path(&agent, &bucket_name(old)),
        late_path(&agent, &bucket_name(hour)),
    ] {
        assert!(
            fs::symlink_metadata(&planted).is_ok(),
            "{}",
            planted.display()
        );
    }
}

#[tokio::test]
async fn a_symlinked_agent_folder_is_refused() {
    let (dir, store) = store();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(
        &elsewhere,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, store.root().join(SLUG)).unwrap();
    let result = store
        .append(SLUG, vec![event("x", TraceKind::Lifecycle, this_hour())])
        .await;
    assert!(result.is_err(), "no writes into a symlinked folder");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(
        mode_of(&elsewhere).unwrap(),
        0o755,
        "not chmod-ed through the link"
    );
    assert!(store.list(SLUG, &query(10)).await.unwrap().is_empty());
}

#[test]
fn times_far_from_now_are_clamped_and_kept() {
    let now = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
    for (given, expected) in [
        (
            Utc.with_ymd_and_hms(1971, 1, 1, 0, 0, 0).unwrap(),
            now - MAX_CLOCK_SKEW,
        ),
        (
            Utc.with_ymd_and_hms(2099, 6, 1, 0, 0, 0).unwrap(),
            now + MAX_CLOCK_SKEW,
        ),
        (
            Utc.with_ymd_and_hms(9998, 1, 1, 0, 0, 0).unwrap(),
            now + MAX_CLOCK_SKEW,
        ),
    ] {
        let mut e = event("x", TraceKind::Error, given);
        clamp_created_at(&mut e, now);
        assert_eq!(e.created_at, expected);
        assert_eq!(e.agent_created_at, Some(given));
    }
    let near = now - TimeDelta::hours(23);
    let mut e = event("y", TraceKind::Error, near);
    clamp_created_at(&mut e, now);
    assert_eq!((e.created_at, e.agent_created_at), (near, None));
}

/// With a quota, the writer deletes the oldest closed hours first, tells its listener, and
/// refuses writes once only open hours are left.
#[tokio::test]
async fn over_quota_the_oldest_closed_hours_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let store = TraceStore::open_with(
        dir.path().join("trace"),
        StoreLimits {
            quota_bytes: Some(400 * 1024),
            notices: Some(tx),
        },
    )
    .unwrap();
    let hour = this_hour();
    let big = |id: String, at| {
        let mut e = event(&id, TraceKind::ToolResult, at);
        e.payload = json!({"text": "x".repeat(40 * 1024)});
        e
    };
    // Three closed hours, written (and sealed) in one round: a big one (about 150 KiB) and two
    // small ones, so that deleting the oldest is enough, whatever SQLite's page overhead.
    let closed: Vec<_> = (0..3).map(|h| hour - TimeDelta::hours(10 - h)).collect();
    let mut events: Vec<_> = (0..3)
        .map(|i| big(format!("old0-{i}"), closed[0]))
        .collect();
    events.push(event("old1", TraceKind::Error, closed[1]));
    events.push(event("old2", TraceKind::Error, closed[2]));
    store.append(SLUG, events).await.unwrap();
    // This hour: enough to pass the quota.
    store
        .append(
            SLUG,
            (0..4).map(|i| big(format!("now-{i}"), hour)).collect(),
        )
        .await
        .unwrap();
    // The next write makes room first: the oldest hour goes.
    store
        .append(SLUG, vec![event("small", TraceKind::Error, hour)])
        .await
        .unwrap();
    let agent = store.root().join(SLUG);
    assert!(
        !db_path(&agent, &bucket_name(closed[0])).exists(),
        "oldest hour deleted"
    );
    assert!(
        db_path(&agent, &bucket_name(closed[1])).exists(),
        "only what was needed went"
    );
    assert!(
        db_path(&agent, &bucket_name(closed[2])).exists(),
        "newest closed hour kept"
    );
    // Sent before the append was answered.
    let Ok(QuotaNotice::Deleted { slug, buckets, .. }) = notices.try_recv() else {
        panic!("a deletion notice");
    };
    assert_eq!(slug, SLUG);
    assert_eq!(buckets, [bucket_name(closed[0])]);

    // Filling this hour alone: once no closed hour is left, writes are refused.
    let mut refused = None;
    for round in 0..20 {
        let batch = (0..3)
            .map(|i| big(format!("fill{round}-{i}"), hour))
            .collect();
        if let Err(e) = store.append(SLUG, batch).await {
            refused = Some(e);
            break;
        }
    }
    assert!(
        matches!(refused, Some(TraceError::QuotaFull { .. })),
        "{refused:?}"
    );
    for at in &closed {
        assert!(
            !db_path(&agent, &bucket_name(*at)).exists(),
            "closed hours went first"
        );
    }
    let mut full = false;
    while let Ok(notice) = notices.try_recv() {
        full |= matches!(notice, QuotaNotice::Full { .. });
    }
    assert!(full, "the listener heard the quota is full");
}

/// Hours read by `f` on this thread (the tests run on a current-thread runtime).
async fn hours_read<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    read::HOURS_READ.with(|n| n.set(0));
    let out = f.await;
    (out, read::HOURS_READ.with(|n| n.get()))
}

/// `hours` hours ending with the current one, `per_hour` events each, evenly spread; every
/// `rare_every`-th event (counting from the oldest) is an error, the rest alternate between
/// tool calls and LLM calls. Returns them oldest first.
fn day_of_events(hours: i64, per_hour: i64, rare_every: i64) -> Vec<TraceEvent> {
    let first = this_hour() - TimeDelta::hours(hours - 1);
    let step = 3_600_000 / per_hour;
    let mut events = Vec::new();
    for i in 0..hours * per_hour {
        let kind = if i % rare_every == rare_every - 1 {
            TraceKind::Error
        } else if i % 2 == 0 {
            TraceKind::ToolCall
        } else {
            TraceKind::LlmCall
        };
        let mut e = event(
            &format!("e{i:05}"),
            kind,
            first + TimeDelta::milliseconds(i * step),
        );
        e.tokens_in = Some(i % 7);
        e.cost_usd = Some(0.5);
        events.push(e);
    }
    events
}

fn newest_first(events: &[TraceEvent], keep: impl Fn(&TraceEvent) -> bool) -> Vec<&str> {
    events
        .iter()
        .rev()
        .filter(|e| keep(e))
        .map(|e| e.id.as_str())
        .collect()
}

#[tokio::test]
async fn a_rare_kind_reads_only_the_hours_that_have_it() {
    let (_dir, store) = store();
    // 12 hours of 40 events; one error in 120, so only every third hour has one.
    let events = day_of_events(12, 40, 120);
    store.append(SLUG, events.clone()).await.unwrap();
    let rare = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(100)
    };
    let (listed, read) = hours_read(store.list(SLUG, &rare)).await;
    let listed = listed.unwrap();
    let expected = newest_first(&events, |e| e.kind == TraceKind::Error);
    assert_eq!(expected.len(), 4);
    assert_eq!(ids(&listed), expected);
    assert_eq!(read, 4, "only the four hours with an error are opened");

    // Enough of the rare kind in the newest hours: it stops there.
    let two = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(2)
    };
    let (listed, read) = hours_read(store.list(SLUG, &two)).await;
    assert_eq!(ids(&listed.unwrap()), &expected[..2]);
    assert_eq!(read, 2);

    // A common kind and no kind stop at the first hour that fills the page.
    let common = TraceQuery {
        kind: Some(TraceKind::ToolCall),
        ..query(15)
    };
    let (listed, read) = hours_read(store.list(SLUG, &common)).await;
    assert_eq!(
        ids(&listed.unwrap()),
        &newest_first(&events, |e| e.kind == TraceKind::ToolCall)[..15]
    );
    assert_eq!(read, 1);
    let (listed, read) = hours_read(store.list(SLUG, &query(100))).await;
    assert_eq!(
        ids(&listed.unwrap()),
        &newest_first(&events, |_| true)[..100]
    );
    assert_eq!(read, 3, "40 a hour: three hours make 100");
}

#[tokio::test]
async fn a_window_reads_only_its_hours_and_its_bounds_hold() {
    let (_dir, store) = store();
    let events = day_of_events(6, 30, 200);
    store.append(SLUG, events.clone()).await.unwrap();
    // From the middle of the second hour to the middle of the third, both inclusive.
    let since = events[45].created_at;
    let until = events[75].created_at;
    let window = TraceQuery {
        since: Some(since),
        until: Some(until),
        ..query(1000)
    };
    let (listed, read) = hours_read(store.list(SLUG, &window)).await;
    let listed = listed.unwrap();
    assert_eq!(
        ids(&listed),
        newest_first(&events, |e| e.created_at >= since && e.created_at <= until)
    );
    assert_eq!(listed.len(), 31);
    assert_eq!(read, 2);

    // A window inside one hour where no tool call falls (by the kind's first and last time).
    let early = this_hour() - TimeDelta::hours(10);
    let q = TraceQuery {
        since: Some(early),
        until: Some(early + TimeDelta::minutes(30)),
        ..query(10)
    };
    let (listed, read) = hours_read(store.list(SLUG, &q)).await;
    assert!(listed.unwrap().is_empty());
    assert_eq!(read, 0, "no hour of the store is in that window");
    // An inverted window matches nothing and reads nothing.
    let q = TraceQuery {
        since: Some(until),
        until: Some(since),
        ..query(10)
    };
    let (listed, read) = hours_read(store.list(SLUG, &q)).await;
    assert!(listed.unwrap().is_empty());
    assert_eq!(read, 0);
}

#[tokio::test]
async fn paging_a_rare_kind_crosses_the_hours_it_skips() {
    let (_dir, store) = store();
    let events = day_of_events(10, 20, 30);
    store.append(SLUG, events.clone()).await.unwrap();
    let rare = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(2)
    };
    let mut got = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let (page, next) = pages::page(&store, SLUG, &rare, cursor.as_ref())
            .await
            .unwrap();
        got.extend(page.into_iter().map(|e| e.id));
        pages += 1;
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 100, "paging ends");
    }
    let expected = newest_first(&events, |e| e.kind == TraceKind::Error);
    assert_eq!(got, expected);
    assert_eq!(expected.len(), 6);
}

#[tokio::test]
async fn sealed_open_and_late_hours_are_all_found() {
    let (_dir, store) = store();
    let hour = this_hour();
    let old = hour - TimeDelta::hours(6);
    store
        .append(
            SLUG,
            vec![
                event("old-tool", TraceKind::ToolCall, old),
                event("now-tool", TraceKind::ToolCall, hour),
            ],
        )
        .await
        .unwrap();
    // The writer may have sealed it already on its own.
    store.seal_old_buckets(Utc::now()).await.unwrap();
    let agent = store.root().join(SLUG);
    assert!(bucket::is_sealed(&db_path(&agent, &bucket_name(old))));
    // A late error for the sealed hour goes to its .late.jsonl; the index must still send an
    // error query there.
    store
        .append(
            SLUG,
            vec![event(
                "late-error",
                TraceKind::Error,
                old + TimeDelta::minutes(5),
            )],
        )
        .await
        .unwrap();
    assert!(late_path(&agent, &bucket_name(old)).exists());
    let errors = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(10)
    };
    let (listed, read) = hours_read(store.list(SLUG, &errors)).await;
    assert_eq!(ids(&listed.unwrap()), ["late-error"]);
    assert_eq!(read, 1);
    assert_eq!(
        ids(&store.list(SLUG, &query(10)).await.unwrap()),
        ["now-tool", "late-error", "old-tool"]
    );
    // And after a restart, from the index file.
    store.shutdown().await;
    let again = TraceStore::open(store.root().to_path_buf()).unwrap();
    let (listed, read) = hours_read(again.list(SLUG, &errors)).await;
    assert_eq!(ids(&listed.unwrap()), ["late-error"]);
    assert_eq!(read, 1);
}

/// What `totals_per_day` says, with the same sums computed by hand from `events`.
async fn check_totals(store: &TraceStore, events: &[TraceEvent], q: &TraceQuery) {
    let totals = pages::totals_per_day(store, SLUG, q).await.unwrap();
    let mut expected: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    for e in events {
        let (Some(since), Some(until)) = (q.since, q.until) else {
            unreachable!()
        };
        if e.created_at < since || e.created_at > until || q.kind.is_some_and(|k| k != e.kind) {
            continue;
        }
        let day = expected
            .entry(e.created_at.format("%Y-%m-%d").to_string())
            .or_default();
        day.0 += 1;
        day.1 += e.tokens_in.unwrap_or(0);
    }
    let got: Vec<(String, u64, i64)> = totals
        .iter()
        .map(|d| (d.day.clone(), d.events, d.tokens_in))
        .collect();
    let want: Vec<(String, u64, i64)> = expected
        .into_iter()
        .rev()
        .map(|(day, (n, t))| (day, n, t))
        .collect();
    assert_eq!(got, want, "{q:?}");
    for d in &totals {
        assert!((d.cost_usd - d.events as f64 * 0.5).abs() < 1e-6);
        assert_eq!(d.by_kind.values().sum::<u64>(), d.events);
    }
}

#[tokio::test]
async fn totals_come_from_the_index_and_the_cut_hours() {
    let (_dir, store) = store();
    let events = day_of_events(30, 10, 25);
    store.append(SLUG, events.clone()).await.unwrap();
    let start = this_hour() - TimeDelta::hours(29);
    let end = this_hour() + TimeDelta::hours(1);
    // Whole hours only, then ranges cutting hours at both ends, with and without a kind.
    for (since, until) in [
        (start, end),
        (start + TimeDelta::minutes(17), end - TimeDelta::minutes(41)),
        (
            start + TimeDelta::hours(3) + TimeDelta::seconds(1),
            start + TimeDelta::hours(3) + TimeDelta::minutes(20),
        ),
    ] {
        for kind in [None, Some(TraceKind::Error), Some(TraceKind::LlmCall)] {
            let q = TraceQuery {
                kind,
                since: Some(since),
                until: Some(until),
                ..query(1)
            };
            check_totals(&store, &events, &q).await;
        }
    }
    // Whole hours are not read: a full-day range opens only the hours it cuts (none here).
    let q = TraceQuery {
        since: Some(start),
        until: Some(end - TimeDelta::milliseconds(1)),
        ..query(1)
    };
    let (_, read) = hours_read(pages::totals_per_day(&store, SLUG, &q)).await;
    assert_eq!(read, 0);
    // A repeated id makes an hour's counts an upper bound: totals read that hour instead, and
    // still count each event once.
    store.append(SLUG, vec![events[5].clone()]).await.unwrap();
    let (_, read) = hours_read(check_totals(&store, &events, &q)).await;
    assert_eq!(read, 1);
}

#[tokio::test]
async fn a_missing_or_stale_index_is_rebuilt_from_the_buckets() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    let agent = root.join(SLUG);
    let events = day_of_events(4, 10, 10);
    let (first, second): (Vec<_>, Vec<_>) = events.iter().cloned().partition(|e| {
        e.id.trim_start_matches('e')
            .parse::<u32>()
            .is_ok_and(|i| i % 2 == 0)
    });
    store.append(SLUG, first).await.unwrap();
    store.shutdown().await;
    let index_file = agent.join(index::INDEX_FILE);
    assert!(index_file.is_file());
    assert_eq!(mode_of(&index_file).unwrap(), 0o600);
    let early = fs::read(&index_file).unwrap();

    // More events in the same hours, then the index file from before them, as if the host had
    // died between the bucket commit and the index update with no `writing` mark (the worst
    // case): the files no longer look as recorded.
    let store = TraceStore::open(root.clone()).unwrap();
    store.append(SLUG, second).await.unwrap();
    store.shutdown().await;
    fs::write(&index_file, &early).unwrap();
    let errors = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(100)
    };
    let all_errors = newest_first(&events, |e| e.kind == TraceKind::Error);
    let store = TraceStore::open(root.clone()).unwrap();
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), all_errors);
    let whole = TraceQuery {
        since: Some(this_hour() - TimeDelta::hours(3)),
        until: Some(this_hour() + TimeDelta::hours(1)),
        ..query(1)
    };
    check_totals(&store, &events, &whole).await;

    // No index at all.
    store.shutdown().await;
    fs::remove_file(&index_file).unwrap();
    let store = TraceStore::open(root.clone()).unwrap();
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), all_errors);
    assert!(index_file.is_file(), "written again");
    // A damaged one.
    fs::write(&index_file, vec![0x5Au8; 4096]).unwrap();
    let store = TraceStore::open(root.clone()).unwrap();
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), all_errors);
    check_totals(&store, &events, &whole).await;
    // A row left `writing` (a crash with the hour open) is counted again, even though its
    // files look as recorded.
    store.shutdown().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&index_file)
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE hours SET writing = 1, exact = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM kinds WHERE kind = 'error'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = TraceStore::open(root).unwrap();
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), all_errors);
}

#[tokio::test]
async fn a_moved_agent_folder_is_noticed() {
    let (dir, store) = store();
    let agent = store.root().join(SLUG);
    store
        .append(SLUG, vec![event("first", TraceKind::Error, this_hour())])
        .await
        .unwrap();
    assert_eq!(store.list(SLUG, &query(10)).await.unwrap().len(), 1);
    // Archive: the folder leaves; the store must not answer from its memory of it.
    store.shutdown().await;
    fs::rename(&agent, dir.path().join("archived")).unwrap();
    assert!(store.list(SLUG, &query(10)).await.unwrap().is_empty());
    // Restore: it comes back.
    fs::rename(dir.path().join("archived"), &agent).unwrap();
    assert_eq!(ids(&store.list(SLUG, &query(10)).await.unwrap()), ["first"]);
}

/// The events of a kind an hour holds few of are kept between reads (`read::Rare`); a commit to
/// the hour, its seal and a late event must each show in the next read all the same.
#[tokio::test]
async fn kept_events_of_a_rare_kind_never_hide_newer_ones() {
    let (_dir, store) = store();
    let hour = this_hour();
    let at = |m: i64| hour + TimeDelta::minutes(m);
    let errors = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(100)
    };
    let mut events = vec![event("err-1", TraceKind::Error, at(1))];
    events.extend((0..20).map(|i| event(&format!("tool-{i}"), TraceKind::ToolCall, at(2))));
    store.append(SLUG, events).await.unwrap();
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), ["err-1"]);
    // Read again (kept now), then a commit to the same hour.
    assert_eq!(ids(&store.list(SLUG, &errors).await.unwrap()), ["err-1"]);
    store
        .append(SLUG, vec![event("err-2", TraceKind::Error, at(3))])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.list(SLUG, &errors).await.unwrap()),
        ["err-2", "err-1"]
    );
    // A window inside the hour is answered from what is kept, filtered.
    let window = TraceQuery {
        since: Some(at(2)),
        ..errors.clone()
    };
    assert_eq!(ids(&store.list(SLUG, &window).await.unwrap()), ["err-2"]);
    let one = TraceQuery {
        limit: 1,
        ..errors.clone()
    };
    assert_eq!(ids(&store.list(SLUG, &one).await.unwrap()), ["err-2"]);

    // Sealed: the same events, then a late one (a side file) shows too.
    store
        .seal_old_buckets(hour + TimeDelta::hours(4))
        .await
        .unwrap();
    assert!(bucket::is_sealed(&db_path(
        &store.root().join(SLUG),
        &bucket_name(hour)
    )));
    assert_eq!(
        ids(&store.list(SLUG, &errors).await.unwrap()),
        ["err-2", "err-1"]
    );
    store
        .append(SLUG, vec![event("err-3", TraceKind::Error, at(4))])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.list(SLUG, &errors).await.unwrap()),
        ["err-3", "err-2", "err-1"]
    );
}

/// A second identical query for a rare kind over sealed hours, one of them with a late side
/// file, is answered from the kept events (`read::Rare`) without a single query to a bucket
/// database; a late event of that kind shows in the read after it all the same.
#[tokio::test]
async fn a_rare_kind_is_kept_between_reads_of_sealed_hours() {
    let (_dir, store) = store();
    // 6 hours of 50 events, one error in 50: one in each hour.
    let mut events = day_of_events(6, 50, 50);
    store.append(SLUG, events.clone()).await.unwrap();
    store
        .seal_old_buckets(this_hour() + TimeDelta::hours(12))
        .await
        .unwrap();
    let dir = store.root().join(SLUG);
    for hour in 0..6 {
        let name = bucket_name(this_hour() - TimeDelta::hours(hour));
        assert!(bucket::is_sealed(&db_path(&dir, &name)), "{name} sealed");
    }
    // Late events (into side files of sealed hours): one of another kind, one error.
    let two_back = this_hour() - TimeDelta::hours(2);
    let late = vec![
        event(
            "late-tool",
            TraceKind::ToolCall,
            two_back + TimeDelta::minutes(59),
        ),
        event(
            "late-error-1",
            TraceKind::Error,
            two_back + TimeDelta::minutes(58),
        ),
    ];
    store.append(SLUG, late.clone()).await.unwrap();
    assert!(late_path(&dir, &bucket_name(two_back)).exists());
    events.extend(late);
    events.sort_by_key(|e| e.created_at);
    let errors = TraceQuery {
        kind: Some(TraceKind::Error),
        ..query(100)
    };
    let expected = newest_first(&events, |e| e.kind == TraceKind::Error);
    assert_eq!(expected.len(), 7);

    let (first, reads, hits) = db_reads(store.list(SLUG, &errors)).await;
    assert_eq!(ids(&first.unwrap()), expected);
    assert!(reads >= 6, "the first read asks each hour's database");
    assert_eq!(hits, 0);
    let (second, reads, hits) = db_reads(store.list(SLUG, &errors)).await;
    assert_eq!(ids(&second.unwrap()), expected);
    assert_eq!(reads, 0, "the second read is answered from the kept events");
    assert_eq!(hits, 6, "every hour with an error, side file or not");

    // Another late error, into the hour that has a side file already and is kept: it shows.
    let late = event(
        "late-error-2",
        TraceKind::Error,
        two_back + TimeDelta::minutes(59),
    );
    store.append(SLUG, vec![late.clone()]).await.unwrap();
    events.push(late);
    events.sort_by_key(|e| e.created_at);
    let expected = newest_first(&events, |e| e.kind == TraceKind::Error);
    let (third, _, hits) = db_reads(store.list(SLUG, &errors)).await;
    assert_eq!(ids(&third.unwrap()), expected);
    assert_eq!(hits, 5, "only the changed hour is read again");
    // And a late error into an hour that had no side file until now.
    let five_back = this_hour() - TimeDelta::hours(5);
    let late = event(
        "late-error-3",
        TraceKind::Error,
        five_back + TimeDelta::minutes(59),
    );
    store.append(SLUG, vec![late.clone()]).await.unwrap();
    events.push(late);
    events.sort_by_key(|e| e.created_at);
    let expected = newest_first(&events, |e| e.kind == TraceKind::Error);
    let (fourth, _, _) = db_reads(store.list(SLUG, &errors)).await;
    assert_eq!(ids(&fourth.unwrap()), expected);
}

/// Queries to bucket databases made by `f` on this thread, and hours answered from kept events.
async fn db_reads<T>(f: impl std::future::Future<Output = T>) -> (T, usize, usize) {
    read::DB_READS.with(|n| n.set(0));
    read::RARE_HITS.with(|n| n.set(0));
    let out = f.await;
    (
        out,
        read::DB_READS.with(|n| n.get()),
        read::RARE_HITS.with(|n| n.get()),
    )
}
