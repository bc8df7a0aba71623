//! `acp` mode: the sidecar drives an Agent Client Protocol agent (any program that speaks ACP
//! over stdio, named by the framework's manifest) and relays between it and the chat.
//!
//! - The agent runs as a child process of the sidecar, as the tools account, in its
//!   workspace, with an environment built from nothing plus the manifest's (see `process`).
//!   It is started on the first delivery, and again (after a growing pause) on the delivery
//!   after it crashed.
//! - One ACP session per conversation (a channel, or a thread in it). The map is kept in the
//!   sidecar's state folder (see `sessions`); after a restart a known session is loaded with
//!   `session/load` when the agent can, else a new one starts (and the log says so).
//! - During a turn, `session/update`s become the answer's deltas (message chunks), reasoning
//!   traces (thought chunks) and tool steps (tool calls and their updates, in the `tools`
//!   framework's shape); `session/request_permission` goes through the host's approvals.
//!   A cancel from the chat (the turn's future is dropped) sends `session/cancel`.
//! - Limits, checked before the work: a turn's wall time, the bytes and updates the agent may
//!   send in one turn, the longest message, the answer's length. Passing one ends the turn
//!   visibly, with the reason.

pub mod mapping;
pub mod process;
pub mod sessions;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use agent_client_protocol::v1::schema::{
    CancelNotification, ContentBlock, LoadSessionRequest, NewSessionRequest, PromptRequest,
    PromptResponse, RequestPermissionOutcome, RequestPermissionRequest, RequestPermissionResponse,
    SelectedPermissionOutcome, SessionId, SessionUpdate, StopReason, TextContent, ToolCall,
    ToolCallUpdate,
};
use agent_client_protocol::v1::Responder;
use serde_json::{json, Value};
use taos_proto::bridge::UserMessageDelivery;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::bridge::BridgeError;
use crate::config::{AcpConfig, ToolsConfig};
use crate::framework::{Framework, ReplySink, RespondError};
use crate::tools::exec::{Sandbox, SetupError};
use crate::tools::{fit, kit, TURN_LIMIT};

use process::{Asked, Incoming, Placeholders, Process};
use sessions::{conversation_key, SessionStore};

/// How long a session request (`session/new`, `session/load`) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// After a cancel or a time limit, how long the agent has to end the prompt before it is
/// stopped.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Restarts after a crash wait this long, doubling per crash in a row, up to the max.
const RESTART_START: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// How long an agent the sidecar killed may take to be gone (SIGKILL: normally at once).
const ENDING_WAIT: Duration = Duration::from_secs(10);
/// The answer is kept under the host's message limit, with room for the note that it was cut.
const MAX_ANSWER_CHARS: usize = taos_proto::chat::MAX_CONTENT_CHARS - 200;
/// Thoughts are sent as one reasoning trace per run of thought chunks, cut at this size.
const MAX_REASONING_CHARS: usize = 16 * 1024;

pub struct AcpMode {
    config: AcpConfig,
    sandbox: Sandbox,
    placeholders: Placeholders,
    state: Mutex<State>,
}

struct State {
    process: Option<Live>,
    /// The last process ended by the sidecar, until it is gone: its watcher's last act is to
    /// kill every process of the account, so a new one started before then could be killed
    /// with it.
    ending: Option<watch::Receiver<Option<String>>>,
    sessions: SessionStore,
    /// Crashes in a row, and when the last one was.
    failures: u32,
    failed_at: Option<Instant>,
}

/// A running agent and what this process of it knows.
struct Live {
    process: Process,
    /// Sessions made or loaded in this process: usable as they are.
    ready: HashSet<String>,
    /// Sessions whose last prompt may still be running (after a cancel): `true` once it ended.
    prompts: HashMap<String, watch::Receiver<bool>>,
}

impl AcpMode {
    pub fn new(
        config: AcpConfig,
        tools: &ToolsConfig,
        placeholders: Placeholders,
    ) -> Result<AcpMode, SetupError> {
        let sandbox = Sandbox::new(tools)?;
        tracing::info!(
            command = ?config.command,
            account = %sandbox.describe(),
            workdir = %sandbox.workdir().display(),
            state = %config.state_dir.display(),
            turn_secs = config.turn_time.as_secs(),
            "the ACP agent runs as"
        );
        let sessions = SessionStore::open(&config.state_dir, &config.command);
        Ok(AcpMode {
            config,
            sandbox,
            placeholders,
            state: Mutex::new(State {
                process: None,
                ending: None,
                sessions,
                failures: 0,
                failed_at: None,
            }),
        })
    }

