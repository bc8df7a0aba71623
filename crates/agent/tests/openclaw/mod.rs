//! openclaw mode against a real openclaw gateway (installed on this machine by
//! scripts/install-openclaw.sh), the real host and LiteLLM, and the fake upstream: the sidecar
//! runs in-process (as root here) and starts openclaw as a numeric account of the test's own,
//! as it would start it as `agent` in the container.
//!
//! One test walks the whole life, since one openclaw takes ~0.8 GB and tens of seconds to
//! start: an answer, a second message in the same session, a cancel mid-answer, openclaw
//! killed and started again by the sidecar.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_agent::config::{Mode, RunAs};
use taos_e2e::fake_llm::{Behaviour, Scripted, REPLY};
use tokio::time::Instant;

use taos_agent::shutdown::ShutdownTrigger;
use taos_agent::RunError;
use tokio::task::JoinHandle;

use super::{of_kind, shared, start_agent, stop_agent, Agent};

/// The model the openclaw agent uses.
pub const OPENCLAW: &str = "openclaw-chat";
/// Runs a command through openclaw's `exec` tool, then answers.
pub const OPENCLAW_TOOLS: &str = "openclaw-tools";
pub const MODELS: [&str; 2] = [OPENCLAW, OPENCLAW_TOOLS];

/// openclaw starts in 12–30 s and its first turn takes ~15 s more on a busy machine: longer
/// than the other tests' bound, still only there to stop a broken run from hanging.
const WAIT_LONG: Duration = Duration::from_secs(400);

/// Where scripts/install-openclaw.sh put node and openclaw.
fn installed() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(
        std::env::var("TAOS_OPENCLAW_DIR").unwrap_or_else(|_| "/var/cache/taos/openclaw".into()),
    );
    let node = root.join("node/bin/node");
    let bin = root.join("openclaw/bin/openclaw");
    assert!(
        node.is_file() && bin.exists(),
        "openclaw is not installed in {}: run scripts/install-openclaw.sh",
        root.display()
    );
    (node, bin)
}

async fn wait_long<T>(what: &str, check: impl AsyncFn() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LONG;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live processes of `uid`, as `(pid, command line)`.
fn processes_of(uid: u32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if taos_agent::tools::exec::is_live_process_of(&status, uid) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Every user message the upstream was sent for `model`, in order, as text.
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

/// Starts the sidecar in openclaw mode for `agent`, openclaw running as an account of the
/// test's own with a home in /tmp. Returns the account's uid and
/// home, and the sidecar's handles.
async fn start_openclaw(
    host: &taos_e2e::Host,
    agent: &Agent,
) -> (
    u32,
    PathBuf,
    ShutdownTrigger,
    JoinHandle<Result<(), RunError>>,
) {
    let (node, bin) = installed();
    // The sidecar's log (openclaw's output is in it), shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,taos_agent=debug")
        .with_test_writer()
        .try_init();
    let (uid, home) = super::test_account("openclaw");
    let mut config = agent.config(host);
    config.mode = Mode::Openclaw;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(home.display().to_string());
    config.openclaw.node = node;
    config.openclaw.bin = bin;
    config.openclaw.port = taos_e2e::free_port();
    let (trigger, task) = start_agent(config);
    agent.wait_connected(host).await;
    (uid, home, trigger, task)
}

#[tokio::test]
async fn openclaw_answers_keeps_its_session_stops_on_cancel_and_comes_back_after_a_kill() {
    let shared = shared().await;
    let host = &shared.host;
    let upstream = &shared.upstream;
    let agent = Agent::create(host, "Claw", &[OPENCLAW]).await;
    let (uid, home, trigger, task) = start_openclaw(host, &agent).await;

    // openclaw's configuration: private to its account, the agent's key only by reference.
    let written = home.join(".openclaw/openclaw.json");
    let meta = std::fs::metadata(&written).expect("openclaw.json");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&written).expect("read openclaw.json");
    assert!(!text.contains(&agent.llm_key) && !text.contains(&agent.token));
    assert!(text.contains("${LITELLM_API_KEY}"), "{text}");

    // 1. An answer, through openclaw's gateway, the host's LLM gateway, LiteLLM and the fake.
    let first = agent.say(host, "hello claw, marker-one").await;
    let reply = wait_long("the first answer", async || {
        let replies = agent.replies_to(host, &first).await;
        replies.into_iter().find(|m| m["state"] != "streaming")
    })
    .await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], REPLY);
    // openclaw sent the message (it adds context of its own after it: the marker is matched,
    // not the last message).
    let sent = upstream.chat_requests(|b| b["model"] == OPENCLAW);
    assert!(
        sent.iter()
            .any(|b| user_texts(b).iter().any(|t| t.contains("marker-one"))),
        "the upstream never saw the message"
    );
    // openclaw logs with its state.
    assert!(home.join(".openclaw/logs/openclaw.log").is_file());
    // The call went through the agent's own key: the host recorded it for this agent.
    let calls = agent.traces(host, "kind=llm_call").await;
    assert!(!calls.is_empty(), "no llm_call traces for the agent");
    // openclaw runs as its account (it renames its process, so only the account is checked).
    assert!(!processes_of(uid).is_empty());

    // 2. The same channel is the same openclaw session: the first message is in the history.
    let before = upstream.chat_requests(|b| b["model"] == OPENCLAW).len();
    let second = agent.say(host, "and again, marker-two").await;
    let reply = wait_long("the second answer", async || {
        let replies = agent.replies_to(host, &second).await;
        replies.into_iter().find(|m| m["state"] != "streaming")
    })
    .await;
    assert_eq!(reply["state"], "complete", "{reply}");
    let sent = upstream.chat_requests(|b| b["model"] == OPENCLAW);
    let turn: Vec<&Value> = sent[before..]
        .iter()
        .filter(|b| user_texts(b).iter().any(|t| t.contains("marker-two")))
        .collect();
    assert!(
        !turn.is_empty(),
        "the upstream never saw the second message"
    );
    assert!(
        user_texts(turn[0]).iter().any(|t| t.contains("marker-one")),
        "the second turn lost the first: {:?}",
        user_texts(turn[0])
    );

    // 3. Cancel mid-answer: the model says its first word and then nothing.
    upstream.set_behaviour(OPENCLAW, Behaviour::StallAfterFirstWord);
    let third = agent.say(host, "a long one, marker-three").await;
    let streaming = wait_long("the answer to start", async || {
        let replies = agent.replies_to(host, &third).await;
        replies.into_iter().find(|m| m["state"] == "streaming")
    })
    .await;
    let id = streaming["id"].as_str().expect("id").to_string();
    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let reply = agent.settled_reply(host, &third).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["metadata"]["failure"]["code"], "cancelled", "{reply}");
    // openclaw's run was aborted, not left hanging on the model: the session takes the next
    // message at once (a run still going would hold it in openclaw's queue forever).
    upstream.script_forever(OPENCLAW, Scripted::final_text("Back again."));
    let fourth = agent.say(host, "still there? marker-four").await;
    let reply = wait_long("the answer after the cancel", async || {
        let replies = agent.replies_to(host, &fourth).await;
        replies.into_iter().find(|m| m["state"] != "streaming")
    })
    .await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Back again.");

    // 4. openclaw killed: the sidecar starts it again, and it answers, session intact.
    let killed = processes_of(uid);
    assert!(!killed.is_empty());
    for (pid, _) in &killed {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*pid).expect("pid"),
            rustix::process::Signal::KILL,
        );
    }
    let before = upstream.chat_requests(|b| b["model"] == OPENCLAW).len();
    let fifth = agent.say(host, "after the crash, marker-five").await;
    let reply = wait_long("the answer after the restart", async || {
        let replies = agent.replies_to(host, &fifth).await;
        replies.into_iter().find(|m| m["state"] != "streaming")
    })
    .await;
    // Said while openclaw was down: the turn waits for it to be back.
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Back again.");
    let now = processes_of(uid);
    assert!(
        now.iter()
            .all(|(pid, _)| !killed.iter().any(|(k, _)| k == pid)),
        "a new openclaw, not the killed one"
    );
    let sent = upstream.chat_requests(|b| b["model"] == OPENCLAW);
    assert!(
        sent[before..].iter().any(|b| {
            let texts = user_texts(b);
            texts.iter().any(|t| t.contains("marker-five"))
                && texts.iter().any(|t| t.contains("marker-one"))
        }),
        "the session did not survive the restart"
    );
    let errors = of_kind(&agent.traces(host, "kind=error").await, "error").len();
    assert!(errors >= 1, "the cancel is traced");

    // Stopping the sidecar stops openclaw.
    stop_agent(trigger, task).await;
    assert!(
        processes_of(uid).is_empty(),
        "openclaw outlived the sidecar: {:?}",
        processes_of(uid)
    );
    let _ = std::fs::remove_dir_all(&home);
    // openclaw's own temporary folder for this account.
    let _ = std::fs::remove_dir_all(format!("/tmp/openclaw-{uid}"));
}

