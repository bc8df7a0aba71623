//! Backups (issue 18, first slice): the real `restic` binary into a folder, then
//! `taos-host restore` into a fresh data dir and a host started on it. Settings' bad input, a
//! host killed mid-backup, a backup taken while writes go on, and what restore refuses.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{
    create_agent_with, new_agent, step, wait_ready, with_fake_provider, FAKE_MODELS,
};
use taos_e2e::{Host, HostOptions, SseReader, OWNER, OWNER_PASSWORD};
use taos_proto::agents::{AgentWithToken, ArchivedAgent, NewAgent};
use taos_proto::backup::{
    BackupReason, BackupRun, BackupSettings, BackupSettingsSaved, BackupState,
};

use crate::BIN;

pub(crate) const PASSPHRASE: &str = "a long backup passphrase";

/// A folder outside any data dir for the repository, and a 0600 file with the passphrase
/// (what someone restoring on a new board would write).
pub(crate) struct Outside {
    _temp: tempfile::TempDir,
    pub repo: PathBuf,
    pub password_file: PathBuf,
    pub root: PathBuf,
}

pub(crate) fn outside() -> Outside {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().to_path_buf();
    let password_file = root.join("passphrase");
    std::fs::write(&password_file, PASSPHRASE).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Outside {
        repo: root.join("usb").join("taos-backups"),
        password_file,
        root,
        _temp: temp,
    }
}

async fn configure(host: &Host, repo: &Path) -> BackupSettingsSaved {
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    host.call(
        Method::PUT,
        "/api/backups/settings",
        Some(&json!({
            "destination": {"kind": "local", "path": repo.display().to_string()},
            "passphrase": PASSPHRASE,
        })),
        StatusCode::OK,
    )
    .await
}

/// Starts a backup and waits for it to end; returns the finished run.
pub(crate) async fn run_backup(host: &Host) -> BackupRun {
    let run: BackupRun = host
        .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
        .await;
    assert_eq!(run.state, BackupState::Queued);
    wait_run(host, &run.id).await
}

/// Run `run_id`'s phases as `/api/events` told them (a phase repeated back to back once), and
/// its `backup.finished` data.
pub(crate) async fn backup_phases(events: &mut SseReader, run_id: &str) -> (Vec<String>, Value) {
    let mut phases: Vec<String> = Vec::new();
    loop {
        let event = events
            .next(Duration::from_secs(300))
            .await
            .expect("backup events");
        let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
        if data["data"]["run_id"] != run_id {
            continue;
        }
        match event.event.as_deref() {
            Some("backup.progress") => {
                let phase = data["data"]["phase"].as_str().unwrap().to_string();
                if phases.last() != Some(&phase) {
                    phases.push(phase);
                }
            }
            Some("backup.finished") => return (phases, data["data"].clone()),
            _ => {}
        }
    }
}

async fn wait_run(host: &Host, id: &str) -> BackupRun {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let run: BackupRun = host.get(&format!("/api/backups/{id}")).await;
        if matches!(run.state, BackupState::Succeeded | BackupState::Failed) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "backup {id} never ended: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest backup notification, waited for: a run's record says `failed` a moment before
/// its notification is posted.
pub(crate) async fn backup_notification(host: &Host) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let notes: Vec<Value> = host.get("/api/notifications").await;
        if let Some(note) = notes.into_iter().find(|n| n["source"] == "backup") {
            return note;
        }
        assert!(Instant::now() < deadline, "no backup notification");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of a channel, oldest first.
async fn messages(host: &Host, channel: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m["seq"].as_i64().unwrap());
        let page: Vec<Value> = host
            .get(&format!(
                "/api/chat/channels/{channel}/messages?after_seq={after}&limit=500"
            ))
            .await;
        let done = page.len() < 500;
        all.extend(page);
        if done {
            return all;
        }
    }
}

/// The agent's trace events (of the last 30 days), counted by the host's totals.
async fn trace_count(host: &Host, slug: &str) -> u64 {
    trace_count_of(host, slug, "").await
}

/// Like [`trace_count`], with a query string (`?kind=…`).
async fn trace_count_of(host: &Host, slug: &str, query: &str) -> u64 {
    let totals: Value = host
        .get(&format!("/api/agents/{slug}/trace/totals{query}"))
        .await;
    totals["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["events"].as_u64().unwrap())
        .sum()
}

/// Sends `count` trace events with ids `<prefix>-<n>` and `bytes` of incompressible payload
/// each, in batches the body limit takes.
async fn send_traces(host: &Host, token: &str, prefix: &str, count: usize, bytes: usize) {
    let per_batch = (700_000 / (bytes + 300)).clamp(1, 500);
    let mut sent = 0;
    while sent < count {
        let n = per_batch.min(count - sent);
        let events: Vec<Value> = (sent..sent + n)
            .map(|i| {
                let blob: String = (0..bytes / 16)
                    .map(|_| format!("{:016x}", rand::random::<u64>()))
                    .collect();
                json!({"id": format!("{prefix}-{i}"), "kind": "tool_call", "payload": {"blob": blob}})
            })
            .collect();
        let r = taos_e2e::http_client()
            .post(host.agent_url("/api/trace/batch"))
            .bearer_auth(token)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "trace batch: {}",
            r.text().await.unwrap()
        );
        sent += n;
    }
}

