//! Backups with agents' containers (issue 18 items 2, 4, 6): an incus agent's container is
//! exported into the snapshot and comes back with a whole-host restore; restore drills check
//! the newest snapshot (and its containers, in a throwaway incus project) and notify when it
//! doesn't restore. Real restic, real incus, the `taos-agent` image.
//!
//! Container names are unique per test run (other tests use incus at the same time), and
//! every container is removed by a guard even when the test fails.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{
    ask_and_wait, deploy_succeeded, incus, require_image, step, with_fake_provider, Remove,
};
use taos_e2e::{Host, HostOptions};
use taos_host::runtime::Runtime;
use taos_proto::backup::{BackupRun, BackupState};

use crate::backup::{outside, run_backup, Outside};
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
async fn messages(host: &Host, channel: &str) -> Vec<Value> {
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