    fn workdir(&self) -> PathBuf {
        self.sandbox.workdir().to_path_buf()
    }

    /// The running agent, started (after the pause a recent crash asks for) if need be.
    async fn live<'a>(&self, state: &'a mut State) -> Result<&'a mut Live, String> {
        if let Some(live) = &state.process {
            if live.process.exited.borrow().is_some() {
                tracing::warn!("the ACP agent exited between messages; starting it again");
                end_process(state);
                state.failures += 1;
                state.failed_at = Some(Instant::now());
            }
        }
        if state.process.is_none() {
            if let Some(at) = state.failed_at {
                let pause = restart_pause(state.failures);
                let left = pause.saturating_sub(at.elapsed());
                if !left.is_zero() {
                    tracing::info!(failures = state.failures, pause = ?left, "waiting before starting the ACP agent again");
                    tokio::time::sleep(left).await;
                }
            }
            wait_ended(state).await;
            match process::start(&self.config, &self.sandbox, &self.placeholders).await {
                Ok(process) => {
                    state.process = Some(Live {
                        process,
                        ready: HashSet::new(),
                        prompts: HashMap::new(),
                    });
                }
                Err(e) => {
                    state.failures += 1;
                    state.failed_at = Some(Instant::now());
                    return Err(e.to_string());
                }
            }
        }
        state
            .process
            .as_mut()
            .ok_or_else(|| "the agent is not running".to_string())
    }

    /// The conversation's session in the running agent: the one it already has, the one the
    /// map names (loaded), or a new one.
    async fn session(&self, state: &mut State, key: &str) -> Result<SessionId, String> {
        let known = state.sessions.get(key).map(str::to_string);
        let workdir = self.workdir();
        let live = self.live(state).await?;
        if let Some(id) = &known {
            if live.ready.contains(id) {
                return Ok(SessionId::new(id.as_str()));
            }
            if live.process.load_session {
                let load = LoadSessionRequest::new(SessionId::new(id.as_str()), workdir.clone());
                match request(live, load).await {
                    Ok(_) => {
                        tracing::info!(conversation = key, session = %id, "loaded the ACP session");
                        // What it replayed while loading is history, already in the chat.
                        drain(live);
                        live.ready.insert(id.clone());
                        return Ok(SessionId::new(id.as_str()));
                    }
                    Err(e) => {
                        tracing::warn!(conversation = key, session = %id, error = %e, "the agent could not load the session; starting a new one");
                        drain(live);
                    }
                }
            } else {
                tracing::info!(conversation = key, agent = %live.process.agent_name, "the agent can't load sessions (no loadSession capability); starting a new one, without the earlier conversation");
            }
        }
        let made = request(live, NewSessionRequest::new(workdir)).await?;
        let id = made.session_id.to_string();
        live.ready.insert(id.clone());
        state.sessions.put(key, &id);
        tracing::info!(conversation = key, session = %id, "started an ACP session");
        Ok(made.session_id)
    }

    /// Ends the running agent (it crashed, or broke a limit): the next delivery starts it
    /// again after a pause.
    fn stop(&self, state: &mut State) {
        end_process(state);
        state.failures += 1;
        state.failed_at = Some(Instant::now());
    }

    /// Stops the agent for good (the sidecar is stopping) and waits until it and everything
    /// of its account are gone, so nothing of it outlives the sidecar.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        end_process(&mut state);
        wait_ended(&mut state).await;
    }
}

/// Drops the running agent (which kills it and its account's processes, in its watcher task)
/// and remembers it until it is gone.
fn end_process(state: &mut State) {
    if let Some(live) = state.process.take() {
        state.ending = Some(live.process.exited);
    }
}

