//! `acp` mode with a real ACP agent: opencode (installed on this machine by
//! scripts/install-opencode.sh), configured by its manifest's `[acp]` table exactly as a deploy
//! would (only the program's path is the host's install instead of the image's /opt), against
//! the real host, LiteLLM and the fake upstream. The sidecar runs in-process (as root here) and
//! starts opencode as a numeric account of the test's own, as it would start it as `agent` in
//! the container.

use std::path::PathBuf;

use serde_json::{json, Value};
use taos_agent::config::{Mode, RunAs};
use taos_e2e::fake_llm::{Scripted, REPLY};

use super::{of_kind, shared, start_agent, stop_agent, test_account, Agent};

/// The model the opencode agent uses.
pub const OPENCODE: &str = "opencode-chat";
pub const MODELS: [&str; 1] = [OPENCODE];

/// Where scripts/install-opencode.sh put opencode.
fn installed() -> PathBuf {
    let root = PathBuf::from(
        std::env::var("TAOS_OPENCODE_DIR").unwrap_or_else(|_| "/var/cache/taos/opencode".into()),
    );
    let bin = root.join("bin/opencode");
    assert!(
        bin.is_file(),
        "opencode is not installed in {}: run scripts/install-opencode.sh",
        root.display()
    );
    bin
}

/// The shipped manifest's `[acp]` table.
fn manifest_acp() -> taos_proto::agents::AcpAgent {
    let text = include_str!("../../../../manifests/opencode/manifest.toml");
    let manifest: taos_proto::agents::Manifest = toml::from_str(text).expect("the manifest");
    manifest.acp.expect("an [acp] table")
}

fn config(
    agent: &Agent,
    host: &taos_e2e::Host,
    uid: u32,
    dir: &std::path::Path,
) -> taos_agent::Config {
    let acp = manifest_acp();
    let mut config = agent.config(host);
    config.mode = Mode::Acp;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(dir.display().to_string());
    config.acp.command = std::iter::once(installed().display().to_string())
        .chain(acp.command[1..].iter().cloned())
        .collect();
    config.acp.env = acp.env;
    config.acp.state_dir = dir.with_extension("state");
    config
}

/// How many live processes `uid` has.
fn processes_of(uid: u32) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| taos_agent::tools::exec::is_live_process_of(status, uid))
        .count()
}

/// Every user message the upstream was sent, as text.
fn user_texts(body: &Value) -> Vec<String> {
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

#[tokio::test]
async fn opencode_answers_runs_a_command_as_its_account_and_keeps_its_session_across_a_restart() {
    let shared = shared().await;
    let host = &shared.host;
    let upstream = &shared.upstream;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,taos_agent=debug")
        .with_test_writer()
        .try_init();
    let agent = Agent::create(host, "Coder", &[OPENCODE]).await;
    let (uid, dir) = test_account("opencode");
    // The model first runs a command through opencode's `bash` tool, then answers.
    upstream.script(
        OPENCODE,
        vec![
            Scripted::call(
                "bash",
                json!({"command": "id -u > proof.txt && echo wrote it", "description": "Write my uid"}),
            ),
            Scripted::final_text("Done, marker-answer."),
        ],
    );
    let (trigger, task) = start_agent(config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;

    // 1. The message → opencode → the host's gateway (the agent's own key) → LiteLLM → fake;
    // the tool call runs in the workspace as the account, and the answer reaches the chat.
    let first = agent.say(host, "write your uid down, marker-one").await;
    let reply = agent.settled_reply(host, &first).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Done, marker-answer.");
    let proof = std::fs::read_to_string(dir.join("proof.txt")).expect("the command ran");
    assert_eq!(proof.trim(), uid.to_string());
    let steps = reply["metadata"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(steps.len(), 1, "{reply}");
    assert_eq!(steps[0]["tool"], "execute", "{reply}");
    assert_eq!(steps[0]["success"], true, "{reply}");
    assert!(
        steps[0]["result"].to_string().contains("wrote it"),
        "the command's output is in the step: {reply}"
    );
    // opencode asked before running it (its `bash` is `ask` in the manifest), and the agent's
    // tool policy (`auto`, the default) allowed it: traced as a call and a result.
    let traces = agent
        .traces_of(host, &first, |e| !of_kind(e, "tool_result").is_empty())
        .await;
    assert_eq!(of_kind(&traces, "tool_call").len(), 1, "{traces:?}");
    // The upstream saw the message, through the agent's key (the gateway recorded its calls).
    let sent = upstream.chat_requests(|b| b["model"] == OPENCODE);
    assert!(
        sent.iter()
            .any(|b| user_texts(b).iter().any(|t| t.contains("marker-one"))),
        "the upstream never saw the message"
    );
    let calls = agent.traces(host, "kind=llm_call").await;
    assert!(calls.len() >= 2, "two model calls for the agent: {calls:?}");

    // 2. The same channel is the same opencode session: the first message is in the history.
    let before = upstream.chat_requests(|b| b["model"] == OPENCODE).len();
    let second = agent.say(host, "and again, marker-two").await;
    let reply = agent.settled_reply(host, &second).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], REPLY);
    let sent = upstream.chat_requests(|b| b["model"] == OPENCODE);
    assert!(
        sent[before..].iter().any(|b| {
            let texts = user_texts(b);
            texts.iter().any(|t| t.contains("marker-two"))
                && texts.iter().any(|t| t.contains("marker-one"))
        }),
        "the second turn lost the first"
    );

    // 3. A restarted sidecar (so a new opencode) loads the session from opencode's own store.
    stop_agent(trigger, task).await;
    assert_eq!(processes_of(uid), 0, "opencode outlived the sidecar");
    let (trigger, task) = start_agent(config(&agent, host, uid, &dir));
    let before = upstream.chat_requests(|b| b["model"] == OPENCODE).len();
    let third = agent.say(host, "after the restart, marker-three").await;
    let reply = agent.settled_reply(host, &third).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], REPLY);
    let sent = upstream.chat_requests(|b| b["model"] == OPENCODE);
    assert!(
        sent[before..].iter().any(|b| {
            let texts = user_texts(b);
            texts.iter().any(|t| t.contains("marker-three"))
                && texts.iter().any(|t| t.contains("marker-one"))
        }),
        "the session did not survive the restart"
    );
    stop_agent(trigger, task).await;
    // A stopped sidecar leaves nothing of its agent running.
    assert_eq!(processes_of(uid), 0, "opencode outlived the sidecar");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(dir.with_extension("state"));
}
