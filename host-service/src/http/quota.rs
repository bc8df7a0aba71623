//! Disk quota: an agent's disk, resizing it, and scanning on demand.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use taos_proto::error::ErrorBody;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, Path};
use super::AppState;
use crate::agents::quota;
use taos_proto::agents::DiskStatus;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agent_disk))
        .routes(routes!(resize_quota))
        .routes(routes!(scan))
}

/// An agent's disk: used, quota, percent and state as of the last sample.
#[utoipa::path(get, path = "/api/agents/{slug}/disk", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Disk status", body = DiskStatus),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "Not a container agent", body = ErrorBody)))]
async fn agent_disk(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<DiskStatus>, ApiError> {
    Ok(Json(quota::status(&state.agents, &slug).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// 1–1024.
    size_gib: u64,
}

/// Resizes an agent's disk quota; the state is re-evaluated at once, and an agent paused only
/// for its disk resumes when it is back under its quota.
#[utoipa::path(post, path = "/api/agents/{slug}/quota", tag = "agents", request_body = Resize,
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Disk status after the resize", body = DiskStatus),
        (status = 400, description = "Size out of range", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The storage pool can't enforce quotas, or not a container agent", body = ErrorBody)))]
async fn resize_quota(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Json(body): Json<Resize>,
) -> Result<Json<DiskStatus>, ApiError> {
    Ok(Json(
        quota::resize(&state.agents, &slug, body.size_gib).await?,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanResult {
    scanned: usize,
    results: Vec<DiskStatus>,
}

/// Samples every container agent's disk now.
#[utoipa::path(post, path = "/api/disk-quota/scan", tag = "agents",
    responses((status = 200, description = "What was found", body = ScanResult),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn scan(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<ScanResult>, ApiError> {
    let results = quota::scan_all(&state.agents).await?;
    Ok(Json(ScanResult {
        scanned: results.len(),
        results,
    }))
}
