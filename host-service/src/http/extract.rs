//! Extractors: JSON, query and path that answer with our error body (400, not axum's 422), the
//! client address, and `Auth`, which decides who is calling.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::auth::sessions::{CSRF_HEADER, SESSION_COOKIE};
use crate::auth::{
    devices, local_token, secrets_equal, sessions, Principal, ACCESS_TOKEN_PREFIX,
    LOCAL_TOKEN_PREFIX,
};

/// The TCP peer of a connection, attached by the listeners.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// JSON body. Malformed JSON or wrong types → 400 `invalid_json`; too large → 413.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than the host accepts",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            rejection.body_text(),
        ),
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query string → 400 `invalid_query` on bad input.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
            })
    }
}

/// Path parameters → 400 `invalid_path` on bad input.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r: PathRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
            })
    }
}

pub fn client_addr(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(addr))| *addr)
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn authorization_bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The bearer token a request carries: the `Authorization` header, or a WebSocket's
/// `bearer.<token>` subprotocol.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return authorization_bearer(headers);
    }
    // Browsers can't set headers on a WebSocket; they offer `bearer.<token>` as a subprotocol.
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("bearer."))
}

fn is_websocket_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        || is_h2_websocket(parts)
}

/// A WebSocket over HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol = websocket`. It
/// has no `Upgrade` header, so the HTTP/1.1 test alone would let it skip the Origin check.
fn is_h2_websocket(parts: &Parts) -> bool {
    parts.method == Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A cookie-authenticated WebSocket must come from our own origin: browsers attach cookies to
/// cross-site WebSocket handshakes, and CSRF tokens can't ride on them.
fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser
    };
    // HTTP/2 carries the host in the URI's authority instead of a Host header.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or_default();
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Decides the principal. `Ok(None)` means the request carried no credentials at all; invalid
/// credentials are an error, never silently anonymous.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<Principal>, ApiError> {
    if let Some(token) = bearer(&parts.headers) {
        if token.starts_with(LOCAL_TOKEN_PREFIX) {
            let local = client_addr(parts).is_some_and(|a| local_token::is_local_client(a.ip()));
            if local && secrets_equal(token, &state.local_token) {
                return Ok(Some(Principal::LocalAdmin));
            }
            return Err(ApiError::unauthorized());
        }
        if token.starts_with(ACCESS_TOKEN_PREFIX) {
            return match devices::authenticate_access(&state.db, token).await? {
                Some(device_id) => Ok(Some(Principal::Device { device_id })),
                None => Err(ApiError::unauthorized()),
            };
        }
        return Err(ApiError::unauthorized());
    }
    if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
        let Some(session) = sessions::lookup(&state.db, token, &state.session_policy()).await?
        else {
            return Err(ApiError::unauthorized());
        };
        if is_websocket_upgrade(parts) && !same_origin(&parts.headers, &parts.uri) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_origin",
                "WebSocket from another origin",
            ));
        }
        // A browser can't add headers to a WebSocket handshake: the Origin check above stands
        // in for CSRF there (an h2 handshake is a CONNECT, which would otherwise need it).
        if changes_state(&parts.method) && !is_h2_websocket(parts) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !secrets_equal(sent, &session.csrf_token) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "missing or wrong X-CSRF-Token header",
                ));
            }
        }
        return Ok(Some(session.principal));
    }
    Ok(None)
}

/// An authenticated caller; rejects with 401 (or 403 for a failed CSRF check).
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await? {
            Some(principal) => Ok(Auth(principal)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The caller if any, for routes that answer everyone (like `/api/auth/status`).
pub struct MaybeAuth(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(MaybeAuth(authenticate(parts, state).await.ok().flatten()))
    }
}

/// The owner (signed in) or the local admin; other principals get 403.
pub struct OwnerOrAdmin(pub Principal);

impl FromRequestParts<AppState> for OwnerOrAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        if principal.is_owner_or_admin() {
            Ok(OwnerOrAdmin(principal))
        } else {
            Err(ApiError::forbidden(
                "only the owner or the local admin may do this",
            ))
        }
    }
}

