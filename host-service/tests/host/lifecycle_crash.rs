//! Archive, restore and purge against real incus, with a failure injected at each step and
//! the host SIGKILLed at each step: afterwards nothing is half-done — an interrupted archive or
//! uncommitted restore is undone, a committed restore or a purge is finished — and nothing is
//! orphaned (containers, snapshots, archive folders).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{Host, HostOptions};
use taos_host::faults::{FAIL_ENV, PAUSE_ENV};
use taos_host::runtime::Runtime;

use taos_e2e::fixtures::{catalog, deploy_succeeded, incus, require_image, Remove, NO_LITELLM};

use crate::BIN;

/// A host on `data_dir` (no LiteLLM: these agents never chat), with extra env.
async fn host_on(data_dir: &Path, env: &[(&str, String)]) -> Host {
    let mut all = vec![(NO_LITELLM.0.to_string(), NO_LITELLM.1.to_string())];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data_dir.to_path_buf()),
            env: all,
        },
    )
    .await
    .expect("host starts")
}

/// Starts `method path` on a host told to pause at `operation:step`, waits until it is paused
/// there, and SIGKILLs the host.
async fn crash_at(data_dir: &Path, operation: &str, step: &str, method: Method, path: &str) {
    let mut host = host_on(data_dir, &[(PAUSE_ENV, format!("{operation}:{step}"))]).await;
    let request = host.admin(method, path).send();
    let call = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
        if log.contains(&format!("fault injection: paused at {operation}:{step}")) {
            break;
        }
        assert!(
            !call.is_finished(),
            "{operation} ended before reaching {step}: {:?}",
            call.await
        );
        assert!(
            Instant::now() < deadline,
            "{operation} never reached {step}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.kill9().await;
    let _ = call.await;
}

async fn get(host: &Host, path: &str) -> (StatusCode, Value) {
    let r = host.admin(Method::GET, path).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the agent is `status` (recovery runs in the background after start).
async fn wait_status(host: &Host, slug: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, agent) = get(host, &format!("/api/agents/{slug}")).await;
        if code == StatusCode::OK && agent["status"] == status {
            return agent;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(4000)..];
            panic!("{slug} never became {status}: {code} {agent}\nhost log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether no archive, restore or purge is left in the host's journal.
async fn journal_is_empty(data_dir: &Path) -> bool {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("taos.db"))
        .read_only(true)
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM agent_ops")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        == 0
}

fn archive_dirs(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("archive"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The agent is live as before: running container without archive snapshots, no archive.
async fn assert_live_and_unarchived(host: &Host, data_dir: &Path, slug: &str, why: &str) {
    wait_for_recovery(data_dir, why).await;
    wait_status(host, slug, "running").await;
    let rt = incus();
    let container = format!("taos-{slug}");
    assert!(
        rt.state(&container).await.unwrap().running,
        "{why}: container runs"
    );
    let snapshots = rt.snapshot_list(&container).await.unwrap();
    assert!(
        snapshots.iter().all(|s| !s.starts_with("taos-archive-")),
        "{why}: archive snapshot dropped: {snapshots:?}"
    );
    let (_, archived) = get(host, "/api/agents/archived").await;
    assert_eq!(archived, json!([]), "{why}: nothing archived");
    assert!(
        archive_dirs(data_dir).is_empty(),
        "{why}: no archive folder"
    );
}

/// The agent is archived (once) and restorable: its container under the archived name.
/// Waits until start-up recovery has undone or finished what the journal held.
async fn wait_for_recovery(data_dir: &Path, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !journal_is_empty(data_dir).await {
        assert!(Instant::now() < deadline, "{why}: recovery never finished");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn assert_archived(host: &Host, data_dir: &Path, slug: &str, why: &str) -> Value {
    wait_for_recovery(data_dir, why).await;
    let (_, archived) = get(host, "/api/agents/archived").await;
    let list = archived.as_array().unwrap();
    assert_eq!(list.len(), 1, "{why}: {archived}");
    let name = list[0]["container"].as_str().unwrap();
    let rt = incus();
    assert!(
        rt.exists(name).await.unwrap(),
        "{why}: archived container kept"
    );
    assert!(
        !rt.exists(&format!("taos-{slug}")).await.unwrap(),
        "{why}: no live container"
    );
    assert_eq!(
        get(host, &format!("/api/agents/{slug}")).await.0,
        StatusCode::NOT_FOUND,
        "{why}: not live"
    );
    assert_eq!(archive_dirs(data_dir).len(), 1, "{why}: one archive folder");
    list[0].clone()
}

#[tokio::test]
async fn archive_restore_and_purge_leave_nothing_half_done_after_failures_and_crashes() {
    require_image().await;
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let first = host_on(&data_dir, &[]).await;
    first.setup_owner().await;
    catalog(&first).await;
    let name = format!("phoenix-{:06x}", rand::random::<u32>() & 0xffffff);
    let (slug, _cleanup) = deploy_succeeded(
        &first,
        json!({"name": name, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256}),
    )
    .await;
    drop(first);
    let agent_path = format!("/api/agents/{slug}");

    // A failure at any archive step is undone at once, and says what failed.
    for step in ["stop", "snapshot", "rename", "export", "commit"] {
        let host = host_on(&data_dir, &[(FAIL_ENV, format!("archive:{step}"))]).await;
        let r = host
            .admin(Method::DELETE, &agent_path)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "archive:{step}"
        );
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("archive:{step}")),
            "{body}"
        );
        assert_live_and_unarchived(
            &host,
            &data_dir,
            &slug,
            &format!("failed at archive:{step}"),
        )
        .await;
    }
    // A crash at any archive step is undone at the next start.
    for step in ["stop", "snapshot", "rename", "export", "commit"] {
        crash_at(&data_dir, "archive", step, Method::DELETE, &agent_path).await;
        let host = host_on(&data_dir, &[]).await;
        assert_live_and_unarchived(
            &host,
            &data_dir,
            &slug,
            &format!("crashed at archive:{step}"),
        )
        .await;
    }

    // Archived for real, then a restore that fails or crashes before its commit leaves the
    // archive as it was.
    let host = host_on(&data_dir, &[]).await;
    let r = host
        .admin(Method::DELETE, &agent_path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let archive = assert_archived(&host, &data_dir, &slug, "archived").await;
    let archived_name = archive["container"].as_str().unwrap().to_string();
    let _cleanup_archived = Remove(archived_name.clone());
    let restore_path = format!(
        "/api/agents/archived/{}/restore",
        archive["id"].as_str().unwrap()
    );
    drop(host);
    for step in ["rename", "snapshot", "trace", "commit"] {
        let host = host_on(&data_dir, &[(FAIL_ENV, format!("restore:{step}"))]).await;
        let r = host
            .admin(Method::POST, &restore_path)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "restore:{step}"
        );
        assert_archived(
            &host,
            &data_dir,
            &slug,
            &format!("failed at restore:{step}"),
        )
        .await;
        drop(host);
        crash_at(&data_dir, "restore", step, Method::POST, &restore_path).await;
        let host = host_on(&data_dir, &[]).await;
        assert_archived(
            &host,
            &data_dir,
            &slug,
            &format!("crashed at restore:{step}"),
        )
        .await;
    }
    // After its commit, a crashed restore is finished at the next start: running again.
    crash_at(&data_dir, "restore", "start", Method::POST, &restore_path).await;
    let host = host_on(&data_dir, &[]).await;
    assert_live_and_unarchived(
        &host,
        &data_dir,
        &slug,
        "crashed after the restore's commit",
    )
    .await;
    assert!(!incus().exists(&archived_name).await.unwrap());

    // A purge, once started, is finished even if the host dies halfway.
    let r = host
        .admin(Method::DELETE, &agent_path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let archive = assert_archived(&host, &data_dir, &slug, "archived again").await;
    let archived_name = archive["container"].as_str().unwrap().to_string();
    let _cleanup_archived = Remove(archived_name.clone());
    drop(host);
    let purge_path = format!("/api/agents/archived/{}", archive["id"].as_str().unwrap());
    crash_at(&data_dir, "purge", "files", Method::DELETE, &purge_path).await;
    let host = host_on(&data_dir, &[]).await;
    wait_for_recovery(&data_dir, "crashed mid-purge").await;
    let (_, archived) = get(&host, "/api/agents/archived").await;
    assert_eq!(archived, json!([]));
    assert!(
        !incus().exists(&archived_name).await.unwrap(),
        "container purged"
    );
    assert!(archive_dirs(&data_dir).is_empty(), "archive folder purged");
}