/// Waits (bounded) until the agent last ended is gone.
async fn wait_ended(state: &mut State) {
    if let Some(mut ending) = state.ending.take() {
        if tokio::time::timeout(ENDING_WAIT, ending.wait_for(|e| e.is_some()))
            .await
            .is_err()
        {
            tracing::warn!(
                "the ACP agent the sidecar stopped has not ended after {} s",
                ENDING_WAIT.as_secs()
            );
        }
    }
}

/// The pause before starting the agent again after `failures` crashes in a row.
fn restart_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RESTART_START * 2u32.saturating_pow(doublings)).min(RESTART_MAX)
}

/// Sends a session request, throwing away (as history) updates that come meanwhile.
async fn request<R>(live: &mut Live, req: R) -> Result<R::Response, String>
where
    R: agent_client_protocol::JsonRpcRequest,
{
    let sent = live.process.conn.send_request(req).block_task();
    tokio::pin!(sent);
    let deadline = tokio::time::sleep(SESSION_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut sent => return result.map_err(|e| e.to_string()),
            Some(incoming) = live.process.events.recv() => drop_incoming(incoming),
            _ = &mut deadline => return Err(format!("no answer within {} s", SESSION_TIMEOUT.as_secs())),
        }
    }
}

/// Throws away what the agent sent that no turn takes (a permission request is refused).
fn drain(live: &mut Live) {
    while let Ok(incoming) = live.process.events.try_recv() {
        drop_incoming(incoming);
    }
}

fn drop_incoming(incoming: Incoming) {
    if let Incoming::Permission(asked) = incoming {
        let _ = asked.responder.respond(RequestPermissionResponse::new(
            RequestPermissionOutcome::Cancelled,
        ));
    }
}

/// How a turn ended, when it did not end with the agent's answer.
enum Ended {
    /// The prompt returned.
    Answered(Result<PromptResponse, String>),
    /// The process ended (its status in words).
    Exited(String),
    /// A limit was passed (the reason in words); the agent is stopped.
    Cut(String),
    /// The turn's time ran out.
    TimeUp,
}

/// Sends `session/cancel` if the turn is dropped part way (a cancel from the chat, or the
/// sidecar stopping), and answers a permission request left waiting as cancelled, as ACP asks.
struct CancelOnDrop {
    conn: agent_client_protocol::v1::ConnectionTo<agent_client_protocol::Agent>,
    session: SessionId,
    armed: bool,
    waiting: Option<Responder<RequestPermissionResponse>>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(responder) = self.waiting.take() {
            let _ = responder.respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Cancelled,
            ));
        }
        if self.armed {
            tracing::info!(session = %self.session, "cancelling the ACP prompt");
            if let Err(e) = self
                .conn
                .send_notification(CancelNotification::new(self.session.clone()))
            {
                tracing::warn!(error = %e, "could not send session/cancel");
            }
        }
    }
}

/// One tool call as the turn has shown it so far.
struct Call {
    tool: String,
    index: u32,
    title: String,
    kind: agent_client_protocol::v1::schema::ToolKind,
    raw_input: Option<Value>,
    /// Its result was shown (or it was refused): later updates change nothing.
    done: bool,
}

/// What a turn has gathered: the answer's text, thoughts not yet sent, the tool calls.
struct Turn<'r> {
    replies: &'r ReplySink,
    text: String,
    pending: String,
    thoughts: String,
    cut: bool,
    calls: HashMap<String, Call>,
    order: Vec<String>,
    updates: u32,
    max_updates: u32,
}

impl<'r> Turn<'r> {
    fn new(replies: &'r ReplySink, max_updates: u32) -> Self {
        Turn {
            replies,
            text: String::new(),
            pending: String::new(),
            thoughts: String::new(),
            cut: false,
            calls: HashMap::new(),
            order: Vec::new(),
            updates: 0,
            max_updates,
        }
    }

