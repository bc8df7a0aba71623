//! The public listener's trace routes (owner or local admin, naming an existing agent), and
//! the call into `trace::ingest` both listeners share.

use axum::extract::State;
use taos_proto::error::ErrorBody;
use taos_proto::trace::{NewTraceEvent, TraceAck, TraceBatch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerOrAdmin};
use super::AppState;
use crate::agents::AgentRecord;
use crate::trace::ingest::Ingest;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_trace))
        .routes(routes!(post_trace_batch))
}

/// Stores events through `trace::ingest` with this host's store and limits.
pub async fn ingest(
    state: &AppState,
    caller: Option<&AgentRecord>,
    events: Vec<NewTraceEvent>,
) -> Result<TraceAck, ApiError> {
    let to = Ingest {
        db: &state.db,
        traces: &state.traces,
        limiter: &state.trace_limiter,
        max_event_bytes: state.config.traces.max_event_bytes,
    };
    Ok(crate::trace::ingest::ingest(&to, caller, events).await?)
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
