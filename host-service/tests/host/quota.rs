//! The disk quota monitor against a real container on a btrfs pool, and admin prompts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions};
use taos_host::runtime::Runtime;
use taos_proto::agents::{DiskState, DiskStatus};

use taos_e2e::fixtures::{catalog, deploy_succeeded, incus, require_image, Remove, NO_LITELLM};

use crate::{host_with, BIN};

async fn disk_notifications(host: &Host) -> Vec<Value> {
    let list: Vec<Value> = host
        .admin(Method::GET, "/api/notifications?limit=500")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.into_iter()
        .filter(|n| n["source"] == "disk_quota")
        .collect()
}

async fn scan(host: &Host) -> Value {
    let r = host
        .admin(Method::POST, "/api/disk-quota/scan")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// An owner, a model and a succeeded 1 GiB direct agent; the guard deletes its container.
async fn deployed(host: &Host, name: &str) -> (String, String, Remove) {
    require_image().await;
    host.setup_owner().await;
    catalog(host).await;
    let (slug, cleanup) = deploy_succeeded(
        host,
        json!({"name": name, "framework": "direct", "model": "fake-gpt", "disk_quota_gib": 1}),
    )
    .await;
    let container = format!("taos-{slug}");
    (slug, container, cleanup)
}

#[tokio::test]
async fn a_full_disk_warns_then_pauses_and_a_resize_resumes() {
    let mut host = host_with(&[]).await;
    let (slug, container, _cleanup) = deployed(&host, "Hoarder").await;
    let rt = incus();

    let first = scan(&host).await;
    assert_eq!(first["scanned"], 1);
    let disk: DiskStatus = host.get(&format!("/api/agents/{slug}/disk")).await;
    assert_eq!(disk.state, DiskState::Ok);
    assert_eq!(disk.quota_bytes, 1024u64 * 1024 * 1024);
    let used0 = disk.used_bytes.unwrap();
    assert!(disk.percent.unwrap() < 87.5);

    // Past 87.5 %: one warning, and only one however often we look.
    let target = (1024u64 * 1024 * 1024) * 90 / 100;
    let mib = (target.saturating_sub(used0)) / (1024 * 1024) + 1;
    let fill = format!("dd if=/dev/zero of=/root/fill1 bs=1M count={mib} 2>/dev/null; sync");
    rt.exec(
        &container,
        &["sh", "-c", &fill],
        &BTreeMap::new(),
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    scan(&host).await;
    scan(&host).await;
    let disk: DiskStatus = host.get(&format!("/api/agents/{slug}/disk")).await;
    assert_eq!(disk.state, DiskState::Warn, "{disk:?}");
    let notes = disk_notifications(&host).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["level"], "warning");

    // Full: one error, and the agent is paused with its container stopped.
    rt.exec(
        &container,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/root/fill2 bs=1M count=300 2>/dev/null; sync",
        ],
        &BTreeMap::new(),
        Duration::from_secs(120),
    )
    .await
    .ok();
    scan(&host).await;
    let disk: DiskStatus = host.get(&format!("/api/agents/{slug}/disk")).await;
    assert_eq!(disk.state, DiskState::Hard, "{disk:?}");
    let notes = disk_notifications(&host).await;
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0]["level"], "error");
    assert!(notes[0]["data"]["actions"].to_string().contains("resize"));
    let agent: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["paused"], true);
    assert!(!rt.state(&container).await.unwrap().running);
    // Its LLM calls are refused too, saying why.
    let key: Value = host
        .admin(Method::POST, &format!("/api/agents/{slug}/llm-key/rotate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = crate::llm::gateway(
        &host,
        key["llm_key"].as_str().unwrap(),
        "/v1/chat/completions",
    )
    .json(&json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}))
    .send()
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["type"], "agent_paused", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk"),
        "{refused}"
    );
    // A paused agent gets no messages: they wait, and the channel says so.
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let posted: Value = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "are you there?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after: Vec<Value> = host
        .admin(
            Method::GET,
            &format!(
                "/api/chat/channels/{dm}/messages?after_seq={}",
                posted["seq"]
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        after
            .iter()
            .any(|m| m["author_type"] == "system"
                && m["content"].as_str().unwrap().contains("paused")),
        "{after:?}"
    );

    // Restarting the host doesn't alert again.
    host.terminate().await.unwrap();
    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: vec![(NO_LITELLM.0.into(), NO_LITELLM.1.into())],
        },
    )
    .await
    .unwrap();
    scan(&host).await;
    assert_eq!(
        disk_notifications(&host).await.len(),
        2,
        "no repeated alert after a restart"
    );

    // More room: back to ok, resumed, connected again.
    let quota = format!("/api/agents/{slug}/quota");
    host.expect_error(
        Method::POST,
        &quota,
        Some(&json!({"size_gib": 0})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let disk: DiskStatus = host.post(&quota, &json!({"size_gib": 3})).await;
    assert_eq!(disk.state, DiskState::Ok, "{disk:?}");
    let notes = disk_notifications(&host).await;
    assert_eq!(notes.len(), 3);
    assert_eq!(notes[0]["level"], "info");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let agent: Value = host
            .admin(Method::GET, &format!("/api/agents/{slug}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if agent["paused"] == false && agent["connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not resumed: {agent}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rt.state(&container).await.unwrap().running);
}

#[tokio::test]
async fn admin_prompts_are_listed_fetched_and_sent_to_an_agent() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let list: Vec<Value> = host
        .admin(Method::GET, "/api/admin-prompts")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for name in [
        "disk-audit",
        "memory-audit",
        "health-report",
        "weekly-summary",
    ] {
        assert!(names.contains(&name), "{name}");
    }
    assert!(
        list.iter().all(|p| p.get("body").is_none()),
        "the list has no bodies"
    );
    let one: Value = host
        .admin(Method::GET, "/api/admin-prompts/disk-audit")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(one["body"].as_str().unwrap().contains("date -u"));
    for bad in [
        "/api/admin-prompts/..%2F..%2Fetc%2Fpasswd",
        "/api/admin-prompts/a%2Fb",
        "/api/admin-prompts/...",
    ] {
        assert_eq!(
            host.admin(Method::GET, bad).send().await.unwrap().status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        host.admin(Method::GET, "/api/admin-prompts/nope")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let (agent, record) = AgentClient::create(&host, "Auditor").await;
    let mut stream = agent.events(None).await;
    let sent = host
        .admin(Method::POST, "/api/agents/auditor/admin-prompts/disk-audit")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::CREATED);
    let message: Value = sent.json().await.unwrap();
    assert_eq!(message["channel_id"], record["dm_channel_id"]);
    assert_eq!(message["author_id"], "user:owner");
    let delivery: Value = serde_json::from_str(
        &stream
            .next(Duration::from_secs(10))
            .await
            .expect("delivered")
            .data,
    )
    .unwrap();
    assert!(delivery["text"].as_str().unwrap().contains("date -u"));
    let missing = host
        .admin(
            Method::POST,
            "/api/agents/auditor/admin-prompts/weekly-summary",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        StatusCode::BAD_REQUEST,
        "since is required"
    );
    let weekly = host
        .admin(
            Method::POST,
            "/api/agents/auditor/admin-prompts/weekly-summary",
        )
        .json(&json!({"variables": {"since": "2026-11-20T00:00:00Z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(weekly.status(), StatusCode::CREATED);
    assert!(weekly.json::<Value>().await.unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("since=2026-11-20T00:00:00Z"));
    assert_eq!(
        host.admin(Method::POST, "/api/agents/nobody/admin-prompts/disk-audit")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_recycle_bin_keeps_what_an_agent_deletes() {
    let host = host_with(&[]).await;
    let (slug, container, _cleanup) = deployed(&host, "Tidy").await;
    let rt = incus();
    let sh = |script: &'static str| {
        let rt = &rt;
        let container = container.clone();
        async move {
            let out = rt
                .exec(
                    &container,
                    &["sh", "-c", script],
                    &BTreeMap::new(),
                    Duration::from_secs(20),
                )
                .await
                .unwrap();
            assert_eq!(out.exit_code, 0, "{script}: {out:?}");
            out.stdout
        }
    };
    // A plain `rm`, as any script or the agent would run it.
    sh("echo precious > '/root/keep me.txt' && rm '/root/keep me.txt' && test ! -e '/root/keep me.txt'").await;
    sh("echo one > /root/junk && rm /root/junk && echo two > /root/junk && rm -f /root/junk").await;
    sh("echo gone > /root/really && TAOS_TRASH_DISABLE=1 rm /root/really").await;

    let bin: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bin["status"], "ok");
    let items = bin["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3, "{items:?}");
    let keep = items
        .iter()
        .find(|i| i["original_path"] == "/root/keep me.txt")
        .expect("keep me.txt listed");
    assert!(keep["deleted_at"].as_str().unwrap().ends_with('Z'));
    let junk: Vec<&Value> = items
        .iter()
        .filter(|i| i["original_path"] == "/root/junk")
        .collect();
    assert_eq!(junk.len(), 2, "two deletions of one path are two items");
    assert_ne!(junk[0]["id"], junk[1]["id"]);

    let restore = |id: &Value| {
        host.admin(Method::POST, &format!("/api/agents/{slug}/recycle/restore"))
            .json(&json!({"id": id}))
    };
    assert_eq!(
        restore(&keep["id"]).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        rt.pull_file(&container, "/root/keep me.txt").await.unwrap(),
        b"precious\n",
        "content intact"
    );
    assert_eq!(
        restore(&keep["id"]).send().await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "already restored"
    );
    sh("echo newer > /root/junk").await;
    assert_eq!(
        restore(&junk[0]["id"]).send().await.unwrap().status(),
        StatusCode::CONFLICT,
        "something is there now"
    );
    assert_eq!(
        host.admin(
            Method::DELETE,
            &format!(
                "/api/agents/{slug}/recycle/{}",
                junk[0]["id"].as_str().unwrap()
            )
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    for bad in ["..%2F..%2Fetc", "a%20b", "x;rm"] {
        let r = host
            .admin(Method::DELETE, &format!("/api/agents/{slug}/recycle/{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        restore(&json!("../../etc/passwd"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );

    // The sweep removes only items older than 30 days.
    sh("echo old > /root/old && rm /root/old").await;
    sh("for f in /var/recycle-bin/*/info; do grep -q \"$(printf /root/old | base64 -w0)\" \"$f\" && sed -i 's/^deleted_epoch=.*/deleted_epoch=1000/' \"$f\"; done; true").await;
    sh("/usr/local/lib/taos/recycle sweep 30").await;
    let after: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = after["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["original_path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/root/junk"],
        "the old item went, the recent one stayed"
    );

    // A name ending in a newline is kept exactly; a forged record aiming at a system path is
    // refused (restores run as root, and the bin is writable by the agent).
    sh("f=$(printf '/root/nl\\n_'); printf x > \"$f\" && rm \"$f\"").await;
    sh("mkdir -p /var/recycle-bin/forged-1 && echo evil > /var/recycle-bin/forged-1/item && printf 'path_b64=%s\\ndeleted_at=2026-01-01T00:00:00Z\\ndeleted_epoch=%s\\n' \"$(printf /usr/local/sbin/journalctl | base64 -w0)\" \"$(date +%s)\" > /var/recycle-bin/forged-1/info").await;
    let forged = restore(&json!("forged-1")).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    let listed: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["original_path"] == "/root/nl\n_"),
        "{listed}"
    );

    let all: Vec<Value> = host
        .admin(Method::GET, "/api/recycle")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["agent"], slug.as_str());
    host.admin(Method::POST, &format!("/api/agents/{slug}/stop"))
        .send()
        .await
        .unwrap();
    let offline: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(offline["status"], "container_offline");
}
