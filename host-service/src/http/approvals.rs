//! Tool approvals: people list and answer them (`/api/approvals`); an agent asks whether a
//! tool call may run (`POST /api/openclaw/sessions/{agent}/approvals` on the agent listener).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use taos_proto::approvals::{Approval, ApprovalAnswer, ApprovalRequest, DecideApproval};
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::chat::chat_identity;
use super::error::ApiError;
use super::extract::{authorization_bearer, human_member, AgentAuth, Auth, Json, Path};
use super::AppState;
use crate::approvals::{DEFAULT_WAIT, MAX_WAIT};
use crate::chat::Viewer;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_approvals))
        .routes(routes!(decide))
}

/// Tool calls waiting for a person's approval, oldest first: those in channels the caller
/// sees (the owner side sees all).
#[utoipa::path(get, path = "/api/approvals", tag = "approvals",
    responses((status = 200, description = "Pending approvals", body = Vec<Approval>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_approvals(
    Auth(principal): Auth,
    State(state): State<AppState>,
) -> Result<Json<Vec<Approval>>, ApiError> {
    let me = chat_identity(&state, &principal).await?;
    Ok(Json(
        state
            .approvals
            .list_pending(Viewer::of(me.as_deref()))
            .await?,
    ))
}

/// Approves or denies a tool call. Anyone who sees the agent's channel may answer; the agent's
/// waiting call runs (or is told it was denied) at once.
#[utoipa::path(post, path = "/api/approvals/{id}", tag = "approvals", request_body = DecideApproval,
    params(("id" = String, Path, description = "Approval id")),
    responses((status = 200, description = "The decided approval", body = Approval),
        (status = 400, description = "Bad decision", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "The caller does not see the agent's channel", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 409, description = "Already decided or expired", body = ErrorBody)))]
async fn decide(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<DecideApproval>,
) -> Result<Json<Approval>, ApiError> {
    let me = chat_identity(&state, &principal).await?;
    let by = human_member(&state, &principal).await?;
    Ok(Json(
        state
            .approvals
            .decide(Viewer::of(me.as_deref()), &by, &id, body.decision)
            .await?,
    ))
}

/// `POST /api/openclaw/sessions/{agent}/approvals` (agent listener): may this tool call run?
/// Answers at once for `auto` and `off`; under `ask`, waits up to `wait_secs` (default 25, at
/// most 60) for a person and answers with the state then, `pending` included: the agent asks
/// again (the same call finds the same approval). The wait ends early when the agent's token
/// is rotated or the agent archived (401), or the host stops. Each request takes one token of
/// the agent's reply rate (429 beyond it).
pub async fn agent_request(
    auth: AgentAuth,
    State(state): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ApprovalRequest>,
) -> Result<Json<ApprovalAnswer>, ApiError> {
    auth.require_self(&agent)?;
    // An agent's questions share its reply rate (`[bridge]`): asking is as cheap to send.
    state.reply_limiter.take(auth.0.id, 1)?;
    let record = auth.0;
    // Subscribed before the request is stored, so a kick in between is still seen.
    let mut kicks = state.bridge.wake_receiver(record.id);
    let answer = state.approvals.request(&record, &body).await?;
    let Some(id) = answer.id.clone().filter(|_| !answer.state.is_decided()) else {
        return Ok(Json(answer));
    };
    let wait = body
        .wait_secs
        .map_or(DEFAULT_WAIT, Duration::from_secs)
        .min(MAX_WAIT);
    let token = authorization_bearer(&headers)
        .ok_or_else(ApiError::unauthorized)?
        .to_string();
    let mut shutdown = state.shutdown.clone();
    let waiting = state.approvals.wait(&id, wait);
    tokio::pin!(waiting);
    loop {
        tokio::select! {
            answer = &mut waiting => return Ok(Json(answer?)),
            changed = kicks.changed() => {
                if changed.is_err() {
                    return Err(ApiError::unauthorized());
                }
                // Woken for a new delivery, a pause, or a kick: only the last ends the wait.
                let still = crate::agents::authenticate(&state.db, &token).await?;
                if still.is_none_or(|a| a.id != record.id) {
                    return Err(ApiError::unauthorized());
                }
            }
            _ = shutdown.changed() => return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the host is stopping; ask again",
            )),
        }
    }
}
