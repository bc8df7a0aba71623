//! Tools mode against the real host, LiteLLM and the fake upstream answering from a script:
//! the loop, its limits, and what the tools can and cannot do. The sidecar runs in-process
//! (as root here), switching to a numeric account of each test's own for its tools, so the
//! switch, the environment and the clean-up are the real ones.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use taos_agent::config::{Mode, RunAs};
use taos_e2e::fake_llm::Scripted;

use reqwest::{Method, StatusCode};

use super::{of_kind, shared, start_agent, stop_agent, test_account, wait_for, Agent};

/// Runs `shell`, `read_file` and `list_dir`, then answers.
pub const DISK: &str = "scripted-disk";
/// Calls a tool forever.
pub const LOOPS: &str = "scripted-loop";
/// Runs a command past its time limit, then answers.
pub const SLOW: &str = "scripted-slow";
/// Prints more than the output cap, then answers.
pub const CHATTY: &str = "scripted-chatty";
/// Runs a long command, to be cancelled from the chat.
pub const STOPPED: &str = "scripted-cancel";
/// Approvals: a command that waits for a person, then an answer.
pub const APPROVED: &str = "scripted-approved";
pub const DENIED: &str = "scripted-denied";
pub const RESTARTED: &str = "scripted-restarted";
pub const ABANDONED: &str = "scripted-abandoned";
/// Reads its own trace, then answers.
pub const DIARY: &str = "scripted-diary";
pub const MODELS: [&str; 10] = [
    DISK, LOOPS, SLOW, CHATTY, STOPPED, APPROVED, DENIED, RESTARTED, ABANDONED, DIARY,
];

fn tools_config(
    agent: &Agent,
    host: &taos_e2e::Host,
    uid: u32,
    dir: &std::path::Path,
) -> taos_agent::Config {
    let mut config = agent.config(host);
    config.mode = Mode::Tools;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(dir.display().to_string());
    config
}

/// The processes of `uid` still alive (zombies waiting for their parent don't count).
fn processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if taos_agent::tools::exec::is_live_process_of(&status, uid) {
            found.push(std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default());
        }
    }
    found
}

