//! A stub Agent Client Protocol agent for the sidecar's `acp` tests, built on the SDK's agent
//! side and spoken to over stdio like any real one. What it does is scripted by tags in the
//! prompt's text:
//!
//! - `#chunks`: answers in three message chunks, "Hello world";
//! - `#thought`: thinks aloud first (thought chunks "thinking hard");
//! - `#tool`: runs a tool: a call (`execute`, "List files"), in progress, then completed;
//! - `#permission`: asks permission for a call (`rm`, "Remove logs"), then says "allowed" or
//!   "rejected" by the option picked;
//! - `#hang`: says "working", then waits for `session/cancel` and ends the prompt cancelled;
//! - `#crash`: says "about to crash", then exits with status 3 mid-turn;
//! - `#flood`: sends 500 one-character chunks;
//! - anything else: answers "stub heard: <text>".
//!
//! It writes what it was asked (initialize, sessions made and loaded, prompts, cancels, the
//! permission option it got, its account and environment names) as lines to the file named by
//! `STUB_RECORD`, which the tests read. `STUB_NO_LOAD=1` makes it an agent without
//! `loadSession`. A session it made (the record file says so) can be loaded by a later
//! process, as a real agent's stored sessions can: it replays a line of history first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test helper fails by panicking"
)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, Implementation,
    InitializeRequest, InitializeResponse, LoadSessionRequest, LoadSessionResponse,
    NewSessionRequest, NewSessionResponse, PermissionOption, PermissionOptionKind, PromptRequest,
    PromptResponse, RequestPermissionOutcome, RequestPermissionRequest, SessionId,
    SessionNotification, SessionUpdate, StopReason, TextContent, ToolCall, ToolCallContent,
    ToolCallStatus, ToolCallUpdate, ToolCallUpdateFields, ToolKind,
};
use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Agent, Client, Lines};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

fn record(line: &str) {
    let Ok(path) = std::env::var("STUB_RECORD") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the record file");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("record");
}

fn recorded() -> String {
    std::env::var("STUB_RECORD")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

fn text(text: &str) -> ContentBlock {
    ContentBlock::Text(TextContent::new(text))
}

fn say(cx: &ConnectionTo<Client>, session: &SessionId, update: SessionUpdate) {
    cx.send_notification(SessionNotification::new(session.clone(), update))
        .expect("send an update");
}

fn chunk(cx: &ConnectionTo<Client>, session: &SessionId, words: &str) {
    say(
        cx,
        session,
        SessionUpdate::AgentMessageChunk(ContentChunk::new(text(words))),
    );
}

type Cancels = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

fn cancel_signal(cancels: &Cancels, session: &SessionId) -> Arc<Notify> {
    cancels
        .lock()
        .unwrap()
        .entry(session.to_string())
        .or_default()
        .clone()
}

async fn prompt(cx: ConnectionTo<Client>, request: PromptRequest, cancels: Cancels) -> StopReason {
    let session = request.session_id.clone();
    let asked: String = request
        .prompt
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect();
    record(&format!("prompt {session} {asked}"));
    let mut tagged = false;
    if asked.contains("#thought") {
        tagged = true;
        for words in ["thinking", " hard"] {
            say(
                &cx,
                &session,
                SessionUpdate::AgentThoughtChunk(ContentChunk::new(text(words))),
            );
        }
    }
    if asked.contains("#tool") {
        tagged = true;
        let call = ToolCall::new("call-1", "List files")
            .kind(ToolKind::Execute)
            .raw_input(json!({"command": ["ls"]}));
        say(&cx, &session, SessionUpdate::ToolCall(call));
        say(
            &cx,
            &session,
            SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                "call-1",
                ToolCallUpdateFields::new().status(ToolCallStatus::InProgress),
            )),
        );
        say(
            &cx,
            &session,
            SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                "call-1",
                ToolCallUpdateFields::new()
                    .status(ToolCallStatus::Completed)
                    .raw_output(json!({"stdout": "a\nb\n"}))
                    .content(vec![ToolCallContent::from(text("a\nb"))]),
            )),
        );
    }
    if asked.contains("#permission") {
        tagged = true;
        let call = ToolCall::new("perm-1", "Remove logs")
            .name("rm")
            .kind(ToolKind::Delete)
            .raw_input(json!({"path": "logs"}));
        say(&cx, &session, SessionUpdate::ToolCall(call.clone()));
        let options = vec![
            PermissionOption::new("allow-always", "Always", PermissionOptionKind::AllowAlways),
            PermissionOption::new("allow-once", "Once", PermissionOptionKind::AllowOnce),
            PermissionOption::new("reject-once", "No", PermissionOptionKind::RejectOnce),
        ];
        let answer = cx
            .send_request(RequestPermissionRequest::new(
                session.clone(),
                ToolCallUpdate::from(call),
                options,
            ))
            .block_task()
            .await;
        let picked = match answer.map(|a| a.outcome) {
            Ok(RequestPermissionOutcome::Selected(s)) => s.option_id.to_string(),
            Ok(_) => "cancelled".to_string(),
            Err(e) => format!("error {e}"),
        };
        record(&format!("permission {picked}"));
        let allowed = picked.starts_with("allow");
        say(
            &cx,
            &session,
            SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                "perm-1",
                ToolCallUpdateFields::new().status(if allowed {
                    ToolCallStatus::Completed
                } else {
                    ToolCallStatus::Failed
                }),
            )),
        );
        chunk(&cx, &session, if allowed { "allowed" } else { "rejected" });
    }
    if asked.contains("#chunks") {
        tagged = true;
        for words in ["Hel", "lo ", "world"] {
            chunk(&cx, &session, words);
        }
    }
    if asked.contains("#flood") {
        tagged = true;
        for _ in 0..500 {
            chunk(&cx, &session, "x");
        }
    }
    if asked.contains("#crash") {
        chunk(&cx, &session, "about to crash");
        tokio::time::sleep(Duration::from_millis(300)).await;
        record("crash");
        std::process::exit(3);
    }
    if asked.contains("#hang") {
        let cancelled = cancel_signal(&cancels, &session);
        chunk(&cx, &session, "working");
        cancelled.notified().await;
        record(&format!("prompt-ended-cancelled {session}"));
        return StopReason::Cancelled;
    }
    if !tagged {
        chunk(&cx, &session, &format!("stub heard: {asked}"));
    }
    StopReason::EndTurn
}