async fn ask_gateway(host: &Host, key: &str) -> Value {
    let r = taos_e2e::http_client()
        .post(host.agent_url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                hits.push(path);
            }
        }
    }
    hits
}

fn restore_cli(data_dir: &Path, out: &Outside, extra: &[&str]) -> std::process::Output {
    restore_cli_from(
        data_dir,
        &[OsString::from("--from"), out.repo.clone().into()],
        &[],
        out,
        extra,
    )
}

/// `taos-host restore` with `from` (`--from …` and what goes with it) and `env`.
fn restore_cli_from(
    data_dir: &Path,
    from: &[OsString],
    env: &[(String, String)],
    out: &Outside,
    extra: &[&str],
) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("restore")
        .args(from)
        .arg("--password-file")
        .arg(&out.password_file)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run taos-host restore")
}

/// Where a round trip's backups go: what the host is told (destination and credentials),
/// and how plain restic and `taos-host restore` reach the same repository.
pub(crate) struct Target {
    pub destination: Value,
    pub credentials: Option<Value>,
    /// `--repo …` and any `-o` options for plain restic.
    pub restic_args: Vec<OsString>,
    /// `--from …` and what goes with it, for `taos-host restore`.
    pub restore_args: Vec<OsString>,
    /// Environment for plain restic and for the restore (S3's keys).
    pub env: Vec<(String, String)>,
    /// Secrets that must show up in no answer, data-dir file or log.
    pub secrets: Vec<String>,
}

impl Target {
    fn local(out: &Outside) -> Target {
        std::fs::create_dir_all(out.repo.parent().unwrap()).unwrap();
        Target {
            destination: json!({"kind": "local", "path": out.repo.display().to_string()}),
            credentials: None,
            restic_args: vec!["--repo".into(), out.repo.clone().into()],
            restore_args: vec!["--from".into(), out.repo.clone().into()],
            env: Vec::new(),
            secrets: Vec::new(),
        }
    }

    pub async fn configure(&self, host: &Host) -> BackupSettingsSaved {
        let mut body = json!({"destination": self.destination, "passphrase": PASSPHRASE});
        if let Some(credentials) = &self.credentials {
            body["credentials"] = credentials.clone();
        }
        host.call(
            Method::PUT,
            "/api/backups/settings",
            Some(&body),
            StatusCode::OK,
        )
        .await
    }
}

/// A host with an external agent, chats, traces, an archived agent and the fake provider is
/// backed up twice (the second adds little), stopped, restored into a fresh data dir and
/// started there: the owner signs in with the old password, the counts match, the archived
/// agent comes back, and the provider's key (sealed in the backup) still reaches the upstream.
#[tokio::test]
async fn a_backup_restores_the_whole_host_into_a_fresh_data_dir() {
    let out = outside();
    round_trip(&out, &Target::local(&out)).await;
}

