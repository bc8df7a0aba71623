//! Lifecycle actions on agents: start, stop, restart, pause, resume, logs, and the bridge check
//! an update's gate runs.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use taos_proto::agents::Agent;
use taos_proto::error::ErrorBody;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, Path, Query};
use super::AppState;
use crate::agents::lifecycle::{self, Action};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_agent))
        .routes(routes!(stop_agent))
        .routes(routes!(restart_agent))
        .routes(routes!(pause_agent))
        .routes(routes!(resume_agent))
        .routes(routes!(agent_logs))
        .routes(routes!(bridge_check))
}

async fn act(state: AppState, slug: String, action: Action) -> Result<Json<Agent>, ApiError> {
    let record = lifecycle::act(&state.agents, &slug, action).await?;
    Ok(Json(crate::agents::view(&state.agents, &record).await?))
}

/// Starts a container agent.
#[utoipa::path(post, path = "/api/agents/{slug}/start", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn start_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    act(state, slug, Action::Start).await
}

/// Stops a container agent (gracefully, forced if that fails).
#[utoipa::path(post, path = "/api/agents/{slug}/stop", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn stop_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    act(state, slug, Action::Stop).await
}

/// Restarts a container agent.
#[utoipa::path(post, path = "/api/agents/{slug}/restart", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn restart_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    act(state, slug, Action::Restart).await
}

/// Pauses an agent: messages for it wait in its outbox, and its container stops.
#[utoipa::path(post, path = "/api/agents/{slug}/pause", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn pause_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    act(state, slug, Action::Pause).await
}

/// Resumes a paused agent; waiting messages are delivered.
#[utoipa::path(post, path = "/api/agents/{slug}/resume", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn resume_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    act(state, slug, Action::Resume).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// 1-1000, default 100.
    lines: Option<u32>,
}

/// The agent service's recent log lines (plain text).
#[utoipa::path(get, path = "/api/agents/{slug}/logs", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug"), LogParams),
    responses((status = 200, description = "Log lines", content_type = "text/plain", body = String),
        (status = 400, description = "Bad lines", body = ErrorBody), (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn agent_logs(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(p): Query<LogParams>,
) -> Result<impl IntoResponse, ApiError> {
    let lines = p.lines.unwrap_or(100);
    if !(1..=1000).contains(&lines) {
        return Err(ApiError::bad_request("lines must be between 1 and 1000"));
    }
    let text = lifecycle::logs(&state.agents, &slug, lines).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// How long a bridge check waits for the agent's answer.
const BRIDGE_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A round trip through the agent's live bridge: a delivery outside the chat (nothing is
/// stored) and the agent's settled reply. The model call it leads to is refused by the
/// gateway, so no budget is spent. An update's gate runs it for each agent connected before
/// the update.
#[utoipa::path(post, path = "/api/agents/{slug}/bridge-check", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent answered", body = taos_proto::bridge::BridgeCheck),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The agent is not connected, or a check of it is running", body = ErrorBody),
        (status = 504, description = "No answer within 20 s", body = ErrorBody)))]
async fn bridge_check(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<taos_proto::bridge::BridgeCheck>, ApiError> {
    use crate::bridge::CheckError;
    let agent = crate::agents::get_by_slug(&state.db, &slug).await?;
    let started = std::time::Instant::now();
    let answer = state
        .bridge
        .check_round_trip(&agent, BRIDGE_CHECK_WAIT)
        .await
        .map_err(|e| match e {
            CheckError::NotConnected(_) | CheckError::Busy(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            CheckError::NoAnswer { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "no_answer", e.to_string())
            }
        })?;
    Ok(Json(taos_proto::bridge::BridgeCheck {
        reply: answer.kind,
        text: answer.text,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}