fn whoami() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let mut names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    names.sort();
    format!(
        "start uid={uid} cwd={cwd} home={} model_key={} env={}",
        std::env::var("HOME").unwrap_or_default(),
        std::env::var("STUB_MODEL_KEY").unwrap_or_default(),
        names.join(",")
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    record(&whoami());
    let load = std::env::var("STUB_NO_LOAD").as_deref() != Ok("1");
    let cancels: Cancels = Arc::default();
    let count = Arc::new(Mutex::new(0u32));

    let stdin = BufReader::new(tokio::io::stdin());
    let incoming = futures::stream::unfold(stdin, |mut stdin| async move {
        let mut line = String::new();
        match stdin.read_line(&mut line).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(line.trim_end().to_string()), stdin)),
            Err(e) => Some((Err(e), stdin)),
        }
    });
    let outgoing = futures::sink::unfold(tokio::io::stdout(), |mut out, line: String| async move {
        out.write_all(line.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
        Ok::<_, std::io::Error>(out)
    });

    let prompt_cancels = cancels.clone();
    let result = Agent
        .v1()
        .name("taos-acp-stub")
        .on_receive_request(
            async move |req: InitializeRequest, responder, _cx| {
                record("initialize");
                responder.respond(
                    InitializeResponse::new(req.protocol_version)
                        .agent_capabilities(AgentCapabilities::new().load_session(load))
                        .agent_info(Implementation::new("taos-acp-stub", "1")),
                )
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |_req: NewSessionRequest, responder, _cx| {
                let n = {
                    let mut count = count.lock().unwrap();
                    *count += 1;
                    *count
                };
                let id = format!("stub-{}-{n}", std::process::id());
                record(&format!("new {id}"));
                responder.respond(NewSessionResponse::new(id))
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: LoadSessionRequest, responder, cx| {
                let id = req.session_id;
                if !recorded().lines().any(|l| l == format!("new {id}")) {
                    return responder.respond_with_error(
                        agent_client_protocol::Error::invalid_params()
                            .data(json!("no such session")),
                    );
                }
                record(&format!("load {id}"));
                // History is replayed before the load's answer, as ACP says.
                say(
                    &cx,
                    &id,
                    SessionUpdate::UserMessageChunk(ContentChunk::new(text("an old question"))),
                );
                chunk(&cx, &id, "REPLAYED HISTORY");
                responder.respond(LoadSessionResponse::new())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: PromptRequest, responder, cx| {
                let cancels = prompt_cancels.clone();
                cx.spawn({
                    let cx = cx.clone();
                    async move {
                        let stop = prompt(cx, req, cancels).await;
                        responder.respond(PromptResponse::new(stop))
                    }
                })
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_notification(
            async move |note: CancelNotification, _cx| {
                record(&format!("cancel {}", note.session_id));
                cancel_signal(&cancels, &note.session_id).notify_one();
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_to(Lines::new(outgoing, incoming))
        .await;
    if let Err(e) = result {
        eprintln!("taos-acp-stub: {e}");
    }
}
