//! Answering an agent's tool approval from outside the UI: a native notification's Approve or
//! Deny. It goes through the session of the device that received the notification (its own
//! pinned link and access token), exactly as the UI's buttons go through the host's API.

use reqwest::Method;
use taos_proto::approvals::{Approval, DecideApproval, Decision};

use crate::net::NetError;
use crate::session::{Session, SessionError};

/// What answering came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    /// The host recorded this answer.
    Decided(Box<Approval>),
    /// Someone (or the clock) answered first; the host's words, e.g. "this approval is already
    /// denied". Not a failure: the call is answered either way.
    Already(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The id didn't come from the host (or was mangled on the way): never put into a path.
    #[error("not an approval id: {0:?}")]
    BadId(String),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Approval ids are the host's UUIDs; anything else is refused before it reaches a URL.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Sends `decision` for approval `id` with the session's credentials. A 409 (already decided,
/// expired or cancelled) comes back as [`Answered::Already`]; other failures are errors
/// that say why (offline, revoked, not allowed).
pub async fn decide(
    session: &Session,
    id: &str,
    decision: Decision,
) -> Result<Answered, ApprovalError> {
    if !valid_id(id) {
        return Err(ApprovalError::BadId(id.to_string()));
    }
    let answer = session
        .call::<Approval, _>(
            Method::POST,
            &format!("/api/approvals/{id}"),
            Some(&DecideApproval { decision }),
        )
        .await;
    match answer {
        Ok(approval) => Ok(Answered::Decided(Box::new(approval))),
        Err(SessionError::Net(NetError::Host {
            status: 409,
            message,
            ..
        })) => Ok(Answered::Already(message)),
        Err(e) => Err(e.into()),
    }
}

/// The outcome in a few words, for the notification that follows a tap on Approve or Deny.
pub fn outcome_text(outcome: &Result<Answered, ApprovalError>) -> (String, String) {
    match outcome {
        Ok(Answered::Decided(a)) => (
            format!("{} for {}", capitalized(a.state.to_string()), a.agent),
            a.summary.clone(),
        ),
        Ok(Answered::Already(message)) => ("Already answered".to_string(), message.clone()),
        Err(e) => ("Could not answer the approval".to_string(), e.to_string()),
    }
}

fn capitalized(word: String) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => word,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_shaped_ids_reach_a_path() {
        assert!(valid_id("0b6f3c1e-8a2d-4f7e-9c1a-2b3c4d5e6f70"));
        for bad in [
            "",
            "../devices",
            "a/b",
            "a?decision=approve",
            "a%2F",
            &"a".repeat(65),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn outcomes_are_worded() {
        let already = outcome_text(&Ok(Answered::Already(
            "this approval is already denied".into(),
        )));
        assert_eq!(
            already,
            (
                "Already answered".to_string(),
                "this approval is already denied".to_string()
            )
        );
        let failed = outcome_text(&Err(ApprovalError::BadId("x/y".into())));
        assert_eq!(failed.0, "Could not answer the approval");
        assert!(failed.1.contains("x/y"));
        assert_eq!(capitalized("approved".into()), "Approved");
    }
}
