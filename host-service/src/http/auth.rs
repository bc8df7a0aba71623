//! `/api/auth/*`: first-run setup, password login with a session cookie, logout, device refresh.

use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use taos_proto::auth::{
    AuthStatus, Credentials, DeviceTokens, LoginResponse, RefreshRequest, User,
};
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{cookie, Auth, ClientAddr, Json, MaybeAuth};
use super::AppState;
use crate::auth::sessions::{self, CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_MS};
use crate::auth::{devices, users, AuthError, Principal};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(setup))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(refresh))
}

fn session_cookies(session: &sessions::NewSession) -> [String; 2] {
    let max_age = SESSION_TTL_MS / 1000;
    [
        format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}",
            session.token
        ),
        // Readable by the page's script on purpose: it echoes it as X-CSRF-Token.
        format!(
            "{CSRF_COOKIE}={}; Path=/; Secure; SameSite=Strict; Max-Age={max_age}",
            session.csrf_token
        ),
    ]
}

fn signed_in(status: StatusCode, user: User, session: sessions::NewSession) -> Response {
    let cookies = session_cookies(&session);
    let body = LoginResponse {
        user,
        csrf_token: session.csrf_token,
    };
    let mut response = (status, Json(body)).into_response();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Whether an owner exists, and who is calling. Needs no credentials.
#[utoipa::path(get, path = "/api/auth/status", tag = "auth", security(()),
    responses((status = 200, description = "Setup and sign-in state", body = AuthStatus)))]
async fn status(
    State(state): State<AppState>,
    MaybeAuth(principal): MaybeAuth,
) -> Result<Json<AuthStatus>, ApiError> {
    let configured = users::count(&state.db).await? > 0;
    let user = match &principal {
        Some(Principal::User { user_id, .. }) => users::get(&state.db, *user_id).await?,
        // A paired device acts for the owner (its messages are the owner's), so the app
        // shows the owner as who is signed in.
        Some(Principal::Device { .. }) => users::owner(&state.db).await?,
        _ => None,
    };
    Ok(Json(AuthStatus {
        configured,
        authenticated: principal.is_some(),
        user,
    }))
}

/// First-run setup: creates the owner and signs them in. Only while no user exists.
#[utoipa::path(post, path = "/api/auth/setup", tag = "auth", security(()),
    request_body = Credentials,
    responses(
        (status = 201, description = "Owner created and signed in; cookies set", body = LoginResponse),
        (status = 400, description = "Bad username or password shorter than 10 characters", body = ErrorBody),
        (status = 409, description = "Already configured", body = ErrorBody),
        (status = 503, description = "Too many sign-ins at once on this host; see Retry-After", body = ErrorBody)))]
async fn setup(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<Response, ApiError> {
    let user = users::setup_owner(&state.db, &body.username, &body.password).await?;
    tracing::info!(username = %user.username, "owner account created");
    let session = sessions::create(&state.db, user.id).await?;
    Ok(signed_in(StatusCode::CREATED, user, session))
}

/// Password login. Sets `taos_session` (HttpOnly) and `taos_csrf` cookies.
///
/// The client's failed-login budget is taken *before* the password is checked (attempts in
/// flight count as failures until they are answered), and the check itself waits in the one
/// bounded password worker: a flood is refused at once with 429 (this client) or 503 (everyone
/// together), never queued as work.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", security(()),
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; cookies set", body = LoginResponse),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failures or attempts from this address; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many sign-ins at once on this host; see Retry-After", body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    Json(body): Json<Credentials>,
) -> Result<Response, ApiError> {
    let ip = client.ip();
    let attempt = match state.login_limiter.begin(ip, Instant::now()) {
        Ok(attempt) => attempt,
        Err(refused) => {
            state.metrics.login_rate_limited();
            return Err(AuthError::RateLimited {
                retry_after_secs: refused.retry_after().as_secs().max(1),
            }
            .into());
        }
    };
    match users::authenticate(&state.db, &body.username, &body.password).await {
        Ok(user) => {
            attempt.succeeded();
            let session = sessions::create(&state.db, user.id).await?;
            Ok(signed_in(StatusCode::OK, user, session))
        }
        Err(AuthError::InvalidCredentials) => {
            attempt.failed(Instant::now());
            state.metrics.login_failed();
            tracing::info!(%ip, "failed login");
            Err(AuthError::InvalidCredentials.into())
        }
        Err(e @ AuthError::Busy { .. }) => {
            attempt.not_checked();
            state.metrics.login_rate_limited();
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Ends the browser session server-side and clears its cookies.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Missing X-CSRF-Token", body = ErrorBody)))]
async fn logout(
    _auth: Auth,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        sessions::revoke(&state.db, token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        let expired = format!("{name}=; Path=/; Secure; SameSite=Strict; Max-Age=0");
        if let Ok(v) = HeaderValue::from_str(&expired) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(response)
}

/// Exchanges a device refresh token for new tokens. The old refresh token stops working;
/// presenting it again revokes the device, unless within an hour nothing it was exchanged for
/// was used (the answer was lost): then it gets fresh tokens and the unused ones stop working.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New access and refresh tokens", body = DeviceTokens),
        (status = 401, description = "Unknown, used or expired refresh token", body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<DeviceTokens>, ApiError> {
    Ok(Json(
        devices::refresh(&state.db, &body.refresh_token).await?,
    ))
}