/// The whole-host round trip of [`a_backup_restores_the_whole_host_into_a_fresh_data_dir`],
/// to any destination.
pub(crate) async fn round_trip(out: &Outside, target: &Target) {
    let (_turn, mut host, _fake) = with_fake_provider(BIN, &[]).await;

    let (keeper, dm, retired_dm) = step("fill the host", async {
        let keeper: AgentWithToken = create_agent_with(
            &host,
            NewAgent {
                model: Some("fake-gpt".into()),
                ..new_agent("Keeper")
            },
        )
        .await;
        let answer = ask_gateway(&host, keeper.llm_key.as_deref().unwrap()).await;
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            taos_e2e::fake_llm::REPLY
        );
        let dm = keeper.agent.dm_channel_id.clone().unwrap();
        for i in 0..30 {
            let _: Value = host
                .post(
                    "/api/chat/messages",
                    &json!({"channel_id": dm, "content": format!("note {i}")}),
                )
                .await;
        }
        // About 3.5 MB of traces that will not change between the two backups.
        send_traces(&host, &keeper.agent_token, "bulk", 1600, 2000).await;
        // An archived agent: its chat export and its trace folder are in the backup too.
        let retired: AgentWithToken = create_agent_with(&host, new_agent("Retired")).await;
        let retired_dm = retired.agent.dm_channel_id.clone().unwrap();
        let _: Value = host
            .post(
                "/api/chat/messages",
                &json!({"channel_id": retired_dm, "content": "kept in the archive"}),
            )
            .await;
        send_traces(&host, &retired.agent_token, "retired", 5, 100).await;
        let archived: ArchivedAgent = host
            .call(Method::DELETE, "/api/agents/retired", None, StatusCode::OK)
            .await;
        assert_eq!(archived.slug, "retired");
        (keeper, dm, retired_dm)
    })
    .await;

    let (first, second) = step("two backups, the second incremental", async {
        let saved = target.configure(&host).await;
        assert!(
            saved.generated_passphrase.is_none(),
            "we chose the passphrase"
        );
        let text = host
            .admin(Method::GET, "/api/backups/settings")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains(PASSPHRASE),
            "the passphrase is never returned"
        );
        for secret in &target.secrets {
            assert!(!text.contains(secret.as_str()), "no credential is returned");
        }
        let settings: BackupSettings = host.get("/api/backups/settings").await;
        assert_eq!(settings.credentials_set, target.credentials.is_some());
        let mut events =
            SseReader::new(host.admin(Method::GET, "/api/events").send().await.unwrap());
        let first = run_backup(&host).await;
        assert_eq!(first.state, BackupState::Succeeded, "{first:?}");
        let snapshot = first.snapshot_id.clone().unwrap();
        assert_eq!(snapshot.len(), 64, "the full snapshot id: {snapshot}");
        // What was said on /api/events while it ran.
        let (phases, finished) = backup_phases(&mut events, &first.id).await;
        assert_eq!(finished["state"], "succeeded", "{finished}");
        assert_eq!(finished["snapshot_id"], snapshot.as_str());
        for phase in ["staging", "uploading", "retention"] {
            assert!(phases.iter().any(|p| p == phase), "{phase} in {phases:?}");
        }
        assert!(
            first.data_added.unwrap() > 3_000_000,
            "the traces' bytes were added: {first:?}"
        );
        let settings: BackupSettings = host.get("/api/backups/settings").await;
        assert!(settings.repository_ready);
        // The repository is made with this passphrase now; another is refused.
        host.expect_error(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({
                "destination": target.destination,
                "passphrase": "another passphrase entirely",
            })),
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;

        let _: Value = host
            .post(
                "/api/chat/messages",
                &json!({"channel_id": dm, "content": "after the first backup"}),
            )
            .await;
        let second = run_backup(&host).await;
        assert_eq!(second.state, BackupState::Succeeded, "{second:?}");
        assert_ne!(second.snapshot_id, first.snapshot_id);
        assert!(
            second.data_added.unwrap() * 4 < first.data_added.unwrap(),
            "the second backup adds only what changed: {} vs {}",
            second.data_added.unwrap(),
            first.data_added.unwrap()
        );
        let runs: Vec<BackupRun> = host.get("/api/backups").await;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].id, second.id, "newest first");
        // Staging and the password file are gone once a run ends, and the passphrase is in no
        // file of the data dir (the database holds it sealed) and not in the log.
        assert!(!host.data_dir.join("backup/taos-data").exists());
        assert!(!host.data_dir.join("backup/repository-password").exists());
        assert_eq!(
            files_containing(&host.data_dir, PASSPHRASE),
            Vec::<PathBuf>::new()
        );
        let log = std::fs::read_to_string(&host.stderr_log).unwrap();
        assert!(!log.contains(PASSPHRASE), "the passphrase is not logged");
        for secret in &target.secrets {
            assert_eq!(
                files_containing(&host.data_dir, secret),
                Vec::<PathBuf>::new(),
                "credentials are sealed, and their run files removed"
            );
            assert!(!log.contains(secret.as_str()), "credentials are not logged");
        }
        // restic itself reads the repository: taos is not needed to inspect a backup.
        let listed = std::process::Command::new("restic")
            .args(&target.restic_args)
            .arg("--password-file")
            .arg(&out.password_file)
            .args(["snapshots", "--json", "--no-cache"])
            .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(listed.status.success(), "{listed:?}");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.contains(second.snapshot_id.as_deref().unwrap()),
            "{listed}"
        );
        (first, second)
    })
    .await;

    let before_messages = messages(&host, &dm).await;
    let before_traces = trace_count(&host, "keeper").await;
    assert!(before_messages.len() >= 31, "{}", before_messages.len());
    assert!(
        before_traces >= 1601,
        "bulk traces and the llm call: {before_traces}"
    );
    let pin = host.pin;
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    // The card is lost: nothing of the old data dir is left to lean on.
    std::fs::remove_dir_all(&host.data_dir).unwrap();

    let fresh_temp = tempfile::tempdir().unwrap();
    let fresh = fresh_temp.path().join("data");
    step("restore into a fresh data dir", async {
        let output = restore_cli_from(&fresh, &target.restore_args, &target.env, out, &[]);
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "restore: {said} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            said.contains(second.snapshot_id.as_deref().unwrap()),
            "the newest snapshot by default: {said}"
        );
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
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
    step("the restored host is the old one", async {
        assert_eq!(restored.pin, pin, "the same TLS identity");
        let login = restored.login(OWNER, OWNER_PASSWORD).await;
        assert_eq!(login.status(), StatusCode::OK, "the owner's old password");
        assert_eq!(messages(&restored, &dm).await, before_messages);
        assert_eq!(trace_count(&restored, "keeper").await, before_traces);
        let agent: Value = restored.get("/api/agents/keeper").await;
        assert_eq!(agent["id"], keeper.agent.id.to_string());
        // The provider key was sealed in the backup; LiteLLM gets it without anyone typing it.
        wait_ready(&restored, &FAKE_MODELS).await;
        let answer = ask_gateway(&restored, keeper.llm_key.as_deref().unwrap()).await;
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            taos_e2e::fake_llm::REPLY
        );
        // The run that made the snapshot is on record as succeeded, in the restored database.
        let runs: Vec<BackupRun> = restored.get("/api/backups").await;
        let made = runs.iter().find(|r| r.id == second.id).unwrap();
        assert_eq!(made.state, BackupState::Succeeded);
        assert_eq!(made.snapshot_id, second.snapshot_id);
        assert!(runs.iter().any(|r| r.id == first.id));
        // The archived agent came along, and comes back from its (moved) archive folder.
        let archived: Vec<ArchivedAgent> = restored.get("/api/agents/archived").await;
        assert_eq!(archived.len(), 1);
        let back = restored
            .admin(
                Method::POST,
                &format!("/api/agents/archived/{}/restore", archived[0].id),
            )
            .send()
            .await
            .unwrap();
        let status = back.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            back.text().await.unwrap()
        );
        let texts: Vec<String> = messages(&restored, &retired_dm)
            .await
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect();
        // (After it, the host's own note that the agent's sidecar is not connected.)
        assert_eq!(texts[0], "kept in the archive", "{texts:?}");
        assert_eq!(
            trace_count_of(&restored, "retired", "?kind=tool_call").await,
            5
        );
    })
    .await;
}

