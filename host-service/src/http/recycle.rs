//! The recycle bin inside agents.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use taos_proto::error::ErrorBody;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, Path};
use super::AppState;
use crate::agents::recycle::{self, RecycleList};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agent_bin))
        .routes(routes!(all_bins))
        .routes(routes!(restore_item))
        .routes(routes!(purge_item))
}

/// What an agent deleted in the last 30 days.
#[utoipa::path(get, path = "/api/agents/{slug}/recycle", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Items; status container_offline if it isn't running", body = RecycleList),
        (status = 401, description = "No credentials", body = ErrorBody), (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn agent_bin(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<RecycleList>, ApiError> {
    Ok(Json(recycle::list(&state.agents, &slug).await?))
}

/// Every container agent's recycle bin.
#[utoipa::path(get, path = "/api/recycle", tag = "agents",
    responses((status = 200, description = "Per agent", body = Vec<RecycleList>),
        (status = 401, description = "No credentials", body = ErrorBody), (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn all_bins(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<RecycleList>>, ApiError> {
    Ok(Json(recycle::list_all(&state.agents).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreItem {
    id: String,
}

/// Puts an item back where it was deleted from.
#[utoipa::path(post, path = "/api/agents/{slug}/recycle/restore", tag = "agents", request_body = RestoreItem,
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 204, description = "Restored"), (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody), (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent or item", body = ErrorBody),
        (status = 409, description = "Something is at that path now, or the container is offline", body = ErrorBody)))]
async fn restore_item(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Json(body): Json<RestoreItem>,
) -> Result<StatusCode, ApiError> {
    recycle::restore(&state.agents, &slug, &body.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an item for good.
#[utoipa::path(delete, path = "/api/agents/{slug}/recycle/{id}", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug"), ("id" = String, Path, description = "Item id")),
    responses((status = 204, description = "Purged"), (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody), (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent or item", body = ErrorBody),
        (status = 409, description = "The container is offline", body = ErrorBody)))]
async fn purge_item(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    recycle::purge(&state.agents, &slug, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
