//! Trace ingest, shared by both listeners: an agent posting its own events, or the owner (or
//! local admin) posting for a named agent.

use taos_proto::trace::{NewTraceEvent, TraceAck, TraceEvent};
use uuid::Uuid;

use super::{TraceError, TraceStore};
use crate::agents::{self, AgentRecord};
use crate::db::Db;
use crate::ratelimit::{RateError, RateLimiter};

/// The most events one request may carry.
pub const MAX_BATCH: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    BadInput(String),
    /// One event is over `[traces] max_event_bytes`; nothing was stored.
    #[error(
        "trace event {index} is {size} bytes; the limit is {max_bytes} ([traces] \
         max_event_bytes). Nothing was stored."
    )]
    TooLarge {
        index: usize,
        size: usize,
        max_bytes: usize,
    },
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
}

/// What ingest needs besides the events: where they go and the limits on them.
pub struct Ingest<'a> {
    pub db: &'a Db,
    pub traces: &'a TraceStore,
    /// Trace events per agent per second, one token per event.
    pub limiter: &'a RateLimiter,
    pub max_event_bytes: u64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Completes and stores events. With `caller` (an agent), `agent_name` is forced to it;
/// otherwise every event must name one existing agent. Acknowledged means durable.
///
/// Limits come first, per agent whoever posts: the agent's rate (one token per event; 429 with
/// Retry-After), then each event's size (413); a request that fails either stores nothing.
/// Times more than a day from the host's clock are clamped (the given one is kept).
pub async fn ingest(
    to: &Ingest<'_>,
    caller: Option<&AgentRecord>,
    events: Vec<NewTraceEvent>,
) -> Result<TraceAck, IngestError> {
    let bad = |m: &str| IngestError::BadInput(m.to_string());
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(IngestError::BadInput(format!("send 1-{MAX_BATCH} events")));
    }
    let (agent_id, slug) = match caller {
        Some(agent) => (agent.id, agent.slug.clone()),
        None => {
            let named = events[0]
                .agent_name
                .clone()
                .ok_or_else(|| bad("agent_name is required"))?;
            if events
                .iter()
                .any(|e| e.agent_name.as_deref() != Some(named.as_str()))
            {
                return Err(bad("a batch is for one agent"));
            }
            super::validate_slug(&named)?;
            let agent = agents::get_by_slug(to.db, &named)
                .await
                .map_err(|e| match e {
                    agents::AgentError::NotFound => {
                        IngestError::BadInput(format!("no agent named {named:?}"))
                    }
                    e => e.into(),
                })?;
            (agent.id, named)
        }
    };
    to.limiter.take(agent_id, events.len() as u64)?;
    let max_bytes = usize::try_from(to.max_event_bytes).unwrap_or(usize::MAX);
    let now = chrono::Utc::now();
    let mut complete = Vec::with_capacity(events.len());
    for (index, e) in events.into_iter().enumerate() {
        if e.v.is_some_and(|v| v != 1) {
            return Err(bad("only envelope v1 is supported"));
        }
        let id = e.id.unwrap_or_else(|| Uuid::now_v7().simple().to_string());
        if !valid_id(&id) {
            return Err(bad(
                "id must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
            ));
        }
        if !e.payload.is_object() {
            return Err(bad("payload must be a JSON object"));
        }
        let mut event = TraceEvent {
            v: 1,
            id,
            trace_id: e.trace_id,
            parent_id: e.parent_id,
            created_at: e.created_at.unwrap_or(now),
            agent_name: slug.clone(),
            kind: e.kind,
            channel_id: e.channel_id,
            thread_id: e.thread_id,
            backend_name: e.backend_name,
            model: e.model,
            duration_ms: e.duration_ms,
            tokens_in: e.tokens_in,
            tokens_out: e.tokens_out,
            cost_usd: e.cost_usd,
            error: e.error,
            payload: e.payload,
            agent_created_at: None,
        };
        let size = super::event_bytes(&event);
        if size > max_bytes {
            return Err(IngestError::TooLarge {
                index,
                size,
                max_bytes,
            });
        }
        // An agent's clock is not trusted; the owner importing old traces is.
        if caller.is_some() {
            super::clamp_created_at(&mut event, now);
        }
        complete.push(event);
    }
    let ids = complete.iter().map(|e| e.id.clone()).collect();
    to.traces.append(&slug, complete).await?;
    Ok(TraceAck {
        ids,
        agent_name: slug,
        schema_version: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_short_and_plain() {
        assert!(valid_id("0193a1b2-c3d4"));
        assert!(valid_id("run_1.step:2"));
        assert!(valid_id(&"a".repeat(128)));
        assert!(!valid_id(&"a".repeat(129)));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a b"));
    }

    #[test]
    fn an_oversized_event_says_which_and_by_how_much() {
        let e = IngestError::TooLarge {
            index: 3,
            size: 70_000,
            max_bytes: 65_536,
        };
        assert_eq!(
            e.to_string(),
            "trace event 3 is 70000 bytes; the limit is 65536 ([traces] max_event_bytes). \
             Nothing was stored."
        );
    }
}