/// Messages and trace events acknowledged before a backup starts are all in it while both keep
/// coming during the backup: the restored chat is a gap-free prefix holding every one of them.
#[tokio::test]
async fn a_backup_while_chat_and_trace_writes_continue_loses_nothing() {
    let host = Host::start_with(
        BIN,
        HostOptions::with_env(&[taos_e2e::fixtures::NO_LITELLM]),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let out = outside();
    configure(&host, &out.repo).await;
    let agent: AgentWithToken = create_agent_with(&host, new_agent("Busy")).await;
    let dm = agent.agent.dm_channel_id.clone().unwrap();

    let acked_messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_traces = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, url, token) = (
            host.client(),
            host.url("/api/chat/messages"),
            host.local_token(),
        );
        let trace_url = host.agent_url("/api/trace/batch");
        let agent_token = agent.agent_token.clone();
        let (acked_messages, acked_traces, stop) =
            (acked_messages.clone(), acked_traces.clone(), stop.clone());
        let dm = dm.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"channel_id": dm, "content": format!("m{n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let message: Value = r.json().await.unwrap();
                acked_messages
                    .lock()
                    .unwrap()
                    .push(message["id"].as_str().unwrap().to_string());
                let r = taos_e2e::http_client()
                    .post(&trace_url)
                    .bearer_auth(&agent_token)
                    .json(&json!({"events": [{"id": format!("t{n}"), "kind": "tool_call", "payload": {"n": n}}]}))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                *acked_traces.lock().unwrap() = n + 1;
                n += 1;
            }
        })
    };
    // Writes are under way before the backup is asked for, and go on while it runs.
    let wait_for = |want: usize| {
        let acked = acked_messages.clone();
        async move {
            while acked.lock().unwrap().len() < want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(20).await;
    let before_messages: Vec<String> = acked_messages.lock().unwrap().clone();
    let before_traces = *acked_traces.lock().unwrap();
    let run: BackupRun = host
        .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
        .await;
    let run = wait_run(&host, &run.id).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    let all_acked = acked_messages.lock().unwrap().len();
    assert!(
        all_acked > before_messages.len(),
        "writes went on during the backup"
    );
    drop(host);

    let fresh_temp = tempfile::tempdir().unwrap();
    let fresh = fresh_temp.path().join("data");
    let output = restore_cli(&fresh, &out, &[]);
    assert!(output.status.success(), "{output:?}");
    let restored = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(fresh),
            env: vec![(
                taos_e2e::fixtures::NO_LITELLM.0.into(),
                taos_e2e::fixtures::NO_LITELLM.1.into(),
            )],
        },
    )
    .await
    .unwrap();
    let kept = messages(&restored, &dm).await;
    let ids: Vec<&str> = kept.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for id in &before_messages {
        assert!(
            ids.contains(&id.as_str()),
            "message {id}, acknowledged before the backup, is in it"
        );
    }
    // One consistent moment: the restored chat is the first N messages, without a gap.
    let seqs: Vec<i64> = kept.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected);
    assert!(kept.len() <= all_acked);
    let traces = trace_count(&restored, "busy").await;
    assert!(
        traces as usize >= before_traces,
        "{traces} trace events restored, {before_traces} acknowledged before the backup"
    );
}

