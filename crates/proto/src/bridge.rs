//! The agent bridge: what the host sends an agent and what the agent sends back.
//! Paths and shapes are kept from TinyAgentOS so openclaw integrations work unchanged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One line of context given with a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContextMessage {
    pub author_id: String,
    pub author_type: crate::chat::AuthorType,
    pub content: String,
}

/// `event: user_message` on the bridge stream; the SSE `id:` is `delivery_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserMessageDelivery {
    /// The chat message id.
    pub id: String,
    /// Echo this in every reply about this message.
    pub trace_id: String,
    pub delivery_seq: i64,
    pub channel_id: String,
    /// Who wrote it: `user:<name>` or an agent slug.
    pub from: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
    pub hops_since_user: u32,
    /// True when the agent was named or it is a DM: it should answer.
    pub force_respond: bool,
    pub context: Vec<ContextMessage>,
    pub thread_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Delta,
    Final,
    Error,
    ToolCall,
    ToolResult,
    Reasoning,
}

/// `POST /api/openclaw/sessions/{agent}/reply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub kind: ReplyKind,
    pub trace_id: String,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    /// With `tool_call` and `tool_result`: the call's id, so the host pairs a result with its
    /// call (the model's own id; at most 200 characters).
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub args: Option<serde_json::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub error: Option<String>,
    /// With `kind: error`: what failed, so the host can tell people in words and say what to
    /// do. One of [`ERROR_CODES`]; the LLM gateway's error `type` where it gave one. Optional:
    /// without it the host reads the gateway's type names out of `error`.
    #[serde(default)]
    pub error_code: Option<String>,
}

/// The bridge stream's event asking the agent to stop answering one delivery.
pub const CANCEL_EVENT: &str = "cancel";

/// The data of a `cancel` event: stop the answer to `trace_id` (drop the work in progress, end
/// its tools) and settle it with an `error` reply, `error_code: cancelled`. It has no event id.
/// The host stores it and sends it at once to a connected agent, and again at the start of
/// every stream until the answer is settled, so an agent that was away still learns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelTurn {
    pub trace_id: String,
    /// Who stopped it (`user:<name>`), for the failure's words.
    pub by: String,
}

/// The `error_code`s an error reply may carry. Anything else counts as `agent_error`.
pub const ERROR_CODES: &[&str] = &[
    // The LLM gateway's own error types.
    "budget_exceeded",
    "model_not_allowed",
    "llm_unavailable",
    // The gateway refused the agent's LLM key (rotated, or the agent archived).
    "llm_key_rejected",
    // LiteLLM or the provider behind it refused or failed the call.
    "provider_error",
    // The agent could not reach the gateway at all.
    "gateway_unreachable",
    // The model answered with no text.
    "empty_reply",
    // The answer broke off part way (the agent stopped, or the stream was cut).
    "interrupted",
    // A tool-using turn hit its step or time limit before the model answered.
    "turn_limit",
    // A person stopped the answer from the chat (a `cancel` event on the bridge stream).
    "cancelled",
    // Anything else the agent could not do.
    "agent_error",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplyAccepted {
    pub accepted: bool,
    /// The chat message this reply created or updated, if any.
    pub message_id: Option<String>,
}

/// `POST /api/agents/{slug}/bridge-check`: how the agent answered a round trip through its
/// live bridge (the check an update's gate runs; no model is called for it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BridgeCheck {
    /// The kind of the agent's settled reply: `error` when it answered as it should (the
    /// gateway refuses the check's model call), `final` from a framework that answers without
    /// one.
    pub reply: ReplyKind,
    /// The reply's text or error, at most 200 characters.
    pub text: String,
    /// From sending the delivery to the settled reply.
    pub elapsed_ms: u64,
}