    /// Takes one update. `Err(reason)`: a limit was passed.
    async fn update(&mut self, update: SessionUpdate) -> Result<Result<(), String>, BridgeError> {
        self.updates += 1;
        if self.updates > self.max_updates {
            return Ok(Err(format!(
                "the agent sent more than {} updates during one turn",
                self.max_updates
            )));
        }
        if !matches!(update, SessionUpdate::AgentThoughtChunk(_)) {
            self.flush_thoughts().await?;
        }
        match update {
            SessionUpdate::AgentMessageChunk(chunk) => {
                if let Some(text) = mapping::block_text(&chunk.content) {
                    self.say(&text);
                }
            }
            SessionUpdate::AgentThoughtChunk(chunk) => {
                if let Some(text) = mapping::block_text(&chunk.content) {
                    let room = MAX_REASONING_CHARS.saturating_sub(self.thoughts.chars().count());
                    self.thoughts.push_str(mapping::cut_chars(&text, room));
                    if room <= text.chars().count() {
                        self.flush_thoughts().await?;
                    }
                }
            }
            SessionUpdate::ToolCall(call) => self.tool_call(call).await?,
            SessionUpdate::ToolCallUpdate(update) => self.tool_update(update).await?,
            other => {
                tracing::debug!(update = ?std::mem::discriminant(&other), "an ACP update with nothing to show")
            }
        }
        Ok(Ok(()))
    }

    fn say(&mut self, text: &str) {
        if self.cut {
            return;
        }
        let room = MAX_ANSWER_CHARS.saturating_sub(self.text.chars().count());
        let kept = mapping::cut_chars(text, room);
        self.text.push_str(kept);
        self.pending.push_str(kept);
        if kept.len() < text.len() {
            self.cut = true;
        }
    }

    /// Streams what was said since the last flush.
    async fn flush(&mut self) -> Result<(), BridgeError> {
        if !self.pending.is_empty() {
            self.replies.delta(&self.pending).await?;
            self.pending.clear();
        }
        Ok(())
    }

    async fn flush_thoughts(&mut self) -> Result<(), BridgeError> {
        if !self.thoughts.is_empty() {
            let thoughts = std::mem::take(&mut self.thoughts);
            self.replies.reasoning(&thoughts).await?;
        }
        Ok(())
    }

    /// The answer's whole text, with a note when it was cut.
    fn answer(&self) -> String {
        if self.cut {
            format!(
                "{}\n\n[... cut: the agent said more than a message may hold ({MAX_ANSWER_CHARS} characters) ...]",
                self.text
            )
        } else {
            self.text.clone()
        }
    }

    async fn tool_call(&mut self, call: ToolCall) -> Result<(), BridgeError> {
        let id = mapping::call_id(&call.tool_call_id.to_string());
        if !self.calls.contains_key(&id) {
            self.announce(
                &id,
                mapping::tool_name(call.name.as_deref(), call.kind),
                &call.title,
                call.kind,
                call.raw_input.clone(),
            )
            .await?;
        }
        if let Some(success) = mapping::settled(call.status) {
            self.finish_call(
                &id,
                mapping::tool_result(call.raw_output.as_ref(), &call.content),
                success,
            )
            .await?;
        }
        Ok(())
    }

    async fn tool_update(&mut self, update: ToolCallUpdate) -> Result<(), BridgeError> {
        let id = mapping::call_id(&update.tool_call_id.to_string());
        let fields = update.fields;
        if !self.calls.contains_key(&id) {
            // An update for a call never announced: shown as a call of its own.
            let kind = fields.kind.unwrap_or_default();
            self.announce(
                &id,
                mapping::tool_name(fields.name.as_deref(), kind),
                fields.title.as_deref().unwrap_or(""),
                kind,
                fields.raw_input.clone(),
            )
            .await?;
        } else if let Some(call) = self.calls.get_mut(&id) {
            if let Some(title) = &fields.title {
                call.title = title.clone();
            }
            if let Some(input) = &fields.raw_input {
                call.raw_input = Some(input.clone());
            }
        }
        if let Some(success) = fields.status.and_then(mapping::settled) {
            let content = fields.content.unwrap_or_default();
            self.finish_call(
                &id,
                mapping::tool_result(fields.raw_output.as_ref(), &content),
                success,
            )
            .await?;
        }
        Ok(())
    }

    async fn announce(
        &mut self,
        id: &str,
        tool: String,
        title: &str,
        kind: agent_client_protocol::v1::schema::ToolKind,
        raw_input: Option<Value>,
    ) -> Result<(), BridgeError> {
        let index = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
        let args = mapping::tool_args(title, kind, raw_input.as_ref());
        self.flush().await?;
        self.replies.tool_call(id, &tool, fit(args)).await?;
        self.order.push(id.to_string());
        self.calls.insert(
            id.to_string(),
            Call {
                tool,
                index,
                title: title.to_string(),
                kind,
                raw_input,
                done: false,
            },
        );
        Ok(())
    }

