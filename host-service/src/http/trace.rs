//! Trace ingest shared by both listeners, and the public listener's trace routes (owner or
//! local admin, naming an existing agent).

use axum::extract::State;
use axum::http::StatusCode;
use taos_proto::error::ErrorBody;
use taos_proto::trace::{NewTraceEvent, TraceAck, TraceBatch, TraceEvent};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, OwnerOrAdmin};
use super::AppState;
use crate::agents::{self, AgentRecord};

pub const MAX_BATCH: usize = 5000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_trace))
        .routes(routes!(post_trace_batch))
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
    state: &AppState,
    caller: Option<&AgentRecord>,
    events: Vec<NewTraceEvent>,
) -> Result<TraceAck, ApiError> {
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!("send 1-{MAX_BATCH} events")));
    }
    let (agent_id, slug) = match caller {
        Some(agent) => (agent.id, agent.slug.clone()),
        None => {
            let named = events[0]
                .agent_name
                .clone()
                .ok_or_else(|| ApiError::bad_request("agent_name is required"))?;
            if events
                .iter()
                .any(|e| e.agent_name.as_deref() != Some(named.as_str()))
            {
                return Err(ApiError::bad_request("a batch is for one agent"));
            }
            crate::trace::validate_slug(&named)?;
            let agent = agents::get_by_slug(&state.db, &named)
                .await
                .map_err(|e| match e {
                    agents::AgentError::NotFound => {
                        ApiError::bad_request(format!("no agent named {named:?}"))
                    }
                    e => e.into(),
                })?;
            (agent.id, named)
        }
    };
    state
        .trace_limiter
        .take(agent_id, events.len() as u64)
        .map_err(ApiError::from)?;
    let max_bytes = usize::try_from(state.config.traces.max_event_bytes).unwrap_or(usize::MAX);
    let now = chrono::Utc::now();
    let mut complete = Vec::with_capacity(events.len());
    for (index, e) in events.into_iter().enumerate() {
        if e.v.is_some_and(|v| v != 1) {
            return Err(ApiError::bad_request("only envelope v1 is supported"));
        }
        let id = e.id.unwrap_or_else(|| Uuid::now_v7().simple().to_string());
        if !valid_id(&id) {
            return Err(ApiError::bad_request(
                "id must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
            ));
        }
        if !e.payload.is_object() {
            return Err(ApiError::bad_request("payload must be a JSON object"));
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
        let size = crate::trace::event_bytes(&event);
        if size > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                format!(
                    "trace event {index} is {size} bytes; the limit is {max_bytes} \
                     ([traces] max_event_bytes). Nothing was stored."
                ),
            ));
        }
        // An agent's clock is not trusted; the owner importing old traces is.
        if caller.is_some() {
            crate::trace::clamp_created_at(&mut event, now);
        }
        complete.push(event);
    }
    let ids = complete.iter().map(|e| e.id.clone()).collect();
    state.traces.append(&slug, complete).await?;
    Ok(TraceAck {
        ids,
        agent_name: slug,
        schema_version: 1,
    })
}

/// Records one trace event for a named agent (owner or local admin; agents use the agent
/// listener). Idempotent by `id`.
#[utoipa::path(post, path = "/api/trace", tag = "trace", request_body = NewTraceEvent,
    responses((status = 200, description = "Stored durably", body = TraceAck),
        (status = 400, description = "Unknown kind, bad field, or no such agent", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner or local admin", body = ErrorBody),
        (status = 413, description = "An event is larger than [traces] max_event_bytes; nothing stored", body = ErrorBody),
        (status = 429, description = "The agent's trace rate is used up; see Retry-After. Nothing stored", body = ErrorBody),
        (status = 507, description = "The agent's trace quota is full and no closed hour is left to delete", body = ErrorBody)))]
async fn post_trace(
    _auth: OwnerOrAdmin,
    State(state): State<AppState>,
    Json(event): Json<NewTraceEvent>,
) -> Result<Json<TraceAck>, ApiError> {
    Ok(Json(ingest(&state, None, vec![event]).await?))
}

/// Records up to 5000 trace events for one named agent.
#[utoipa::path(post, path = "/api/trace/batch", tag = "trace", request_body = TraceBatch,
    responses((status = 200, description = "Stored durably", body = TraceAck),
        (status = 400, description = "Unknown kind, bad field, or no such agent", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner or local admin", body = ErrorBody),
        (status = 413, description = "An event is larger than [traces] max_event_bytes; nothing stored", body = ErrorBody),
        (status = 429, description = "The agent's trace rate is used up; see Retry-After. Nothing stored", body = ErrorBody),
        (status = 507, description = "The agent's trace quota is full and no closed hour is left to delete", body = ErrorBody)))]
async fn post_trace_batch(
    _auth: OwnerOrAdmin,
    State(state): State<AppState>,
    Json(batch): Json<TraceBatch>,
) -> Result<Json<TraceAck>, ApiError> {
    Ok(Json(ingest(&state, None, batch.events).await?))
}
