//! openclaw mode: the agent is an unmodified openclaw gateway running in the same container,
//! driven through its gateway WebSocket protocol (v4). Why the gateway protocol and not
//! `openclaw acp`: see docs/architecture.md ("openclaw").
//!
//! At start the sidecar writes openclaw's configuration (the agent's LLM gateway as its only
//! model provider, a loopback gateway with a fresh token) and starts `openclaw gateway run` as
//! a supervised child ([`process`]). Each delivery becomes one `chat.send` on the session
//! `agent:main:taos:<channel>[:<thread>]`, so each channel keeps its conversation in
//! openclaw's own session store, across restarts. `chat` events stream the answer; `agent`
//! tool activity (`item` and `command_output` events) becomes the same `tool_call` /
//! `tool_result` replies the tools framework sends; a cancel sends `chat.abort`. openclaw's
//! commands run under its own exec policy (`full`): openclaw 2026.9.6 denies every exec that
//! would need an approval in a run started by `chat.send` ("headless runs cannot wait for
//! interactive exec approval"), so the host's approval flow can't be offered for them yet.

pub mod gateway;
pub mod process;
pub mod setup;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use taos_proto::bridge::UserMessageDelivery;
use tokio::time::Instant;

use crate::config::{Config, RunAs};
use crate::framework::{Framework, ReplySink, RespondError};
use crate::tools::Sandbox;

use gateway::{text, Event, Gateway, GatewayAddr, GatewayError};
use process::{GatewayState, Launch, Supervisor};

/// The state directory's name in the account's home (`OPENCLAW_STATE_DIR`).
pub const STATE_DIR: &str = ".openclaw";
/// Text streamed to the chat is sent at most this often.
const DELTA_FLUSH: Duration = Duration::from_millis(50);
/// The longest answer passed on; openclaw's is cut past it, saying so.
const MAX_ANSWER_CHARS: usize = 200_000;
/// How long a `chat.abort` after a cancel may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Account(#[from] crate::tools::SetupError),
    #[error(transparent)]
    Config(#[from] setup::SetupError),
    #[error("openclaw is not installed at {path}: {error} (set TAOS_OPENCLAW_BIN)")]
    NotInstalled { path: String, error: String },
}

pub struct OpenclawMode {
    addr: GatewayAddr,
    supervisor: Option<Supervisor>,
    turn_time: Duration,
}

impl OpenclawMode {
    /// Writes openclaw's configuration and starts its gateway. Fails when openclaw or the
    /// account it runs as is missing, or the configuration cannot be written.
    pub fn start(config: &Config) -> Result<OpenclawMode, SetupError> {
        let sandbox = Sandbox::new(&config.tools)?;
        let (account, home, user) = sandbox.account();
        let home = match (&config.tools.run_as, &config.tools.workdir) {
            // Bare ids have no passwd home: the workdir is theirs.
            (RunAs::Ids { .. }, Some(dir)) => PathBuf::from(dir),
            _ => PathBuf::from(home),
        };
        let oc = &config.openclaw;
        let not_installed = |path: &Path, e: std::io::Error| SetupError::NotInstalled {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let entry = entry_point(&oc.bin).map_err(|e| not_installed(&oc.bin, e))?;
        std::fs::metadata(&oc.node).map_err(|e| not_installed(&oc.node, e))?;
        let state_dir = home.join(STATE_DIR);
        let token = setup::new_token();
        let settings = setup::Settings {
            llm_base_url: &config.openai_base_url,
            models: &config.models,
            port: oc.port,
            gateway_token: &token,
            workspace: &state_dir.join("workspace"),
            log_file: &state_dir.join("logs/openclaw.log"),
            // See the module's doc: asking is impossible in these runs, so commands run.
            exec_mode: "full",
        };
        let config_path =
            setup::write_config(&home, STATE_DIR, account, &setup::config_json(&settings))?;
        tracing::info!(
            user = %user,
            state = %state_dir.display(),
            port = oc.port,
            openclaw = %entry.display(),
            "openclaw's configuration written"
        );
        let addr = GatewayAddr {
            port: oc.port,
            token,
        };
        let launch = Launch {
            node: oc.node.clone(),
            entry,
            account,
            home,
            user,
            state_dir,
            config_path,
            llm_key: config.openai_api_key.clone(),
        };
        Ok(OpenclawMode {
            supervisor: Some(Supervisor::start(launch, addr.clone())),
            addr,
            turn_time: config.tools.turn_time,
        })
    }

    /// Stops openclaw's gateway; called when the sidecar stops.
    pub async fn stop(mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop().await;
        }
    }

