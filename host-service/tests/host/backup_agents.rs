//! Backups with agents' containers (issue 18 items 2, 4, 6): an incus agent's container is
//! exported into the snapshot and comes back with a whole-host restore; restore drills check
//! the newest snapshot (and its containers, in a throwaway incus project) and notify when it
//! doesn't restore. Real restic, real incus, the `taos-agent` image.
//!
//! Container names are unique per test run (other tests use incus at the same time), and
//! every container is removed by a guard even when the test fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{
    ask_and_wait, deploy_succeeded, incus, require_image, step, with_fake_provider, Remove,
};
use taos_e2e::{Host, HostOptions, SseReader};
use taos_host::runtime::Runtime;
use taos_proto::backup::{
    BackupDrill, BackupRun, BackupSettings, BackupState, DrillReason, DrillState,
};

use crate::backup::{backup_phases, outside, run_backup, Outside};
use crate::BIN;

/// A name no other test (or earlier run) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

async fn configure(host: &Host, out: &Outside) {
    std::fs::create_dir_all(out.repo.parent().unwrap()).unwrap();
    let _: Value = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({
                "destination": {"kind": "local", "path": out.repo.display().to_string()},
                "passphrase": crate::backup::PASSPHRASE,
            })),
            StatusCode::OK,
        )
        .await;
}

async fn deploy(host: &Host, name: &str) -> (String, Remove) {
    deploy_succeeded(
        host,
        json!({"name": name, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2}),
    )
    .await
}

/// Every message of a channel, oldest first (the test's chats are short).
pub(crate) async fn messages(host: &Host, channel: &str) -> Vec<Value> {
    host.get(&format!(
        "/api/chat/channels/{channel}/messages?after_seq=0&limit=500"
    ))
    .await
}

/// A host with an incus agent that has chatted is backed up (its container exported live into
/// the snapshot), stopped, its data dir and its container removed (a new card, a fresh incus),
/// restored with `taos-host restore` into a fresh data dir, and started there: the container
/// is back and running, the agent answers again, and its chat history is the same.
#[tokio::test]
async fn a_whole_host_restore_brings_an_incus_agents_container_back() {
    require_image().await;
    let out = outside();
    let (_turn, mut host, _fake) = with_fake_provider(BIN, &[]).await;
    let name = unique("bk");
    let (slug, _cleanup) = step("deploy an agent and chat", async {
        let (slug, cleanup) = deploy(&host, &name).await;
        let answer = ask_and_wait(&host, &slug, "before the backup").await;
        assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        (slug, cleanup)
    })
    .await;
    let container = format!("taos-{slug}");
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();

    let run = step("back up, the container exported live", async {
        configure(&host, &out).await;
        let run: BackupRun = run_backup(&host).await;
        assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
        assert_eq!(run.containers, Some(1), "{run:?}");
        assert!(run.warnings.is_empty(), "{run:?}");
        // Exported while it ran: the agent was never stopped.
        assert!(incus().state(&container).await.unwrap().running);
        // The snapshot holds the container's tarball, as plain restic lists it.
        let listed = std::process::Command::new("restic")
            .arg("--repo")
            .arg(&out.repo)
            .arg("--password-file")
            .arg(&out.password_file)
            .args(["ls", "--no-cache", "latest"])
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.contains(&format!("/taos-data/containers/{container}.tar")),
            "{listed}"
        );
        assert!(!host.data_dir.join("backup/taos-data").exists());
        run
    })
    .await;

    let before = messages(&host, &dm).await;
    assert!(before.len() >= 2, "{before:?}");
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    std::fs::remove_dir_all(&host.data_dir).unwrap();
    // A fresh incus: the agent's container is gone too.
    let rt = incus();
    let _ = rt.stop(&container, true).await;
    rt.delete(&container).await.unwrap();
    assert!(!rt.exists(&container).await.unwrap());

    let fresh_temp = tempfile::tempdir().unwrap();
    let fresh = fresh_temp.path().join("data");
    step("restore into a fresh data dir and a fresh incus", async {
        let output = std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&fresh)
            .arg("restore")
            .arg("--from")
            .arg(&out.repo)
            .arg("--password-file")
            .arg(&out.password_file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "restore: {said} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains(run.snapshot_id.as_deref().unwrap()), "{said}");
        assert!(said.contains("1 agent container(s) imported"), "{said}");
        assert!(rt.state(&container).await.unwrap().running, "started again");
        assert!(!fresh.join("containers").exists());
        assert!(!fresh.join(".restore").exists());
    })
    .await;

    let restored = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(fresh.clone()),
            env: Vec::new(),
        },
    )
    .await
    .expect("the restored host starts");
    step("the restored agent answers", async {
        taos_e2e::fixtures::wait_ready(&restored, &taos_e2e::fixtures::FAKE_MODELS).await;
        assert_eq!(messages(&restored, &dm).await, before);
        let answer = ask_and_wait(&restored, &slug, "after the restore").await;
        assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    })
    .await;

    step(
        "a drill boots the agent's container in a throwaway project",
        async {
            let drill = drill_watching_live(&restored, &slug).await;
            assert_eq!(drill.state, DrillState::Passed, "{drill:?}");
            let names: Vec<&str> = drill.checks.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "repository".to_string(),
                    "restore".into(),
                    "database".into(),
                    format!("container:{container}"),
                    format!("bridge_round_trip:{container}"),
                ],
                "{drill:?}"
            );
            assert!(drill.checks.iter().all(|c| c.ok), "{drill:?}");
            // The copy answered over its drill session: with an error, as it has no LLM key.
            let trip = &drill.checks[4].detail;
            assert!(
                trip.contains("drill-only bridge session and answered (error:"),
                "{trip}"
            );
            assert!(
                trip.contains("the live agent's session was not used"),
                "{trip}"
            );
            // Torn down: no drill project is left, and the live agent was not disturbed.
            let projects = std::process::Command::new("incus")
                .args(["project", "list", "--format", "csv", "--columns", "n"])
                .output()
                .unwrap();
            let projects = String::from_utf8_lossy(&projects.stdout);
            assert!(!projects.contains("taos-drill-"), "{projects}");
            assert!(rt.state(&container).await.unwrap().running);
            let answer = ask_and_wait(&restored, &slug, "after the drill").await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        },
    )
    .await;

    step(
        "a copy whose sidecar can't answer fails the drill, with the reason and a notification",
        async {
            // The sidecar's program on disk becomes one that never connects; the live sidecar
            // runs on from the old file, so only the backup (and its drilled copy) is broken.
            rt.push_file(
                &container,
                "/usr/local/bin/taos-agent.broken",
                b"#!/bin/sh\nexec sleep infinity\n",
                0o755,
            )
            .await
            .unwrap();
            let moved = rt
                .exec(
                    &container,
                    &[
                        "mv",
                        "/usr/local/bin/taos-agent.broken",
                        "/usr/local/bin/taos-agent",
                    ],
                    &Default::default(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            assert_eq!(moved.exit_code, 0, "{moved:?}");
            let run = run_backup(&restored).await;
            assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
            let drill = drill_watching_live(&restored, &slug).await;
            assert_eq!(drill.state, DrillState::Failed, "{drill:?}");
            let container_check = drill
                .checks
                .iter()
                .find(|c| c.name == format!("container:{container}"))
                .unwrap();
            assert!(container_check.ok, "its service runs: {drill:?}");
            let trip = drill
                .checks
                .iter()
                .find(|c| c.name == format!("bridge_round_trip:{container}"))
                .unwrap();
            assert!(!trip.ok, "{drill:?}");
            assert!(
                trip.detail.contains("did not answer the drill's message"),
                "{trip:?}"
            );
            let error = drill.error.clone().unwrap();
            assert!(error.contains("bridge_round_trip"), "{error}");
            let notes: Vec<Value> = restored.get("/api/notifications").await;
            let note = notes
                .iter()
                .find(|n| n["data"]["drill_id"] == drill.id.as_str())
                .expect("a notification for the failed drill");
            assert!(
                note["message"].as_str().unwrap().contains("did not answer"),
                "{note}"
            );
            // Torn down, and the live agent still answers.
            let projects = std::process::Command::new("incus")
                .args(["project", "list", "--format", "csv", "--columns", "n"])
                .output()
                .unwrap();
            assert!(!String::from_utf8_lossy(&projects.stdout).contains("taos-drill-"));
            let answer = ask_and_wait(&restored, &slug, "after the failed drill").await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        },
    )
    .await;

    // A second restore onto the same incus is refused: the container's name is taken, and
    // nothing is written.
    let again_temp = tempfile::tempdir().unwrap();
    let again = again_temp.path().join("data");
    let output = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&again)
        .arg("restore")
        .arg("--from")
        .arg(&out.repo)
        .arg("--password-file")
        .arg(&out.password_file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&format!("a container named {container} already exists")),
        "{said}"
    );
    assert!(!again.exists(), "the failed restore removed what it made");
    assert!(rt.state(&container).await.unwrap().running);
    drop(restored);
}

