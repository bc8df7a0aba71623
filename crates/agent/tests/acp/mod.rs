//! `acp` mode against the real host (and LiteLLM, unused here: the agent is the stub): the
//! sidecar runs in-process as root and starts `taos-acp-stub` (tests/src/bin), a real ACP agent
//! built on the SDK's agent side, as a numeric account of each test's own. The stub's script is
//! in the prompt's tags; what it was sent, it writes to a record file the tests read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_agent::config::{Mode, RunAs};

use super::{of_kind, shared, start_agent, stop_agent, test_account, wait_for, Agent, GOOD};

fn record_path(dir: &Path) -> PathBuf {
    dir.join("record.txt")
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.with_extension("state")
}

fn acp_config(agent: &Agent, host: &taos_e2e::Host, uid: u32, dir: &Path) -> taos_agent::Config {
    let mut config = agent.config(host);
    config.mode = Mode::Acp;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(dir.display().to_string());
    config.acp.command = vec![taos_e2e::workspace_binary("taos-acp-stub")
        .display()
        .to_string()];
    config.acp.env = [
        (
            "STUB_RECORD".to_string(),
            record_path(dir).display().to_string(),
        ),
        (
            "STUB_MODEL_KEY".to_string(),
            "${OPENAI_API_KEY}".to_string(),
        ),
    ]
    .into();
    config.acp.state_dir = state_dir(dir);
    config
}

/// The stub's record, one entry per line.
fn record(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(record_path(dir))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The session ids the stub made (`new <id>`), in order.
fn made(dir: &Path) -> Vec<String> {
    record(dir)
        .iter()
        .filter_map(|l| l.strip_prefix("new ").map(str::to_string))
        .collect()
}

fn steps(reply: &Value) -> Vec<Value> {
    reply["metadata"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(state_dir(dir));
}

#[tokio::test]
async fn acp_chunks_thoughts_and_tools_show_in_chat_and_traces_and_sessions_survive_a_restart() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Relay", &[GOOD]).await;
    let (uid, dir) = test_account("acp");
    let (trigger, task) = start_agent(acp_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let mut ws = taos_e2e::WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;

    let asked = agent.say(host, "look around #thought #tool #chunks").await;
    let events = super::agent_events(&mut ws, &agent, |events| {
        events
            .last()
            .is_some_and(|e| e["type"] == "message" && e["message"]["state"] != "streaming")
    })
    .await;
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "message_delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(streamed, "Hello world", "{events:?}");
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Hello world");
    // The tool call, in the `tools` framework's shape: the call, its arguments, its result.
    let shown = steps(&reply);
    assert_eq!(shown.len(), 1, "{reply}");
    assert_eq!(shown[0]["call_id"], "call-1");
    assert_eq!(shown[0]["tool"], "execute");
    assert_eq!(
        shown[0]["args"],
        json!({"title": "List files", "kind": "execute", "input": {"command": ["ls"]}})
    );
    assert_eq!(
        shown[0]["result"],
        json!({"output": {"stdout": "a\nb\n"}, "content": "a\nb"})
    );
    assert_eq!(shown[0]["success"], true);
    let traces = agent
        .traces_of(host, &asked, |e| {
            !of_kind(e, "tool_result").is_empty()
                && !of_kind(e, "reasoning").is_empty()
                && !of_kind(e, "message_out").is_empty()
        })
        .await;
    assert_eq!(of_kind(&traces, "tool_call").len(), 1);
    assert_eq!(
        of_kind(&traces, "tool_call")[0]["payload"]["tool"],
        "execute"
    );
    assert_eq!(
        of_kind(&traces, "tool_result")[0]["payload"]["success"],
        true
    );
    let reasoning = of_kind(&traces, "reasoning");
    assert_eq!(
        reasoning.len(),
        1,
        "one trace per run of thoughts: {traces:?}"
    );
    assert_eq!(reasoning[0]["payload"]["text"], "thinking hard");

    // The agent runs as its account, in its workspace, with an environment of its own: its
    // gateway key where the manifest asked for it, none of the sidecar's credentials.
    let start = record(&dir)
        .into_iter()
        .find(|l| l.starts_with("start "))
        .expect("a start line");
    assert!(start.contains(&format!("uid={uid} ")), "{start}");
    assert!(
        start.contains(&format!("cwd={} ", dir.display())),
        "{start}"
    );
    assert!(
        start.contains(&format!("model_key={} ", agent.llm_key)),
        "{start}"
    );
    for hidden in ["TAOS_AGENT_TOKEN", "OPENAI_API_KEY", "TAOS_BRIDGE_URL"] {
        assert!(!start.contains(hidden), "{start}");
    }

    // Under `auto` a permission request is answered at once with the allow-once option.
    let allowed = agent.say(host, "#permission").await;
    let reply = agent.settled_reply(host, &allowed).await;
    assert_eq!(reply["content"], "allowed", "{reply}");
    assert!(record(&dir).contains(&"permission allow-once".to_string()));
    assert_eq!(steps(&reply)[0]["tool"], "rm");
    assert_eq!(steps(&reply)[0]["success"], true);

    // One session for the conversation, kept in a 0600 file; a restarted sidecar (and so a
    // new agent process) loads it, and its replayed history stays out of the chat.
    let sessions = made(&dir);
    assert_eq!(sessions.len(), 1, "{:?}", record(&dir));
    let file = state_dir(&dir).join(taos_agent::acp::sessions::FILE_NAME);
    let mode = std::fs::metadata(&file)
        .expect("the session map")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(&sessions[0]));
    stop_agent(trigger, task).await;
    let (trigger, task) = start_agent(acp_config(&agent, host, uid, &dir));
    let later = agent.say(host, "remember me?").await;
    let reply = agent.settled_reply(host, &later).await;
    assert_eq!(reply["content"], "stub heard: remember me?", "{reply}");
    let lines = record(&dir);
    assert!(
        lines.contains(&format!("load {}", sessions[0])),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("prompt {} remember me?", sessions[0])),
        "{lines:?}"
    );
    assert_eq!(made(&dir).len(), 1, "no new session: {lines:?}");
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

async fn set_policy(host: &taos_e2e::Host, agent: &Agent, patch: Value) {
    let r = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&patch)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::OK, "patch");
}