/// The owner, their devices, or the local admin; other users get 403.
pub struct OwnerLike(pub Principal);

impl FromRequestParts<AppState> for OwnerLike {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        if principal.acts_as_owner() {
            Ok(OwnerLike(principal))
        } else {
            Err(ApiError::forbidden("only the owner may manage agents"))
        }
    }
}

/// A person signed in with a password (a browser session), and the hash of that session's
/// token; devices and the local admin get 403 (they have no password of their own).
pub struct SignedInUser {
    pub user_id: uuid::Uuid,
    pub session_hash: String,
}

impl FromRequestParts<AppState> for SignedInUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        let token = cookie(&parts.headers, crate::auth::sessions::SESSION_COOKIE);
        match (principal, token) {
            (Principal::User { user_id, .. }, Some(token)) => Ok(SignedInUser {
                user_id,
                session_hash: crate::auth::hash_token(token),
            }),
            _ => Err(ApiError::forbidden(
                "only a person signed in with a password can do this",
            )),
        }
    }
}

/// An agent, authenticated by its agent token on the agent listener. Nothing else is accepted
/// there: user sessions, device tokens and the local token all get 401.
pub struct AgentAuth(pub crate::agents::AgentRecord);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = authorization_bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        match crate::agents::authenticate(&state.db, token).await? {
            Some(agent) => Ok(AgentAuth(agent)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

impl AgentAuth {
    /// Agents may only touch their own resources: another agent's slug is 403.
    pub fn require_self(&self, slug: &str) -> Result<(), ApiError> {
        if self.0.slug == slug {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "an agent token is valid only for its own agent",
            ))
        }
    }
}

/// The chat member id a human principal writes as: a signed-in user is themselves; the owner's
/// devices and the local admin act as the owner.
pub async fn human_member(state: &AppState, principal: &Principal) -> Result<String, ApiError> {
    if let Principal::User { username, .. } = principal {
        return Ok(crate::chat::user_member(username));
    }
    let owner = state
        .owner
        .get(&state.db)
        .await
        .map_err(ApiError::internal)?;
    owner
        .map(|user| crate::chat::user_member(&user.username))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "owner_required",
                "create the owner account first",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_and_bearer_are_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-taos_session=abc; taos_csrf=x"),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "taos_session"), None);
        assert_eq!(cookie(&headers, "taos"), None);
        assert_eq!(bearer(&headers), Some("tok"));
    }

    fn parts(request: axum::http::request::Builder) -> Parts {
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn both_websocket_handshakes_are_recognised() {
        let h1 = parts(
            axum::http::Request::get("/api/chat/ws")
                .header(header::UPGRADE, "websocket")
                .header(header::ORIGIN, "https://evil.example")
                .header(header::HOST, "taos.local:6969"),
        );
        assert!(is_websocket_upgrade(&h1));
        assert!(!is_h2_websocket(&h1));
        assert!(!same_origin(&h1.headers, &h1.uri));
        // HTTP/2: no Upgrade header, no Host header; the authority is in the URI.
        let h2 = parts(
            axum::http::Request::connect("https://taos.local:6969/api/chat/ws")
                .extension(hyper::ext::Protocol::from_static("websocket"))
                .header(header::ORIGIN, "https://evil.example"),
        );
        assert!(is_websocket_upgrade(&h2));
        assert!(is_h2_websocket(&h2));
        assert!(!same_origin(&h2.headers, &h2.uri));
        let own = parts(
            axum::http::Request::connect("https://taos.local:6969/api/chat/ws")
                .extension(hyper::ext::Protocol::from_static("websocket"))
                .header(header::ORIGIN, "https://taos.local:6969"),
        );
        assert!(same_origin(&own.headers, &own.uri));
        // A plain CONNECT is no WebSocket: it keeps the CSRF requirement.
        let tunnel = parts(axum::http::Request::connect("https://taos.local:6969/"));
        assert!(!is_websocket_upgrade(&tunnel));
    }
}