    async fn finish_call(
        &mut self,
        id: &str,
        result: Value,
        success: bool,
    ) -> Result<(), BridgeError> {
        let Some(call) = self.calls.get_mut(id) else {
            return Ok(());
        };
        if call.done {
            return Ok(());
        }
        call.done = true;
        let tool = call.tool.clone();
        self.replies
            .tool_result(id, &tool, fit(result), success)
            .await
    }

    /// Calls the agent never said the end of are shown as ended with the turn.
    async fn close_calls(&mut self, why: &str) -> Result<(), BridgeError> {
        let open: Vec<String> = self
            .order
            .iter()
            .filter(|id| self.calls.get(*id).is_some_and(|c| !c.done))
            .cloned()
            .collect();
        for id in open {
            self.finish_call(&id, json!({ "error": why }), false)
                .await?;
        }
        Ok(())
    }

    /// Asks the host about a permission request and answers the agent. Returns how long a
    /// person took (not the turn's own time).
    async fn permission(
        &mut self,
        request: RequestPermissionRequest,
        guard: &mut CancelOnDrop,
    ) -> Result<Duration, BridgeError> {
        let asked = Instant::now();
        // The call shows in the chat before anyone is asked about it.
        self.tool_update(request.tool_call.clone()).await?;
        self.flush().await?;
        let id = mapping::call_id(&request.tool_call.tool_call_id.to_string());
        let (tool, index, args) = match self.calls.get(&id) {
            Some(call) => (
                call.tool.clone(),
                call.index,
                mapping::tool_args(&call.title, call.kind, call.raw_input.as_ref()),
            ),
            None => return Ok(asked.elapsed()),
        };
        let answer = self.replies.approval(&id, &tool, &args, index).await;
        let (allowed, person, refusal) = match answer {
            Ok(answer) if answer.state.allows() => (true, answer.id.is_some(), None),
            Ok(answer) => {
                let reason = answer
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("the call was {}", answer.state));
                (
                    false,
                    answer.id.is_some(),
                    Some((answer.state.to_string(), reason)),
                )
            }
            // The host refused to consider it (too large, malformed): it doesn't run.
            Err(BridgeError::Status { status, message }) if status < 500 => (
                false,
                false,
                Some((
                    "refused".to_string(),
                    format!("the host refused to consider it: {message}"),
                )),
            ),
            Err(e) => return Err(e),
        };
        let outcome = match mapping::pick_option(&request.options, allowed, person) {
            Some(option) => {
                tracing::info!(call = %id, tool, allowed, option = %option.option_id, "answering the agent's permission request");
                RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(
                    option.option_id.clone(),
                ))
            }
            None => {
                tracing::warn!(call = %id, tool, allowed, "no permission option fits the answer; answering cancelled");
                RequestPermissionOutcome::Cancelled
            }
        };
        let allowed = allowed && matches!(outcome, RequestPermissionOutcome::Selected(_));
        if let Some(responder) = guard.waiting.take() {
            if let Err(e) = responder.respond(RequestPermissionResponse::new(outcome)) {
                tracing::warn!(error = %e, "could not answer the permission request");
            }
        }
        if !allowed {
            let (state, reason) = refusal.unwrap_or_else(|| {
                (
                    "refused".to_string(),
                    "the agent offered no option that fits the approval".to_string(),
                )
            });
            let outcome = kit::Outcome::not_run(&state, &reason);
            self.finish_call(&id, outcome.result, false).await?;
        }
        Ok(asked.elapsed())
    }
}

