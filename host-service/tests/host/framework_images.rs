//! What the tests of frameworks with an image of their own (openclaw, opencode) share: the
//! image check, a chat turn waited out, the user messages the fake upstream saw, and the
//! container's memory for the report.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taos_e2e::Host;

/// Fails the test when the incus image `alias` is missing, saying how to build it.
pub fn require_image(alias: &str, how: &str) {
    let out = std::process::Command::new("incus")
        .args(["image", "show", alias])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the {alias} image is missing: run {how}"
    );
}

/// Says `text` in `dm` and waits (at most `wait`, only there to stop a broken run from
/// hanging) for the agent's settled answer to it.
pub async fn say_and_settle(
    host: &Host,
    dm: &str,
    slug: &str,
    text: &str,
    wait: Duration,
) -> Value {
    let sent: Value = host
        .post(
            "/api/chat/messages",
            &json!({"channel_id": dm, "content": text}),
        )
        .await;
    let trace_id = sent["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + wait;
    loop {
        let messages: Vec<Value> = host
            .get(&format!(
                "/api/chat/channels/{dm}/messages?after_seq={}&limit=500",
                sent["seq"]
            ))
            .await;
        if let Some(m) = messages.iter().find(|m| {
            m["author_id"] == slug
                && m["metadata"]["trace_id"] == trace_id.as_str()
                && m["state"] != "streaming"
        }) {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{slug} did not answer {text:?}: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every user message of a chat request, as text (an agent may add context of its own after
/// the person's message, so tests match a marker in any of them, not the last one).
pub fn user_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// The container's memory use as `incus info` reports it (printed for the report).
pub fn memory_of(container: &str) -> String {
    let out = std::process::Command::new("incus")
        .args(["info", container])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&out.stdout).to_string();
    info.lines()
        .skip_while(|l| !l.trim_start().starts_with("Memory"))
        .take(4)
        .collect::<Vec<_>>()
        .join(" | ")
}