    /// Waits (until `deadline`) for the gateway to be ready and connects to it. `Err`: the
    /// reason, for the chat.
    async fn connect(&self, deadline: Instant) -> Result<Gateway, String> {
        let Some(supervisor) = &self.supervisor else {
            return Err("openclaw is stopping".into());
        };
        let mut state = supervisor.state();
        loop {
            let current = state.borrow_and_update().clone();
            match current {
                GatewayState::Ready => match Gateway::connect(&self.addr).await {
                    Ok(gateway) => return Ok(gateway),
                    // Refused for good (the token, the protocol): asking again won't help.
                    Err(
                        e @ GatewayError::Refused {
                            retryable: false, ..
                        },
                    ) => return Err(e.to_string()),
                    // Still starting its sidecars, or it just went down: wait and ask again.
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "openclaw's gateway not taking connections yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                },
                GatewayState::ConfigInvalid { detail } => {
                    let detail: String = detail
                        .chars()
                        .rev()
                        .take(600)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    return Err(format!(
                        "openclaw refuses its configuration (exit 78), so it is not running: {detail}"
                    ));
                }
                GatewayState::Starting | GatewayState::Restarting { .. } => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("openclaw's supervisor stopped".into()),
                Err(_) => {
                    return Err(match current {
                        GatewayState::Restarting { reason } => {
                            format!("openclaw is not running ({reason}); it is being started again")
                        }
                        _ => "openclaw is still starting; try again in a minute".into(),
                    })
                }
            }
        }
    }
}

/// openclaw's `openclaw.mjs`, found from its launcher: npm's `bin/openclaw` is a link to it
/// (the host's install); the image's is a wrapper script next to the same `lib/` tree. The
/// sidecar runs the entry with its node itself, so the child is node, not a shell.
pub fn entry_point(bin: &Path) -> std::io::Result<PathBuf> {
    let resolved = std::fs::canonicalize(bin)?;
    if resolved
        .extension()
        .is_some_and(|e| e == "mjs" || e == "js")
    {
        return Ok(resolved);
    }
    let prefix = bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"));
    let entry = prefix.join("lib/node_modules/openclaw/openclaw.mjs");
    std::fs::metadata(&entry).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "neither a link to openclaw.mjs nor next to {}: {e}",
                entry.display()
            ),
        )
    })?;
    Ok(entry)
}

/// The openclaw session of a channel (or of a thread in it). Ids are the host's; anything
/// outside `[A-Za-z0-9_-]` is replaced so the key stays one key.
pub fn session_key(channel_id: &str, thread_id: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .take(128)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    match thread_id {
        Some(thread) => format!("agent:main:taos:{}:{}", clean(channel_id), clean(thread)),
        None => format!("agent:main:taos:{}", clean(channel_id)),
    }
}

/// Sends `chat.abort` for a run when dropped while armed: the runner drops the answer on a
/// cancel, and openclaw's run must stop too (it would otherwise go on, spending tokens).
struct AbortOnDrop {
    addr: GatewayAddr,
    session_key: String,
    run_id: String,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let addr = self.addr.clone();
        let params = json!({"sessionKey": self.session_key, "runId": self.run_id});
        let run_id = self.run_id.clone();
        tokio::spawn(async move {
            let abort = async {
                let mut gateway = Gateway::connect(&addr).await?;
                let result = gateway.request("chat.abort", params).await;
                gateway.close().await;
                result
            };
            match tokio::time::timeout(ABORT_TIMEOUT, abort).await {
                Ok(Ok(_)) => tracing::info!(run_id, "openclaw's run aborted"),
                Ok(Err(e)) => tracing::warn!(run_id, error = %e, "could not abort openclaw's run"),
                Err(_) => tracing::warn!(run_id, "timed out aborting openclaw's run"),
            }
        });
    }
}

