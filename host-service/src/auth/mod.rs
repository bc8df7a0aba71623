//! Who is calling: users with browser sessions, paired devices, and the local admin token.
//!
//! Every secret handed out here is 32 random bytes, base64url, with a prefix that says what it is
//! (`taos_at_` device access, `taos_rt_` device refresh, `taos_lt_` local admin). Only SHA-256
//! hashes of session and device tokens are stored, so a copy of the database grants nothing.

pub mod devices;
pub mod live;
pub mod local_token;
pub mod password;
pub mod ratelimit;
pub mod sessions;
pub mod setup_code;
pub mod users;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const ACCESS_TOKEN_PREFIX: &str = "taos_at_";
pub const REFRESH_TOKEN_PREFIX: &str = "taos_rt_";
pub const LOCAL_TOKEN_PREFIX: &str = "taos_lt_";

/// The authenticated caller of a request on the public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person signed in through the browser, with a session cookie.
    User {
        user_id: Uuid,
        username: String,
        is_owner: bool,
    },
    /// A paired app, with a device access token.
    Device { device_id: Uuid },
    /// A script or the CLI on the host itself, with the local token from a loopback address.
    LocalAdmin,
}

impl Principal {
    /// The owner's own devices act for the owner.
    pub fn is_owner_or_admin(&self) -> bool {
        matches!(
            self,
            Principal::User { is_owner: true, .. } | Principal::LocalAdmin
        )
    }

    /// Full control of the host's agents and chats: the owner, the owner's paired devices, and
    /// the local admin. Other users see only the channels they are members of.
    pub fn acts_as_owner(&self) -> bool {
        matches!(
            self,
            Principal::User { is_owner: true, .. }
                | Principal::Device { .. }
                | Principal::LocalAdmin
        )
    }

    /// A short label for logs and `created_by` columns.
    pub fn label(&self) -> String {
        match self {
            Principal::User { username, .. } => format!("user:{username}"),
            Principal::Device { device_id } => format!("device:{device_id}"),
            Principal::LocalAdmin => "local-admin".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    /// A signed-in user gave the wrong current password (not a 401: they stay signed in).
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The password worker's queue is full (many logins at once, from many addresses).
    #[error("too many sign-ins at once; retry in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("the owner account already exists")]
    AlreadyConfigured,
    #[error("{0}")]
    BadInput(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// 32 random bytes, base64url without padding, behind `prefix`.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Lowercase hex SHA-256, how high-entropy tokens are stored. (Passwords use argon2id.)
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time string comparison for secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    secrets_equal_bytes(a.as_bytes(), b.as_bytes())
}

/// Constant-time byte comparison for secrets and hash outputs.
pub fn secrets_equal_bytes(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_and_distinct() {
        let a = new_secret(ACCESS_TOKEN_PREFIX);
        let b = new_secret(ACCESS_TOKEN_PREFIX);
        assert!(a.starts_with("taos_at_"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "taos_at_".len() + 43);
        assert_eq!(hash_token(&a).len(), 64);
        assert!(secrets_equal(&a, &a.clone()));
        assert!(!secrets_equal(&a, &b));
    }
}
