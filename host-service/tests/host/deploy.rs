//! Deploying agents into real incus containers (scripts/dev-incus.sh and
//! scripts/build-agent-image.sh provision incus and the `taos-agent` image).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::REPLY;
use taos_e2e::fixtures::{
    ask_and_wait, catalog, deploy_with, finished, incus, require_image, step, wait_deploy,
    with_fake_provider, Remove,
};
use taos_e2e::{Host, HostOptions};
use taos_host::runtime::Runtime;
use taos_proto::agents::{Agent, AgentStatus, ArchivedAgent};

use crate::{host_with, BIN};

async fn deploy(host: &Host, name: &str) -> Value {
    deploy_with(host, json!({"name": name, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2})).await
}

/// Nothing of a rolled-back deploy remains: container, agent, channel, trace folder.
async fn assert_nothing_left(host: &Host, slug: &str) {
    assert!(
        !incus().exists(&format!("taos-{slug}")).await.unwrap(),
        "container left behind"
    );
    assert_eq!(
        host.admin(Method::GET, &format!("/api/agents/{slug}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "agent left behind"
    );
    let channels: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels?member={slug}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(channels.is_empty(), "channel left behind: {channels:?}");
    assert!(
        !host.data_dir.join("traces").join(slug).exists(),
        "trace folder left behind"
    );
}

/// A wire-contract check: it reads the deploy status and the agent as raw JSON on purpose, so
/// the field names and strings the app and the UI read (`status`, `steps[].state`, `kind`,
/// `connected`, `dm_channel_id`) are pinned here, not only through the shared types.
#[tokio::test]
async fn a_deployed_agent_runs_in_its_container_and_answers_chat() {
    require_image().await;
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;

    let accepted = deploy(&host, "Boxed").await;
    let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
    assert_eq!(accepted["agent"]["status"], "deploying");
    let _cleanup = Remove(format!("taos-{slug}"));
    let status = wait_deploy(&host, &slug, finished).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    for step in status["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "done", "{step}");
        assert!(step["finished_at"].is_string());
    }
    let agent: Value = host
        .admin(Method::GET, &format!("/api/agents/{slug}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["status"], "running");
    assert_eq!(agent["kind"], "container");
    assert_eq!(agent["connected"], true);
    let rt = incus();
    let container = format!("taos-{slug}");
    assert!(rt.state(&container).await.unwrap().running);

    // The agent answers through the gateway, LiteLLM and the fake upstream.
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    host.admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "hello box"}))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let messages: Vec<Value> = host
            .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(m) = messages
            .iter()
            .find(|m| m["author_id"] == slug.as_str() && m["state"] == "complete")
        {
            break m.clone();
        }
        assert!(Instant::now() < deadline, "no answer: {messages:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(answer["content"], REPLY);

    // Its credentials are its own, in a 0600 file; the admin token is nowhere inside.
    let env = rt
        .pull_file(&container, "/etc/taos/agent.env")
        .await
        .unwrap();
    let env = String::from_utf8(env).unwrap();
    assert!(env.contains("TAOS_AGENT_TOKEN=taos_ag_") && env.contains("OPENAI_API_KEY=taos_llm_"));
    assert!(!env.contains(&host.local_token()));
    let mode = rt
        .exec(
            &container,
            &["stat", "-c", "%a", "/etc/taos/agent.env"],
            &Default::default(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(mode.stdout.trim(), "600");
    // Its traces came over HTTP into the host's own store; no host folder is mounted inside
    // (trace_store.rs plants things where the old mount was).
    let traces =
        taos_e2e::wait_for_trace(&host, &slug, "?kind=message_out", |e| !e.is_empty()).await;
    assert!(!traces.is_empty(), "the reply's trace");
    assert!(host.data_dir.join("traces").join(&slug).is_dir());
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    require_image().await;
    for step in ["container", "start", "configure", "service", "bridge"] {
        let host = host_with(&[(taos_host::faults::FAIL_ENV, &format!("deploy:{step}"))]).await;
        host.setup_owner().await;
        catalog(&host).await;
        let accepted = deploy(&host, &format!("Fail {step}")).await;
        let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
        let _cleanup = Remove(format!("taos-{slug}"));
        let status = wait_deploy(&host, &slug, finished).await;
        assert_eq!(status["status"], "rolled_back", "{step}: {status}");
        assert!(status["error"].as_str().unwrap().contains(step), "{status}");
        let failed = status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == step)
            .unwrap();
        assert_eq!(failed["state"], "failed");
        assert_nothing_left(&host, &slug).await;
    }
}

#[tokio::test]
async fn a_host_killed_mid_deploy_rolls_it_back_when_it_starts_again() {
    require_image().await;
    let mut host = host_with(&[(taos_host::faults::PAUSE_ENV, "deploy:service")]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let accepted = deploy(&host, "Interrupted").await;
    let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
    let _cleanup = Remove(format!("taos-{slug}"));
    wait_deploy(&host, &slug, |s| {
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| st["name"] == "service" && st["state"] == "running")
    })
    .await;
    assert!(
        incus().exists(&format!("taos-{slug}")).await.unwrap(),
        "the container exists mid-deploy"
    );
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
    let status = wait_deploy(&restarted, &slug, finished).await;
    assert_eq!(status["status"], "rolled_back");
    assert!(status["error"].as_str().unwrap().contains("host stopped"));
    assert_nothing_left(&restarted, &slug).await;
}

/// A wire-contract check: raw JSON on purpose, since these bodies are what a typed client could
/// never send.
#[tokio::test]
async fn bad_deploys_are_refused_and_change_nothing() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let frameworks: Vec<Value> = host
        .admin(Method::GET, "/api/frameworks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(frameworks.iter().any(|f| f["id"] == "direct"));
    let cases = [
        json!({"name": "x", "framework": "hermes", "model": "fake-gpt"}),
        json!({"name": "!!!", "framework": "direct", "model": "fake-gpt"}),
        json!({"name": "x".repeat(65), "framework": "direct", "model": "fake-gpt"}),
        json!({"name": "x", "framework": "direct", "model": "gpt-99"}),
        json!({"name": "x", "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 1}),
        json!({"name": "x", "framework": "direct", "model": "fake-gpt", "disk_quota_gib": 0}),
        json!({"name": "x", "framework": "direct"}),
    ];
    for body in cases {
        let r = host
            .admin(Method::POST, "/api/agents/deploy")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        if body["framework"] == "hermes" {
            assert!(
                r.text().await.unwrap().contains("direct"),
                "the error lists the known frameworks"
            );
        }
    }
    let agents: Vec<Value> = host
        .admin(Method::GET, "/api/agents")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(agents.is_empty());
    host.expect_error(
        Method::GET,
        "/api/agents/nobody/deploy",
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let none = host_with(&[("TAOS_RUNTIME__KIND", "none")]).await;
    none.setup_owner().await;
    catalog(&none).await;
    let r = none
        .admin(Method::POST, "/api/agents/deploy")
        .json(&json!({"name": "x", "framework": "direct", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("incus"));
}

#[tokio::test]
async fn deploy_archive_redeploy_restore_and_purge() {
    require_image().await;
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;
    let rt = incus();
    let rt = &rt;

    let (first_dm, _c1) = step("deploy and chat", async {
        let first = deploy(host, "Keeper").await;
        assert_eq!(first["agent"]["slug"], "keeper");
        let cleanup = Remove("taos-keeper".into());
        assert_eq!(
            wait_deploy(host, "keeper", finished).await["status"],
            "succeeded"
        );
        assert_eq!(
            ask_and_wait(host, "keeper", "remember this").await["content"],
            REPLY
        );
        let first_dm = first["agent"]["dm_channel_id"]
            .as_str()
            .unwrap()
            .to_string();
        (first_dm, cleanup)
    })
    .await;

    let (archive_id, _c2) = step("archive", async {
        // The container is renamed away, the slug is free, the chat is read-only.
        let archived: ArchivedAgent = host
            .call(Method::DELETE, "/api/agents/keeper", None, StatusCode::OK)
            .await;
        let archived_container = archived.container.unwrap();
        let cleanup = Remove(archived_container.clone());
        assert!(!rt.exists("taos-keeper").await.unwrap());
        assert!(rt.exists(&archived_container).await.unwrap());
        assert_eq!(
            rt.snapshot_list(&archived_container).await.unwrap().len(),
            1
        );
        host.expect_error(
            Method::GET,
            "/api/agents/keeper",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        let list: Vec<ArchivedAgent> = host.get("/api/agents/archived").await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].slug, "keeper");
        let channel: Value = host.get(&format!("/api/chat/channels/{first_dm}")).await;
        assert_eq!(channel["archived"], true);
        let chat = std::fs::read_dir(host.data_dir.join("archive"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("chat.jsonl");
        assert!(std::fs::read_to_string(&chat)
            .unwrap()
            .contains("remember this"));
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&chat).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        (archived.id, cleanup)
    })
    .await;

    step("deploy the same name again", async {
        let second = deploy(host, "Keeper").await;
        assert_eq!(second["agent"]["slug"], "keeper");
        assert_eq!(
            wait_deploy(host, "keeper", finished).await["status"],
            "succeeded"
        );
    })
    .await;

    let _c3 = step("restore beside it", async {
        // Its slug is taken now, so it comes back as keeper-2, and answers.
        let _: Value = host
            .call(
                Method::POST,
                &format!("/api/agents/archived/{archive_id}/restore"),
                None,
                StatusCode::OK,
            )
            .await;
        let cleanup = Remove("taos-keeper-2".into());
        let agent: Agent = host.get("/api/agents/keeper-2").await;
        assert_eq!(agent.status, AgentStatus::Running);
        assert_eq!(
            agent.dm_channel_id.as_deref(),
            Some(first_dm.as_str()),
            "its own chat came back"
        );
        assert_eq!(
            ask_and_wait(host, "keeper-2", "are you back?").await["content"],
            REPLY
        );
        let history: Vec<Value> = host
            .get(&format!("/api/chat/channels/{first_dm}/messages"))
            .await;
        assert!(history.iter().any(|m| m["content"] == "remember this"));
        assert!(host
            .get::<Vec<ArchivedAgent>>("/api/agents/archived")
            .await
            .is_empty());
        cleanup
    })
    .await;

    let _c4 = step("archive and purge", async {
        // Nothing of it remains.
        let again: ArchivedAgent = host
            .call(Method::DELETE, "/api/agents/keeper-2", None, StatusCode::OK)
            .await;
        let archive_id = again.id;
        let container = again.container.unwrap();
        let cleanup = Remove(container.clone());
        host.delete(&format!("/api/agents/archived/{archive_id}"))
            .await;
        assert!(
            !rt.exists(&container).await.unwrap(),
            "container and its snapshots are gone"
        );
        host.expect_error(
            Method::GET,
            &format!("/api/chat/channels/{first_dm}"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        let count = crate::messages_stored(host, &first_dm).await;
        assert_eq!(count, 0, "its messages are gone");
        assert_eq!(
            std::fs::read_dir(host.data_dir.join("archive"))
                .unwrap()
                .count(),
            0,
            "archive folder gone"
        );
        assert!(
            !host.data_dir.join("traces/keeper-2").exists(),
            "trace folder gone"
        );
        // A purged archive can't be restored.
        host.expect_error(
            Method::POST,
            &format!("/api/agents/archived/{archive_id}/restore"),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        // The other keeper lives on.
        let _: Agent = host.get("/api/agents/keeper").await;
        cleanup
    })
    .await;

    step("lifecycle actions and logs", async {
        let stopped: Agent = host
            .call(
                Method::POST,
                "/api/agents/keeper/stop",
                None,
                StatusCode::OK,
            )
            .await;
        assert_eq!(stopped.status, AgentStatus::Stopped);
        assert!(!rt.state("taos-keeper").await.unwrap().running);
        let started: Agent = host
            .call(
                Method::POST,
                "/api/agents/keeper/start",
                None,
                StatusCode::OK,
            )
            .await;
        assert_eq!(started.status, AgentStatus::Running);
        let logs = host
            .admin(Method::GET, "/api/agents/keeper/logs?lines=50")
            .send()
            .await
            .unwrap();
        assert_eq!(logs.status(), StatusCode::OK);
        let text = logs.text().await.unwrap();
        assert!(
            text.contains("taos-agent starting") && text.contains("keeper"),
            "the sidecar's own log, from its start: {text}"
        );
        host.expect_error(
            Method::GET,
            "/api/agents/keeper/logs?lines=0",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
        host.expect_error(
            Method::POST,
            "/api/agents/nobody/stop",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        host.expect_error(
            Method::DELETE,
            "/api/agents/nobody",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    })
    .await;
    let _c5 = Remove("taos-keeper".into());
}

#[tokio::test]
async fn an_agent_whose_container_vanished_is_a_tombstone_or_is_removed() {
    require_image().await;
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    for name in ["Vanished Quiet", "Vanished Chatty"] {
        let accepted = deploy(&host, name).await;
        let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
        let _cleanup = Remove(format!("taos-{slug}"));
        assert_eq!(
            wait_deploy(&host, &slug, finished).await["status"],
            "succeeded"
        );
        if name.ends_with("Chatty") {
            let dm = accepted["agent"]["dm_channel_id"].as_str().unwrap();
            host.admin(Method::POST, "/api/chat/messages")
                .json(&json!({"channel_id": dm, "content": "keep me"}))
                .send()
                .await
                .unwrap();
        }
        // The container disappears behind the host's back.
        std::process::Command::new("incus")
            .args(["delete", "--force", &format!("taos-{slug}")])
            .output()
            .unwrap();
        let r = host
            .admin(Method::DELETE, &format!("/api/agents/{slug}"))
            .send()
            .await
            .unwrap();
        if name.ends_with("Quiet") {
            assert_eq!(
                r.status(),
                StatusCode::NO_CONTENT,
                "no container, no history: removed"
            );
            let channels: Vec<Value> = host
                .admin(Method::GET, &format!("/api/chat/channels?member={slug}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(channels.is_empty());
        } else {
            assert_eq!(r.status(), StatusCode::OK, "history is kept as a tombstone");
            let archived: Value = r.json().await.unwrap();
            assert!(archived["container"].is_null());
            let list: Vec<Value> = host
                .admin(Method::GET, "/api/agents/archived")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(list.iter().any(|a| a["slug"] == slug.as_str()));
        }
        assert_eq!(
            host.admin(Method::GET, &format!("/api/agents/{slug}"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}

/// The framework picker's facts: what each framework needs (`requires`) and what the host has
/// free. Memory is the kernel's; the disk is incus's own figure for the agents' pool, read
/// here with the incus CLI (argv) so the host's reading is checked against another one.
#[tokio::test]
async fn the_host_says_what_it_has_free_for_agents() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let frameworks: Vec<Value> = host.get("/api/frameworks").await;
    for f in &frameworks {
        assert!(
            f["requires"]["ram_mb"].as_u64().unwrap() > 0
                && f["requires"]["disk_mb"].as_u64().unwrap() > 0,
            "{f}"
        );
    }
    let c: Value = host.get("/api/host/capacity").await;
    assert_eq!(c["problems"], json!([]), "{c}");
    let available = c["memory_available_bytes"].as_u64().unwrap();
    let total = c["memory_total_bytes"].as_u64().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(total, mem_total * 1024, "{c}");
    assert!(available > 0 && available <= total, "{c}");

    let info = std::process::Command::new("incus")
        .args(["storage", "info", "default", "--bytes"])
        .output()
        .expect("incus storage info");
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    let figure = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().trim_matches('"').parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    };
    let (pool_total, pool_used) = (figure("total space:"), figure("space used:"));
    assert_eq!(c["disk_total_bytes"].as_u64(), Some(pool_total), "{c}");
    // Used space moves with other work on the pool; the free figure is the pool's, give or take.
    let free = c["disk_free_bytes"].as_u64().unwrap();
    assert!(free <= pool_total, "{c}");
    assert!(
        free.abs_diff(pool_total - pool_used) < 2 * 1024 * 1024 * 1024,
        "free {free} vs incus's {} ({c})",
        pool_total - pool_used
    );
    let storage = c["storage"].as_str().unwrap();
    assert!(storage.contains("\"default\""), "{storage}");

    // Anonymous callers learn nothing.
    let r = host
        .client()
        .get(host.url("/api/host/capacity"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
