//! Archive, restore and purge agents.

use axum::extract::State;
use axum::http::StatusCode;
use taos_proto::agents::AgentWithToken;
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, Path};
use super::AppState;
use crate::agents::archive::{self, ArchivedAgent};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_archived))
        .routes(routes!(restore_archived))
        .routes(routes!(purge_archived))
}

/// Archived agents, newest first.
#[utoipa::path(get, path = "/api/agents/archived", tag = "agents",
    responses((status = 200, description = "Archived agents", body = Vec<ArchivedAgent>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_archived(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<ArchivedAgent>>, ApiError> {
    Ok(Json(archive::list(&state.db).await?))
}

/// Brings an archived agent back, running, with new credentials (shown once), under its old
/// slug or, if that was reused, `-2`, `-3`…
#[utoipa::path(post, path = "/api/agents/archived/{id}/restore", tag = "agents",
    params(("id" = String, Path, description = "Archive id")),
    responses((status = 200, description = "Restored", body = AgentWithToken),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such archive", body = ErrorBody),
        (status = 409, description = "Its container is in the backup repository and can't be brought back now (no incus, backups not set up, a move left unsettled)", body = ErrorBody),
        (status = 501, description = "The container runtime can't restore snapshots (Docker)", body = ErrorBody)))]
async fn restore_archived(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentWithToken>, ApiError> {
    // A container moved into the backup repository comes back to the pool first.
    let _moves = state.backups.bring_back_archive(&id).await?;
    let restored = archive::restore(&state.agents, &id).await?;
    Ok(Json(AgentWithToken {
        agent: crate::agents::view(&state.agents, &restored.agent).await?,
        agent_token: restored.agent_token,
        llm_key: Some(restored.llm_key),
    }))
}

/// Removes an archived agent for good: container, snapshots, archive, channels, messages, traces.
#[utoipa::path(delete, path = "/api/agents/archived/{id}", tag = "agents",
    params(("id" = String, Path, description = "Archive id")),
    responses((status = 204, description = "Purged"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such archive", body = ErrorBody)))]
async fn purge_archived(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _moves = state.backups.lock_archive_moves().await;
    let in_repository = archive::get(&state.db, &id).await?.backup_snapshot;
    archive::purge(&state.agents, &id).await?;
    if let Some(snapshot) = in_repository {
        state.backups.forget_archive_snapshot(&snapshot).await;
    }
    Ok(StatusCode::NO_CONTENT)
}
