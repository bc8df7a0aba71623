//! What an agent framework implements to answer deliveries, and the handle it answers through.
//!
//! `direct` (chat only) and `tools` (a tool-calling loop) implement it; an `openclaw` one
//! (driving an openclaw gateway in the same container) will too, so following the stream,
//! ordering, shutdown and traces stay in one place.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use taos_proto::approvals::{ApprovalAnswer, ApprovalRequest, ApprovalState};
use taos_proto::bridge::{Reply, ReplyKind, UserMessageDelivery};
use taos_proto::trace::TraceKind;

use crate::bridge::{new_trace, BridgeClient, BridgeError};

/// How long one approval request waits on the host before asking again.
const APPROVAL_POLL: Duration = Duration::from_secs(25);
/// Delays between approval requests while the host can't be reached.
const APPROVAL_RETRY_START: Duration = Duration::from_millis(250);
const APPROVAL_RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("the host did not take the reply: {0}")]
    Bridge(#[from] BridgeError),
}

pub trait Framework: Send + Sync {
    /// Answers one delivery through `replies`. Returns once the answer is settled: a final or
    /// an error reply was accepted. Failures the framework can explain to people (the model
    /// failed) are error replies, not `Err`; `Err` means the host could not be told.
    ///
    /// The future may be dropped part way when the agent stops.
    fn respond(
        &self,
        delivery: &UserMessageDelivery,
        replies: &ReplySink,
    ) -> impl Future<Output = Result<(), RespondError>> + Send;
}

/// Sends the replies for one delivery, with its trace and channel filled in, and remembers
/// what was sent so the caller knows whether people already saw part of an answer.
pub struct ReplySink {
    bridge: BridgeClient,
    trace_id: String,
    channel_id: String,
    thread_id: Option<String>,
    streamed: AtomicBool,
    settled: AtomicBool,
}

impl ReplySink {
    pub fn new(bridge: BridgeClient, delivery: &UserMessageDelivery) -> Self {
        ReplySink {
            bridge,
            trace_id: delivery.trace_id.clone(),
            channel_id: delivery.channel_id.clone(),
            thread_id: delivery.thread_id.clone(),
            streamed: AtomicBool::new(false),
            settled: AtomicBool::new(false),
        }
    }

    /// Whether any text was sent: from then on it is visible in the chat.
    pub fn has_streamed(&self) -> bool {
        self.streamed.load(Ordering::SeqCst)
    }

    /// Whether a final or error reply was accepted.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// Streams a piece of the answer. Empty pieces are skipped (the host refuses them).
    pub async fn delta(&self, text: &str) -> Result<(), BridgeError> {
        if text.is_empty() {
            return Ok(());
        }
        self.send(ReplyKind::Delta, Some(text.to_string())).await?;
        self.streamed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Completes the answer with its whole text.
    pub async fn finish(&self, content: &str) -> Result<(), BridgeError> {
        self.send(ReplyKind::Final, Some(content.to_string()))
            .await?;
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Ends the answer as failed, with a short reason and its code (one of
    /// `taos_proto::bridge::ERROR_CODES`), which the host turns into words for people.
    pub async fn fail(&self, code: &str, reason: &str) -> Result<(), BridgeError> {
        let mut reply = self.reply(ReplyKind::Error, None);
        reply.error = Some(reason.to_string());
        reply.error_code = Some(code.to_string());
        self.bridge.post_reply(&reply).await?;
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Says the model called a tool (before it runs): the host shows it on the answer's chat
    /// message and writes a `tool_call` trace.
    pub async fn tool_call(
        &self,
        call_id: &str,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<(), BridgeError> {
        let mut reply = self.reply(ReplyKind::ToolCall, None);
        reply.call_id = Some(call_id.to_string());
        reply.tool = Some(tool.to_string());
        reply.args = Some(args);
        self.bridge.post_reply(&reply).await
    }

    /// Says how a tool call went: shown with its call, and a `tool_result` trace.
    /// Reads a page of the agent's own trace from the host, with the sidecar's token (which
    /// the tools never see).
    pub async fn own_trace(
        &self,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, BridgeError> {
        self.bridge.own_trace(query).await
    }

    pub async fn tool_result(
        &self,
        call_id: &str,
        tool: &str,
        result: serde_json::Value,
        success: bool,
    ) -> Result<(), BridgeError> {
        let mut reply = self.reply(ReplyKind::ToolResult, None);
        reply.call_id = Some(call_id.to_string());
        reply.tool = Some(tool.to_string());
        reply.result = Some(result);
        reply.success = Some(success);
        self.bridge.post_reply(&reply).await
    }

    /// Asks the host whether a tool call may run, and waits for the answer: at once under the
    /// agent's `auto` or `off` policy, after a person's decision (or its expiry) under `ask`.
    /// While the host can't be reached (restarting) it keeps asking; the same call finds the
    /// same approval there. A refused token (rotated, archived) is an error.
    pub async fn approval(
        &self,
        call_id: &str,
        tool: &str,
        args: &serde_json::Value,
        step: u32,
    ) -> Result<ApprovalAnswer, BridgeError> {
        let request = ApprovalRequest {
            trace_id: self.trace_id.clone(),
            call_id: call_id.to_string(),
            tool: tool.to_string(),
            args: args.clone(),
            step,
            wait_secs: Some(APPROVAL_POLL.as_secs()),
        };
        let mut delay = APPROVAL_RETRY_START;
        loop {
            match self.bridge.request_approval(&request, APPROVAL_POLL).await {
                Ok(answer) if answer.state == ApprovalState::Pending => {
                    delay = APPROVAL_RETRY_START;
                }
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_transient() => {
                    tracing::warn!(trace_id = %self.trace_id, error = %e, "asking for approval failed; asking again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(APPROVAL_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Text the model said along with tool calls: a `reasoning` trace.
    pub async fn reasoning(&self, text: &str) -> Result<(), BridgeError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        self.send(ReplyKind::Reasoning, Some(text.to_string()))
            .await
    }

    /// Records an `error` trace for this delivery. Best effort: a trace that cannot be
    /// written is logged, never a reason to fail the answer.
    pub async fn trace_error(&self, stage: &str, message: &str, model: Option<&str>) {
        let mut event = new_trace(TraceKind::Error);
        event.trace_id = Some(self.trace_id.clone());
        event.channel_id = Some(self.channel_id.clone());
        event.thread_id = self.thread_id.clone();
        event.model = model.map(str::to_string);
        event.error = Some(message.to_string());
        event.payload = serde_json::json!({ "stage": stage, "message": message });
        if let Err(e) = self.bridge.post_trace(&event).await {
            tracing::warn!(trace_id = %self.trace_id, error = %e, "could not write an error trace");
        }
    }

    fn reply(&self, kind: ReplyKind, content: Option<String>) -> Reply {
        Reply {
            kind,
            trace_id: self.trace_id.clone(),
            channel_id: Some(self.channel_id.clone()),
            content,
            call_id: None,
            tool: None,
            args: None,
            result: None,
            success: None,
            error: None,
            error_code: None,
        }
    }

    async fn send(&self, kind: ReplyKind, content: Option<String>) -> Result<(), BridgeError> {
        self.bridge.post_reply(&self.reply(kind, content)).await
    }
}
