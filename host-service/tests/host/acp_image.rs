//! The ACP adapter inside the agent image, in a real incus container: an agent deployed
//! through the API from the `taos-agent` image, its sidecar switched to `acp` mode with the
//! stub ACP agent (`tests/src/bin/taos-acp-stub.rs`, copied in) as its program, exactly as a
//! deploy of an `acp` framework writes the env file. Under the image's systemd unit the stub
//! runs as the unprivileged `agent` account; chunks and a tool step reach the chat, a permission
//! request goes through a person's approval, and a crash is reported and recovered from.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{deploy_succeeded, incus, require_image, step, with_fake_provider};
use taos_e2e::Host;
use taos_host::runtime::Runtime;

use crate::BIN;

const WAIT: Duration = Duration::from_secs(120);
const RECORD: &str = "/home/agent/stub-record.txt";

/// Says `text` in `dm` and waits for the agent's settled answer to it.
async fn say_and_settle(host: &Host, dm: &str, slug: &str, text: &str) -> Value {
    let trace_id = say(host, dm, text).await;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = answer(host, dm, slug, &trace_id).await {
            if m["state"] != "streaming" {
                return m;
            }
        }
        assert!(Instant::now() < deadline, "{slug} did not answer {text:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn say(host: &Host, dm: &str, text: &str) -> String {
    let sent: Value = host
        .post(
            "/api/chat/messages",
            &json!({"channel_id": dm, "content": text}),
        )
        .await;
    sent["id"].as_str().unwrap().to_string()
}

async fn answer(host: &Host, dm: &str, slug: &str, trace_id: &str) -> Option<Value> {
    let messages: Vec<Value> = host
        .get(&format!(
            "/api/chat/channels/{dm}/messages?after_seq=0&limit=500"
        ))
        .await;
    messages
        .into_iter()
        .find(|m| m["author_id"] == slug && m["metadata"]["trace_id"] == trace_id)
}

async fn exec(container: &str, argv: &[&str]) -> String {
    let out = incus()
        .exec(
            container,
            argv,
            &Default::default(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{argv:?}: {out:?}");
    out.stdout
}

/// The stub's record in the container, one entry per line.
async fn record(container: &str) -> Vec<String> {
    let bytes = incus()
        .pull_file(container, RECORD)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn acp_in_the_agent_image_runs_the_agent_as_its_account_with_approvals_and_crash_recovery() {
    require_image().await;
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;
    let name = taos_e2e::fixtures::unique("Stubby");
    let (slug, _cleanup) = deploy_succeeded(
        host,
        json!({"name": name, "framework": "tools", "model": "fake-gpt"}),
    )
    .await;
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let container = container.as_str();
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let dm = dm.as_str();

    step("switch the sidecar to acp mode with the stub", async {
        let stub = std::fs::read(taos_e2e::workspace_binary("taos-acp-stub")).expect("the stub");
        incus()
            .push_file(container, "/usr/local/bin/taos-acp-stub", &stub, 0o755)
            .await
            .unwrap();
        // What a deploy of an `acp` framework writes (deploy::with_mode and with_acp): the
        // mode, then the [acp] table as single-quoted JSON.
        let env = String::from_utf8(
            incus()
                .pull_file(container, "/etc/taos/agent.env")
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(env.contains("TAOS_AGENT_MODE=tools\n"), "{env}");
        let env = env.replace("TAOS_AGENT_MODE=tools\n", "TAOS_AGENT_MODE=acp\n")
            + "TAOS_ACP_COMMAND='[\"/usr/local/bin/taos-acp-stub\"]'\n"
            + "TAOS_ACP_ENV='{\"STUB_MODEL_KEY\":\"${OPENAI_API_KEY}\",\"STUB_RECORD\":\"${HOME}/stub-record.txt\"}'\n";
        incus()
            .push_file(container, "/etc/taos/agent.env", env.as_bytes(), 0o600)
            .await
            .unwrap();
        exec(container, &["systemctl", "restart", "taos-agent"]).await;
    })
    .await;

    step(
        "1. chunks and a tool step reach the chat; the stub runs as agent",
        async {
            let reply = say_and_settle(host, dm, slug, "look around #tool #chunks").await;
            assert_eq!(reply["state"], "complete", "{reply}");
            assert_eq!(reply["content"], "Hello world", "{reply}");
            let steps = reply["metadata"]["tools"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(steps.len(), 1, "{reply}");
            assert_eq!(steps[0]["tool"], "execute", "{reply}");
            assert_eq!(steps[0]["success"], true, "{reply}");
            let uid = exec(container, &["id", "-u", "agent"]).await;
            let lines = record(container).await;
            let start = lines
                .iter()
                .find(|l| l.starts_with("start "))
                .expect("a start line");
            assert!(start.contains(&format!("uid={} ", uid.trim())), "{start}");
            assert!(start.contains("home=/home/agent "), "{start}");
            // Its gateway key where the [acp] env asked for it; none of the sidecar's credentials.
            let env = String::from_utf8(
                incus()
                    .pull_file(container, "/etc/taos/agent.env")
                    .await
                    .unwrap(),
            )
            .unwrap();
            let key = env
                .lines()
                .find_map(|l| l.strip_prefix("OPENAI_API_KEY="))
                .expect("the agent's key");
            assert!(start.contains(&format!("model_key={key} ")), "{start}");
            for hidden in ["TAOS_AGENT_TOKEN", "OPENAI_API_KEY", "TAOS_BRIDGE_URL"] {
                assert!(!start.contains(hidden), "{start}");
            }
            // The sidecar stays root; the agent can't read its credentials file.
            let denied = incus()
                .exec(
                    container,
                    &["runuser", "-u", "agent", "--", "cat", "/etc/taos/agent.env"],
                    &Default::default(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            assert_ne!(denied.exit_code, 0, "{denied:?}");
        },
    )
    .await;

    step(
        "2. under ask, a permission request waits for a person",
        async {
            let r = host
                .admin(Method::PATCH, &format!("/api/agents/{slug}"))
                .json(&json!({"tool_policy": "ask"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let trace_id = say(host, dm, "clean up #permission").await;
            let deadline = Instant::now() + WAIT;
            let approval = loop {
                let all: Vec<Value> = host.get("/api/approvals").await;
                if let Some(a) = all
                    .into_iter()
                    .find(|a| a["agent"] == slug && a["trace_id"] == trace_id.as_str())
                {
                    break a;
                }
                assert!(Instant::now() < deadline, "no approval asked");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(approval["state"], "pending", "{approval}");
            assert_eq!(approval["tool"], "rm", "{approval}");
            let r = host
                .admin(
                    Method::POST,
                    &format!("/api/approvals/{}", approval["id"].as_str().unwrap()),
                )
                .json(&json!({"decision": "approve"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let deadline = Instant::now() + WAIT;
            let reply = loop {
                if let Some(m) = answer(host, dm, slug, &trace_id).await {
                    if m["state"] != "streaming" {
                        break m;
                    }
                }
                assert!(Instant::now() < deadline, "no answer after the approval");
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            assert_eq!(reply["content"], "allowed", "{reply}");
            assert!(record(container)
                .await
                .contains(&"permission allow-once".to_string()));
        },
    )
    .await;

    step(
        "3. a crash is an error; the next message restarts it with the session",
        async {
            let reply = say_and_settle(host, dm, slug, "go #crash").await;
            assert_eq!(reply["state"], "error", "{reply}");
            let detail = reply["metadata"]["failure"]["detail"].to_string();
            assert!(detail.contains("exited"), "{reply}");
            let reply = say_and_settle(host, dm, slug, "still there?").await;
            assert_eq!(reply["state"], "complete", "{reply}");
            assert_eq!(reply["content"], "stub heard: still there?", "{reply}");
            let lines = record(container).await;
            let session = lines
                .iter()
                .find_map(|l| l.strip_prefix("new "))
                .expect("a session")
                .to_string();
            assert!(lines.contains(&format!("load {session}")), "{lines:?}");
            assert_eq!(
                lines.iter().filter(|l| l.starts_with("start ")).count(),
                2,
                "started again once: {lines:?}"
            );
        },
    )
    .await;
}