#[tokio::test]
async fn openclaw_runs_a_command_as_its_account_and_the_step_shows_in_chat_and_traces() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Claw Hands", &[OPENCLAW_TOOLS]).await;
    shared.upstream.script(
        OPENCLAW_TOOLS,
        vec![
            Scripted::call("exec", json!({"command": "id -u; touch ran.txt"})),
            Scripted::final_text("Done."),
        ],
    );
    let (uid, home, trigger, task) = start_openclaw(host, &agent).await;
    let asked = agent.say(host, "note your uid, marker-tools").await;
    let reply = wait_long("the answer", async || {
        let replies = agent.replies_to(host, &asked).await;
        replies.into_iter().find(|m| m["state"] != "streaming")
    })
    .await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Done.");
    // It ran in openclaw's workspace, as openclaw's account.
    let ran = home.join(".openclaw/workspace/ran.txt");
    let made = std::fs::metadata(&ran).expect("the command ran");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&made), uid);
    // The step is on the answer as the tools framework's are: what ran, and its output.
    let steps = reply["metadata"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let exec: Vec<&Value> = steps.iter().filter(|s| s["tool"] == "exec").collect();
    assert_eq!(exec.len(), 1, "{reply}");
    assert_eq!(exec[0]["success"], true, "{reply}");
    assert_eq!(exec[0]["result"]["exit_code"], 0, "{reply}");
    assert!(
        exec[0]["result"]["output"]
            .as_str()
            .unwrap_or("")
            .contains(&uid.to_string()),
        "{reply}"
    );
    // And in the traces, under the message's trace id.
    let traces = agent
        .traces_of(host, &asked, |e| !of_kind(e, "tool_result").is_empty())
        .await;
    let calls = of_kind(&traces, "tool_call");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["payload"]["tool"], "exec");
    let results = of_kind(&traces, "tool_result");
    assert_eq!(
        results[0]["payload"]["call_id"],
        calls[0]["payload"]["call_id"]
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&home);
    // openclaw's own temporary folder for this account.
    let _ = std::fs::remove_dir_all(format!("/tmp/openclaw-{uid}"));
}
