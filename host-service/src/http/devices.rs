//! `/api/devices/*`: pairing tokens, pairing, and the list of paired devices.

use axum::extract::State;
use axum::http::StatusCode;
use taos_proto::auth::{Device, DeviceTokens, PairRequest, PairingTokenResponse};
use taos_proto::error::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, OwnerLike, OwnerOrAdmin, Path};
use super::AppState;
use crate::auth::devices;
use crate::qr;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pairing_token))
        .routes(routes!(pair))
        .routes(routes!(list_devices))
        .routes(routes!(revoke_device))
}

/// Makes a one-time pairing token (valid 5 minutes) and its QR code.
#[utoipa::path(post, path = "/api/devices/pairing-tokens", tag = "devices",
    responses(
        (status = 201, description = "A new pairing token", body = PairingTokenResponse),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner or local admin", body = ErrorBody)))]
async fn create_pairing_token(
    OwnerOrAdmin(principal): OwnerOrAdmin,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<PairingTokenResponse>), ApiError> {
    let (token, payload) = devices::create_pairing_token(
        &state.db,
        &state.host_name,
        state.pairing_addresses.clone(),
        &state.pin,
        &principal.label(),
    )
    .await?;
    let qr_svg = qr::svg(&token).map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(PairingTokenResponse {
            expires_at: payload.expires_at,
            token,
            qr_svg,
            payload,
        }),
    ))
}

/// Pairs a device with a pairing token. Needs no other credentials.
#[utoipa::path(post, path = "/api/devices/pair", tag = "devices", security(()),
    request_body = PairRequest,
    responses(
        (status = 201, description = "Paired; the device's first tokens", body = DeviceTokens),
        (status = 400, description = "Bad device name or platform", body = ErrorBody),
        (status = 401, description = "Used, expired or wrong pairing token", body = ErrorBody)))]
async fn pair(
    State(state): State<AppState>,
    Json(body): Json<PairRequest>,
) -> Result<(StatusCode, Json<DeviceTokens>), ApiError> {
    let tokens = devices::pair(
        &state.db,
        &body.token,
        &body.device_name,
        &body.platform,
        state.config.auth.access_token_secs,
    )
    .await?;
    tracing::info!(device_id = %tokens.device_id, name = %body.device_name, "device paired");
    // The Devices screen lists it at once (devices are the owner's: the owner's event).
    state.hub.announce(
            "device.paired",
            serde_json::json!({"id": tokens.device_id, "name": body.device_name, "platform": body.platform}),
        ).await;
    Ok((StatusCode::CREATED, Json(tokens)))
}

/// Paired devices, newest first, with when each was last seen. Devices are the owner's (only
/// the owner pairs them, and they act for the owner), so other users get 403.
#[utoipa::path(get, path = "/api/devices", tag = "devices",
    responses(
        (status = 200, description = "Paired devices", body = Vec<Device>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_devices(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(devices::list(&state.db).await?))
}

/// Revokes a device at once: its next request gets 401, its open chat WebSockets close with
/// code 4001 and its event streams end with an `unauthorized` event. Owner side only.
#[utoipa::path(delete, path = "/api/devices/{id}", tag = "devices",
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Not a device id", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody)))]
async fn revoke_device(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    devices::revoke(&state.db, id).await.map_err(|e| match e {
        crate::auth::AuthError::NotFound => ApiError::not_found("no such device"),
        e => e.into(),
    })?;
    let closed = state.live.revoke_device(id);
    tracing::info!(device_id = %id, connections = closed, "device revoked");
    state
        .hub
        .announce(
            "device.revoked",
            serde_json::json!({"id": id, "reason": "revoked"}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}
