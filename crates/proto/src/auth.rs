use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest device name the host keeps, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 100;

/// The host's rule for a device's name (after trimming): shared with the app, which checks it
/// before it spends a single-use pairing token.
pub fn check_device_name(device_name: &str) -> Result<(), String> {
    let name = device_name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_DEVICE_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "device_name must be 1-{MAX_DEVICE_NAME_CHARS} printable characters"
        ));
    }
    Ok(())
}

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
    /// The host's key pin (`sha256/<base64>`), for comparing with `taos-host fingerprint` on
    /// the host.
    pub fingerprint: String,
}

/// Body of `POST /api/auth/setup`: the owner's account and the setup code the host printed at
/// start (also in `setup-code` in its data dir).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OwnerSetup {
    pub username: String,
    pub password: String,
    /// Case, spaces and dashes don't matter.
    pub setup_code: String,
}

/// Body of `POST /api/auth/login`.
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

/// Pairing tokens longer than this are not ones the host made.
pub const MAX_PAIRING_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingTokenError {
    #[error("this is not a taos pairing token (copy the whole code the host shows)")]
    Malformed,
    #[error("this pairing token is for a newer taos (format {0}); update the app")]
    UnknownVersion(u32),
}

impl PairingPayload {
    /// Encodes the payload as a pairing token: unpadded base64url of its JSON.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a pairing token (surrounding whitespace, as from a paste, is ignored).
    pub fn decode(token: &str) -> Result<PairingPayload, PairingTokenError> {
        use base64::Engine as _;
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_PAIRING_TOKEN_BYTES {
            return Err(PairingTokenError::Malformed);
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PairingTokenError::Malformed)?;
        let version: serde_json::Value =
            serde_json::from_slice(&json).map_err(|_| PairingTokenError::Malformed)?;
        match version.get("v").and_then(serde_json::Value::as_u64) {
            Some(1) => {}
            Some(v) => return Err(PairingTokenError::UnknownVersion(v as u32)),
            None => return Err(PairingTokenError::Malformed),
        }
        serde_json::from_value(version).map_err(|_| PairingTokenError::Malformed)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
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

/// Body of `POST /api/auth/password`: a signed-in user changes their own password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    /// At least 10 characters.
    pub new_password: String,
}

/// Body of `POST /api/users`: the owner adds an account (a family member, say).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    /// At least 10 characters; the new user can change it in Settings.
    pub password: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_follow_the_hosts_rule() {
        assert!(check_device_name("  Kim's phone ").is_ok());
        assert!(check_device_name(&"é".repeat(MAX_DEVICE_NAME_CHARS)).is_ok());
        for bad in ["", "   ", "tab\there", "new\nline", "nul\0"] {
            assert!(check_device_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_device_name(&"a".repeat(MAX_DEVICE_NAME_CHARS + 1)).is_err());
    }

    fn payload() -> PairingPayload {
        PairingPayload {
            v: 1,
            host_name: "board".into(),
            addresses: vec!["192.168.1.20:6969".into(), "127.0.0.1:6969".into()],
            spki_sha256: "AAAA".into(),
            secret: "s3cret".into(),
            expires_at: "2030-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn pairing_tokens_round_trip_and_tolerate_pasted_whitespace() {
        let token = payload().encode();
        assert_eq!(
            PairingPayload::decode(&format!("  {token}\n")).unwrap(),
            payload()
        );
    }

    #[test]
    fn bad_pairing_tokens_say_what_is_wrong() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        assert_eq!(
            PairingPayload::decode(""),
            Err(PairingTokenError::Malformed)
        );
        assert_eq!(
            PairingPayload::decode("not base64!"),
            Err(PairingTokenError::Malformed)
        );
        assert_eq!(
            PairingPayload::decode(&b64("[1]")),
            Err(PairingTokenError::Malformed)
        );
        assert_eq!(
            PairingPayload::decode(&b64(r#"{"v":2}"#)),
            Err(PairingTokenError::UnknownVersion(2))
        );
        assert_eq!(
            PairingPayload::decode(&b64(r#"{"v":1,"host_name":"x"}"#)),
            Err(PairingTokenError::Malformed)
        );
        assert_eq!(
            PairingPayload::decode(&"A".repeat(MAX_PAIRING_TOKEN_BYTES + 1)),
            Err(PairingTokenError::Malformed)
        );
    }

    #[test]
    fn expiry_is_inclusive() {
        let p = payload();
        assert!(!p.is_expired("2029-12-31T23:59:59Z".parse().unwrap()));
        assert!(p.is_expired(p.expires_at));
    }
}