impl Framework for AcpMode {
    async fn respond(
        &self,
        delivery: &UserMessageDelivery,
        replies: &ReplySink,
    ) -> Result<(), RespondError> {
        let mut state = self.state.lock().await;
        let key = conversation_key(&delivery.channel_id, delivery.thread_id.as_deref());
        let mut restarted = false;
        let session = loop {
            let session = match self.session(&mut state, &key).await {
                Ok(session) => session,
                Err(reason) => {
                    if state
                        .process
                        .as_ref()
                        .is_some_and(|l| l.process.exited.borrow().is_some())
                    {
                        self.stop(&mut state);
                    }
                    let reason = format!("the ACP agent could not start a conversation: {reason}");
                    return failed(replies, "agent_error", &reason).await;
                }
            };
            // A cancelled prompt in this session must have ended before the next one starts.
            let earlier = state
                .process
                .as_mut()
                .and_then(|live| live.prompts.remove(&session.to_string()));
            if let Some(mut done) = earlier {
                let ended = tokio::time::timeout(CANCEL_GRACE, done.wait_for(|d| *d)).await;
                if !matches!(ended, Ok(Ok(_))) && !restarted {
                    tracing::warn!(session = %session, "the agent did not end a cancelled prompt; restarting it");
                    self.stop(&mut state);
                    restarted = true;
                    continue;
                }
            }
            break session;
        };
        let Some(live) = state.process.as_mut() else {
            return failed(replies, "agent_error", "the ACP agent is not running").await;
        };
        drain(live);
        live.process.traffic.reset();
        let prompt = PromptRequest::new(
            session.clone(),
            vec![ContentBlock::Text(TextContent::new(delivery.text.clone()))],
        );
        let sent = live.process.conn.send_request(prompt).block_task();
        let (done_tx, done_rx) = watch::channel(false);
        let (result_tx, mut result_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = result_tx.send(sent.await.map_err(|e| e.to_string()));
            let _ = done_tx.send(true);
        });
        live.prompts.insert(session.to_string(), done_rx);
        let mut guard = CancelOnDrop {
            conn: live.process.conn.clone(),
            session: session.clone(),
            armed: true,
            waiting: None,
        };
        let mut turn = Turn::new(replies, self.config.max_turn_updates);
        let mut deadline = Instant::now() + self.config.turn_time;
        let mut exited = live.process.exited.clone();
        let ended = loop {
            let incoming = tokio::select! {
                biased;
                incoming = live.process.events.recv() => incoming,
                result = &mut result_rx => {
                    break Ended::Answered(result.unwrap_or_else(|_| Err("the prompt was dropped".into())));
                }
                words = exited.wait_for(|e| e.is_some()) => {
                    let words = words.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                    break match live.process.traffic.cut_reason() {
                        Some(cut) => Ended::Cut(cut),
                        None => Ended::Exited(words),
                    };
                }
                _ = tokio::time::sleep_until(deadline) => break Ended::TimeUp,
            };
            let Some(incoming) = incoming else {
                // The connection is gone: a limit cut it, or the process is ending.
                break match live.process.traffic.cut_reason() {
                    Some(cut) => Ended::Cut(cut),
                    None => Ended::Exited("its output closed".to_string()),
                };
            };
            let mut next = Some(incoming);
            let mut cut = None;
            // Everything already sent is taken before the answer is streamed on.
            while let Some(incoming) = next.take() {
                match incoming {
                    Incoming::Update(n) if n.session_id != session => {
                        tracing::debug!(session = %n.session_id, "an update for another session");
                    }
                    Incoming::Update(n) => {
                        if let Err(reason) = turn.update(n.update).await? {
                            cut = Some(reason);
                            break;
                        }
                    }
                    Incoming::Permission(asked) => {
                        if asked.request.session_id != session {
                            drop_incoming(Incoming::Permission(asked));
                        } else {
                            let Asked { request, responder } = *asked;
                            guard.waiting = Some(responder);
                            // Time spent waiting for a person is not the turn's own.
                            deadline += turn.permission(request, &mut guard).await?;
                        }
                    }
                }
                next = live.process.events.try_recv().ok();
            }
            if let Some(reason) = cut {
                break Ended::Cut(reason);
            }
            turn.flush().await?;
        };
        // Whatever came before the end belongs to the turn.
        if matches!(ended, Ended::Answered(_)) {
            while let Ok(incoming) = live.process.events.try_recv() {
                match incoming {
                    Incoming::Update(n) if n.session_id == session => {
                        if let Err(reason) = turn.update(n.update).await? {
                            tracing::warn!(reason, "a limit was passed as the turn ended");
                            break;
                        }
                    }
                    other => drop_incoming(other),
                }
            }
        }
        turn.flush().await?;
        turn.flush_thoughts().await?;
        match ended {
            Ended::Answered(Ok(response)) => {
                guard.armed = false;
                live.prompts.remove(&session.to_string());
                state.failures = 0;
                state.failed_at = None;
                turn.close_calls("the agent did not say how this call ended")
                    .await?;
                finish(&turn, replies, response.stop_reason).await
            }
            Ended::Answered(Err(error)) => {
                guard.armed = false;
                let reason = match live.process.traffic.cut_reason() {
                    Some(cut) => {
                        format!("{cut}; it was stopped and will be restarted for the next message")
                    }
                    None => {
                        // The request fails first when the process dies; say how it ended.
                        let status = tokio::time::timeout(
                            Duration::from_secs(2),
                            exited.wait_for(|e| e.is_some()),
                        )
                        .await;
                        match status {
                            Ok(Ok(words)) => format!(
                                "the agent process exited ({}); it will be restarted for the next message",
                                words.clone().unwrap_or_default()
                            ),
                            _ => format!("the agent failed the prompt: {error}"),
                        }
                    }
                };
                let stopped = live.process.exited.borrow().is_some()
                    || live.process.traffic.cut_reason().is_some();
                if stopped {
                    self.stop(&mut state);
                }
                turn.close_calls("the turn failed").await?;
                failed(replies, "agent_error", &reason).await
            }
            Ended::Exited(words) => {
                guard.armed = false;
                self.stop(&mut state);
                turn.close_calls("the agent process exited").await?;
                let reason = format!(
                    "the agent process exited ({words}); it will be restarted for the next message"
                );
                failed(replies, "agent_error", &reason).await
            }
            Ended::Cut(why) => {
                guard.armed = false;
                drop(guard);
                self.stop(&mut state);
                turn.close_calls("the turn was cut off").await?;
                let reason =
                    format!("{why}; it was stopped and will be restarted for the next message");
                failed(replies, TURN_LIMIT, &reason).await
            }
            Ended::TimeUp => {
                // The guard's cancel tells the agent; the next turn waits for it to end.
                drop(guard);
                turn.close_calls("the turn's time ran out").await?;
                let reason = format!(
                    "stopped after {} s without a final answer (the time limit per message)",
                    self.config.turn_time.as_secs()
                );
                failed(replies, TURN_LIMIT, &reason).await
            }
        }
    }
}

