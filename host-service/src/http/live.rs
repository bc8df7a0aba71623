//! `LiveAuth`: `Auth` for connections that outlive their request (the chat WebSocket, the
//! `/api/events` stream). Besides the principal it registers the connection under the
//! credential that opened it, so revoking that credential closes it (see `auth::live`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::extract::{bearer, cookie, Auth};
use super::AppState;
use crate::auth::live::{Credential, LiveGuard};
use crate::auth::sessions::SESSION_COOKIE;
use crate::auth::{hash_token, Principal};

/// An authenticated caller and the registration of its live connection.
pub struct LiveAuth {
    pub principal: Principal,
    pub guard: LiveGuard,
}

/// The credential behind a principal, read the way `authenticate` read it: bearer first, then
/// the session cookie.
fn credential(principal: &Principal, parts: &Parts) -> Option<Credential> {
    Some(match principal {
        Principal::LocalAdmin => Credential::LocalAdmin,
        Principal::Device { device_id } => Credential::Device {
            device_id: *device_id,
            token_hash: hash_token(bearer(&parts.headers)?),
        },
        Principal::User { user_id, .. } => Credential::Session {
            user_id: *user_id,
            token_hash: hash_token(cookie(&parts.headers, SESSION_COOKIE)?),
        },
    })
}

impl FromRequestParts<AppState> for LiveAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        let credential = credential(&principal, parts).ok_or_else(ApiError::unauthorized)?;
        let guard = state
            .live
            .open(&state.db, &state.session_policy(), credential)
            .await
            .map_err(ApiError::internal)?
            // Revoked between authentication and registration.
            .ok_or_else(ApiError::unauthorized)?;
        Ok(LiveAuth { principal, guard })
    }
}
