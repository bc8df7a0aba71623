//! Backups: settings (destination, passphrase, retention), running one now, and the runs.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use taos_proto::agents::AgentWithToken;
use taos_proto::backup::{
    BackupAgentRestore, BackupDrill, BackupPassphraseChange, BackupRun, BackupSettings,
    BackupSettingsSaved, BackupSettingsUpdate, DrillReason,
};
use taos_proto::error::ErrorBody;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, OwnerOrAdmin, Path, Query};
use super::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(change_passphrase))
        .routes(routes!(list_runs, start_run))
        .routes(routes!(get_run))
        .routes(routes!(start_drill))
        .routes(routes!(list_drills))
        .routes(routes!(get_drill))
        .routes(routes!(restore_agent))
}

/// Where backups go and how many are kept. The passphrase is never returned.
#[utoipa::path(get, path = "/api/backups/settings", tag = "backups",
    responses((status = 200, description = "The settings", body = BackupSettings),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn get_settings(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<BackupSettings>, ApiError> {
    Ok(Json(state.backups.settings().await?))
}

/// Sets the destination, passphrase and retention. Without a passphrase on the first save the
/// host makes one and returns it this once. Only the owner's session or the local admin: the
/// passphrase opens a copy of everything on the host.
#[utoipa::path(put, path = "/api/backups/settings", tag = "backups",
    request_body = BackupSettingsUpdate,
    responses((status = 200, description = "Saved", body = BackupSettingsSaved),
        (status = 400, description = "Bad destination (relative, `..`, NUL, inside the data dir), passphrase or retention; nothing changed", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner's session or the local admin", body = ErrorBody),
        (status = 409, description = "A new passphrase for a repository already made with the current one", body = ErrorBody)))]
async fn put_settings(
    OwnerOrAdmin(principal): OwnerOrAdmin,
    State(state): State<AppState>,
    Json(body): Json<BackupSettingsUpdate>,
) -> Result<Json<BackupSettingsSaved>, ApiError> {
    let saved = state.backups.save_settings(body).await?;
    tracing::info!(by = %principal.label(), "backup settings changed");
    Ok(Json(saved))
}

/// Changes the repository's passphrase (restic `key add`, then `key remove` of the old key):
/// every backup stays readable with the new one, and the old one stops working. Without a
/// passphrase the host makes one and returns it this once. Only the owner's session or the
/// local admin.
#[utoipa::path(post, path = "/api/backups/passphrase", tag = "backups",
    request_body = BackupPassphraseChange,
    responses((status = 200, description = "Changed", body = BackupSettingsSaved),
        (status = 400, description = "Bad passphrase (too short, control characters, the current one); nothing changed", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner's session or the local admin", body = ErrorBody),
        (status = 409, description = "Backups not set up, or a backup, drill or other change is running", body = ErrorBody)))]
async fn change_passphrase(
    OwnerOrAdmin(principal): OwnerOrAdmin,
    State(state): State<AppState>,
    Json(body): Json<BackupPassphraseChange>,
) -> Result<Json<BackupSettingsSaved>, ApiError> {
    let saved = state.backups.change_passphrase(body.passphrase).await?;
    tracing::info!(by = %principal.label(), "backup passphrase changed");
    Ok(Json(saved))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// 1-500, default 50.
    limit: Option<i64>,
}

/// Backup runs, newest first, with what each added and its snapshot.
#[utoipa::path(get, path = "/api/backups", tag = "backups", params(ListParams),
    responses((status = 200, description = "Runs, newest first", body = Vec<BackupRun>),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_runs(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<BackupRun>>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=crate::backup::MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    Ok(Json(state.backups.list(limit).await?))
}

/// Runs a backup now. Answers at once with the run (`queued`); `backup.progress` and
/// `backup.finished` events follow on `/api/events`, and a failure notifies.
#[utoipa::path(post, path = "/api/backups", tag = "backups",
    responses((status = 202, description = "Started", body = BackupRun),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 409, description = "Not set up yet, or a backup is already running", body = ErrorBody)))]
async fn start_run(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<BackupRun>), ApiError> {
    let run = state.backups.start().await?;
    tracing::info!(run = %run.id, by = %principal.label(), "backup started");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// One run.
#[utoipa::path(get, path = "/api/backups/{id}", tag = "backups",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = BackupRun),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody)))]
async fn get_run(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BackupRun>, ApiError> {
    Ok(Json(state.backups.get(&id).await?))
}

/// Runs a restore drill on the newest backup now: `restic check --read-data-subset`, the
/// snapshot restored into a throwaway folder, its database checked against its manifest, and
/// each agent's container imported into a throwaway incus project and started. Answers at once
/// (`running`); `backup.drill` follows on `/api/events`, and a failed drill notifies.
#[utoipa::path(post, path = "/api/backups/drill", tag = "backups",
    responses((status = 202, description = "Started", body = BackupDrill),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 409, description = "Not set up, no backup made yet, or a backup or drill is running", body = ErrorBody)))]
async fn start_drill(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<BackupDrill>), ApiError> {
    let drill = state.backups.start_drill(DrillReason::Manual).await?;
    tracing::info!(drill = %drill.id, by = %principal.label(), "restore drill started");
    Ok((StatusCode::ACCEPTED, Json(drill)))
}

/// Restore drills, newest first, with each check's finding.
#[utoipa::path(get, path = "/api/backups/drills", tag = "backups", params(ListParams),
    responses((status = 200, description = "Drills, newest first", body = Vec<BackupDrill>),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_drills(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<BackupDrill>>, ApiError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=crate::backup::MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    Ok(Json(state.backups.drills(limit).await?))
}

/// One drill.
#[utoipa::path(get, path = "/api/backups/drills/{id}", tag = "backups",
    params(("id" = String, Path, description = "Drill id")),
    responses((status = 200, description = "The drill", body = BackupDrill),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such drill", body = ErrorBody)))]
async fn get_drill(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BackupDrill>, ApiError> {
    Ok(Json(state.backups.drill(&id).await?))
}

/// Brings one agent of a backup back into this host: its container (imported, started with
/// new credentials, shown once), its DM history and its traces, under its old slug or, if that
/// is taken, `-2`, `-3`… Answers when the agent is up (or why it isn't).
#[utoipa::path(post, path = "/api/backups/agents", tag = "backups",
    request_body = BackupAgentRestore,
    responses((status = 200, description = "Restored and running", body = AgentWithToken),
        (status = 400, description = "Bad slug or snapshot id; nothing changed", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such snapshot, agent, or container in the backup; nothing changed", body = ErrorBody),
        (status = 409, description = "Not set up, the agent is on this host already, another schema, its container exported by another runtime than this host's (or none here), or another agent restore is running; nothing changed", body = ErrorBody)))]
async fn restore_agent(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<BackupAgentRestore>,
) -> Result<Json<AgentWithToken>, ApiError> {
    let restored = state.backups.restore_agent(&body).await?;
    tracing::info!(agent = %restored.agent.slug, by = %principal.label(), "agent restored from a backup");
    Ok(Json(AgentWithToken {
        agent: crate::agents::view(&state.agents, &restored.agent).await?,
        agent_token: restored.agent_token,
        llm_key: Some(restored.llm_key),
    }))
}