impl Framework for OpenclawMode {
    async fn respond(
        &self,
        delivery: &UserMessageDelivery,
        replies: &ReplySink,
    ) -> Result<(), RespondError> {
        let deadline = Instant::now() + self.turn_time;
        let mut gateway = match self.connect(deadline).await {
            Ok(gateway) => gateway,
            Err(reason) => return fail(replies, "agent_error", &reason).await,
        };
        let session_key = session_key(&delivery.channel_id, delivery.thread_id.as_deref());
        let params = json!({
            "sessionKey": session_key,
            "message": delivery.text,
            // The trace id: a delivery the host sends again is the same message to openclaw.
            "idempotencyKey": delivery.trace_id,
            // What people write is text for the model, never openclaw's slash commands.
            "suppressCommandInterpretation": true,
            "timeoutMs": u64::try_from(self.turn_time.as_millis()).unwrap_or(u64::MAX),
        });
        let started = match gateway.request("chat.send", params).await {
            Ok(started) => started,
            Err(e) => return fail(replies, "agent_error", &e.to_string()).await,
        };
        let run_id = text(&started["runId"], 200);
        let mut abort = AbortOnDrop {
            addr: self.addr.clone(),
            session_key: session_key.clone(),
            run_id: run_id.clone(),
            armed: true,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(
            left,
            follow_run(&mut gateway, &session_key, &run_id, replies),
        )
        .await;
        let result = match outcome {
            Ok(Ok(Ended::Settled)) => {
                abort.armed = false;
                Ok(())
            }
            Ok(Ok(Ended::Failed { code, reason })) => {
                abort.armed = false;
                fail(replies, code, &reason).await
            }
            Ok(Err(FollowError::Bridge(e))) => Err(e),
            Ok(Err(FollowError::Gateway(e))) => {
                let reason = match e {
                    GatewayError::Closed => {
                        "openclaw stopped in the middle of the answer; it is being started again"
                            .to_string()
                    }
                    e => e.to_string(),
                };
                // Leave `abort` armed: if openclaw is still there, the run must not go on.
                fail(replies, "interrupted", &reason).await
            }
            Err(_) => {
                let reason = format!(
                    "stopped after {} s without a final answer (the time limit per message)",
                    self.turn_time.as_secs()
                );
                fail(replies, crate::tools::TURN_LIMIT, &reason).await
            }
        };
        gateway.close().await;
        result
    }
}

async fn fail(replies: &ReplySink, code: &str, reason: &str) -> Result<(), RespondError> {
    let result = replies.fail(code, reason).await;
    replies.trace_error("openclaw", reason, None).await;
    result.map_err(RespondError::from)
}

enum Ended {
    /// A final reply was accepted.
    Settled,
    Failed {
        code: &'static str,
        reason: String,
    },
}

enum FollowError {
    Bridge(RespondError),
    Gateway(GatewayError),
}

impl From<crate::bridge::BridgeError> for FollowError {
    fn from(e: crate::bridge::BridgeError) -> Self {
        FollowError::Bridge(e.into())
    }
}

/// Follows one run's events until it ends, streaming its text and tool activity.
async fn follow_run(
    gateway: &mut Gateway,
    session_key: &str,
    run_id: &str,
    replies: &ReplySink,
) -> Result<Ended, FollowError> {
    let mut streamed = String::new();
    let mut pending = String::new();
    let mut last_flush: Option<Instant> = None;
    let mut steps = ToolSteps::default();
    loop {
        let Event { name, payload } = gateway.next_event().await.map_err(FollowError::Gateway)?;
        match name.as_str() {
            "chat" => {
                if payload["sessionKey"] != session_key
                    || (payload["runId"].is_string() && payload["runId"] != run_id)
                {
                    continue;
                }
                match payload["state"].as_str() {
                    Some("delta") => {
                        // A replacement can't be taken back from the chat; the final text
                        // settles it.
                        if payload["replace"] == true {
                            continue;
                        }
                        let piece = text(&payload["deltaText"], MAX_ANSWER_CHARS);
                        if streamed.len() + piece.len() > MAX_ANSWER_CHARS {
                            continue;
                        }
                        streamed.push_str(&piece);
                        pending.push_str(&piece);
                        if last_flush.is_none_or(|t| t.elapsed() >= DELTA_FLUSH) {
                            replies.delta(&pending).await?;
                            pending.clear();
                            last_flush = Some(Instant::now());
                        }
                    }
                    Some("final") => {
                        steps.flush(replies).await?;
                        let mut answer = message_text(&payload["message"]);
                        if answer.trim().is_empty() {
                            answer = streamed.clone();
                        }
                        if answer.trim().is_empty() {
                            return Ok(Ended::Failed {
                                code: "empty_reply",
                                reason: "openclaw finished without an answer".into(),
                            });
                        }
                        replies.delta(&pending).await?;
                        replies.finish(&cut(answer)).await?;
                        return Ok(Ended::Settled);
                    }
                    Some("aborted") => {
                        steps.flush(replies).await?;
                        return Ok(Ended::Failed {
                            code: "cancelled",
                            reason: "openclaw stopped the run".into(),
                        });
                    }
                    Some("error") => {
                        steps.flush(replies).await?;
                        let message = text(&payload["errorMessage"], 500);
                        let status = payload["errorDetail"]["httpStatus"].as_u64();
                        let code = match status {
                            Some(401) => "llm_key_rejected",
                            Some(_) => "provider_error",
                            None => "agent_error",
                        };
                        let reason = if message.is_empty() {
                            "openclaw's run failed".to_string()
                        } else {
                            format!("openclaw's run failed: {message}")
                        };
                        return Ok(Ended::Failed { code, reason });
                    }
                    _ => {}
                }
            }
            "agent" => {
                tracing::debug!(
                    run = %text(&payload["runId"], 100),
                    stream = %text(&payload["stream"], 50),
                    phase = %text(&payload["data"]["phase"], 50),
                    title = %text(&payload["data"]["title"], 200),
                    meta = %payload["data"]["meta"].to_string().chars().take(200).collect::<String>(),
                    "openclaw agent event"
                );
                if payload["runId"] != run_id {
                    continue;
                }
                let stream = text(&payload["stream"], 50);
                steps.event(&stream, &payload["data"], replies).await?;
            }
            "shutdown" => {
                tracing::info!("openclaw's gateway announced a shutdown");
            }
            other => tracing::debug!(event = other, "openclaw event"),
        }
    }
}

/// openclaw's tool activity in one run, mapped to the tool replies the tools framework sends
/// (`tool_call` when a tool starts, `tool_result` when it ends), so the chat and the traces
/// show openclaw's tools the same way. openclaw reports a tool as an `item` (start / end, with
/// a title and status) and, for commands, a `command_output` event after the item ends (the
/// output and exit code): a command's result waits for it, or for the run's end.
#[derive(Default)]
struct ToolSteps {
    /// By openclaw's call id: the tool's name and its index in the turn.
    calls: HashMap<String, (String, u32)>,
    /// Ended commands whose output has not come yet: the result so far.
    waiting: HashMap<String, (Value, bool)>,
}

const MAX_CALLS: usize = 1000;

impl ToolSteps {
    async fn event(
        &mut self,
        stream: &str,
        data: &Value,
        replies: &ReplySink,
    ) -> Result<(), FollowError> {
        let call_id = text(&data["toolCallId"], 200);
        if call_id.is_empty() {
            return Ok(());
        }
        match (stream, data["phase"].as_str()) {
            ("item" | "tool", Some("start")) => {
                if self.calls.len() >= MAX_CALLS || self.calls.contains_key(&call_id) {
                    return Ok(());
                }
                let tool = text(&data["name"], 100);
                let index = u32::try_from(self.calls.len()).unwrap_or(u32::MAX);
                self.calls.insert(call_id.clone(), (tool.clone(), index));
                let mut args = serde_json::Map::new();
                for (key, field) in [("title", "title"), ("meta", "meta"), ("args", "args")] {
                    if !data[field].is_null() {
                        args.insert(key.to_string(), data[field].clone());
                    }
                }
                replies
                    .tool_call(&call_id, &tool, crate::tools::fit(Value::Object(args)))
                    .await?;
            }
            ("item" | "tool", Some("end" | "result" | "error")) => {
                let Some((tool, _)) = self.calls.get(&call_id).cloned() else {
                    return Ok(());
                };
                let status = text(&data["status"], 50);
                let success = data["error"].is_null()
                    && data["isError"] != true
                    && !matches!(status.as_str(), "error" | "failed" | "denied");
                let mut result = serde_json::Map::new();
                for field in ["status", "error", "result"] {
                    if !data[field].is_null() {
                        result.insert(field.to_string(), data[field].clone());
                    }
                }
                if data["commandBearing"] == true {
                    self.waiting
                        .insert(call_id, (Value::Object(result), success));
                } else {
                    let result = crate::tools::fit(Value::Object(result));
                    replies
                        .tool_result(&call_id, &tool, result, success)
                        .await?;
                }
            }
            ("command_output", Some("end")) => {
                let Some((tool, _)) = self.calls.get(&call_id).cloned() else {
                    return Ok(());
                };
                let (mut result, mut success) =
                    self.waiting.remove(&call_id).unwrap_or((json!({}), true));
                for (key, field) in [
                    ("output", "output"),
                    ("exit_code", "exitCode"),
                    ("cwd", "cwd"),
                ] {
                    if !data[field].is_null() {
                        result[key] = data[field].clone();
                    }
                }
                if data["exitCode"].as_i64().is_some_and(|code| code != 0) {
                    success = false;
                }
                let result = crate::tools::fit(result);
                replies
                    .tool_result(&call_id, &tool, result, success)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends the results still waiting for a command's output (the run ended without it).
    async fn flush(&mut self, replies: &ReplySink) -> Result<(), FollowError> {
        for (call_id, (result, success)) in std::mem::take(&mut self.waiting) {
            if let Some((tool, _)) = self.calls.get(&call_id) {
                let result = crate::tools::fit(result);
                replies.tool_result(&call_id, tool, result, success).await?;
            }
        }
        Ok(())
    }
}

/// The text of an assistant message: its `content` string, or its text parts joined.
fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.chars().take(MAX_ANSWER_CHARS).collect(),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                if part["type"] == "text" {
                    out.push_str(&text(&part["text"], MAX_ANSWER_CHARS));
                    if out.len() > MAX_ANSWER_CHARS {
                        break;
                    }
                }
            }
            out
        }
        _ => String::new(),
    }
}