/// Settles the answer by the agent's stop reason.
async fn finish(
    turn: &Turn<'_>,
    replies: &ReplySink,
    stop: StopReason,
) -> Result<(), RespondError> {
    let text = turn.answer();
    let problem = match stop {
        StopReason::EndTurn => None,
        StopReason::MaxTokens => {
            Some((TURN_LIMIT, "the agent stopped: it reached its token limit"))
        }
        StopReason::MaxTurnRequests => Some((
            TURN_LIMIT,
            "the agent stopped: it reached its limit of model requests per turn",
        )),
        StopReason::Refusal => Some(("agent_error", "the agent refused to go on")),
        StopReason::Cancelled => Some(("cancelled", "the agent cancelled the turn")),
        _ => Some((
            "agent_error",
            "the agent stopped for a reason taos does not know",
        )),
    };
    match problem {
        None if !text.trim().is_empty() => {
            replies.finish(&text).await?;
            Ok(())
        }
        None => {
            failed(
                replies,
                "empty_reply",
                "the agent ended its turn without saying anything",
            )
            .await
        }
        Some((code, reason)) => failed(replies, code, reason).await,
    }
}

async fn failed(replies: &ReplySink, code: &str, reason: &str) -> Result<(), RespondError> {
    let result = replies.fail(code, reason).await;
    replies.trace_error("acp", reason, None).await;
    result.map_err(RespondError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_longer_after_each_crash_in_a_row() {
        assert_eq!(restart_pause(1), Duration::from_millis(500));
        assert_eq!(restart_pause(2), Duration::from_secs(1));
        assert_eq!(restart_pause(4), Duration::from_secs(4));
        assert_eq!(restart_pause(100), RESTART_MAX);
    }
}