/// The agent's approval for the delivery `trace_id`, once it is pending.
async fn wait_pending(host: &taos_e2e::Host, agent: &Agent, trace_id: &str) -> Value {
    wait_for("a pending approval", async || {
        let all: Vec<Value> = host
            .admin(Method::GET, "/api/approvals")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        all.into_iter()
            .find(|a| a["agent"] == agent.slug.as_str() && a["trace_id"] == trace_id)
    })
    .await
}

async fn decide(host: &taos_e2e::Host, id: &str, decision: &str) {
    let r = host
        .admin(Method::POST, &format!("/api/approvals/{id}"))
        .json(&json!({"decision": decision}))
        .send()
        .await
        .expect("decide");
    assert_eq!(r.status(), StatusCode::OK, "decide");
}

#[tokio::test]
async fn acp_permission_requests_go_through_approvals_under_ask() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Asker", &[GOOD]).await;
    set_policy(host, &agent, json!({"tool_policy": "ask"})).await;
    let (uid, dir) = test_account("acp");
    let (trigger, task) = start_agent(acp_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;

    let first = agent.say(host, "clean up #permission").await;
    let approval = wait_pending(host, &agent, &first).await;
    assert_eq!(approval["tool"], "rm");
    assert_eq!(approval["state"], "pending");
    assert_eq!(approval["args"]["title"], "Remove logs");
    assert!(
        !record(&dir).iter().any(|l| l.starts_with("permission")),
        "nothing answered before a person did"
    );
    decide(host, approval["id"].as_str().expect("id"), "approve").await;
    let reply = agent.settled_reply(host, &first).await;
    assert_eq!(reply["content"], "allowed", "{reply}");
    assert!(record(&dir).contains(&"permission allow-once".to_string()));
    assert_eq!(steps(&reply)[0]["approval"]["state"], "approved", "{reply}");

    let second = agent.say(host, "again #permission").await;
    let approval = wait_pending(host, &agent, &second).await;
    decide(host, approval["id"].as_str().expect("id"), "deny").await;
    let reply = agent.settled_reply(host, &second).await;
    assert_eq!(reply["content"], "rejected", "{reply}");
    assert!(record(&dir).contains(&"permission reject-once".to_string()));
    let step = &steps(&reply)[0];
    assert_eq!(step["success"], false, "{step}");
    assert_eq!(step["result"]["approval"], "denied", "{step}");
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

#[tokio::test]
async fn acp_a_cancel_from_the_chat_sends_session_cancel_and_the_session_goes_on() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Stoppable", &[GOOD]).await;
    let (uid, dir) = test_account("acp");
    let (trigger, task) = start_agent(acp_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;

    let mut ws = taos_e2e::WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;
    let asked = agent.say(host, "work forever #hang").await;
    // The first words reached the chat (the delta is applied, not just sent); the stub is now
    // waiting for a cancel.
    super::agent_events(&mut ws, &agent, |events| {
        events
            .iter()
            .any(|e| e["type"] == "message_delta" && e["delta"] == "working")
    })
    .await;
    let answer = wait_for("the streaming answer", async || {
        agent
            .replies_to(host, &asked)
            .await
            .into_iter()
            .find(|m| m["state"] == "streaming")
    })
    .await;
    let id = answer["id"].as_str().expect("id");
    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["metadata"]["failure"]["code"], "cancelled", "{reply}");
    assert_eq!(reply["content"], "working", "what was shown stays: {reply}");
    let session = made(&dir).first().cloned().expect("a session");
    wait_for("the stub to see session/cancel", async || {
        let lines = record(&dir);
        (lines.contains(&format!("cancel {session}"))
            && lines.contains(&format!("prompt-ended-cancelled {session}")))
        .then_some(())
    })
    .await;

    // The same session answers the next message.
    let next = agent.say(host, "still there?").await;
    let reply = agent.settled_reply(host, &next).await;
    assert_eq!(reply["content"], "stub heard: still there?", "{reply}");
    assert!(record(&dir).contains(&format!("prompt {session} still there?")));
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

#[tokio::test]
async fn acp_a_crash_mid_turn_is_an_error_and_the_next_message_restarts_and_loads_the_session() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Crasher", &[GOOD]).await;
    let (uid, dir) = test_account("acp");
    let (trigger, task) = start_agent(acp_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;

    let asked = agent.say(host, "go #crash").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "error", "{reply}");
    let detail = reply["metadata"]["failure"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(
        detail.contains("the agent process exited (exit status: 3)")
            && detail.contains("it will be restarted for the next message"),
        "{reply}"
    );
    let session = made(&dir).first().cloned().expect("a session");

    let next = agent.say(host, "are you back?").await;
    let reply = agent.settled_reply(host, &next).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "stub heard: are you back?", "{reply}");
    let lines = record(&dir);
    assert_eq!(
        lines.iter().filter(|l| *l == "initialize").count(),
        2,
        "{lines:?}"
    );
    assert!(lines.contains(&format!("load {session}")), "{lines:?}");
    assert_eq!(made(&dir).len(), 1, "{lines:?}");
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

#[tokio::test]
async fn acp_limits_cut_a_turn_visibly_before_more_work() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Flooder", &[GOOD]).await;
    let (uid, dir) = test_account("acp");
    let mut config = acp_config(&agent, host, uid, &dir);
    config.acp.max_turn_updates = 100;
    config.acp.turn_time = std::time::Duration::from_secs(3);
    let (trigger, task) = start_agent(config);
    agent.wait_connected(host).await;

    let flood = agent.say(host, "#flood").await;
    let reply = agent.settled_reply(host, &flood).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["code"], "turn_limit",
        "{reply}"
    );
    let detail = reply["metadata"]["failure"]["detail"]
        .as_str()
        .unwrap_or("");
    assert!(detail.contains("more than 100 updates"), "{reply}");
    // What was shown before the cut stays, and no more.
    assert!(
        reply["content"].as_str().unwrap_or("").len() <= 100,
        "{reply}"
    );

    // A turn past its time is cancelled and said so; the agent (restarted after the flood)
    // was told to stop.
    let slow = agent.say(host, "#hang").await;
    let reply = agent.settled_reply(host, &slow).await;
    assert_eq!(
        reply["metadata"]["failure"]["code"], "turn_limit",
        "{reply}"
    );
    assert!(
        reply["metadata"]["failure"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("time limit"),
        "{reply}"
    );
    wait_for("the stub to see session/cancel", async || {
        record(&dir)
            .iter()
            .any(|l| l.starts_with("cancel "))
            .then_some(())
    })
    .await;
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

#[tokio::test]
async fn acp_an_agent_without_load_session_starts_a_new_session_after_a_restart() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Acp Forgetful", &[GOOD]).await;
    let (uid, dir) = test_account("acp");
    let config = || {
        let mut config = acp_config(&agent, host, uid, &dir);
        config
            .acp
            .env
            .insert("STUB_NO_LOAD".to_string(), "1".to_string());
        config
    };
    let (trigger, task) = start_agent(config());
    agent.wait_connected(host).await;
    let first = agent.say(host, "one").await;
    assert_eq!(
        agent.settled_reply(host, &first).await["content"],
        "stub heard: one"
    );
    stop_agent(trigger, task).await;

    let (trigger, task) = start_agent(config());
    let second = agent.say(host, "two").await;
    assert_eq!(
        agent.settled_reply(host, &second).await["content"],
        "stub heard: two"
    );
    let lines = record(&dir);
    let sessions = made(&dir);
    assert_eq!(sessions.len(), 2, "a new session, not a load: {lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("load ")), "{lines:?}");
    assert!(
        lines.contains(&format!("prompt {} two", sessions[1])),
        "{lines:?}"
    );
    // The map now names the new session.
    let file = state_dir(&dir).join(taos_agent::acp::sessions::FILE_NAME);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(&sessions[1]));
    stop_agent(trigger, task).await;
    cleanup(&dir);
}

#[tokio::test]
async fn acp_mode_with_an_empty_command_exits_with_code_2_naming_it() {
    let env = [
        ("TAOS_BRIDGE_URL", "http://127.0.0.1:9"),
        ("TAOS_AGENT_NAME", "helper"),
        ("TAOS_AGENT_TOKEN", "taos_ag_secret"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ("OPENAI_API_KEY", "taos_llm_secret_value"),
        ("TAOS_MODEL", GOOD),
        ("TAOS_AGENT_MODE", "acp"),
        ("TAOS_ACP_COMMAND", "[]"),
    ];
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .env_clear()
        .envs(env)
        .output()
        .await
        .expect("run taos-agent");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TAOS_ACP_COMMAND") && stderr.contains("empty"),
        "{stderr}"
    );
}
