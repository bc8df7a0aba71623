//! `/api/auth/*`: first-run setup, password login with a session cookie, logout, device refresh.

use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use taos_proto::auth::{
    AuthStatus, Credentials, DeviceTokens, LoginResponse, OwnerSetup, RefreshRequest, User,
};
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{cookie, Auth, ClientAddr, Json, MaybeAuth};
use super::AppState;
use crate::auth::devices::Refreshed;
use crate::auth::sessions::{self, SessionPolicy, CSRF_COOKIE, SESSION_COOKIE};
use crate::auth::{devices, setup_code, users, AuthError, Principal};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(certificate))
        .routes(routes!(setup))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(refresh))
}

/// Both cookies are `__Host-` cookies: `Secure`, `Path=/` and no `Domain`, or browsers drop them.
fn session_cookies(session: &sessions::NewSession, policy: &SessionPolicy) -> [String; 2] {
    let max_age = policy.cookie_max_age_secs();
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

fn signed_in(
    status: StatusCode,
    user: User,
    session: sessions::NewSession,
    policy: &SessionPolicy,
) -> Response {
    let cookies = session_cookies(&session, policy);
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

/// Whether an owner exists, who is calling, and the host's key pin. Needs no credentials.
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
        Some(Principal::Device { .. }) => state.owner.get(&state.db).await?,
        _ => None,
    };
    Ok(Json(AuthStatus {
        configured,
        authenticated: principal.is_some(),
        user,
        fingerprint: state.pin.to_string(),
    }))
}

/// The host's self-signed certificate (PEM), to install in a browser's or the system's trust
/// store: a browser that trusts it lets the web UI keep chats for offline reading (service
/// workers refuse certificates clicked through). Compare its key with the fingerprint
/// (`taos-host fingerprint`) before trusting it. Needs no credentials: every handshake shows it.
#[utoipa::path(get, path = "/api/auth/certificate", tag = "auth", security(()),
    responses((status = 200, description = "The certificate, PEM", content_type = "application/x-pem-file", body = String),
        (status = 500, description = "The certificate file is unreadable", body = ErrorBody)))]
async fn certificate(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pem = crate::tls::certificate_pem(&state.data_dir).map_err(ApiError::internal)?;
    let mut response = pem.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"taos-host.crt\""),
    );
    Ok(response)
}

/// First-run setup: creates the owner and signs them in. Only while no user exists, and only
/// with the setup code the host printed at start (also in `setup-code` in its data dir).
#[utoipa::path(post, path = "/api/auth/setup", tag = "auth", security(()),
    request_body = OwnerSetup,
    responses(
        (status = 201, description = "Owner created and signed in; cookies set", body = LoginResponse),
        (status = 400, description = "Bad username or password shorter than 10 characters", body = ErrorBody),
        (status = 403, description = "Wrong setup code", body = ErrorBody),
        (status = 409, description = "Already configured", body = ErrorBody),
        (status = 429, description = "Too many wrong codes from this address; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many sign-ins at once on this host; see Retry-After", body = ErrorBody)))]
async fn setup(
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    Json(body): Json<OwnerSetup>,
) -> Result<Response, ApiError> {
    if users::count(&state.db).await? > 0 {
        return Err(AuthError::AlreadyConfigured.into());
    }
    check_setup_code(&state, client.ip(), &body.setup_code)?;
    let user = users::setup_owner(&state.db, &body.username, &body.password).await?;
    tracing::info!(username = %user.username, "owner account created");
    if let Err(e) = setup_code::remove(&state.data_dir) {
        tracing::warn!(error = %e, "cannot remove the used setup code");
    }
    let policy = state.session_policy();
    let session = sessions::create(&state.db, user.id, &policy).await?;
    Ok(signed_in(StatusCode::CREATED, user, session, &policy))
}

/// The setup code must match, compared in constant time; wrong codes count against the
/// address like failed logins, so it can't be guessed.
fn check_setup_code(state: &AppState, ip: std::net::IpAddr, offered: &str) -> Result<(), ApiError> {
    let attempt = state
        .login_limiter
        .begin(ip, Instant::now())
        .map_err(|refused| AuthError::RateLimited {
            retry_after_secs: refused.retry_after().as_secs().max(1),
        })?;
    if setup_code::matches(&state.data_dir, offered).map_err(ApiError::internal)? {
        attempt.succeeded();
        return Ok(());
    }
    attempt.failed(Instant::now());
    tracing::info!(%ip, "wrong setup code");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "bad_setup_code",
        "wrong setup code: use the one taos-host printed when it started (also in the \
         setup-code file in its data directory)",
    ))
}

/// Password login. Sets `__Host-taos_session` (HttpOnly) and `__Host-taos_csrf` cookies. The
/// session ends after 7 days without use and 30 days after login at the latest (`[auth]`).
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
            let policy = state.session_policy();
            let session = sessions::create(&state.db, user.id, &policy).await?;
            Ok(signed_in(StatusCode::OK, user, session, &policy))
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

/// Ends the browser session server-side and clears its cookies. Its chat WebSockets (close
/// code 4001) and event streams (an `unauthorized` event) end at once.
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
        let token_hash = sessions::revoke(&state.db, token).await?;
        state.live.revoke_session(&token_hash);
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
/// A device revoked this way loses its open connections at once.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New access and refresh tokens", body = DeviceTokens),
        (status = 401, description = "Unknown, used or expired refresh token", body = ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<DeviceTokens>, ApiError> {
    let ttl = state.config.auth.access_token_secs;
    match devices::refresh(&state.db, &body.refresh_token, ttl).await? {
        Refreshed::Tokens(tokens) => Ok(Json(tokens)),
        Refreshed::ReplayRevoked { device_id } => {
            state.live.revoke_device(device_id);
            state
                .hub
                .announce(
                    "device.revoked",
                    serde_json::json!({"id": device_id, "reason": "refresh_token_replayed"}),
                )
                .await;
            Err(AuthError::InvalidToken.into())
        }
    }
}
