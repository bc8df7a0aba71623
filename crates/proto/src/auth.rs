use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub is_owner: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthStatus {
    /// Whether an owner account exists (false means first-run setup is open).
    pub configured: bool,
    pub authenticated: bool,
    pub user: Option<User>,
}

/// Body of `POST /api/auth/setup` and `POST /api/auth/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Answer to a successful setup or login. The session itself travels in the `taos_session` cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    pub user: User,
    /// Send as `X-CSRF-Token` on every state-changing request made with the session cookie.
    pub csrf_token: String,
}

/// What a pairing token carries, base64url-encoded JSON. Everything but `secret` is there so the
/// app knows where to connect and which key to pin before it has ever talked to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairingPayload {
    /// Format version, 1.
    pub v: u32,
    pub host_name: String,
    /// `host:port` pairs the host believes it is reachable at, most likely first.
    pub addresses: Vec<String>,
    /// Base64 SHA-256 of the host's TLS SubjectPublicKeyInfo.
    pub spki_sha256: String,
    pub secret: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairingTokenResponse {
    /// The base64url pairing token to type or scan.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The token as a QR code, an SVG document.
    pub qr_svg: String,
    pub payload: PairingPayload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    pub token: String,
    pub device_name: String,
    /// e.g. `linux`, `macos`, `windows`, `android`, `ios`.
    pub platform: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceTokens {
    pub device_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds the access token stays valid.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub platform: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}