fn cut(mut answer: String) -> String {
    if answer.chars().count() > MAX_ANSWER_CHARS {
        answer = answer.chars().take(MAX_ANSWER_CHARS).collect();
        answer.push_str("\n[... cut: the answer was longer than the chat takes ...]");
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_per_channel_and_thread_and_stay_one_key() {
        assert_eq!(session_key("ch-1", None), "agent:main:taos:ch-1");
        assert_eq!(session_key("ch-1", Some("t_2")), "agent:main:taos:ch-1:t_2");
        assert_eq!(session_key("a:b/c", None), "agent:main:taos:a_b_c");
    }

    #[test]
    fn the_entry_is_found_from_an_npm_link_or_the_images_wrapper() {
        let root = std::env::temp_dir().join(format!("taos-oc-entry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let lib = root.join("lib/node_modules/openclaw");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(lib.join("openclaw.mjs"), "").unwrap();
        let entry = std::fs::canonicalize(lib.join("openclaw.mjs")).unwrap();
        // npm's layout: a link.
        let bin = root.join("bin/openclaw");
        std::os::unix::fs::symlink("../lib/node_modules/openclaw/openclaw.mjs", &bin).unwrap();
        assert_eq!(entry_point(&bin).unwrap(), entry);
        // The image's: a wrapper script.
        std::fs::remove_file(&bin).unwrap();
        std::fs::write(&bin, "#!/bin/sh\nexec node openclaw.mjs \"$@\"\n").unwrap();
        assert_eq!(
            std::fs::canonicalize(entry_point(&bin).unwrap()).unwrap(),
            entry
        );
        // Neither: said so.
        std::fs::remove_file(lib.join("openclaw.mjs")).unwrap();
        assert!(entry_point(&bin).is_err());
        assert!(entry_point(&root.join("bin/missing")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn message_text_joins_text_parts_only() {
        let message = json!({"content": [{"type": "text", "text": "Hello "},
            {"type": "image", "url": "x"}, {"type": "text", "text": "there"}]});
        assert_eq!(message_text(&message), "Hello there");
        assert_eq!(message_text(&json!({"content": "plain"})), "plain");
        assert_eq!(message_text(&json!(null)), "");
    }
}
