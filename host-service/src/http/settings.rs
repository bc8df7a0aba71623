//! The Settings screen's routes: a user's own password, the owner's list of accounts, and where
//! this host is reached (the addresses pairing codes carry, the agent listener).

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use taos_proto::auth::{NewUser, PasswordChange, User};
use taos_proto::error::ErrorBody;
use taos_proto::ops::HostInfo;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ClientAddr, Json, OwnerLike, OwnerOrAdmin, Path, SignedInUser};
use super::AppState;
use crate::auth::{users, AuthError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(host_info))
        .routes(routes!(change_password))
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
}

/// Where this host is reached: the addresses its pairing codes carry (and whether a phone
/// could reach any of them), and the agent listener's URLs for a sidecar on this machine.
#[utoipa::path(get, path = "/api/host", tag = "ops",
    responses((status = 200, description = "The host's addresses", body = HostInfo),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn host_info(_auth: OwnerLike, State(state): State<AppState>) -> Json<HostInfo> {
    let reachable = state.pairing_addresses.iter().any(|a| {
        a.parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| !addr.ip().is_loopback())
    });
    let agent_url = format!("http://{}", state.agents.agent_addr);
    Json(HostInfo {
        host_name: state.host_name.clone(),
        pairing_addresses: state.pairing_addresses.clone(),
        pairing_reachable: reachable,
        gateway_url: format!("{agent_url}/v1"),
        agent_url,
        fingerprint: state.pin.to_string(),
    })
}

/// Changes the signed-in user's own password. Every other session of theirs ends at once (its
/// WebSockets close with 4001, its event streams get `unauthorized`); this one stays. Wrong
/// current passwords count against the address like failed logins.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", request_body = PasswordChange,
    responses((status = 204, description = "Changed; the user's other sessions ended"),
        (status = 400, description = "New password shorter than 10 characters", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Wrong current password, or not a signed-in user (a device or the local admin has no password)", body = ErrorBody),
        (status = 429, description = "Too many wrong passwords from this address; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many sign-ins at once on this host; see Retry-After", body = ErrorBody)))]
async fn change_password(
    SignedInUser {
        user_id,
        session_hash,
    }: SignedInUser,
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    Json(body): Json<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let ip = client.ip();
    // Taken before the check, like a login's: wrong passwords in flight count as failures.
    let attempt = state
        .login_limiter
        .begin(ip, std::time::Instant::now())
        .map_err(|refused| AuthError::RateLimited {
            retry_after_secs: refused.retry_after().as_secs().max(1),
        })?;
    match users::change_password(
        &state.db,
        user_id,
        &body.current_password,
        &body.new_password,
        &session_hash,
    )
    .await
    {
        Ok(ended) => {
            attempt.succeeded();
            for hash in &ended {
                state.live.revoke_session(hash);
            }
            tracing::info!(%user_id, sessions_ended = ended.len(), "password changed");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(AuthError::WrongPassword) => {
            attempt.failed(std::time::Instant::now());
            tracing::info!(%ip, %user_id, "wrong current password");
            Err(AuthError::WrongPassword.into())
        }
        Err(e) => {
            attempt.not_checked();
            Err(e.into())
        }
    }
}

/// Every account, the owner first.
#[utoipa::path(get, path = "/api/users", tag = "auth",
    responses((status = 200, description = "Accounts", body = Vec<User>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_users(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(users::list(&state.db).await?))
}

/// Adds an account for someone else in the household. They see only the channels they are
/// put in. Only the owner's signed-in session or the local admin: a device can't mint accounts.
#[utoipa::path(post, path = "/api/users", tag = "auth", request_body = NewUser,
    responses((status = 201, description = "The account", body = User),
        (status = 400, description = "Bad or taken username, or a password shorter than 10 characters", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner's session or the local admin", body = ErrorBody)))]
async fn create_user(
    OwnerOrAdmin(principal): OwnerOrAdmin,
    State(state): State<AppState>,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    if users::count(&state.db).await? == 0 {
        // The first account is the owner's, made by first-run setup with its setup code.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            "there is no owner yet",
        ));
    }
    let user = users::create(&state.db, &body.username, &body.password).await?;
    tracing::info!(username = %user.username, by = %principal.label(), "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

/// Deletes an account (never the owner's). Its sessions end and its open connections close at
/// once; it leaves every channel.
#[utoipa::path(delete, path = "/api/users/{id}", tag = "auth",
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "Not a user id, or the owner", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner's session or the local admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody)))]
async fn delete_user(
    OwnerOrAdmin(principal): OwnerOrAdmin,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let user = users::delete(&state.db, id).await.map_err(|e| match e {
        AuthError::NotFound => ApiError::not_found("no such user"),
        e => e.into(),
    })?;
    let closed = state.live.revoke_user(id);
    tracing::info!(username = %user.username, by = %principal.label(), connections = closed, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