fn steps(reply: &Value) -> Vec<Value> {
    reply["metadata"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn tools_run_as_their_own_account_and_every_step_shows_in_chat_and_traces() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Toolsmith", &[DISK]).await;
    let (uid, dir) = test_account("tools");
    // Something only root may read, like the sidecar's credentials file.
    let secret = dir.with_extension("secret");
    std::fs::write(&secret, "TAOS_AGENT_TOKEN=hidden").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    shared.upstream.script(
        DISK,
        vec![
            Scripted::call(
                "shell",
                json!({"command": "id -u; env; echo hello > note.txt; du -sh ."}),
            ),
            Scripted::call("read_file", json!({"path": "note.txt"})),
            Scripted::call("read_file", json!({"path": secret.display().to_string()})),
            Scripted::call("list_dir", json!({})),
            Scripted::call(
                "write_file",
                json!({"path": "/etc/taos-pwn", "content": "x"}),
            ),
            Scripted::final_text("Your disk is fine."),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "how full is your disk?").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Your disk is fine.");

    let steps = steps(&reply);
    let tools: Vec<&str> = steps
        .iter()
        .map(|s| s["tool"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        tools,
        ["shell", "read_file", "read_file", "list_dir", "write_file"],
        "{reply}"
    );
    // The command ran as the tools account, with an environment of its own: none of the
    // sidecar's credentials.
    let shell = &steps[0];
    assert_eq!(
        shell["args"]["command"],
        "id -u; env; echo hello > note.txt; du -sh ."
    );
    assert_eq!(shell["success"], true, "{shell}");
    assert_eq!(shell["result"]["exit_code"], 0);
    let stdout = shell["result"]["stdout"].as_str().expect("stdout");
    assert!(stdout.starts_with(&format!("{uid}\n")), "{stdout}");
    assert!(
        stdout.contains(&format!("HOME={}", dir.display())),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&agent.token) && !stdout.contains(&agent.llm_key),
        "{stdout}"
    );
    assert!(
        !stdout.contains("TAOS_") && !stdout.contains("OPENAI_"),
        "{stdout}"
    );
    assert_eq!(steps[1]["result"]["content"], "hello\n");
    assert_eq!(steps[1]["success"], true);
    // What root alone may read stays unread, in the tool's own words.
    assert_eq!(steps[2]["success"], false, "{}", steps[2]);
    assert!(
        steps[2]["result"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("Permission denied"),
        "{}",
        steps[2]
    );
    assert!(steps[3]["result"]["listing"]
        .as_str()
        .unwrap_or("")
        .contains("note.txt"));
    assert_eq!(steps[4]["success"], false, "{}", steps[4]);
    assert!(!std::path::Path::new("/etc/taos-pwn").exists());
    // The file was written by the tools account, in its workspace.
    let note = std::fs::metadata(dir.join("note.txt")).expect("note.txt");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&note), uid);

    // Each call and result is a trace under the message's trace id.
    let traces = agent
        .traces_of(host, &asked, |e| {
            of_kind(e, "tool_result").len() == 5 && !of_kind(e, "message_out").is_empty()
        })
        .await;
    let calls = of_kind(&traces, "tool_call");
    assert_eq!(calls.len(), 5);
    assert_eq!(calls[0]["payload"]["tool"], "shell");
    assert_eq!(
        calls[0]["payload"]["args"]["command"],
        shell["args"]["command"]
    );
    let results = of_kind(&traces, "tool_result");
    assert_eq!(results[0]["payload"]["result"]["exit_code"], 0);
    assert_eq!(
        results[0]["payload"]["call_id"],
        calls[0]["payload"]["call_id"]
    );
    assert_eq!(of_kind(&traces, "llm_call").len(), 6);

    // The model got each result back, paired with its call.
    let sent = shared.upstream.chat_requests(|body| body["model"] == DISK);
    let last = sent.last().expect("requests");
    assert!(
        last["tools"]
            .as_array()
            .is_some_and(|t| t.len() == taos_agent::tools::kit::TOOL_NAMES.len()),
        "{last}"
    );
    let tool_messages: Vec<&Value> = last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 5);
    assert!(tool_messages[0]["content"]
        .as_str()
        .unwrap_or("")
        .starts_with("exit code 0"));
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&secret);
}

