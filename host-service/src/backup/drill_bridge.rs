//! The drill's own bridge session: how a restore drill asks the restored copy of an agent for a
//! bridge round trip without the copy ever standing in for the live agent.
//!
//! The copy is given a credential of its own (a fresh secret, never stored: held in memory for
//! the one round trip, so a host that dies mid-drill has revoked it by restarting) and a bridge
//! address under `/drill/{session}` on the agent listener. That path serves only this session:
//! one delivery (the drill's message) and the copy's reply to it. The live agent's token is not
//! accepted there, and the drill's credential is accepted nowhere else (it is no agent's
//! token), so the live agent's stream, keyed by its id, is never touched.

use std::sync::Mutex;
use std::time::Duration;

use taos_proto::bridge::{Reply, UserMessageDelivery};
use tokio::sync::watch;
use uuid::Uuid;

use crate::round_trip::{self, RoundTrip};

/// What the drill's message says; any final or error reply to it completes the round trip (the
/// copy has no LLM key in a drill, so a healthy sidecar answers with an error naming that).
pub const DRILL_TEXT: &str = "taos restore drill: please answer";

/// How the copy answered.
pub type DrillAnswer = round_trip::Answer;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrillBridgeError {
    /// No drill session by that id is open (none, another, or already closed).
    #[error("no restore drill session by that id is open")]
    NotFound,
    #[error("not this drill session's credential")]
    Unauthorized,
    #[error("{0}")]
    BadInput(String),
}

struct Session {
    id: String,
    token: String,
    slug: String,
    round_trip: RoundTrip,
}

/// At most one session at a time (drills run one at a time).
#[derive(Default)]
pub struct DrillBridge {
    open: Mutex<Option<Session>>,
}

/// An open session, as the drill holds it: closing it (or dropping it) revokes the credential.
pub struct DrillSession<'a> {
    bridge: &'a DrillBridge,
    pub id: String,
    pub token: String,
    answered: watch::Receiver<Option<DrillAnswer>>,
}

impl DrillSession<'_> {
    /// The copy's answer, or `None` when none came within `wait`.
    pub async fn answer(&mut self, wait: Duration) -> Option<DrillAnswer> {
        round_trip::wait_answer(&mut self.answered, wait).await
    }
}

impl Drop for DrillSession<'_> {
    fn drop(&mut self) {
        let mut open = self.bridge.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_some_and(|s| s.id == self.id) {
            *open = None;
        }
    }
}

impl DrillBridge {
    /// Opens a session for the copy of agent `slug` (replacing any other: one drill at a time).
    pub fn open(&self, slug: &str) -> DrillSession<'_> {
        let id = Uuid::new_v4().simple().to_string();
        let token = crate::auth::new_secret("taos_drill_");
        let round_trip = RoundTrip::new("drill message", "drill-", "user:taos-drill", DRILL_TEXT);
        let answered = round_trip.subscribe();
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(Session {
            id: id.clone(),
            token: token.clone(),
            slug: slug.to_string(),
            round_trip,
        });
        DrillSession {
            bridge: self,
            id,
            token,
            answered,
        }
    }

    fn with_session<T>(
        &self,
        session: &str,
        token: Option<&str>,
        agent: &str,
        f: impl FnOnce(&Session) -> Result<T, DrillBridgeError>,
    ) -> Result<T, DrillBridgeError> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let s = open
            .as_ref()
            .filter(|s| crate::auth::secrets_equal(&s.id, session))
            .ok_or(DrillBridgeError::NotFound)?;
        match token {
            Some(t) if crate::auth::secrets_equal(&s.token, t) => {}
            _ => return Err(DrillBridgeError::Unauthorized),
        }
        if s.slug != agent {
            return Err(DrillBridgeError::BadInput(format!(
                "this drill session is for agent {}",
                s.slug
            )));
        }
        f(s)
    }

    /// The one delivery the copy is sent, and a receiver that ends when the session closes.
    pub fn delivery(
        &self,
        session: &str,
        token: Option<&str>,
        agent: &str,
    ) -> Result<(UserMessageDelivery, watch::Receiver<Option<DrillAnswer>>), DrillBridgeError> {
        self.with_session(session, token, agent, |s| {
            Ok((s.round_trip.delivery.clone(), s.round_trip.subscribe()))
        })
    }

    /// The copy's reply: deltas and tool steps are accepted and dropped; the first final or
    /// error reply about the drill's message is its answer.
    pub fn reply(
        &self,
        session: &str,
        token: Option<&str>,
        agent: &str,
        reply: &Reply,
    ) -> Result<(), DrillBridgeError> {
        self.with_session(session, token, agent, |s| {
            s.round_trip
                .reply(reply)
                .map_err(|e| DrillBridgeError::BadInput(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taos_proto::bridge::ReplyKind;

    fn reply(kind: ReplyKind, trace_id: &str) -> Reply {
        serde_json::from_value(serde_json::json!({
            "kind": kind, "trace_id": trace_id, "error": "no LLM in a drill",
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn only_the_session_credential_gets_the_one_delivery_and_closing_revokes_it() {
        let bridge = DrillBridge::default();
        let mut session = bridge.open("scout");
        let (id, token) = (session.id.clone(), session.token.clone());
        assert_eq!(
            bridge.delivery(&id, Some("taos_live_token"), "scout").err(),
            Some(DrillBridgeError::Unauthorized)
        );
        assert_eq!(
            bridge.delivery(&id, None, "scout").err(),
            Some(DrillBridgeError::Unauthorized)
        );
        assert_eq!(
            bridge.delivery("other", Some(&token), "scout").err(),
            Some(DrillBridgeError::NotFound)
        );
        assert!(matches!(
            bridge.delivery(&id, Some(&token), "other"),
            Err(DrillBridgeError::BadInput(_))
        ));
        let (delivery, _) = bridge.delivery(&id, Some(&token), "scout").unwrap();
        assert_eq!(delivery.text, DRILL_TEXT);
        assert!(matches!(
            bridge.reply(&id, Some(&token), "scout", &reply(ReplyKind::Error, "x")),
            Err(DrillBridgeError::BadInput(_))
        ));
        bridge
            .reply(
                &id,
                Some(&token),
                "scout",
                &reply(ReplyKind::Delta, &delivery.trace_id),
            )
            .unwrap();
        bridge
            .reply(
                &id,
                Some(&token),
                "scout",
                &reply(ReplyKind::Error, &delivery.trace_id),
            )
            .unwrap();
        let answer = session.answer(Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.kind, ReplyKind::Error);
        assert_eq!(answer.text, "no LLM in a drill");
        drop(session);
        assert_eq!(
            bridge.delivery(&id, Some(&token), "scout").err(),
            Some(DrillBridgeError::NotFound)
        );
    }
}
