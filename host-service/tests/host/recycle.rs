//! Recycle-bin restores, attacked from inside a real agent container: the bin is writable by
//! the agent's sandboxed service, but restores run as the container's full root, so a forged
//! record or a planted link must never make a restore write outside the agent's own files.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_host::runtime::Runtime;

use taos_e2e::fixtures::{catalog, deploy_succeeded, incus, require_image};

use crate::host_with;

#[tokio::test]
async fn a_restore_never_writes_outside_the_agents_roots_or_through_a_link() {
    require_image().await;
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let (slug, _cleanup) = deploy_succeeded(
        &host,
        json!({"name": "Bin Attack", "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2}),
    )
    .await;
    let container = format!("taos-{slug}");
    let rt = incus();
    let sh = |script: String| {
        let rt = &rt;
        let container = container.clone();
        async move {
            let out = rt
                .exec(
                    &container,
                    &["sh", "-c", &script],
                    &BTreeMap::new(),
                    Duration::from_secs(20),
                )
                .await
                .unwrap();
            assert_eq!(out.exit_code, 0, "{script}: {out:?}");
            out.stdout
        }
    };
    // What the agent can do from its service: write in the bin and in its own folders (here
    // as root through exec, which can only make the planting easier, never harder).
    let plant = |id: &str, path_b64_of: &str, item: &str| {
        format!(
            "mkdir -p /var/recycle-bin/{id} && {item} && \
             printf 'path_b64=%s\\ndeleted_at=2026-01-01T00:00:00Z\\ndeleted_epoch=%s\\n' \
             \"$(printf '{path_b64_of}' | base64 -w0)\" \"$(date +%s)\" > /var/recycle-bin/{id}/info"
        )
    };
    let file_item = |id: &str| format!("echo evil > /var/recycle-bin/{id}/item");
    let restore = |id: &str| {
        host.admin(Method::POST, &format!("/api/agents/{slug}/recycle/restore"))
            .json(&json!({"id": id}))
    };
    let refused = |id: &'static str, why: &'static str| {
        let restore = &restore;
        async move {
            let r = restore(id).send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or_default();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{id} ({why}): {body}");
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!message.is_empty(), "{id}: a reason is given");
            message
        }
    };

    // 1. A record under /root whose parent is a link to /etc (the old helper followed it).
    sh("ln -s /etc /root/evil-parent".into()).await;
    sh(plant(
        "forged-link-parent",
        "/root/evil-parent/cron.d/taos-pwn2",
        &file_item("forged-link-parent"),
    ))
    .await;
    let why = refused("forged-link-parent", "symlinked parent").await;
    assert!(why.contains("symbolic link"), "{why}");
    // 2. A deeper link: a real directory, then a link to /usr/local/bin.
    sh("mkdir -p /root/deep && ln -s /usr/local/bin /root/deep/bin".into()).await;
    sh(plant(
        "forged-deep-link",
        "/root/deep/bin/taos-agent-evil",
        &file_item("forged-deep-link"),
    ))
    .await;
    refused("forged-deep-link", "deeper symlinked parent").await;
    // 3. An item that is itself a link (to the shadow file), restored to an innocent path.
    sh(plant(
        "forged-link-item",
        "/root/innocent",
        "ln -s /etc/shadow /var/recycle-bin/forged-link-item/item",
    ))
    .await;
    let why = refused("forged-link-item", "symlinked item").await;
    assert!(why.contains("symbolic link"), "{why}");
    // 4. A record naming a system file.
    sh(plant(
        "forged-etc",
        "/etc/cron.d/taos-pwn",
        &file_item("forged-etc"),
    ))
    .await;
    let why = refused("forged-etc", "system path").await;
    assert!(why.contains("/root, /home, /srv and /tmp"), "{why}");
    // 5. A record outside the allowed roots (not a system path on anyone's list).
    sh(plant(
        "forged-opt",
        "/opt/taos-pwn",
        &file_item("forged-opt"),
    ))
    .await;
    refused("forged-opt", "outside the roots").await;
    // 6. `..`, a relative path, a NUL (which a shell would silently drop).
    sh(plant(
        "forged-dotdot",
        "/root/../etc/cron.d/taos-pwn3",
        &file_item("forged-dotdot"),
    ))
    .await;
    refused("forged-dotdot", "..").await;
    sh(plant(
        "forged-relative",
        "etc/cron.d/taos-pwn4",
        &file_item("forged-relative"),
    ))
    .await;
    refused("forged-relative", "relative").await;
    sh(plant(
        "forged-nul",
        "/root/a\\000b",
        &file_item("forged-nul"),
    ))
    .await;
    refused("forged-nul", "NUL").await;

    // Nothing was written anywhere; every forged item is still in the bin.
    let out = sh(
        "ls -la /etc/cron.d/taos-pwn /etc/cron.d/taos-pwn2 /etc/cron.d/taos-pwn3 \
         /opt/taos-pwn /usr/local/bin/taos-agent-evil /root/innocent /root/ab /root/a 2>/dev/null; true"
            .into(),
    )
    .await;
    assert!(out.trim().is_empty(), "written outside: {out}");
    let listed: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in [
        "forged-etc",
        "forged-opt",
        "forged-link-parent",
        "forged-deep-link",
        "forged-link-item",
        "forged-dotdot",
        "forged-relative",
        "forged-nul",
    ] {
        assert!(ids.contains(&id), "{id} left the bin: {ids:?}");
    }

    // An honest deletion still comes back, into directories that are gone meanwhile.
    sh("mkdir -p /root/work/notes && echo mine > /root/work/notes/today.md && rm /root/work/notes/today.md && /bin/rm -r /root/work".into()).await;
    let listed: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}/recycle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let honest = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["original_path"] == "/root/work/notes/today.md")
        .expect("the deleted file is listed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = restore(&honest).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        rt.pull_file(&container, "/root/work/notes/today.md")
            .await
            .unwrap(),
        b"mine\n"
    );
}
