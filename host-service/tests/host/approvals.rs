//! Tool approvals on the host, with an agent played by the test over the agent listener: the
//! policy on the agent, a request's life (chat step, event, notification, decision), expiry,
//! bad input, and a pending approval surviving a SIGKILL.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, SseReader};

use crate::{start, start_with_env, BIN};

const WAIT: Duration = Duration::from_secs(20);

/// An agent on `ask`, a message to it in its DM, and the tool call it announced (so the answer's
/// message exists): `(agent, dm, trace_id)`.
async fn asking_agent(host: &Host, name: &str) -> (AgentClient, String, String) {
    let (agent, record) = AgentClient::create(host, name).await;
    let patched: Value = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&json!({"tool_policy": "ask", "tool_overrides": {"read_file": "auto", "http_get": "off"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["tool_policy"], "ask", "{patched}");
    assert_eq!(patched["tool_overrides"]["http_get"], "off");
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let trace_id = say(host, &dm, "clean up the old logs").await;
    let r = agent
        .reply(
            json!({"kind": "tool_call", "trace_id": trace_id, "call_id": "c1", "tool": "shell",
            "args": {"command": "rm -r ~/logs/2024"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    (agent, dm, trace_id)
}

async fn say(host: &Host, channel: &str, text: &str) -> String {
    let r = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": channel, "content": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let message: Value = r.json().await.unwrap();
    message["id"].as_str().unwrap().to_string()
}

fn shell_request(trace_id: &str, wait_secs: u64) -> Value {
    json!({"trace_id": trace_id, "call_id": "c1", "tool": "shell",
        "args": {"command": "rm -r ~/logs/2024"}, "step": 0, "wait_secs": wait_secs})
}

async fn ask(agent: &AgentClient, body: &Value) -> (StatusCode, Value) {
    let r = agent
        .request(
            Method::POST,
            &format!("/api/openclaw/sessions/{}/approvals", agent.slug),
        )
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn decide(host: &Host, id: &str, decision: &str) -> (StatusCode, Value) {
    let r = host
        .admin(Method::POST, &format!("/api/approvals/{id}"))
        .json(&json!({"decision": decision}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn pending(host: &Host) -> Vec<Value> {
    host.get::<Vec<Value>>("/api/approvals").await
}

/// The agent's answer in the DM (the message its tool steps are on).
async fn answer(host: &Host, dm: &str, trace_id: &str) -> Value {
    let messages: Vec<Value> = host
        .get(&format!("/api/chat/channels/{dm}/messages?after_seq=0"))
        .await;
    messages
        .into_iter()
        .find(|m| m["metadata"]["trace_id"] == trace_id)
        .expect("the answer's message")
}

/// Waits for the approval on the answer's first tool step to be in `state`.
async fn step_approval(host: &Host, dm: &str, trace_id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let step = answer(host, dm, trace_id).await["metadata"]["tools"][0].clone();
        if step["approval"]["state"] == state {
            return step;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step's approval never became {state}: {step}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_event(events: &mut SseReader, kind: &str) -> Value {
    loop {
        let event = events.next(WAIT).await.expect("an event");
        if event.event.as_deref() == Some(kind) {
            let event: Value = serde_json::from_str(&event.data).unwrap();
            return event["data"].clone();
        }
    }
}

#[tokio::test]
async fn a_tool_call_under_ask_waits_for_a_person_and_everyone_is_told() {
    let host = start().await;
    host.setup_owner().await;
    let mut events = SseReader::new(host.admin(Method::GET, "/api/events").send().await.unwrap());
    let (agent, dm, trace_id) = asking_agent(&host, "Helper").await;

    // `auto` by override, `off` by override: answered at once, nothing stored.
    let (status, auto) = ask(
        &agent,
        &json!({"trace_id": trace_id, "call_id": "c0", "tool": "read_file",
            "args": {"path": "a"}, "step": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        auto,
        json!({"id": null, "state": "approved", "reason": null})
    );
    let (_, off) = ask(
        &agent,
        &json!({"trace_id": trace_id, "call_id": "c0", "tool": "http_get",
            "args": {"url": "https://example.com"}, "step": 0}),
    )
    .await;
    assert_eq!(off["state"], "denied");
    assert!(
        off["reason"]
            .as_str()
            .unwrap()
            .contains("`http_get` tool off"),
        "{off}"
    );
    assert!(pending(&host).await.is_empty());

    // `ask`: pending, shown on the step, an event and a notification for the owner.
    let (status, first) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["state"], "pending", "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let listed = pending(&host).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["agent"], agent.slug.as_str());
    assert_eq!(listed[0]["summary"], "rm -r ~/logs/2024");
    assert_eq!(listed[0]["channel_id"], dm.as_str());
    let step = step_approval(&host, &dm, &trace_id, "pending").await;
    assert_eq!(step["approval"]["id"], id.as_str());
    assert_eq!(step["args"]["command"], "rm -r ~/logs/2024");
    let requested = next_event(&mut events, "approval.requested").await;
    assert_eq!(requested["id"], id.as_str());
    assert_eq!(requested["summary"], "rm -r ~/logs/2024");
    let notifications: Vec<Value> = host.get("/api/notifications").await;
    let note = notifications
        .iter()
        .find(|n| n["source"] == "tool.approval")
        .expect("a notification");
    assert_eq!(note["title"], "Helper wants to run `rm -r ~/logs/2024`");
    assert_eq!(note["data"]["approval_id"], id.as_str());
    assert_eq!(note["data"]["agent"], agent.slug.as_str());
    assert_eq!(note["data"]["tool"], "shell");
    assert_eq!(note["data"]["command"], "rm -r ~/logs/2024");

    // Asking again for the same call (same trace, step, tool, arguments in any key order)
    // finds the same approval; another step is another approval.
    let (_, again) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(again["id"], id.as_str());
    assert_eq!(pending(&host).await.len(), 1);

    // The agent waits; a person approves; the wait ends with the answer.
    let waiter = {
        let agent = agent.clone();
        let body = shell_request(&trace_id, 30);
        tokio::spawn(async move { ask(&agent, &body).await })
    };
    let (status, decided) = decide(&host, &id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["state"], "approved");
    assert_eq!(decided["decided_by"], "user:owner");
    let (status, waited) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(waited["state"], "approved", "{waited}");
    let decided_event = next_event(&mut events, "approval.decided").await;
    assert_eq!(decided_event["state"], "approved");
    step_approval(&host, &dm, &trace_id, "approved").await;
    assert!(pending(&host).await.is_empty());

    // Decided is decided: a second answer is a conflict and changes nothing.
    let (status, _) = decide(&host, &id, "deny").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, still) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(still["state"], "approved");

    // Deny, with the reason in words.
    let mut denied_request = shell_request(&trace_id, 0);
    denied_request["step"] = json!(1);
    let (_, second) = ask(&agent, &denied_request).await;
    assert_eq!(second["state"], "pending");
    assert_ne!(second["id"], id.as_str());
    let (status, denied) = decide(&host, second["id"].as_str().unwrap(), "deny").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(denied["state"], "denied");
    let (_, told) = ask(&agent, &denied_request).await;
    assert_eq!(told["state"], "denied");
    assert_eq!(told["reason"], "denied by user:owner");
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let host = start_with_env(&[("TAOS_TOOLS__MAX_PENDING_APPROVALS", "2")]).await;
    host.setup_owner().await;
    let (agent, dm, trace_id) = asking_agent(&host, "Careful").await;
    let (other, _) = AgentClient::create(&host, "Other").await;
    let path = format!("/api/openclaw/sessions/{}/approvals", agent.slug);

    // Malformed JSON, unknown fields, args that are no object, a bad tool name.
    let r = agent
        .request(Method::POST, &path)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for body in [
        json!({"trace_id": trace_id, "call_id": "c", "tool": "shell", "args": {}, "step": 0, "extra": 1}),
        json!({"trace_id": trace_id, "call_id": "c", "tool": "shell", "args": [1], "step": 0}),
        json!({"trace_id": trace_id, "call_id": "c", "tool": "Shell!", "args": {}, "step": 0}),
        json!({"trace_id": trace_id, "call_id": "", "tool": "shell", "args": {}, "step": 0}),
    ] {
        let (status, error) = ask(&agent, &body).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {status} {error}"
        );
    }
    // Arguments past the cap for a call that waits (they are stored and shown whole): 413.
    let (status, error) = ask(
        &agent,
        &json!({"trace_id": trace_id, "call_id": "c", "tool": "shell",
            "args": {"command": "x".repeat(65 * 1024)}, "step": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    // A trace never delivered to this agent: 404.
    let (status, _) = ask(&agent, &shell_request("no-such-trace", 0)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Another agent's token on this agent's path: 403; its own path with this trace: 404.
    let r = other
        .request(Method::POST, &path)
        .json(&shell_request(&trace_id, 0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, _) = ask(&other, &shell_request(&trace_id, 0)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(pending(&host).await.is_empty(), "nothing was stored");

    // The cap on pending approvals per agent: 429 past it.
    for step in 0..2 {
        let mut body = shell_request(&trace_id, 0);
        body["step"] = json!(step);
        assert_eq!(ask(&agent, &body).await.0, StatusCode::OK);
    }
    let mut body = shell_request(&trace_id, 0);
    body["step"] = json!(2);
    let (status, error) = ask(&agent, &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{error}");
    assert_eq!(pending(&host).await.len(), 2);

    // People: an unknown id, a bad decision, a user who doesn't see the agent's DM.
    let id = pending(&host).await[0]["id"].as_str().unwrap().to_string();
    let (status, _) = decide(&host, "no-such-approval", "approve").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = decide(&host, &id, "maybe").await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status}"
    );
    host.create_user("guest", "guest password 1");
    let guest = host.session("guest", "guest password 1").await;
    let r = guest
        .request(Method::POST, &format!("/api/approvals/{id}"))
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let seen: Vec<Value> = guest
        .request(Method::GET, "/api/approvals")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seen.is_empty(), "the guest sees no approval: {seen:?}");
    step_approval(&host, &dm, &trace_id, "pending").await;
    assert_eq!(pending(&host).await.len(), 2, "still pending");

    // Bad policies on the agent.
    for patch in [
        json!({"tool_policy": "sometimes"}),
        json!({"tool_overrides": {"Bad Name": "ask"}}),
        json!({"tool_overrides": {"shell": "maybe"}}),
    ] {
        let r = host
            .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == StatusCode::BAD_REQUEST || r.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "{patch}: {}",
            r.status()
        );
    }
    let r = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Too Many", "tool_overrides": (0..33).map(|i| (format!("t{i}"), json!("ask"))).collect::<serde_json::Map<_, _>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let now: Value = host.get(&format!("/api/agents/{}", agent.slug)).await;
    assert_eq!(now["tool_policy"], "ask");
}

#[tokio::test]
async fn an_unanswered_approval_expires_as_denied() {
    let host = start_with_env(&[("TAOS_TOOLS__APPROVAL_TIMEOUT_SECS", "1")]).await;
    host.setup_owner().await;
    let (agent, dm, trace_id) = asking_agent(&host, "Patient").await;
    // The agent's wait outlasts the approval: it ends with the expiry.
    let (status, answer) = ask(&agent, &shell_request(&trace_id, 30)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["state"], "expired", "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("nobody approved it within 1 s"),
        "{answer}"
    );
    step_approval(&host, &dm, &trace_id, "expired").await;
    let id = answer["id"].as_str().unwrap();
    let (status, _) = decide(&host, id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_pending_approval_survives_a_sigkill_and_approving_it_lets_the_turn_finish() {
    let mut host = start().await;
    host.setup_owner().await;
    let (agent, dm, trace_id) = asking_agent(&host, "Durable").await;
    let (_, first) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(first["state"], "pending");
    let id = first["id"].as_str().unwrap().to_string();
    host.kill9().await;

    let host = restart(&host, &[]).await;
    let agent = agent.with_base(&host.agent_url);
    let listed = pending(&host).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    // The agent asks again (its sidecar restarted too, say) and waits; approving ends it.
    let waiter = {
        let agent = agent.clone();
        let body = shell_request(&trace_id, 30);
        tokio::spawn(async move { ask(&agent, &body).await })
    };
    let (status, _) = decide(&host, &id, "approve").await;
    assert_eq!(status, StatusCode::OK);
    let (_, waited) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(waited["state"], "approved");
    assert_eq!(waited["id"], id.as_str());
    let r = agent
        .reply(
            json!({"kind": "tool_result", "trace_id": trace_id, "call_id": "c1", "tool": "shell",
            "result": {"exit_code": 0}, "success": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = agent
        .reply(json!({"kind": "final", "trace_id": trace_id, "content": "Freed 2 GB."}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let done = answer(&host, &dm, &trace_id).await;
    assert_eq!(done["state"], "complete");
    assert_eq!(done["content"], "Freed 2 GB.");
    assert_eq!(
        done["metadata"]["tools"][0]["approval"]["state"],
        "approved"
    );
    assert_eq!(done["metadata"]["tools"][0]["success"], true);
}

#[tokio::test]
async fn approvals_that_expired_while_the_host_was_down_are_settled_at_start() {
    let env = [("TAOS_TOOLS__APPROVAL_TIMEOUT_SECS", "1")];
    let mut host = start_with_env(&env).await;
    host.setup_owner().await;
    let (agent, dm, trace_id) = asking_agent(&host, "Sleeper").await;
    let (_, first) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(first["state"], "pending");
    host.kill9().await;
    // Past its expiry while nothing runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let host = restart(&host, &env).await;
    // Nobody asks about it: the start-up sweep settles it, and the chat says so.
    step_approval(&host, &dm, &trace_id, "expired").await;
    assert!(pending(&host).await.is_empty());
}

/// A host on `host`'s data dir (which lives as long as `host` does).
async fn restart(host: &Host, env: &[(&str, &str)]) -> Host {
    Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    )
    .await
    .expect("the host starts again on its data")
}

#[tokio::test]
async fn rotating_the_agent_token_ends_its_wait_for_approval() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _dm, trace_id) = asking_agent(&host, "Rotated").await;
    let waiter = {
        let agent = agent.clone();
        let body = shell_request(&trace_id, 60);
        tokio::spawn(async move { ask(&agent, &body).await })
    };
    // Pending and waited on before the token goes.
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending(&host).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = host
        .admin(
            Method::POST,
            &format!("/api/agents/{}/token/rotate", agent.slug),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The approval itself is untouched: it belongs to the agent, not to the token.
    assert_eq!(pending(&host).await.len(), 1);
}

#[tokio::test]
async fn the_policy_is_set_at_creation_and_shown_on_the_agent() {
    let host = start().await;
    host.setup_owner().await;
    let created: Value = host
        .post(
            "/api/agents",
            &json!({"name": "Quiet", "tool_policy": "off", "tool_overrides": {"read_file": "auto"}}),
        )
        .await;
    assert_eq!(created["agent"]["tool_policy"], "off");
    assert_eq!(
        created["agent"]["tool_overrides"],
        json!({"read_file": "auto"})
    );
    let (plain, record) = AgentClient::create(&host, "Plain").await;
    assert_eq!(
        record["tool_policy"], "auto",
        "the default is today's behaviour"
    );
    assert_eq!(record["tool_overrides"], json!({}));
    // `auto` answers at once for a delivery of its own.
    let trace_id = say(&host, record["dm_channel_id"].as_str().unwrap(), "hi").await;
    let (status, answer) = ask(&plain, &shell_request(&trace_id, 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["state"], "approved");
}

#[tokio::test]
async fn an_approval_whose_answer_ended_is_cancelled_not_left_to_answer() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, dm, trace_id) = asking_agent(&host, "Quitter").await;
    let (_, first) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(first["state"], "pending");
    // The agent gives up on the turn (it failed, say) while the call still waits.
    let r = agent
        .reply(
            json!({"kind": "error", "trace_id": trace_id, "error": "gave up",
            "error_code": "agent_error"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(pending(&host).await.is_empty(), "nothing left to answer");
    let (status, _) = decide(&host, first["id"].as_str().unwrap(), "approve").await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, told) = ask(&agent, &shell_request(&trace_id, 0)).await;
    assert_eq!(told["state"], "cancelled", "{told}");
    assert_eq!(answer(&host, &dm, &trace_id).await["state"], "error");
}
