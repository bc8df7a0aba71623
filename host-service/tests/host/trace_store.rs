//! The trace store is the host's alone (issue 12, item 1): no container sees it, and a store
//! left where containers could write it is migrated without trusting anything in it. Real
//! incus, the real `taos-agent` image, the real binary.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{Host, HostOptions};
use taos_host::runtime::Runtime;

use taos_e2e::fixtures::{catalog, deploy_succeeded, incus, require_image, Remove};

use crate::{host_with, BIN};

fn bucket(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H").to_string()
}

/// Every symlink and FIFO under `root`, found without following anything.
fn links_and_fifos(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_symlink() || kind.is_fifo() {
                found.push(entry.path());
            } else if kind.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    found
}

/// The disk devices of an instance other than its root disk, as incus has them in force.
fn extra_disks(container: &str) -> Vec<Value> {
    let out = std::process::Command::new("incus")
        .args(["query", &format!("/1.0/instances/{container}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let instance: Value = serde_json::from_slice(&out.stdout).unwrap();
    instance["expanded_devices"]
        .as_object()
        .unwrap()
        .values()
        .filter(|d| d["type"] == "disk" && d["path"] != "/")
        .cloned()
        .collect()
}

/// A deployed agent's slug, and the guard that deletes its container.
async fn deploy_agent(host: &Host, name: &str) -> (String, Remove) {
    catalog(host).await;
    deploy_succeeded(
        host,
        json!({"name": name, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2}),
    )
    .await
}

async fn post_trace(host: &Host, slug: &str, id: &str, at: chrono::DateTime<Utc>) {
    let r = host
        .admin(Method::POST, "/api/trace")
        .json(&json!({"agent_name": slug, "id": id, "kind": "tool_call", "created_at": at.to_rfc3339(), "payload": {"n": id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// The ids of the `tool_call` events (the ones the tests post; the sidecar adds its own
/// lifecycle events) through the API. The client gives up after 30 s, so a read that hangs on a
/// planted FIFO fails here.
async fn trace_ids(host: &Host, slug: &str) -> Vec<String> {
    let r = host
        .admin(
            Method::GET,
            &format!("/api/agents/{slug}/trace?kind=tool_call&limit=1000"),
        )
        .send()
        .await
        .expect("the trace read answers");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let mut ids: Vec<String> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Attack: from inside its container, an agent plants a symlink to a host file, a FIFO and a
/// symlinked folder where the trace folder used to be mounted. Before the fix the folder was the
/// host's store, bind-mounted read-write: the planted entries appeared in `<data>/trace/<slug>`
/// and the host opened and chmod-ed files there by path. Now nothing is mounted and the host's
/// data dir never sees them.
#[tokio::test]
async fn an_agent_cannot_plant_anything_in_the_trace_store() {
    require_image().await;
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let (slug, _cleanup) = deploy_agent(&host, "Planter").await;
    let container = format!("taos-{slug}");

    assert_eq!(
        extra_disks(&container),
        Vec::<Value>::new(),
        "no host folder is mounted into the container"
    );
    let hour = bucket(Utc::now());
    let plant = format!(
        "mkdir -p /root/.taos/trace && cd /root/.taos/trace && \
         ln -s /etc/shadow {hour}.db && mkfifo {hour}.jsonl && ln -s / other-agent && echo planted"
    );
    let out = incus()
        .exec(
            &container,
            &["sh", "-c", &plant],
            &Default::default(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");

    // The host writes and reads this hour's bucket as usual: its own file, not the planted one.
    post_trace(&host, &slug, "after-planting", Utc::now()).await;
    assert_eq!(trace_ids(&host, &slug).await, ["after-planting"]);
    let stored = host
        .data_dir
        .join("traces")
        .join(&slug)
        .join(format!("{hour}.db"));
    assert!(
        std::fs::symlink_metadata(&stored).unwrap().is_file(),
        "the bucket is a plain file of the host's"
    );
    let planted = links_and_fifos(&host.data_dir);
    assert!(
        planted.is_empty(),
        "no symlink or FIFO anywhere in the data dir: {planted:?}"
    );
}

/// A data dir in the old layout (`<data>/trace/<slug>` mounted into the container as device
/// `trace`), with hostile entries planted in it. At start the host copies only plain bucket
/// files it can check into `<data>/traces`, takes the mount out of the container, deletes the
/// old folder, and follows nothing.
#[tokio::test]
async fn an_old_mounted_store_is_migrated_without_trusting_it() {
    require_image().await;
    let mut host = host_with(&[]).await;
    host.setup_owner().await;
    let (slug, _cleanup) = deploy_agent(&host, "Migrant").await;
    let container = format!("taos-{slug}");
    let now = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    // Three good hours: one long closed (sealed before the move), two recent.
    let kept = [
        ("sealed", now - TimeDelta::hours(20)),
        ("recent", now - TimeDelta::hours(1)),
        ("now", now),
    ];
    for (id, at) in kept {
        post_trace(&host, &slug, id, at + TimeDelta::minutes(5)).await;
    }
    // Writers close their files on a clean stop (the sealer already sealed the old hour).
    host.terminate().await.unwrap();

    // The old layout, as the previous version left it (this version keeps the store in
    // `traces`: move it back; the file format is the same)...
    let data = host.data_dir.clone();
    let outside = data.parent().unwrap().to_path_buf();
    let old_root = data.join("trace");
    if data.join("traces").exists() {
        std::fs::rename(data.join("traces"), &old_root).unwrap();
    }
    let old = old_root.join(&slug);
    // ...with what the agent planted in it.
    let victim = outside.join("victim");
    std::fs::write(&victim, b"").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = |hours: i64, ext: &str| format!("{}.{ext}", bucket(now - TimeDelta::hours(hours)));
    std::os::unix::fs::symlink(&victim, old.join(name(2, "db"))).unwrap();
    std::os::unix::fs::symlink(&victim, old.join(name(3, "late.jsonl"))).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(old.join(name(1, "jsonl")))
        .output()
        .unwrap();
    assert!(fifo.status.success());
    std::fs::write(old.join(name(4, "db")), b"SQLite format 3\0 but not really").unwrap();
    crafted_database(&old.join(name(5, "db"))).await;
    std::fs::create_dir(old.join(name(6, "db"))).unwrap();
    std::fs::write(old.join("notes.txt"), b"not a trace file").unwrap();
    std::os::unix::fs::symlink("/etc", old_root.join("other")).unwrap();
    // An archive from before, with its own copy of the old folder.
    let archive = data.join("archive").join("gone-1");
    std::fs::create_dir_all(archive.join("trace")).unwrap();
    std::os::unix::fs::symlink(&victim, archive.join("trace").join(name(7, "db"))).unwrap();
    // The mount the previous version's deploy made (this version's deploy made none).
    if extra_disks(&container).is_empty() {
        let add = std::process::Command::new("incus")
            .args([
                "config",
                "device",
                "add",
                &container,
                "trace",
                "disk",
                &format!("source={}", old.display()),
                "path=/root/.taos/trace",
            ])
            .output()
            .unwrap();
        assert!(add.status.success(), "{add:?}");
    }
    assert_eq!(extra_disks(&container).len(), 1);

    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data.clone()),
            env: vec![(
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            )],
        },
    )
    .await
    .unwrap();

    // The good hours came over and read back (a read through the FIFO would hang until the
    // client gives up).
    assert_eq!(trace_ids(&host, &slug).await, ["now", "recent", "sealed"]);
    // The mount leaves the container, then the old folder goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !extra_disks(&container).is_empty() || old_root.exists() {
        assert!(
            Instant::now() < deadline,
            "old mount or folder still there: {:?}",
            extra_disks(&container)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Nothing planted came along, nothing was followed.
    let store = data.join("traces").join(&slug);
    let mut names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
            e.file_name().into_string().unwrap()
        })
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        // The host's own hour index, written once the agent's trace was read.
        .filter(|n| n != "index.db")
        .collect();
    names.sort();
    let mut expected: Vec<String> = [20, 1, 0].iter().map(|h| name(*h, "db")).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert!(!data.join("traces").join("other").exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(
        links_and_fifos(&data).is_empty(),
        "{:?}",
        links_and_fifos(&data)
    );
    assert!(!archive.join("trace").exists());
    assert!(archive.join("traces").is_dir());

    // A new event for the hour whose database was a symlink lands in a real file.
    post_trace(&host, &slug, "later", now - TimeDelta::hours(2)).await;
    assert!(std::fs::symlink_metadata(store.join(name(2, "db")))
        .unwrap()
        .is_file());
    assert_eq!(std::fs::read(&victim).unwrap(), b"");
    // And the container still starts without its old folder.
    let rt = incus();
    rt.stop(&container, true).await.unwrap();
    rt.start(&container).await.unwrap();
}

/// A real SQLite file with our table, plus a trigger the host never made.
async fn crafted_database(path: &Path) {
    use sqlx::{ConnectOptions, Connection, Executor};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    conn.execute(
        "CREATE TABLE trace_events (id TEXT PRIMARY KEY, v INTEGER, created_at_ms INTEGER, \
         trace_id TEXT, parent_id TEXT, agent_name TEXT, kind TEXT, channel_id TEXT, \
         thread_id TEXT, backend_name TEXT, model TEXT, duration_ms INTEGER, tokens_in INTEGER, \
         tokens_out INTEGER, cost_usd REAL, error TEXT, payload TEXT); \
         CREATE TRIGGER planted AFTER INSERT ON trace_events BEGIN DELETE FROM trace_events; END;",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
}

/// The move of the old store is a promise too: a host killed with the copy staged but not yet
/// renamed into place leaves the old store as it was, and the next start moves it again, every
/// event once.
#[tokio::test]
async fn a_host_killed_while_moving_the_old_store_moves_it_at_the_next_start() {
    let mut host = host_with(&[]).await;
    host.setup_owner().await;
    let (agent, _) = taos_e2e::AgentClient::create(&host, "Mover").await;
    let now = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap();
    for (id, at) in [("earlier", now - TimeDelta::hours(1)), ("latest", now)] {
        post_trace(&host, &agent.slug, id, at + TimeDelta::minutes(5)).await;
    }
    host.terminate().await.unwrap();
    // The old layout, as the previous version left it.
    let data = host.data_dir.clone();
    std::fs::rename(data.join("traces"), data.join("trace")).unwrap();

    let crashed = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data.clone()),
            env: vec![
                (
                    "TAOS_LLM__LITELLM_BIN".into(),
                    "/nonexistent/litellm".into(),
                ),
                (
                    taos_host::faults::PAUSE_ENV.into(),
                    "migrate-traces:staged".into(),
                ),
            ],
        },
    );
    // It never gets ready: it pauses before the rename. Kill it there.
    let starting = tokio::spawn(crashed);
    let log = host.stderr_log.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("fault injection: paused at migrate-traces:staged") {
            break host_pid_of(&data);
        }
        assert!(Instant::now() < deadline, "never paused: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let _ = starting.await;
    assert!(data.join("traces.migrating").is_dir(), "the staged copy");
    assert!(!data.join("traces").exists(), "nothing half-moved");
    assert!(
        data.join("trace").join(&agent.slug).is_dir(),
        "the old store as it was"
    );

    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data.clone()),
            env: vec![(
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            )],
        },
    )
    .await
    .unwrap();
    assert_eq!(trace_ids(&host, &agent.slug).await, ["earlier", "latest"]);
    assert!(!data.join("traces.migrating").exists());
}

/// The pid of the `taos-host` serving `data_dir` (from /proc: the test kit only hands it out
/// once the host is ready).
fn host_pid_of(data_dir: &Path) -> u32 {
    let wanted = data_dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_host = args.first()?.ends_with(b"taos-host");
            (is_host && args.contains(&wanted.as_slice())).then_some(pid)
        })
        .expect("the paused host's process")
}