/// Starts a drill and waits for it to end, checking all along that the live agent `slug`
/// stays connected (the drilled copy never stands in for it); returns the finished drill.
async fn drill_watching_live(host: &Host, slug: &str) -> BackupDrill {
    let drill: BackupDrill = host
        .call(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut looks = 0;
    loop {
        let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
        assert_eq!(
            agent["connected"], true,
            "the live agent during the drill: {agent}"
        );
        looks += 1;
        let now: BackupDrill = host.get(&format!("/api/backups/drills/{}", drill.id)).await;
        if now.state != DrillState::Running {
            assert!(looks > 1, "the drill was watched while it ran");
            return now;
        }
        assert!(Instant::now() < deadline, "drill never ended: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a drill and waits for it to end; returns the finished drill.
pub(crate) async fn run_drill(host: &Host) -> BackupDrill {
    let drill: BackupDrill = host
        .call(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(drill.state, DrillState::Running);
    wait_drill(host, &drill.id).await
}

async fn wait_drill(host: &Host, id: &str) -> BackupDrill {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let drill: BackupDrill = host.get(&format!("/api/backups/drills/{id}")).await;
        if drill.state != DrillState::Running {
            return drill;
        }
        assert!(
            Instant::now() < deadline,
            "drill {id} never ended: {drill:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn no_litellm(data_dir: Option<PathBuf>, extra: &[(&str, &str)]) -> HostOptions {
    let mut env = vec![(
        taos_e2e::fixtures::NO_LITELLM.0.to_string(),
        taos_e2e::fixtures::NO_LITELLM.1.to_string(),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    HostOptions { data_dir, env }
}

/// Flips bytes in the middle of every pack file of a local restic repository.
fn corrupt_packs(repo: &Path) -> usize {
    let mut flipped = 0;
    let mut stack = vec![repo.join("data")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
                continue;
            }
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            perms.set_mode(0o600);
            std::fs::set_permissions(&path, perms).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            for b in bytes.iter_mut().skip(middle.saturating_sub(16)).take(32) {
                *b ^= 0xa5;
            }
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    flipped
}

/// Drills without containers (no incus needed): bad requests are refused and change
/// nothing; a good backup's drill passes every check; a drill falls due by the schedule while
/// the host is off and runs at its next start; and after bytes are flipped in the
/// repository's pack files the drill fails, says why, and notifies.
#[tokio::test]
async fn a_drill_passes_a_good_backup_and_catches_a_corrupted_one() {
    let out = outside();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut host = Host::start_with(BIN, no_litellm(Some(data_dir.clone()), &[]))
        .await
        .unwrap();
    host.setup_owner().await;

    step("bad drill requests are refused and change nothing", async {
        host.expect_error(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::CONFLICT,
            "not_configured",
        )
        .await;
        configure(&host, &out).await;
        // Set up, but nothing backed up yet: nothing to drill.
        host.expect_error(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
        for days in [91, 1000] {
            host.expect_error(
                Method::PUT,
                "/api/backups/settings",
                Some(&json!({
                    "destination": {"kind": "local", "path": out.repo.display().to_string()},
                    "drill_every_days": days,
                })),
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        }
        host.expect_error(
            Method::GET,
            "/api/backups/drills/no-such-drill",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        host.expect_error(
            Method::GET,
            "/api/backups/drills?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        let settings: BackupSettings = host.get("/api/backups/settings").await;
        assert_eq!(settings.drill_every_days, 7, "unchanged");
        let drills: Vec<BackupDrill> = host.get("/api/backups/drills").await;
        assert!(drills.is_empty(), "{drills:?}");
    })
    .await;

    let good = step("a good backup's drill passes", async {
        let run = run_backup(&host).await;
        assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
        let mut events =
            SseReader::new(host.admin(Method::GET, "/api/events").send().await.unwrap());
        let drill: BackupDrill = host
            .call(
                Method::POST,
                "/api/backups/drill",
                None,
                StatusCode::ACCEPTED,
            )
            .await;
        // One at a time, and no backup while a drill has the repository.
        host.expect_error(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
        host.expect_error(
            Method::POST,
            "/api/backups",
            None,
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
        let drill = wait_drill(&host, &drill.id).await;
        assert_eq!(drill.state, DrillState::Passed, "{drill:?}");
        assert_eq!(drill.reason, DrillReason::Manual);
        assert_eq!(drill.snapshot_id, run.snapshot_id);
        let names: Vec<&str> = drill.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["repository", "restore", "database"], "{drill:?}");
        assert!(drill.checks.iter().all(|c| c.ok), "{drill:?}");
        assert!(drill.checks[2].detail.contains("integrity ok"), "{drill:?}");
        // Its progress on /api/events: each check as it starts, then the outcome.
        let mut steps = Vec::new();
        loop {
            let event = events
                .next(Duration::from_secs(30))
                .await
                .expect("drill events");
            let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
            match event.event.as_deref() {
                Some("backup.drill_progress") => {
                    assert_eq!(data["data"]["drill_id"], drill.id.as_str());
                    steps.push(data["data"]["step"].as_str().unwrap().to_string());
                }
                Some("backup.drill") => {
                    assert_eq!(data["data"]["state"], "passed");
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(steps, names, "every check announced as it starts, in order");
        assert!(!host.data_dir.join("backup/drill").exists());
        assert!(!host.data_dir.join("backup/drill-password").exists());
        drill
    })
    .await;

    step(
        "a drill that fell due while the host was off runs at its start",
        async {
            assert_eq!(host.terminate().await.unwrap(), Some(0));
            let db = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("taos.db")),
            )
            .await
            .unwrap();
            // The last drill was 8 days ago (the default interval is 7).
            sqlx::query("UPDATE backup_drills SET created_at = created_at - 8 * 86400000")
                .execute(&db)
                .await
                .unwrap();
            db.close().await;
            host = Host::start_with(BIN, no_litellm(Some(data_dir.clone()), &[]))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let scheduled = loop {
                let drills: Vec<BackupDrill> = host.get("/api/backups/drills").await;
                if let Some(d) = drills.iter().find(|d| d.id != good.id) {
                    break d.clone();
                }
                assert!(Instant::now() < deadline, "no scheduled drill: {drills:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(scheduled.reason, DrillReason::Scheduled);
            let scheduled = wait_drill(&host, &scheduled.id).await;
            assert_eq!(scheduled.state, DrillState::Passed, "{scheduled:?}");
            // Once: the next is due in 7 days.
            let drills: Vec<BackupDrill> = host.get("/api/backups/drills").await;
            assert_eq!(drills.len(), 2, "{drills:?}");
        },
    )
    .await;

    step(
        "a corrupted repository fails the drill, which notifies",
        async {
            assert!(corrupt_packs(&out.repo) > 0);
            let drill = run_drill(&host).await;
            assert_eq!(drill.state, DrillState::Failed, "{drill:?}");
            let error = drill.error.clone().unwrap();
            assert!(!error.is_empty());
            // Every pack is damaged: restic's check reads every tree, and the restore every blob
            // the snapshot needs, so both fail (and the database is not reached).
            let failed: Vec<&str> = drill
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(failed, ["repository", "restore"], "{drill:?}");
            assert!(error.contains("restic check failed"), "{error}");
            assert!(error.contains("did not restore"), "{error}");
            let deadline = Instant::now() + Duration::from_secs(30);
            let note = loop {
                let notes: Vec<Value> = host.get("/api/notifications").await;
                if let Some(n) = notes
                    .into_iter()
                    .find(|n| n["data"]["drill_id"] == drill.id.as_str())
                {
                    break n;
                }
                assert!(Instant::now() < deadline, "no drill notification");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(note["source"], "backup");
            assert_eq!(note["level"], "error");
            assert_eq!(note["title"], "Restore drill failed");
            assert!(
                note["message"].as_str().unwrap().contains(&error),
                "the reason in words: {note}"
            );
            assert!(!host.data_dir.join("backup/drill").exists());
        },
    )
    .await;
}

/// A host killed mid-drill marks the drill failed at its next start, says so, and removes
/// what the drill left (the restored copy, its password file).
#[tokio::test]
async fn a_host_killed_mid_drill_marks_it_failed_at_its_next_start() {
    let out = outside();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut host = Host::start_with(
        BIN,
        no_litellm(
            Some(data_dir.clone()),
            &[(taos_host::faults::PAUSE_ENV, "drill:restored")],
        ),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    configure(&host, &out).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    let drill: BackupDrill = host
        .call(
            Method::POST,
            "/api/backups/drill",
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&host.stderr_log)
        .unwrap_or_default()
        .contains("fault injection: paused at drill:restored")
    {
        assert!(Instant::now() < deadline, "the drill never restored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let private = data_dir.join("backup");
    assert!(private.join("drill/restore/taos-data/taos.db").exists());
    assert!(private.join("drill-password").exists());
    host.kill9().await;

    let host = Host::start_with(BIN, no_litellm(Some(data_dir.clone()), &[]))
        .await
        .unwrap();
    let failed: BackupDrill = host.get(&format!("/api/backups/drills/{}", drill.id)).await;
    assert_eq!(failed.state, DrillState::Failed);
    assert!(
        failed.error.as_deref().unwrap().contains("host stopped"),
        "{failed:?}"
    );
    assert!(!private.join("drill").exists());
    assert!(!private.join("drill-password").exists());
    let notes: Vec<Value> = host.get("/api/notifications").await;
    assert!(notes
        .iter()
        .any(|n| n["source"] == "backup" && n["data"]["drill_id"] == drill.id.as_str()));
    // The repository is fine and the next drill passes.
    let again = run_drill(&host).await;
    assert_eq!(again.state, DrillState::Passed, "{again:?}");
}

/// One agent back from a backup into the running host: the agent (an incus one, with a chat
/// and traces) is backed up, then archived and purged (container, messages and traces gone),
/// and its name taken by a new agent. Bad requests are refused first and change nothing; then
/// the restore brings it back as `<slug>-2`, running in its own container with new
/// credentials, with its DM history and traces, and it answers.
#[tokio::test]
async fn one_agent_comes_back_from_a_backup_under_a_new_slug_when_its_name_is_taken() {
    require_image().await;
    let out = outside();
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let name = unique("one");
    let (slug, _cleanup) = deploy(&host, &name).await;
    let renamed = format!("{slug}-2");
    let _cleanup_renamed = Remove(format!("taos-{renamed}"));
    let answer = ask_and_wait(&host, &slug, "remember this").await;
    assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let before = messages(&host, &dm).await;
    let traces_before: Value = host.get(&format!("/api/agents/{slug}/trace/totals")).await;
    configure(&host, &out).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    assert_eq!(run.containers, Some(1));

    step("bad requests are refused and change nothing", async {
        let count = |v: Vec<Value>| v.len();
        let agents_before = count(host.get("/api/agents").await);
        for (body, status, code) in [
            (
                json!({"agent": "Not A Slug"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                json!({"agent": slug, "snapshot": "xyz"}),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                json!({"agent": slug, "snapshot": ""}),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                json!({"agent": "nobody-here"}),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                json!({"agent": slug, "snapshot": "0000000000000000000000000000"}),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            // The same agent is on this host.
            (json!({"agent": slug}), StatusCode::CONFLICT, "conflict"),
        ] {
            host.expect_error(
                Method::POST,
                "/api/backups/agents",
                Some(&body),
                status,
                code,
            )
            .await;
        }
        let r = host
            .admin(Method::POST, "/api/backups/agents")
            .json(&json!({"agent": slug, "as": "other"}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "unknown field: {}",
            r.status()
        );
        assert_eq!(count(host.get("/api/agents").await), agents_before);
        let archived: Vec<Value> = host.get("/api/agents/archived").await;
        assert!(archived.is_empty(), "{archived:?}");
        assert!(!host.data_dir.join("backup/agent-restore").exists());
    })
    .await;

    step("the agent is archived, purged, and its name taken", async {
        let archived: Value = host
            .call(
                Method::DELETE,
                &format!("/api/agents/{slug}"),
                None,
                StatusCode::OK,
            )
            .await;
        let id = archived["id"].as_str().unwrap().to_string();
        let r = host
            .admin(Method::DELETE, &format!("/api/agents/archived/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(!incus().exists(&format!("taos-{slug}")).await.unwrap());
        let _: Value = host
            .call(
                Method::POST,
                "/api/agents",
                Some(&json!({"name": name})),
                StatusCode::CREATED,
            )
            .await;
        let taken: Value = host.get(&format!("/api/agents/{slug}")).await;
        assert_eq!(taken["kind"], "external");
    })
    .await;

    step(
        "it comes back as <slug>-2 with its history, and answers",
        async {
            let restored: Value = host
                .call(
                    Method::POST,
                    "/api/backups/agents",
                    Some(&json!({"agent": slug})),
                    StatusCode::OK,
                )
                .await;
            assert_eq!(restored["agent"]["slug"], renamed.as_str(), "{restored}");
            assert_eq!(restored["agent"]["id"], agent["id"], "the same agent");
            assert_eq!(restored["agent"]["status"], "running", "{restored}");
            assert!(restored["agent_token"]
                .as_str()
                .unwrap()
                .starts_with("taos_ag_"));
            assert!(
                incus()
                    .state(&format!("taos-{renamed}"))
                    .await
                    .unwrap()
                    .running
            );
            assert_eq!(restored["agent"]["dm_channel_id"], dm.as_str());
            assert_eq!(messages(&host, &dm).await, before, "its DM history is back");
            let traces: Value = host
                .get(&format!("/api/agents/{renamed}/trace/totals"))
                .await;
            let events = |t: &Value| -> u64 {
                t["days"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["events"].as_u64().unwrap())
                    .sum()
            };
            assert!(
                events(&traces) >= events(&traces_before) && events(&traces_before) > 0,
                "its traces are back: {traces} vs {traces_before}"
            );
            let answer = ask_and_wait(&host, &renamed, "are you back").await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
            let archived: Vec<Value> = host.get("/api/agents/archived").await;
            assert!(archived.is_empty(), "{archived:?}");
            assert!(!host.data_dir.join("backup/agent-restore").exists());
            assert!(!host.data_dir.join("backup/agent-restore-password").exists());
        },
    )
    .await;
}

/// A host killed in a single-agent restore after the container was imported, before anything
/// was written to its database, removes that container and the archive folder at its next
/// start: nothing of the half-made restore is left.
#[tokio::test]
async fn a_host_killed_mid_agent_restore_removes_what_it_made_at_its_next_start() {
    require_image().await;
    let out = outside();
    let (_turn, mut host, _fake) = with_fake_provider(
        BIN,
        &[(taos_host::faults::PAUSE_ENV, "agent-restore:imported")],
    )
    .await;
    let name = unique("cut");
    let (slug, _cleanup) = deploy(&host, &name).await;
    configure(&host, &out).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    let archived: Value = host
        .call(
            Method::DELETE,
            &format!("/api/agents/{slug}"),
            None,
            StatusCode::OK,
        )
        .await;
    let r = host
        .admin(
            Method::DELETE,
            &format!("/api/agents/archived/{}", archived["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let request = host
        .admin(Method::POST, "/api/backups/agents")
        .json(&json!({"agent": slug}))
        .send();
    let log = host.stderr_log.clone();
    let paused = async {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("fault injection: paused at agent-restore:imported")
        {
            assert!(Instant::now() < deadline, "the restore never imported");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        answer = request => panic!("the paused restore answered: {:?}", answer.map(|r| r.status())),
        () = paused => {}
    }
    let pending: Value = serde_json::from_slice(
        &std::fs::read(host.data_dir.join("backup/agent-restore.json")).unwrap(),
    )
    .unwrap();
    let imported = pending["container"].as_str().unwrap().to_string();
    let _imported_cleanup = Remove(imported.clone());
    assert!(incus().exists(&imported).await.unwrap(), "{pending}");
    host.kill9().await;

    let restarted = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: vec![(
                taos_e2e::fixtures::NO_LITELLM.0.into(),
                taos_e2e::fixtures::NO_LITELLM.1.into(),
            )],
        },
    )
    .await
    .unwrap();
    assert!(
        !incus().exists(&imported).await.unwrap(),
        "the container is removed"
    );
    assert!(!Path::new(pending["dir"].as_str().unwrap()).exists());
    assert!(!restarted
        .data_dir
        .join("backup/agent-restore.json")
        .exists());
    assert!(!restarted.data_dir.join("backup/agent-restore").exists());
    let archived: Vec<Value> = restarted.get("/api/agents/archived").await;
    assert!(archived.is_empty(), "{archived:?}");
    let r = restarted
        .admin(Method::GET, &format!("/api/agents/{slug}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// What a backup can't export is not left out silently: an agent whose container no longer
/// exists is named in the run's warnings and in a warning notification, and the rest of the
/// host is backed up.
#[tokio::test]
async fn a_container_the_backup_cannot_export_is_a_warning_not_a_silent_gap() {
    let out = outside();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut host = Host::start_with(BIN, no_litellm(Some(data_dir.clone()), &[]))
        .await
        .unwrap();
    host.setup_owner().await;
    let name = unique("ghost");
    let created: Value = host
        .call(
            Method::POST,
            "/api/agents",
            Some(&json!({"name": name})),
            StatusCode::CREATED,
        )
        .await;
    let slug = created["agent"]["slug"].as_str().unwrap().to_string();
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    // Its container is gone (removed by hand, or lost with a pool).
    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("taos.db")),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE agents SET container = ? WHERE slug = ?")
        .bind(format!("taos-{slug}"))
        .bind(&slug)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let host = Host::start_with(BIN, no_litellm(Some(data_dir.clone()), &[]))
        .await
        .unwrap();
    configure(&host, &out).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    assert_eq!(run.containers, Some(0), "{run:?}");
    assert_eq!(run.warnings.len(), 1, "{run:?}");
    assert!(
        run.warnings[0].contains(&slug) && run.warnings[0].contains("no longer exists"),
        "{run:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let note = loop {
        let notes: Vec<Value> = host.get("/api/notifications").await;
        if let Some(n) = notes
            .into_iter()
            .find(|n| n["data"]["run_id"] == run.id.as_str())
        {
            break n;
        }
        assert!(Instant::now() < deadline, "no warning notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(note["level"], "warning");
    assert_eq!(note["source"], "backup");
    assert!(note["message"].as_str().unwrap().contains(&slug), "{note}");
}

/// A backup started while people chat gives way to them between two containers' exports (each
/// export slows chat's commits, see `backup::containers`), says so on `/api/events` with the
/// `paused_for_chat` phase, and goes on by itself: both containers are in the snapshot.
#[tokio::test]
async fn a_backup_while_people_chat_pauses_between_exports_and_says_so() {
    require_image().await;
    let out = outside();
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let (first, second) = (unique("chatty"), unique("chatty"));
    let (slug, _first) = deploy(&host, &first).await;
    let (_, _second) = deploy(&host, &second).await;
    configure(&host, &out).await;
    // The events of the whole run: the pause outlasts the client's usual 30 s.
    let mut events = SseReader::new(
        host.admin(Method::GET, "/api/events")
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap(),
    );
    let answer = ask_and_wait(&host, &slug, "a word before the backup").await;
    assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    let run: BackupRun = host
        .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
        .await;
    let (phases, finished) = backup_phases(&mut events, &run.id).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let at = |phase: &str| phases.iter().position(|p| p == phase);
    let paused = at("paused_for_chat").unwrap_or_else(|| panic!("no pause in {phases:?}"));
    assert_eq!(phases[paused - 1], "containers", "{phases:?}");
    assert_eq!(
        phases[paused + 1],
        "containers",
        "went on after the pause: {phases:?}"
    );
    assert!(at("uploading").unwrap() > paused, "{phases:?}");
    let run: BackupRun = host.get(&format!("/api/backups/{}", run.id)).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    assert_eq!(run.containers, Some(2), "{run:?}");
}

/// Waits until the host's log says it paused at a fault-injection step.
pub(crate) async fn paused_at(host: &Host, step: &str) {
    let needle = format!("fault injection: paused at {step}");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(&host.stderr_log)
        .unwrap_or_default()
        .contains(&needle)
    {
        assert!(Instant::now() < deadline, "never paused at {step}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The only archive of the host (the test made one).
pub(crate) async fn the_archive(host: &Host) -> Value {
    let archived: Vec<Value> = host.get("/api/agents/archived").await;
    assert_eq!(archived.len(), 1, "{archived:?}");
    archived[0].clone()
}

/// restic's snapshots of moved archived containers, as plain restic lists them.
pub(crate) fn archive_snapshots(out: &Outside) -> Vec<Value> {
    let listed = std::process::Command::new("restic")
        .arg("--repo")
        .arg(&out.repo)
        .arg("--password-file")
        .arg(&out.password_file)
        .args(["snapshots", "--no-cache", "--json", "--tag", "taos-archive"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    serde_json::from_slice(&listed.stdout).unwrap()
}

/// `archive_target = backup` (issue 18 item 7), with a SIGKILL in each direction of the move.
/// An archived incus agent's container leaves the storage pool for the backup repository in
/// the next backup run and comes back when the archive is restored, answering again with
/// its chat history. A host killed after the repository snapshot was made but before the
/// container was deleted keeps the container on the pool (the next run moves it); a host
/// killed after the container was imported back but before it was snapshotted removes the
/// half-returned container and keeps the archive in the repository (the next restore
/// works). A bad target and a destination change that would strand the archive are refused
/// and change nothing.
#[tokio::test]
async fn archive_target_backup_moves_an_archived_container_off_the_pool_and_back() {
    require_image().await;
    let out = outside();
    let (_turn, mut host, _fake) = with_fake_provider(
        BIN,
        &[(taos_host::faults::PAUSE_ENV, "archive-move:stored")],
    )
    .await;
    let name = unique("mv");
    let (slug, _cleanup) = step("deploy an agent and chat", async {
        let (slug, cleanup) = deploy(&host, &name).await;
        let answer = ask_and_wait(&host, &slug, "before the archive").await;
        assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        (slug, cleanup)
    })
    .await;
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let before = messages(&host, &dm).await;
    assert!(before.len() >= 2, "{before:?}");
    let destination = json!({"kind": "local", "path": out.repo.display().to_string()});

    step(
        "bad archive targets are refused and change nothing",
        async {
            configure(&host, &out).await;
            for bad in [json!("usb"), json!(""), json!(1), json!({"kind": "backup"})] {
                let r = host
                    .admin(Method::PUT, "/api/backups/settings")
                    .json(&json!({"destination": destination, "archive_target": bad}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_client_error(), "{bad}: {}", r.status());
            }
            let settings: BackupSettings = host.get("/api/backups/settings").await;
            assert_eq!(
                settings.archive_target,
                taos_proto::backup::ArchiveTarget::Pool
            );
            let saved: Value = host
                .call(
                    Method::PUT,
                    "/api/backups/settings",
                    Some(&json!({"destination": destination, "archive_target": "backup"})),
                    StatusCode::OK,
                )
                .await;
            assert_eq!(saved["settings"]["archive_target"], "backup");
        },
    )
    .await;

    let archived: Value = host
        .call(
            Method::DELETE,
            &format!("/api/agents/{slug}"),
            None,
            StatusCode::OK,
        )
        .await;
    let archive_id = archived["id"].as_str().unwrap().to_string();
    let archived_name = archived["container"].as_str().unwrap().to_string();
    let _archived_cleanup = Remove(archived_name.clone());
    assert_eq!(archived["location"], "pool", "{archived}");
    assert!(incus().exists(&archived_name).await.unwrap());

    step(
        "killed after the repository snapshot, before the pool copy was deleted",
        async {
            let _: BackupRun = host
                .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
                .await;
            paused_at(&host, "archive-move:stored").await;
            let moving = the_archive(&host).await;
            assert_eq!(moving["location"], "moving_out", "{moving}");
            assert!(moving["backup_snapshot"].is_string(), "{moving}");
            assert!(incus().exists(&archived_name).await.unwrap());
            host.kill9().await;
        },
    )
    .await;

    let mut second = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: vec![(
                taos_host::faults::PAUSE_ENV.into(),
                "archive-return:imported".into(),
            )],
        },
    )
    .await
    .expect("the host starts again");
    step(
        "the next start keeps the pool copy; the next run moves it",
        async {
            let settled = the_archive(&second).await;
            assert_eq!(settled["location"], "pool", "{settled}");
            assert!(settled.get("backup_snapshot").is_none(), "{settled}");
            assert!(incus().exists(&archived_name).await.unwrap());
            assert!(!second.data_dir.join("backup/archive-move").exists());

            let run = run_backup(&second).await;
            assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
            assert!(run.warnings.is_empty(), "{run:?}");
            let moved = the_archive(&second).await;
            assert_eq!(moved["location"], "backup", "{moved}");
            let snapshot = moved["backup_snapshot"].as_str().unwrap().to_string();
            assert!(
                !incus().exists(&archived_name).await.unwrap(),
                "the pool is freed"
            );
            let in_repo = archive_snapshots(&out);
            assert!(
                in_repo.iter().any(|s| s["id"] == snapshot.as_str()),
                "{in_repo:?}"
            );
            // A later run leaves the moved container out of the host's snapshot, silently
            // and rightly: it is in the repository already.
            let run = run_backup(&second).await;
            assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
            assert_eq!(run.containers, Some(0), "{run:?}");
            assert!(run.warnings.is_empty(), "{run:?}");
        },
    )
    .await;

    step(
        "a new destination, which would strand the archive, is refused",
        async {
            let elsewhere = out.root.join("other");
            std::fs::create_dir_all(&elsewhere).unwrap();
            second
                .expect_error(
                    Method::PUT,
                    "/api/backups/settings",
                    Some(&json!({"destination": {"kind": "local", "path": elsewhere.join("repo").display().to_string()}})),
                    StatusCode::CONFLICT,
                    "conflict",
                )
                .await;
            let settings: BackupSettings = second.get("/api/backups/settings").await;
            assert_eq!(
                settings.destination,
                Some(serde_json::from_value(destination.clone()).unwrap())
            );
            assert!(settings.repository_ready);
        },
    )
    .await;

    step(
        "killed after the container came back, before its snapshot",
        async {
            let request = second
                .admin(
                    Method::POST,
                    &format!("/api/agents/archived/{archive_id}/restore"),
                )
                .send();
            tokio::select! {
                answer = request => panic!("the paused restore answered: {:?}", answer.map(|r| r.status())),
                () = paused_at(&second, "archive-return:imported") => {}
            }
            assert!(incus().exists(&archived_name).await.unwrap());
            assert_eq!(the_archive(&second).await["location"], "moving_in");
            second.kill9().await;
        },
    )
    .await;

    let third = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: Vec::new(),
        },
    )
    .await
    .expect("the host starts a third time");
    step(
        "the next start removes the half-returned container; the restore then works",
        async {
            let settled = the_archive(&third).await;
            assert_eq!(settled["location"], "backup", "{settled}");
            assert!(!incus().exists(&archived_name).await.unwrap());
            assert!(!third.data_dir.join("backup/archive-return").exists());
            taos_e2e::fixtures::wait_ready(&third, &taos_e2e::fixtures::FAKE_MODELS).await;
            let restored: Value = third
                .call(
                    Method::POST,
                    &format!("/api/agents/archived/{archive_id}/restore"),
                    None,
                    StatusCode::OK,
                )
                .await;
            assert_eq!(restored["agent"]["slug"], slug.as_str(), "{restored}");
            let archived: Vec<Value> = third.get("/api/agents/archived").await;
            assert!(archived.is_empty(), "{archived:?}");
            assert!(
                incus()
                    .state(&format!("taos-{slug}"))
                    .await
                    .unwrap()
                    .running
            );
            assert_eq!(messages(&third, &dm).await, before);
            let answer = ask_and_wait(&third, &slug, "after the return").await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
            // Its snapshot in the repository is forgotten (its data goes at the next prune).
            assert!(archive_snapshots(&out).is_empty());
        },
    )
    .await;
}

/// `taos-host setup --restore-from` on a new board (issue 18 item 5). Bad input is refused by
/// the binary before anything is written (no data dir made, nothing provisioned): an unknown
/// repository, a relative or `..` path, a passphrase on the command line (there is no such
/// option) or from nowhere, a passphrase file others can read, a non-empty data dir, a data dir
/// inside the repository, and a wrong passphrase. Then what setup does before provisioning,
/// the passphrase on standard input: the backup of a host with an incus agent that chatted is
/// restored into an empty data dir with the agent's container left aside (incus is not there
/// yet on a new board), imported once the runtime is there (setup's `containers` step, just
/// before the service), and the host started on it has the agent, its chat, and it answers.
/// Provisioning itself (packages, the pool, the firewall, the systemd unit) is not run here: it
/// would change this shared machine; scripts/install-test.sh runs setup in a clean container.
#[tokio::test]
async fn setup_restore_from_restores_first_and_brings_the_containers_back_after_provisioning() {
    require_image().await;
    let out = outside();
    let (_turn, mut host, _fake) = with_fake_provider(BIN, &[]).await;
    let name = unique("su");
    let (slug, _cleanup) = deploy(&host, &name).await;
    let container = format!("taos-{slug}");
    let answer = ask_and_wait(&host, &slug, "before the new board").await;
    assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let before = messages(&host, &dm).await;
    assert!(before.len() >= 2, "{before:?}");
    configure(&host, &out).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    let rt = incus();

    step("bad input is refused and changes nothing", async {
        let temp = tempfile::tempdir().unwrap();
        let repo = out.repo.display().to_string();
        let pass = out.password_file.display().to_string();
        let open_pass = temp.path().join("readable");
        std::fs::write(&open_pass, crate::backup::PASSPHRASE).unwrap();
        std::fs::set_permissions(&open_pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wrong_pass = temp.path().join("wrong");
        std::fs::write(&wrong_pass, "not the passphrase").unwrap();
        std::fs::set_permissions(&wrong_pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dotted = format!("{}/../taos-backups", out.repo.display());
        let inside = out.repo.join("restored-here");
        let data = temp.path().join("data");
        let used = temp.path().join("used");
        std::fs::create_dir(&used).unwrap();
        std::fs::write(used.join("keep.txt"), "mine").unwrap();
        let missing = "/nonexistent/taos-backups".to_string();
        let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
            (
                &data,
                vec!["--restore-from", &missing, "--password-file", &pass],
                "is not a backup repository",
            ),
            (
                &data,
                vec![
                    "--restore-from",
                    "usb/taos-backups",
                    "--password-file",
                    &pass,
                ],
                "absolute path without `.` or `..`",
            ),
            (
                &data,
                vec!["--restore-from", &dotted, "--password-file", &pass],
                "absolute path without `.` or `..`",
            ),
            (
                &data,
                vec![
                    "--restore-from",
                    &repo,
                    "--password",
                    crate::backup::PASSPHRASE,
                ],
                "unexpected argument '--password'",
            ),
            (&data, vec!["--restore-from", &repo], "--password-file"),
            (
                &data,
                vec![
                    "--restore-from",
                    &repo,
                    "--password-file",
                    open_pass.to_str().unwrap(),
                ],
                "`chmod 600` it first",
            ),
            (
                &used,
                vec!["--restore-from", &repo, "--password-file", &pass],
                "is not empty",
            ),
            (
                &inside,
                vec!["--restore-from", &repo, "--password-file", &pass],
                "overlap",
            ),
            (
                &data,
                vec![
                    "--restore-from",
                    &repo,
                    "--password-file",
                    wrong_pass.to_str().unwrap(),
                ],
                "the passphrase does not open the restic repository",
            ),
        ];
        for (dir, args, words) in cases {
            let output = std::process::Command::new(BIN)
                .arg("--data-dir")
                .arg(dir)
                .arg("setup")
                .args(&args)
                .env_remove("TAOS_DATA_DIR")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "accepted {args:?}: {stdout}");
            assert!(stderr.contains(words), "{args:?}: {words:?} in {stderr}");
            assert!(!stdout.contains("setting up:"), "{args:?}: {stdout}");
            if dir == used.as_path() {
                let left: Vec<_> = std::fs::read_dir(&used).unwrap().collect();
                assert_eq!(left.len(), 1, "the data dir is as it was");
                assert_eq!(
                    std::fs::read_to_string(used.join("keep.txt")).unwrap(),
                    "mine"
                );
            } else {
                assert!(!dir.exists(), "{args:?} made {}", dir.display());
            }
        }
        // A check with a good request only says what setup would do.
        let output = std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "setup",
                "--check",
                "--restore-from",
                &repo,
                "--password-file",
                &pass,
            ])
            .env_remove("TAOS_DATA_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        assert!(
            stdout.contains("With --restore-from, setup first restores")
                && stdout.contains("nothing was changed"),
            "{stdout}"
        );
        assert!(!data.exists(), "a check made the data dir");
        // The repository is as it was: the one snapshot, still opened by the passphrase.
        let listed = std::process::Command::new("restic")
            .args(["-r", &repo, "--password-file", &pass, "snapshots", "--json"])
            .env("RESTIC_CACHE_DIR", temp.path().join("cache"))
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let snapshots: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert!(
            rt.state(&container).await.unwrap().running,
            "nothing provisioned"
        );
    })
    .await;

    // The new board: an empty data dir, and no container of the agent's.
    let _ = rt.stop(&container, true).await;
    rt.delete(&container).await.unwrap();
    let fresh_temp = tempfile::tempdir().unwrap();
    let fresh = fresh_temp.path().join("data");
    step(
        "restored first, the container left aside until the runtime is provisioned",
        async {
            use taos_host::setup::restore_from::{restore_first, Passphrase, RestoreFrom};
            let restored = restore_first(
                &fresh,
                &RestoreFrom {
                    from: out.repo.display().to_string(),
                    passphrase: Passphrase::Stdin,
                    ssh_key: None,
                    known_hosts: None,
                    snapshot: None,
                },
                None,
                format!("{}\n", crate::backup::PASSPHRASE).as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(&restored.snapshot_id, run.snapshot_id.as_ref().unwrap());
            assert_eq!(restored.containers, 1);
            assert!(fresh.join("taos.toml").is_file(), "the old config is back");
            assert!(taos_host::backup::restore::has_deferred(&fresh));
            assert!(!rt.exists(&container).await.unwrap(), "not imported yet");
            assert_eq!(
                taos_host::backup::restore::import_deferred(&fresh)
                    .await
                    .unwrap(),
                1
            );
            assert!(rt.state(&container).await.unwrap().running);
            assert!(!taos_host::backup::restore::has_deferred(&fresh));
            assert!(!fresh.join("backup/restored-containers").exists());
            assert_eq!(
                taos_host::backup::restore::import_deferred(&fresh)
                    .await
                    .unwrap(),
                0,
                "nothing left to import"
            );
        },
    )
    .await;

    let restored = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(fresh.clone()),
            env: Vec::new(),
        },
    )
    .await
    .expect("the restored host starts");
    step(
        "the host has the agent and its chat, and it answers",
        async {
            taos_e2e::fixtures::wait_ready(&restored, &taos_e2e::fixtures::FAKE_MODELS).await;
            let back: Value = restored.get(&format!("/api/agents/{slug}")).await;
            assert_eq!(back["id"], agent["id"]);
            assert_eq!(messages(&restored, &dm).await, before);
            let answer = ask_and_wait(&restored, &slug, "on the new board").await;
            assert_eq!(answer["content"], taos_e2e::fake_llm::REPLY);
        },
    )
    .await;
    drop(restored);
}
