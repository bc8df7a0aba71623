//! One bridge round trip outside the chat: a delivery of its own (no chat message, no stored
//! delivery) and the agent's first settled answer to it. Two checks use it: a restore drill
//! asking the restored copy of an agent (`backup::drill_bridge`), and an update's gate asking a
//! live agent through its own bridge stream (`bridge::Bridge::check_round_trip`).

use std::time::Duration;

use chrono::Utc;
use taos_proto::bridge::{Reply, ReplyKind, UserMessageDelivery};
use tokio::sync::watch;
use uuid::Uuid;

/// How the agent answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub kind: ReplyKind,
    /// The reply's text or error, shortened.
    pub text: String,
}

/// A reply that names another trace than the round trip's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("trace_id is not the {0}'s")]
pub struct OtherTrace(pub &'static str);

/// The delivery and where its answer lands.
pub struct RoundTrip {
    /// What it is, in words, for errors ("drill message").
    what: &'static str,
    pub delivery: UserMessageDelivery,
    answered: watch::Sender<Option<Answer>>,
}

impl RoundTrip {
    /// A delivery from `from` saying `text`, in a channel of its own named `{prefix}{id}`.
    pub fn new(what: &'static str, prefix: &str, from: &str, text: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let delivery = UserMessageDelivery {
            id: format!("{prefix}{id}"),
            trace_id: Uuid::now_v7().to_string(),
            delivery_seq: 1,
            channel_id: format!("{prefix}{id}"),
            from: from.into(),
            text: text.into(),
            created_at: Utc::now(),
            hops_since_user: 0,
            force_respond: true,
            context: Vec::new(),
            thread_id: None,
        };
        RoundTrip {
            what,
            delivery,
            answered: watch::channel(None).0,
        }
    }

    /// A receiver of the answer; it also ends (errors) once the round trip is dropped.
    pub fn subscribe(&self) -> watch::Receiver<Option<Answer>> {
        self.answered.subscribe()
    }

    pub fn is_for(&self, trace_id: &str) -> bool {
        self.delivery.trace_id == trace_id
    }

    /// The agent's reply: deltas and tool steps are accepted and dropped; the first final or
    /// error reply about the round trip's delivery is its answer.
    pub fn reply(&self, reply: &Reply) -> Result<(), OtherTrace> {
        if !self.is_for(&reply.trace_id) {
            return Err(OtherTrace(self.what));
        }
        if matches!(reply.kind, ReplyKind::Final | ReplyKind::Error) {
            let text = reply
                .content
                .as_deref()
                .or(reply.error.as_deref())
                .unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            self.answered.send_if_modified(|a| {
                if a.is_some() {
                    return false;
                }
                *a = Some(Answer {
                    kind: reply.kind,
                    text,
                });
                true
            });
        }
        Ok(())
    }
}

/// The answer, or `None` when none came within `wait` (or the round trip was dropped).
pub async fn wait_answer(
    answered: &mut watch::Receiver<Option<Answer>>,
    wait: Duration,
) -> Option<Answer> {
    match tokio::time::timeout(wait, answered.wait_for(|a| a.is_some())).await {
        Ok(Ok(answer)) => answer.clone(),
        _ => None,
    }
}