/// `read_trace` is the sidecar's own tool: it reads the agent's trace from the host's agent
/// route with the sidecar's token, which the tools account never sees. The page holds this
/// very turn's incoming message, and the model is given it.
#[tokio::test]
async fn read_trace_gives_the_model_the_agents_own_trace_from_the_host() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Diarist", &[DIARY]).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        DIARY,
        vec![
            Scripted::call("read_trace", json!({"kind": "message_in", "limit": 5})),
            Scripted::call("read_trace", json!({"limit": "many"})),
            Scripted::final_text("I read my diary."),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "what did you do this week?").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    let steps = steps(&reply);
    assert_eq!(steps.len(), 2, "{reply}");
    assert_eq!(steps[0]["tool"], "read_trace");
    assert_eq!(steps[0]["success"], true, "{reply}");
    let events = steps[0]["result"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !events.is_empty() && events.iter().all(|e| e["kind"] == "message_in"),
        "{reply}"
    );
    assert!(
        events.iter().any(|e| e["trace_id"] == asked.as_str()),
        "this turn's message is in the page: {reply}"
    );
    // A bad argument is the model's to fix, said in words; nothing reached the host.
    assert_eq!(steps[1]["success"], false, "{reply}");
    assert!(
        steps[1]["result"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("limit"),
        "{reply}"
    );
    // The model got the page: the tool message after the first call carries the event.
    let asked_model = shared.upstream.chat_requests(|r| r["model"] == DIARY);
    let tool_messages: Vec<String> = asked_model
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        tool_messages.iter().any(|m| m.contains(asked.as_str())),
        "{tool_messages:?}"
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_step_limit_stops_a_model_that_never_finishes() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Looper", &[LOOPS]).await;
    let (uid, dir) = test_account("tools");
    shared
        .upstream
        .script_forever(LOOPS, Scripted::call("shell", json!({"command": ["true"]})));
    let mut config = tools_config(&agent, host, uid, &dir);
    config.tools.max_steps = 3;
    let (trigger, task) = start_agent(config);
    agent.wait_connected(host).await;
    let asked = agent.say(host, "keep going").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["code"], "turn_limit",
        "{reply}"
    );
    assert!(
        reply["metadata"]["failure"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("3 steps"),
        "{reply}"
    );
    // Three model calls, each with its tool step shown; no fourth.
    assert_eq!(steps(&reply).len(), 3, "{reply}");
    assert!(steps(&reply).iter().all(|s| s["success"] == true));
    let traces = agent
        .traces_of(host, &asked, |e| !of_kind(e, "error").is_empty())
        .await;
    assert_eq!(of_kind(&traces, "llm_call").len(), 3);
    assert_eq!(of_kind(&traces, "tool_result").len(), 3);
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_tool_past_its_time_limit_is_killed_with_everything_it_started() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Sleeper", &[SLOW]).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        SLOW,
        vec![
            // A background job that would outlive the call, and a foreground one past the limit.
            Scripted::call(
                "shell",
                json!({"command": "(setsid sleep 300 &) ; echo started; sleep 300; echo never", "timeout_secs": 1}),
            ),
            Scripted::final_text("It took too long."),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "run the slow thing").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "It took too long.");
    let step = &steps(&reply)[0];
    assert_eq!(step["success"], false, "{step}");
    assert_eq!(step["result"]["timed_out"], true, "{step}");
    assert_eq!(step["result"]["exit_code"], Value::Null);
    assert_eq!(step["result"]["stdout"], "started\n");
    // Nothing of the account survives the call, not even what left its process group.
    assert_eq!(processes_of(uid), Vec::<String>::new());
    let sent = shared.upstream.chat_requests(|body| body["model"] == SLOW);
    let told = sent.last().expect("requests")["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool").cloned())
        .expect("a tool message");
    assert!(
        told["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("timed out after 1 s"),
        "{told}"
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn output_past_the_cap_is_cut_visibly_keeping_its_start_and_end() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Chatty", &[CHATTY]).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        CHATTY,
        vec![
            Scripted::call("shell", json!({"command": ["seq", "1", "100000"]})),
            Scripted::final_text("Counted."),
        ],
    );
    let mut config = tools_config(&agent, host, uid, &dir);
    config.tools.output_bytes = 1000;
    let (trigger, task) = start_agent(config);
    agent.wait_connected(host).await;
    let asked = agent.say(host, "count").await;
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["content"], "Counted.", "{reply}");
    let step = &steps(&reply)[0];
    assert_eq!(step["success"], true, "{step}");
    assert_eq!(step["result"]["truncated"], true);
    let stdout = step["result"]["stdout"].as_str().expect("stdout");
    assert!(stdout.starts_with("1\n2\n3\n"), "{stdout}");
    assert!(stdout.ends_with("99999\n100000\n"), "{stdout}");
    assert!(
        stdout.contains("bytes cut: output is capped at 1000 bytes"),
        "{stdout}"
    );
    // What the model got is cut the same way.
    let sent = shared
        .upstream
        .chat_requests(|body| body["model"] == CHATTY);
    let told = sent.last().expect("requests")["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool").cloned())
        .expect("a tool message");
    let told = told["content"].as_str().unwrap_or("");
    assert!(told.contains("bytes cut") && told.len() < 1500, "{told}");
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_person_stops_an_answer_from_the_chat_and_its_tools_end() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Stoppable", &[STOPPED]).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        STOPPED,
        vec![
            Scripted::call(
                "shell",
                json!({"command": "sleep 290; echo never", "timeout_secs": 300}),
            ),
            Scripted::final_text("never said"),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "run for a long time").await;
    // The call shows on the streaming answer before it has a result.
    let answer = wait_for("the tool call on the answer", async || {
        let replies = agent.replies_to(host, &asked).await;
        replies.into_iter().find(|m| {
            m["state"] == "streaming"
                && steps(m).len() == 1
                && steps(m)[0]["result"].is_null()
                && !processes_of(uid).is_empty()
        })
    })
    .await;
    let id = answer["id"].as_str().expect("id");

    // Bad requests change nothing: a person's message, an unknown one.
    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{asked}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = host
        .admin(Method::POST, "/api/chat/messages/no-such-message/cancel")
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!processes_of(uid).is_empty(), "still running");

    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["id"], id);
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["metadata"]["failure"]["code"], "cancelled", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["detail"],
        "stopped by user:owner"
    );
    assert_eq!(processes_of(uid), Vec::<String>::new());
    // Settled: a second stop is a conflict.
    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // The model was asked once: nothing went on after the stop.
    assert_eq!(
        shared
            .upstream
            .chat_requests(|b| b["model"] == STOPPED)
            .len(),
        1
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the agent's tool policy (and overrides) through the owner's API.
async fn set_policy(host: &taos_e2e::Host, agent: &Agent, patch: Value) {
    let r = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&patch)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::OK, "patch");
}

