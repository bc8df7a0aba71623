//! Tool approvals: whether an agent's tool call may run, as its owner decided.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::text_enum::text_enum;

/// What happens when an agent wants to run a tool. Stored in `agents.tool_policy` (and per tool
/// in `agents.tool_overrides`) as the same word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ToolPolicy {
    /// Runs at once (the default).
    #[default]
    Auto,
    /// Waits for a person to approve it; unanswered requests expire as denied.
    Ask,
    /// Never runs; the model is told so.
    Off,
}

text_enum!(ToolPolicy {
    Auto => "auto",
    Ask => "ask",
    Off => "off",
});

/// Per-tool policies that override the agent's `tool_policy`, by tool name.
pub type ToolOverrides = BTreeMap<String, ToolPolicy>;

/// Where an approval is. Stored in `tool_approvals.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    Approved,
    Denied,
    /// Nobody answered in time (`[tools] approval_timeout_secs`): counts as denied.
    Expired,
    /// The answer it belonged to was stopped from the chat.
    Cancelled,
}

text_enum!(ApprovalState {
    Pending => "pending",
    Approved => "approved",
    Denied => "denied",
    Expired => "expired",
    Cancelled => "cancelled",
});

impl ApprovalState {
    /// Whether the call may run.
    pub fn allows(self) -> bool {
        self == ApprovalState::Approved
    }

    pub fn is_decided(self) -> bool {
        self != ApprovalState::Pending
    }
}

/// `POST /api/openclaw/sessions/{agent}/approvals` (agent listener): may this tool call run?
/// Asking again with the same trace, step, tool and arguments finds the same approval, so a
/// sidecar that restarts and runs the turn again gets the earlier answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// The delivery the turn answers.
    pub trace_id: String,
    /// The model's id for the call (the chat step it shows on).
    pub call_id: String,
    pub tool: String,
    /// The call's arguments, a JSON object.
    pub args: serde_json::Value,
    /// The call's place in the turn (0 for the first tool call, 1 for the next, …).
    pub step: u32,
    /// How long to wait for a decision before answering `pending` (long-poll), in seconds;
    /// 0 answers at once. Capped by the host.
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// The host's answer to an [`ApprovalRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalAnswer {
    /// The approval, when the policy is `ask`; none for `auto` and `off`.
    pub id: Option<String>,
    pub state: ApprovalState,
    /// Why it may not run, in words (for the model and the chat).
    pub reason: Option<String>,
}

/// An approval as people see it (`GET /api/approvals`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    pub id: String,
    /// The agent's slug.
    pub agent: String,
    pub channel_id: String,
    /// The answer's chat message, where the call shows as a tool step.
    pub message_id: Option<String>,
    pub trace_id: String,
    pub call_id: String,
    pub tool: String,
    pub args: serde_json::Value,
    /// A short text of what would run, e.g. the shell command.
    pub summary: String,
    pub state: ApprovalState,
    pub reason: Option<String>,
    /// Who decided (a chat member id such as `user:owner`), when a person did.
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

/// `POST /api/approvals/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DecideApproval {
    pub decision: Decision,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text_enum::assert_text_matches_serde;

    #[test]
    fn stored_words_are_the_wire_words() {
        assert_text_matches_serde(ToolPolicy::ALL);
        assert_text_matches_serde(ApprovalState::ALL);
    }
}
