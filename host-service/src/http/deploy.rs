//! `/api/frameworks`, `POST /api/agents/deploy` and deploy progress.

use axum::extract::State;
use axum::http::StatusCode;
use taos_proto::agents::{DeployAccepted, DeployRequest, DeployStatus, HostCapacity};
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{human_member, Auth, Json, OwnerLike, Path};
use super::AppState;
use crate::agents::frameworks::{self, Manifest};
use crate::agents::{capacity, deploy};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_frameworks))
        .routes(routes!(host_capacity))
        .routes(routes!(deploy_agent))
        .routes(routes!(deploy_status))
}

/// Frameworks an agent can be deployed with.
#[utoipa::path(get, path = "/api/frameworks", tag = "agents",
    responses((status = 200, description = "Framework manifests", body = Vec<Manifest>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_frameworks(_auth: Auth) -> Json<Vec<Manifest>> {
    Json(frameworks::all())
}

/// What the host has free for new agents: available memory and free space where agents'
/// root disks live, to compare with each framework's `requires`. Figures read now; one that
/// can't be read is null and `problems` says why.
#[utoipa::path(get, path = "/api/host/capacity", tag = "agents",
    responses((status = 200, description = "Free memory and agents' storage", body = HostCapacity),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn host_capacity(_auth: Auth, State(state): State<AppState>) -> Json<HostCapacity> {
    Json(capacity::host_capacity(&state.agents).await)
}

/// Deploys an agent into its own container. Answers at once; follow the progress at
/// `GET /api/agents/{slug}/deploy` or on `/api/events` (`deploy.progress`, `deploy.finished`).
#[utoipa::path(post, path = "/api/agents/deploy", tag = "agents", request_body = DeployRequest,
    responses((status = 202, description = "Deploy started", body = DeployAccepted),
        (status = 400, description = "Bad name, unknown framework or model, bad limits", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 409, description = "Not enough free memory on the host for the agent's limit (`not_enough_memory`)", body = ErrorBody),
        (status = 503, description = "No container runtime", body = ErrorBody)))]
async fn deploy_agent(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<DeployRequest>,
) -> Result<(StatusCode, Json<DeployAccepted>), ApiError> {
    let owner = human_member(&state, &principal).await?;
    let (record, deploy_id) = deploy::start(&state.agents, &owner, body).await?;
    let dm = state.chat.dm_of(record.id).await?;
    let agent = record.to_api(false, dm);
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployAccepted { agent, deploy_id }),
    ))
}

/// The newest deploy of an agent: its steps with state and timestamps, and why it failed.
#[utoipa::path(get, path = "/api/agents/{slug}/deploy", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Deploy progress", body = DeployStatus),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No deploy for that slug", body = ErrorBody)))]
async fn deploy_status(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<DeployStatus>, ApiError> {
    if !crate::agents::is_valid_slug(&slug) {
        return Err(ApiError::not_found("no deploy for that agent"));
    }
    Ok(Json(deploy::status(&state.db, &slug).await?))
}