/// The agent's approvals waiting for a person (other tests' agents share the host).
async fn pending_of(host: &taos_e2e::Host, agent: &Agent) -> Vec<Value> {
    let all: Vec<Value> = host
        .admin(Method::GET, "/api/approvals")
        .send()
        .await
        .expect("approvals")
        .json()
        .await
        .expect("approvals json");
    all.into_iter()
        .filter(|a| a["agent"] == agent.slug.as_str())
        .collect()
}

/// Waits for the agent's one pending approval; returns it.
async fn wait_pending(host: &taos_e2e::Host, agent: &Agent) -> Value {
    wait_for("a pending approval", async || {
        let mut pending = pending_of(host, agent).await;
        assert!(pending.len() <= 1, "one approval per call: {pending:?}");
        pending.pop()
    })
    .await
}

async fn decide(host: &taos_e2e::Host, id: &str, decision: &str) -> (StatusCode, Value) {
    let r = host
        .admin(Method::POST, &format!("/api/approvals/{id}"))
        .json(&json!({"decision": decision}))
        .send()
        .await
        .expect("decide");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn under_ask_a_command_runs_once_a_person_approves_it() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Careful", &[APPROVED]).await;
    set_policy(host, &agent, json!({"tool_policy": "ask"})).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        APPROVED,
        vec![
            Scripted::call("shell", json!({"command": "echo ran >> approved.txt"})),
            Scripted::final_text("Done."),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "write the file").await;
    let approval = wait_pending(host, &agent).await;
    assert_eq!(approval["summary"], "echo ran >> approved.txt");
    assert_eq!(approval["trace_id"], asked.as_str());
    // Waiting: shown on the answer's step, and nothing ran.
    let waiting = wait_for("the pending step", async || {
        agent.replies_to(host, &asked).await.into_iter().find(|m| {
            steps(m)
                .first()
                .is_some_and(|s| s["approval"]["state"] == "pending")
        })
    })
    .await;
    assert_eq!(waiting["state"], "streaming");
    assert!(steps(&waiting)[0]["result"].is_null());
    assert!(!dir.join("approved.txt").exists());

    let id = approval["id"].as_str().expect("id");
    let (status, decided) = decide(host, id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Done.");
    let step = &steps(&reply)[0];
    assert_eq!(step["approval"]["state"], "approved", "{step}");
    assert_eq!(step["success"], true, "{step}");
    assert_eq!(
        std::fs::read_to_string(dir.join("approved.txt")).expect("the command ran"),
        "ran\n"
    );
    let (status, _) = decide(host, id, "deny").await;
    assert_eq!(status, StatusCode::CONFLICT);
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_denied_or_switched_off_tool_does_not_run_and_the_model_is_told_why() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Refused", &[DENIED]).await;
    // Tools run at once, except `shell` (ask) and `write_file` (never).
    set_policy(
        host,
        &agent,
        json!({"tool_policy": "auto", "tool_overrides": {"shell": "ask", "write_file": "off"}}),
    )
    .await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        DENIED,
        vec![
            Scripted::call("write_file", json!({"path": "off.txt", "content": "x"})),
            Scripted::call("shell", json!({"command": "touch denied.txt"})),
            Scripted::call("list_dir", json!({})),
            Scripted::final_text("I was not allowed to."),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "make some files").await;
    let approval = wait_pending(host, &agent).await;
    assert_eq!(approval["tool"], "shell");
    let (status, _) = decide(host, approval["id"].as_str().expect("id"), "deny").await;
    assert_eq!(status, StatusCode::OK);
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "I was not allowed to.");
    let steps = steps(&reply);
    assert_eq!(steps.len(), 3, "{reply}");
    assert_eq!(steps[0]["success"], false);
    assert_eq!(steps[0]["result"]["approval"], "denied");
    assert_eq!(steps[1]["success"], false);
    assert_eq!(steps[1]["approval"]["state"], "denied");
    assert_eq!(steps[1]["result"]["approval"], "denied");
    assert_eq!(steps[2]["success"], true, "auto still runs");
    assert!(!dir.join("off.txt").exists());
    assert!(!dir.join("denied.txt").exists());
    // The model was told, in words, and by whom.
    let sent = shared.upstream.chat_requests(|b| b["model"] == DENIED);
    let told: Vec<String> = sent.last().expect("requests")["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        told[0].starts_with("not run: the owner has turned the `write_file` tool off"),
        "{told:?}"
    );
    assert!(
        told[1].starts_with("not run: denied by user:owner"),
        "{told:?}"
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sidecar_restarted_mid_approval_finds_the_answer_and_runs_the_command_once() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Restarted", &[RESTARTED]).await;
    set_policy(host, &agent, json!({"tool_policy": "ask"})).await;
    let (uid, dir) = test_account("tools");
    // The turn runs twice (before and after the restart); the model asks the same both times.
    let call = || Scripted::call("shell", json!({"command": "echo run >> count.txt"}));
    shared.upstream.script(
        RESTARTED,
        vec![call(), call(), Scripted::final_text("Counted once.")],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "count").await;
    let first = wait_pending(host, &agent).await;
    stop_agent(trigger, task).await;

    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    // The new sidecar runs the turn again and asks about the same call: the same approval.
    wait_for("the turn asked again", async || {
        (shared
            .upstream
            .chat_requests(|b| b["model"] == RESTARTED)
            .len()
            == 2)
            .then_some(())
    })
    .await;
    let again = wait_pending(host, &agent).await;
    assert_eq!(again["id"], first["id"]);
    let (status, _) = decide(host, first["id"].as_str().expect("id"), "approve").await;
    assert_eq!(status, StatusCode::OK);
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Counted once.");
    assert_eq!(
        std::fs::read_to_string(dir.join("count.txt")).expect("the command ran"),
        "run\n"
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stopping_the_answer_from_the_chat_ends_a_wait_for_approval() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Abandoned", &[ABANDONED]).await;
    set_policy(host, &agent, json!({"tool_policy": "ask"})).await;
    let (uid, dir) = test_account("tools");
    shared.upstream.script(
        ABANDONED,
        vec![
            Scripted::call("shell", json!({"command": "touch never.txt"})),
            Scripted::final_text("never said"),
        ],
    );
    let (trigger, task) = start_agent(tools_config(&agent, host, uid, &dir));
    agent.wait_connected(host).await;
    let asked = agent.say(host, "touch it").await;
    let approval = wait_pending(host, &agent).await;
    let message = approval["message_id"]
        .as_str()
        .expect("the answer's message");
    let r = host
        .admin(
            Method::POST,
            &format!("/api/chat/messages/{message}/cancel"),
        )
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let reply = agent.settled_reply(host, &asked).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["metadata"]["failure"]["code"], "cancelled");
    // Nothing waits any more, and a late approval can't start it.
    assert!(pending_of(host, &agent).await.is_empty());
    let (status, _) = decide(host, approval["id"].as_str().expect("id"), "approve").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!dir.join("never.txt").exists());
    assert_eq!(
        shared
            .upstream
            .chat_requests(|b| b["model"] == ABANDONED)
            .len(),
        1
    );
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_host_killed_mid_approval_still_holds_it_and_approving_it_finishes_the_turn() {
    // A host of this test's own (it is killed), without LiteLLM: the sidecar asks the fake
    // upstream directly, which is all this needs of a model. The agent listener keeps its port
    // across the restart, as it does in production, so the running sidecar finds it again.
    const KEY: &str = "upstream-key-for-the-crash-test";
    const MODEL: &str = "scripted-crash";
    let upstream = taos_e2e::fake_llm::FakeLlm::start(KEY, &[MODEL]).await;
    let agent_port = taos_e2e::free_port();
    let options = |data_dir: Option<PathBuf>| taos_e2e::HostOptions {
        data_dir,
        env: vec![
            (
                "TAOS_SERVER__AGENT_BIND".into(),
                format!("127.0.0.1:{agent_port}"),
            ),
            (
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            ),
        ],
    };
    let bin = taos_e2e::workspace_binary("taos-host")
        .display()
        .to_string();
    let mut host = taos_e2e::Host::start_with(&bin, options(None))
        .await
        .expect("host starts");
    host.setup_owner().await;
    let agent = Agent::create(&host, "Survivor", &[MODEL]).await;
    set_policy(&host, &agent, json!({"tool_policy": "ask"})).await;
    let (uid, dir) = test_account("tools");
    upstream.script(
        MODEL,
        vec![
            Scripted::call("shell", json!({"command": "echo run >> count.txt"})),
            Scripted::final_text("Done, after all that."),
        ],
    );
    let env = agent.env(&host);
    let mut config = taos_agent::Config::from_lookup(|name| match name {
        "OPENAI_BASE_URL" => Some(upstream.url()),
        "OPENAI_API_KEY" => Some(KEY.to_string()),
        other => env.get(other).cloned(),
    })
    .expect("config");
    config.timings.backoff_start = std::time::Duration::from_millis(50);
    config.timings.backoff_max = std::time::Duration::from_millis(200);
    config.timings.shutdown_grace = std::time::Duration::from_millis(300);
    config.mode = Mode::Tools;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(dir.display().to_string());
    let (trigger, task) = start_agent(config);
    agent.wait_connected(&host).await;
    let asked = agent.say(&host, "count, carefully").await;
    let before = wait_pending(&host, &agent).await;
    host.kill9().await;

    let restarted = taos_e2e::Host::start_with(&bin, options(Some(host.data_dir.clone())))
        .await
        .expect("the host starts again on its data");
    assert_eq!(restarted.agent_url, host.agent_url);
    let after = wait_pending(&restarted, &agent).await;
    assert_eq!(
        after["id"], before["id"],
        "the same approval, still pending"
    );
    assert!(!dir.join("count.txt").exists(), "nothing ran meanwhile");
    // The sidecar, still in its turn, is asking again by now; approving lets it finish.
    agent.wait_connected(&restarted).await;
    let (status, _) = decide(&restarted, before["id"].as_str().expect("id"), "approve").await;
    assert_eq!(status, StatusCode::OK);
    let reply = agent.settled_reply(&restarted, &asked).await;
    assert_eq!(reply["state"], "complete", "{reply}");
    assert_eq!(reply["content"], "Done, after all that.");
    assert_eq!(
        std::fs::read_to_string(dir.join("count.txt")).expect("the command ran"),
        "run\n"
    );
    // One model call before the crash, one after the result: the turn went on, not again.
    assert_eq!(upstream.chat_requests(|b| b["model"] == MODEL).len(), 2);
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay to the host's agent listener that a test can cut: cutting drops every
/// connection through it and refuses new ones (accepted, then closed), as a network blip
/// would, until it is joined again.
struct Relay {
    url: String,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let url = format!("http://{}", listener.local_addr().expect("relay address"));
        let cut = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut = watch.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { url, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// A stop made while the sidecar's stream is down is not lost: the host stores it, survives a
/// SIGKILL with it, and the first stream the sidecar opens afterwards carries it; the turn
/// stops, its command is killed and the chat says cancelled.
#[tokio::test]
async fn a_stop_made_while_the_sidecar_is_away_reaches_it_when_it_reconnects() {
    // A host of this test's own (it is killed), without LiteLLM, on a fixed agent port; the
    // sidecar reaches it through the relay.
    const KEY: &str = "upstream-key-for-the-durable-cancel-test";
    const MODEL: &str = "scripted-durable-cancel";
    let upstream = taos_e2e::fake_llm::FakeLlm::start(KEY, &[MODEL]).await;
    let agent_port = taos_e2e::free_port();
    let options = |data_dir: Option<PathBuf>| taos_e2e::HostOptions {
        data_dir,
        env: vec![
            (
                "TAOS_SERVER__AGENT_BIND".into(),
                format!("127.0.0.1:{agent_port}"),
            ),
            (
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            ),
        ],
    };
    let bin = taos_e2e::workspace_binary("taos-host")
        .display()
        .to_string();
    let mut host = taos_e2e::Host::start_with(&bin, options(None))
        .await
        .expect("host starts");
    host.setup_owner().await;
    let agent = Agent::create(&host, "Away", &[MODEL]).await;
    let (uid, dir) = test_account("tools");
    upstream.script(
        MODEL,
        vec![
            Scripted::call(
                "shell",
                json!({"command": "sleep 290; echo never", "timeout_secs": 300}),
            ),
            Scripted::final_text("never said"),
        ],
    );
    let relay = Relay::start(format!("127.0.0.1:{agent_port}")).await;
    let env = agent.env(&host);
    let mut config = taos_agent::Config::from_lookup(|name| match name {
        "TAOS_BRIDGE_URL" => Some(relay.url.clone()),
        "OPENAI_BASE_URL" => Some(upstream.url()),
        "OPENAI_API_KEY" => Some(KEY.to_string()),
        other => env.get(other).cloned(),
    })
    .expect("config");
    config.timings.backoff_start = std::time::Duration::from_millis(50);
    config.timings.backoff_max = std::time::Duration::from_millis(200);
    config.timings.shutdown_grace = std::time::Duration::from_millis(300);
    config.mode = Mode::Tools;
    config.tools.run_as = RunAs::Ids { uid, gid: uid };
    config.tools.workdir = Some(dir.display().to_string());
    let (trigger, task) = start_agent(config);
    agent.wait_connected(&host).await;
    let asked = agent.say(&host, "run for a long time").await;
    let answer = wait_for("the command running", async || {
        let replies = agent.replies_to(&host, &asked).await;
        replies.into_iter().find(|m| {
            m["state"] == "streaming" && steps(m).len() == 1 && !processes_of(uid).is_empty()
        })
    })
    .await;
    let id = answer["id"].as_str().expect("id").to_string();

    // The stream goes down; the stop is made meanwhile (whether or not the host has noticed
    // yet: a live send into a dead stream is the loss this guards against).
    relay.set_cut(true);
    let r = host
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    // And the host dies right after storing it.
    host.kill9().await;
    let restarted = taos_e2e::Host::start_with(&bin, options(Some(host.data_dir.clone())))
        .await
        .expect("the host starts again on its data");
    let still = agent.replies_to(&restarted, &asked).await;
    assert_eq!(still.len(), 1, "{still:?}");
    assert_eq!(still[0]["state"], "streaming", "not settled while away");
    assert!(
        !processes_of(uid).is_empty(),
        "the sidecar has not heard yet"
    );

    relay.set_cut(false);
    let reply = agent.settled_reply(&restarted, &asked).await;
    assert_eq!(reply["id"], id.as_str());
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["metadata"]["failure"]["code"], "cancelled", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["detail"],
        "stopped by user:owner"
    );
    assert_eq!(processes_of(uid), Vec::<String>::new());
    // The model was asked once: nothing went on after the stop.
    assert_eq!(upstream.chat_requests(|b| b["model"] == MODEL).len(), 1);
    // Settled, the stop is spent: a new stream carries it no more, and a second stop is a
    // conflict.
    let r = restarted
        .admin(Method::POST, &format!("/api/chat/messages/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    stop_agent(trigger, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}