/// Bad settings get a 400 that says what is wrong, and nothing changes; a backup can't run
/// before settings exist; a passphrase made by the host is shown once.
#[tokio::test]
async fn bad_backup_settings_are_refused_and_change_nothing() {
    let host = Host::start_with(
        BIN,
        HostOptions::with_env(&[taos_e2e::fixtures::NO_LITELLM]),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let refused = host
        .expect_error(
            Method::POST,
            "/api/backups",
            None,
            StatusCode::CONFLICT,
            "not_configured",
        )
        .await;
    assert!(
        refused.message.contains("not set up"),
        "{}",
        refused.message
    );

    let out = outside();
    let good = out.repo.display().to_string();
    let saved: BackupSettingsSaved = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({"destination": {"kind": "local", "path": good}})),
            StatusCode::OK,
        )
        .await;
    let made = saved
        .generated_passphrase
        .expect("a passphrase made and shown once");
    assert!(made.len() >= 20);
    let settings: BackupSettings = host.get("/api/backups/settings").await;
    assert!(settings.passphrase_set);
    let text = serde_json::to_string(&settings).unwrap();
    assert!(!text.contains(&made), "never shown again");

    let inside = host.data_dir.join("backups").display().to_string();
    let cases = [
        (
            json!({"kind": "local", "path": "relative/folder"}),
            None,
            "absolute",
        ),
        (
            json!({"kind": "local", "path": format!("{}/../x", out.root.display())}),
            None,
            "..",
        ),
        (
            json!({"kind": "local", "path": "/mnt/a\u{0}b"}),
            None,
            "NUL",
        ),
        (
            json!({"kind": "local", "path": inside}),
            None,
            "outside the data dir",
        ),
        (
            json!({"kind": "local", "path": host.data_dir.display().to_string()}),
            None,
            "outside the data dir",
        ),
        (
            json!({"kind": "local", "path": good}),
            Some(""),
            "at least 8",
        ),
        (
            json!({"kind": "local", "path": good}),
            Some("short"),
            "at least 8",
        ),
        // Not a destination the host knows: the body itself is refused.
        (
            json!({"kind": "ftp", "path": "/x"}),
            None,
            "unknown variant",
        ),
    ];
    for (destination, passphrase, says) in cases {
        let code = if says == "unknown variant" {
            "invalid_json"
        } else {
            "bad_request"
        };
        let mut body = json!({"destination": destination});
        if let Some(p) = passphrase {
            body["passphrase"] = json!(p);
        }
        let error = host
            .expect_error(
                Method::PUT,
                "/api/backups/settings",
                Some(&body),
                StatusCode::BAD_REQUEST,
                code,
            )
            .await;
        assert!(error.message.contains(says), "{body}: {}", error.message);
        let now: BackupSettings = host.get("/api/backups/settings").await;
        assert_eq!(now, settings, "{body} changed nothing");
    }
    let error = host
        .expect_error(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({"destination": {"kind": "local", "path": good},
                "retention": {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(
        error.message.contains("keep at least one"),
        "{}",
        error.message
    );
    let now: BackupSettings = host.get("/api/backups/settings").await;
    assert_eq!(now, settings);
    for (schedule, says) in [
        (
            json!({"kind": "daily", "hour": 24, "minute": 0}),
            "hour 0–23",
        ),
        (
            json!({"kind": "daily", "hour": 3, "minute": 60}),
            "minute 0–59",
        ),
        (json!({"kind": "every_hours", "hours": 0}), "hours 1–168"),
        (json!({"kind": "every_hours", "hours": 169}), "hours 1–168"),
    ] {
        let error = host
            .expect_error(
                Method::PUT,
                "/api/backups/settings",
                Some(&json!({"destination": {"kind": "local", "path": good},
                    "schedule": schedule})),
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        assert!(
            error.message.contains(says),
            "{schedule}: {}",
            error.message
        );
        let now: BackupSettings = host.get("/api/backups/settings").await;
        assert_eq!(now, settings, "{schedule} changed nothing");
    }
    // A folder on a read-only file system, as every folder but /mnt, /media and /srv is to the
    // service in its sandbox: refused when saved, with where it may write, not at the first run.
    let read_only = ReadOnlyMount::new(&out.root.join("ro"));
    let error = host
        .expect_error(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({"destination": {"kind": "local",
                "path": read_only.0.join("usb").join("taos").display().to_string()}})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(
        error.message.contains("read-only") && error.message.contains("/media"),
        "{}",
        error.message
    );
    let now: BackupSettings = host.get("/api/backups/settings").await;
    assert_eq!(now, settings, "a read-only destination changed nothing");
    drop(read_only);
    host.expect_error(
        Method::GET,
        "/api/backups/nope",
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // No disk mounted: the run fails with the reason, and the owner is told what to do.
    let unplugged = out.root.join("not-mounted").join("taos");
    let _: BackupSettingsSaved = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(
                &json!({"destination": {"kind": "local", "path": unplugged.display().to_string()}}),
            ),
            StatusCode::OK,
        )
        .await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Failed);
    let reason = run.error.unwrap();
    assert!(reason.contains("is the disk mounted"), "{reason}");
    assert!(!unplugged.exists(), "nothing made where the disk should be");
    let note = backup_notification(&host).await;
    assert!(note["message"]
        .as_str()
        .unwrap()
        .contains("Plug in and mount the disk"));
}

/// An empty tmpfs mounted read-only at a new folder, unmounted when dropped (CI runs as root).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(at: &Path) -> ReadOnlyMount {
        assert!(
            taos_host::sys::is_root(),
            "this test mounts a read-only tmpfs and needs root (CI runs as root)"
        );
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "taos-test-ro"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a read-only tmpfs at {at:?}");
        ReadOnlyMount(at.to_path_buf())
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A host SIGKILLed in the middle of a backup finds the run at its next start and marks it
/// failed with the reason; the staged copy and the password file are gone; the next backup
/// runs, past the stale lock a killed restic leaves in the repository (without `unlock`, its
/// prune would be refused).
#[tokio::test]
async fn a_host_killed_mid_backup_marks_the_run_failed_at_its_next_start() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let env = |pause: bool| {
        let mut env = vec![(
            taos_e2e::fixtures::NO_LITELLM.0.to_string(),
            taos_e2e::fixtures::NO_LITELLM.1.to_string(),
        )];
        if pause {
            env.push(("TAOS_TEST_PAUSE".to_string(), "backup:staged".to_string()));
        }
        HostOptions {
            data_dir: Some(data_dir.clone()),
            env,
        }
    };
    let mut host = Host::start_with(BIN, env(true)).await.unwrap();
    host.setup_owner().await;
    let out = outside();
    configure(&host, &out.repo).await;
    let run: BackupRun = host
        .call(Method::POST, "/api/backups", None, StatusCode::ACCEPTED)
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
        if log.contains("fault injection: paused at backup:staged") {
            break;
        }
        assert!(Instant::now() < deadline, "the backup never reached staged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let running: BackupRun = host.get(&format!("/api/backups/{}", run.id)).await;
    assert_eq!(running.state, BackupState::Running);
    let private = data_dir.join("backup");
    assert!(private.join("taos-data/taos.db").exists());
    assert_eq!(
        std::fs::metadata(private.join("repository-password"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    host.kill9().await;

    let host = Host::start_with(BIN, env(false)).await.unwrap();
    let failed: BackupRun = host.get(&format!("/api/backups/{}", run.id)).await;
    assert_eq!(failed.state, BackupState::Failed);
    assert!(
        failed.error.as_deref().unwrap().contains("host stopped"),
        "{failed:?}"
    );
    assert!(!private.join("taos-data").exists());
    assert!(!private.join("repository-password").exists());
    let notes: Vec<Value> = host.get("/api/notifications").await;
    assert!(notes
        .iter()
        .any(|n| n["source"] == "backup" && n["data"]["run_id"] == run.id.as_str()));
    // A restic killed mid-backup (as it is with the host) leaves its lock in the repository,
    // which would stop the next run's prune; here one is left the same way.
    let mut stuck = tokio::process::Command::new("restic")
        .arg("--repo")
        .arg(&out.repo)
        .arg("--password-file")
        .arg(&out.password_file)
        .args(["backup", "--stdin", "--no-cache"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locks = out.repo.join("locks");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&locks).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "restic never took its lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stuck.kill().await.unwrap();
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        1,
        "a stale lock"
    );
    let next = run_backup(&host).await;
    assert_eq!(next.state, BackupState::Succeeded, "{next:?}");
}

/// Restore refuses a data dir that is not empty, a wrong passphrase and a snapshot from a
/// newer schema, each with a message that says so, and leaves no half-made data dir behind.
#[tokio::test]
async fn restore_refuses_a_non_empty_data_dir_a_wrong_passphrase_and_a_newer_schema() {
    let out = outside();
    // A repository with a snapshot as a newer taos would tag it, made with restic itself.
    let staged = out.root.join("newer").join("taos-data");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("manifest.json"), r#"{"format": 1}"#).unwrap();
    let restic = |args: &[&str], cwd: &Path| {
        let output = std::process::Command::new("restic")
            .arg("--repo")
            .arg(&out.repo)
            .arg("--password-file")
            .arg(&out.password_file)
            .args(args)
            .current_dir(cwd)
            .env("RESTIC_CACHE_DIR", out.root.join("cache"))
            .output()
            .expect("restic runs (apt-get install restic)");
        assert!(output.status.success(), "restic {args:?}: {output:?}");
    };
    std::fs::create_dir_all(out.repo.parent().unwrap()).unwrap();
    restic(&["init"], &out.root);
    restic(
        &[
            "backup",
            "--tag",
            "taos",
            "--tag",
            "taos-schema-9999",
            "taos-data",
        ],
        &out.root.join("newer"),
    );

    let fresh = out.root.join("fresh");
    let output = restore_cli(&fresh, &out, &[]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("newer taos") && said.contains("9999"),
        "{said}"
    );
    assert!(!fresh.exists(), "nothing left behind");

    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("taos.toml"), "").unwrap();
    let output = restore_cli(&fresh, &out, &[]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("is not empty"), "{said}");
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 1, "untouched");

    let empty = out.root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(&out.password_file, "not the passphrase").unwrap();
    let output = restore_cli(&empty, &out, &[]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("passphrase does not open"), "{said}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "left empty");
    std::fs::write(&out.password_file, PASSPHRASE).unwrap();
    let output = restore_cli(&empty, &out, &["--snapshot", "ffffffff"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("no taos backup with id ffffffff"), "{said}");
}

/// A daily backup whose time passed while the host was off runs once when it starts again,
/// recorded as `missed`. Time is not waited for: the settings are made two days old in the
/// stopped host's database (as if saved then), so today's slot has passed unrun.
#[tokio::test]
async fn a_scheduled_backup_missed_while_the_host_was_off_runs_once_at_start() {
    let mut host = Host::start_with(
        BIN,
        HostOptions::with_env(&[taos_e2e::fixtures::NO_LITELLM]),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let out = outside();
    let target = Target::local(&out);
    let _ = target.configure(&host).await;
    // The slot: an hour ago, today or yesterday (UTC).
    let slot = chrono::Utc::now() - chrono::Duration::hours(1);
    let schedule = json!({"kind": "daily", "hour": chrono::Timelike::hour(&slot),
        "minute": chrono::Timelike::minute(&slot)});
    let saved: BackupSettingsSaved = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({"destination": target.destination, "schedule": schedule})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        serde_json::to_value(saved.settings.schedule).unwrap(),
        schedule
    );
    // Saved after the slot: nothing was missed, so nothing runs at a restart now.
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    let data_dir = host.data_dir.clone();
    let mut host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data_dir.clone()),
            env: vec![(
                taos_e2e::fixtures::NO_LITELLM.0.into(),
                taos_e2e::fixtures::NO_LITELLM.1.into(),
            )],
        },
    )
    .await
    .unwrap();
    let runs: Vec<BackupRun> = host.get("/api/backups").await;
    assert!(runs.is_empty(), "{runs:?}");
    assert_eq!(host.terminate().await.unwrap(), Some(0));

    // Two days later (the settings were saved then), the host starts again.
    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("taos.db")),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE backup_settings SET updated_at = updated_at - 2 * 86400000")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(data_dir.clone()),
            env: vec![(
                taos_e2e::fixtures::NO_LITELLM.0.into(),
                taos_e2e::fixtures::NO_LITELLM.1.into(),
            )],
        },
    )
    .await
    .unwrap();
    let runs: Vec<BackupRun> = host.get("/api/backups").await;
    assert_eq!(runs.len(), 1, "one run for the missed slot: {runs:?}");
    assert_eq!(runs[0].reason, BackupReason::Missed);
    let run = wait_run(&host, &runs[0].id).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    // A run by hand says so.
    let manual = run_backup(&host).await;
    assert_eq!(manual.reason, BackupReason::Manual);
    let runs: Vec<BackupRun> = host.get("/api/backups").await;
    assert_eq!(
        runs.iter()
            .filter(|r| r.reason == BackupReason::Missed)
            .count(),
        1,
        "the missed slot ran once: {runs:?}"
    );
}

/// plain restic's snapshots of the repository with the passphrase in `password`, or its
/// error words.
fn snapshots_with(repo: &Path, dir: &Path, password: &str) -> Result<Vec<Value>, String> {
    let file = dir.join(format!("pw-{:08x}", rand::random::<u32>()));
    std::fs::write(&file, password).unwrap();
    let listed = std::process::Command::new("restic")
        .arg("--repo")
        .arg(repo)
        .arg("--password-file")
        .arg(&file)
        .args(["snapshots", "--no-cache", "--json"])
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    if listed.status.success() {
        Ok(serde_json::from_slice(&listed.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&listed.stderr).into_owned())
    }
}

/// The passphrase changes with restic's own key rotation: bad requests are refused and change
/// nothing (the old passphrase still opens the repository); a passphrase the host makes is
/// returned once, opens every earlier snapshot, and the old one stops working; the next run
/// and a drill use the new one; a typed one works the same way.
#[tokio::test]
async fn the_passphrase_changes_and_the_old_one_stops_working() {
    let host = Host::start_with(
        BIN,
        HostOptions::with_env(&[taos_e2e::fixtures::NO_LITELLM]),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let out = outside();
    host.expect_error(
        Method::POST,
        "/api/backups/passphrase",
        Some(&json!({})),
        StatusCode::CONFLICT,
        "not_configured",
    )
    .await;
    configure(&host, &out.repo).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");

    step("bad passphrase changes are refused and change nothing", async {
        for (body, status) in [
            (json!({"passphrase": "short"}), StatusCode::BAD_REQUEST),
            (json!({"passphrase": PASSPHRASE}), StatusCode::BAD_REQUEST),
            (json!({"passphrase": " padded passphrase "}), StatusCode::BAD_REQUEST),
            (json!({"passphrase": "line\nbreak passphrase"}), StatusCode::BAD_REQUEST),
            (json!({"passphrase": 12345678}), StatusCode::BAD_REQUEST),
            (json!({"new": "another passphrase"}), StatusCode::BAD_REQUEST),
        ] {
            let r = host
                .admin(Method::POST, "/api/backups/passphrase")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{body}");
        }
        // Through the settings, a new passphrase for the made repository is still refused,
        // pointing at the change.
        let refused = host
            .expect_error(
                Method::PUT,
                "/api/backups/settings",
                Some(&json!({"destination": {"kind": "local", "path": out.repo.display().to_string()},
                    "passphrase": "another long passphrase"})),
                StatusCode::CONFLICT,
                "conflict",
            )
            .await;
        assert!(
            refused.message.contains("/api/backups/passphrase"),
            "{}",
            refused.message
        );
        let snapshots = snapshots_with(&out.repo, &out.root, PASSPHRASE).unwrap();
        assert_eq!(snapshots.len(), 1);
    })
    .await;

    let made = step("a passphrase the host makes", async {
        let saved: BackupSettingsSaved = host
            .call(
                Method::POST,
                "/api/backups/passphrase",
                Some(&json!({})),
                StatusCode::OK,
            )
            .await;
        let made = saved.generated_passphrase.expect("shown once");
        assert!(made.len() >= 16, "{made}");
        assert!(saved.settings.repository_ready);
        let snapshots = snapshots_with(&out.repo, &out.root, &made).unwrap();
        assert_eq!(snapshots.len(), 1, "the earlier snapshot opens");
        let old = snapshots_with(&out.repo, &out.root, PASSPHRASE).unwrap_err();
        assert!(old.contains("wrong password"), "{old}");
        // It is not kept anywhere readable.
        let settings: Value = host.get("/api/backups/settings").await;
        assert!(!settings.to_string().contains(&made));
        for file in ["passphrase-old", "passphrase-new", "passphrase-change.json"] {
            assert!(!host.data_dir.join("backup").join(file).exists(), "{file}");
        }
        made
    })
    .await;

    step("the next run and a drill use it", async {
        let run = run_backup(&host).await;
        assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
        // Retention keeps one a day: the new run's snapshot is the one left.
        let listed = snapshots_with(&out.repo, &out.root, &made).unwrap();
        assert!(
            listed
                .iter()
                .any(|s| s["id"] == run.snapshot_id.as_deref().unwrap()),
            "{listed:?}"
        );
        let drill: Value = host
            .call(
                Method::POST,
                "/api/backups/drill",
                None,
                StatusCode::ACCEPTED,
            )
            .await;
        let id = drill["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        let drill = loop {
            let d: Value = host.get(&format!("/api/backups/drills/{id}")).await;
            if d["state"] != "running" {
                break d;
            }
            assert!(Instant::now() < deadline, "{d}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(drill["state"], "passed", "{drill}");
    })
    .await;

    step("a typed one", async {
        let typed = "a typed passphrase, long enough";
        let saved: BackupSettingsSaved = host
            .call(
                Method::POST,
                "/api/backups/passphrase",
                Some(&json!({"passphrase": typed})),
                StatusCode::OK,
            )
            .await;
        assert!(saved.generated_passphrase.is_none());
        assert!(!snapshots_with(&out.repo, &out.root, typed)
            .unwrap()
            .is_empty());
        assert!(snapshots_with(&out.repo, &out.root, &made).is_err());
        let run = run_backup(&host).await;
        assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    })
    .await;
}

/// A host killed in a passphrase change after the new passphrase was stored, before the old
/// key was removed (so the new one was never shown to anyone) undoes the change at its next
/// start: the old passphrase is stored again and opens the repository, the new one doesn't,
/// and backups go on.
#[tokio::test]
async fn a_host_killed_mid_passphrase_change_keeps_the_old_passphrase() {
    let mut host = Host::start_with(
        BIN,
        HostOptions::with_env(&[
            taos_e2e::fixtures::NO_LITELLM,
            (taos_host::faults::PAUSE_ENV, "passphrase:committed"),
        ]),
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let out = outside();
    configure(&host, &out.repo).await;
    let run = run_backup(&host).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
    let typed = "the passphrase nobody saw";
    let request = host
        .admin(Method::POST, "/api/backups/passphrase")
        .json(&json!({"passphrase": typed}))
        .send();
    let log = host.stderr_log.clone();
    let paused = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("fault injection: paused at passphrase:committed")
        {
            assert!(Instant::now() < deadline, "the change never paused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        answer = request => panic!("the paused change answered: {:?}", answer.map(|r| r.status())),
        () = paused => {}
    }
    // Both open the repository at this point.
    assert!(snapshots_with(&out.repo, &out.root, typed).is_ok());
    assert!(snapshots_with(&out.repo, &out.root, PASSPHRASE).is_ok());
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
    assert_eq!(
        snapshots_with(&out.repo, &out.root, PASSPHRASE)
            .unwrap()
            .len(),
        1
    );
    let new = snapshots_with(&out.repo, &out.root, typed).unwrap_err();
    assert!(new.contains("wrong password"), "{new}");
    assert!(!restarted
        .data_dir
        .join("backup/passphrase-change.json")
        .exists());
    let run = run_backup(&restarted).await;
    assert_eq!(run.state, BackupState::Succeeded, "{run:?}");
}
