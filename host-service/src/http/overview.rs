//! The home screen: the board at a glance and its sampled history.

use axum::extract::State;
use serde::Deserialize;
use taos_proto::error::ErrorBody;
use taos_proto::ops::{HostOverview, SampleHistory};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, Query};
use super::AppState;
use crate::overview;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(host_overview))
        .routes(routes!(host_samples))
}

/// The runtime's health in words, as `/api/health` shows it.
pub fn runtime_words(state: &AppState) -> String {
    state
        .health
        .read()
        .ok()
        .and_then(|h| h.get("runtime").cloned())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The board at a glance: the newest host sample (CPU, memory, the data dir's disk, the
/// agents' storage), LiteLLM's and the runtime's state, each agent's state, memory, disk and
/// spend today. The same body follows on `/api/events` after each sample (`host.overview`,
/// sent live only, without an id).
#[utoipa::path(get, path = "/api/host/overview", tag = "ops",
    responses((status = 200, description = "The overview", body = HostOverview),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn host_overview(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<HostOverview>, ApiError> {
    Ok(Json(
        overview::overview(
            &state.agents,
            &state.host_name,
            state.config.overview.sample_secs,
            runtime_words(&state),
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    /// How far back, 1–168 hours (samples are kept 7 days); default 24.
    hours: Option<u32>,
    /// At most this many points per series, 1–1000; default 200.
    points: Option<u32>,
    /// Only this agent's series (and the host's).
    agent: Option<String>,
}

/// Sampled history of the host and its agents, oldest first, averaged into buckets so each
/// series has at most `points` points.
#[utoipa::path(get, path = "/api/host/samples", tag = "ops", params(HistoryParams),
    responses((status = 200, description = "The samples", body = SampleHistory),
        (status = 400, description = "hours or points out of range, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn host_samples(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<SampleHistory>, ApiError> {
    Ok(Json(
        overview::history(
            &state.db,
            params.hours.unwrap_or(24),
            params.points.unwrap_or(200),
            params.agent.as_deref(),
            crate::db::now_ms(),
        )
        .await?,
    ))
}
