//! Paired devices: one-time pairing tokens, short-lived access tokens, rotating refresh tokens.
//!
//! A refresh token works once. Presenting a used one means two parties hold the device's
//! credentials (one of them stole it), so the whole device is revoked: both must pair again —
//! unless nothing of what it was exchanged for was ever used: then the answer was lost in
//! transit, and the device gets new tokens instead (the unused ones stop working).

use std::collections::HashMap;

use sqlx::Row;
use taos_pin::SpkiPin;
use taos_proto::auth::{Device, DeviceTokens, PairingPayload};
use uuid::Uuid;

use super::live::TokenState;
use super::{hash_token, new_secret, AuthError, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX};
use crate::db::{from_ms, now_ms, Db};

pub const PAIRING_TOKEN_TTL_MS: i64 = 5 * 60 * 1000;
/// The default access token lifetime (`[auth] access_token_secs`).
pub const ACCESS_TOKEN_TTL_SECS: u64 = 15 * 60;
pub const REFRESH_TOKEN_TTL_MS: i64 = 90 * 24 * 3600 * 1000;
const TOUCH_INTERVAL_MS: i64 = 60 * 1000;
/// How long after a refresh its answer may be reported lost (the old token presented again
/// with nothing of the answer used): an hour covers an app retrying after a dropped
/// connection or a short time offline, without leaving old tokens useful for long.
pub const LOST_ANSWER_WINDOW_MS: i64 = 60 * 60 * 1000;
pub const MAX_PLATFORM_CHARS: usize = 32;

/// Makes a single-use pairing token that expires in five minutes. Only the secret's hash is kept.
pub async fn create_pairing_token(
    db: &Db,
    host_name: &str,
    addresses: Vec<String>,
    pin: &SpkiPin,
    created_by: &str,
) -> Result<(String, PairingPayload), AuthError> {
    let secret = new_secret("");
    let now = now_ms();
    let expires_at = now + PAIRING_TOKEN_TTL_MS;
    sqlx::query("DELETE FROM pairing_tokens WHERE expires_at < ?")
        .bind(now)
        .execute(db)
        .await?;
    sqlx::query(
        "INSERT INTO pairing_tokens (secret_hash, created_at, expires_at, created_by) VALUES (?, ?, ?, ?)",
    )
    .bind(hash_token(&secret))
    .bind(now)
    .bind(expires_at)
    .bind(created_by)
    .execute(db)
    .await?;
    let payload = PairingPayload {
        v: 1,
        host_name: host_name.to_string(),
        addresses,
        spki_sha256: pin.to_base64(),
        secret,
        expires_at: from_ms(expires_at),
    };
    Ok((payload.encode(), payload))
}

/// Reads a pairing token's payload; `None` if it is not one.
pub fn decode_pairing_token(token: &str) -> Option<PairingPayload> {
    PairingPayload::decode(token).ok()
}

fn validate_device_fields(device_name: &str, platform: &str) -> Result<(), AuthError> {
    taos_proto::auth::check_device_name(device_name).map_err(AuthError::BadInput)?;
    let platform_ok = !platform.is_empty()
        && platform.len() <= MAX_PLATFORM_CHARS
        && platform
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if !platform_ok {
        return Err(AuthError::BadInput(format!(
            "platform must be 1-{MAX_PLATFORM_CHARS} characters of a-z, 0-9, '-' or '_'"
        )));
    }
    Ok(())
}

/// Issues an access token and a refresh token under one new issue id, returned with them.
async fn issue_tokens(
    tx: &mut sqlx::SqliteConnection,
    device_id: Uuid,
    access_ttl_secs: u64,
) -> Result<(DeviceTokens, String), AuthError> {
    let access_token = new_secret(ACCESS_TOKEN_PREFIX);
    let refresh_token = new_secret(REFRESH_TOKEN_PREFIX);
    let issue_id = Uuid::now_v7().to_string();
    let now = now_ms();
    let insert = "INSERT INTO device_tokens (token_hash, device_id, kind, created_at, expires_at, issue_id) \
                  VALUES (?, ?, ?, ?, ?, ?)";
    sqlx::query(insert)
        .bind(hash_token(&access_token))
        .bind(device_id.to_string())
        .bind("access")
        .bind(now)
        .bind(now.saturating_add(
            i64::try_from(access_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        ))
        .bind(&issue_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(insert)
        .bind(hash_token(&refresh_token))
        .bind(device_id.to_string())
        .bind("refresh")
        .bind(now)
        .bind(now + REFRESH_TOKEN_TTL_MS)
        .bind(&issue_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM device_tokens WHERE device_id = ? AND expires_at < ?")
        .bind(device_id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let tokens = DeviceTokens {
        device_id,
        access_token,
        refresh_token,
        expires_in: access_ttl_secs,
    };
    Ok((tokens, issue_id))
}

/// Exchanges a pairing token for a new device and its first tokens.
/// A used, expired, unknown or malformed token is `InvalidToken`.
pub async fn pair(
    db: &Db,
    token: &str,
    device_name: &str,
    platform: &str,
    access_ttl_secs: u64,
) -> Result<DeviceTokens, AuthError> {
    validate_device_fields(device_name, platform)?;
    let payload = decode_pairing_token(token).ok_or(AuthError::InvalidToken)?;
    let now = now_ms();
    let mut tx = db.begin().await?;
    // Claiming the token is one conditional write, so two devices racing with one token can't
    // both win.
    let claimed = sqlx::query(
        "UPDATE pairing_tokens SET used_at = ? \
         WHERE secret_hash = ? AND used_at IS NULL AND expires_at > ?",
    )
    .bind(now)
    .bind(hash_token(&payload.secret))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() != 1 {
        return Err(AuthError::InvalidToken);
    }
    let device_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO devices (id, name, platform, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(device_id.to_string())
    .bind(device_name.trim())
    .bind(platform)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let (tokens, _) = issue_tokens(&mut tx, device_id, access_ttl_secs).await?;
    tx.commit().await?;
    Ok(tokens)
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Refreshed {
    Tokens(DeviceTokens),
    /// A used refresh token came back: two parties hold the device's credentials, so the
    /// device was revoked (its open connections must close too). The caller answers 401.
    ReplayRevoked {
        device_id: Uuid,
    },
}

/// Rotates a refresh token: the old one stops working; reusing it revokes the device.
/// An unknown, expired or malformed token is `InvalidToken`.
pub async fn refresh(
    db: &Db,
    refresh_token: &str,
    access_ttl_secs: u64,
) -> Result<Refreshed, AuthError> {
    if !refresh_token.starts_with(REFRESH_TOKEN_PREFIX) || refresh_token.len() > 128 {
        return Err(AuthError::InvalidToken);
    }
    let token_hash = hash_token(refresh_token);
    let now = now_ms();
    let mut tx = db.begin().await?;
    // Writing first takes SQLite's write lock at once, so concurrent refreshes serialize here.
    let claimed = sqlx::query(
        "UPDATE device_tokens SET used_at = ? \
         WHERE token_hash = ? AND kind = 'refresh' AND used_at IS NULL AND expires_at > ? \
           AND device_id IN (SELECT id FROM devices WHERE revoked_at IS NULL) \
         RETURNING device_id",
    )
    .bind(now)
    .bind(&token_hash)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = claimed {
        let device_id: String = row.try_get("device_id")?;
        let tokens = rotate(&mut tx, &device_id, &token_hash, access_ttl_secs).await?;
        tx.commit().await?;
        return Ok(Refreshed::Tokens(tokens));
    }
    let reused = sqlx::query(
        "SELECT device_id, successor FROM device_tokens \
         WHERE token_hash = ? AND kind = 'refresh' AND used_at IS NOT NULL \
           AND device_id IN (SELECT id FROM devices WHERE revoked_at IS NULL)",
    )
    .bind(&token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = reused {
        let device_id: String = row.try_get("device_id")?;
        let successor: Option<String> = row.try_get("successor")?;
        if let Some(successor) = successor {
            if never_used(&mut tx, &successor, now).await? {
                // The answer to the first exchange never arrived. Retire what it carried (its
                // refresh token counts as used from now on, so presenting it is a replay).
                sqlx::query(
                    "UPDATE device_tokens SET used_at = ? WHERE issue_id = ? AND kind = 'refresh'",
                )
                .bind(now)
                .bind(&successor)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM device_tokens WHERE issue_id = ? AND kind = 'access'")
                    .bind(&successor)
                    .execute(&mut *tx)
                    .await?;
                let tokens = rotate(&mut tx, &device_id, &token_hash, access_ttl_secs).await?;
                tx.commit().await?;
                tracing::info!(%device_id, "a refresh answer was lost; issued new tokens");
                return Ok(Refreshed::Tokens(tokens));
            }
        }
        tracing::warn!(%device_id, "refresh token reuse detected; revoking the device");
        revoke_in(&mut tx, &device_id, now).await?;
        tx.commit().await?;
        let device_id =
            Uuid::parse_str(&device_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        return Ok(Refreshed::ReplayRevoked { device_id });
    }
    Err(AuthError::InvalidToken)
}

/// Issues the tokens a refresh token is exchanged for, and records them as its successor.
async fn rotate(
    tx: &mut sqlx::SqliteConnection,
    device_id: &str,
    token_hash: &str,
    access_ttl_secs: u64,
) -> Result<DeviceTokens, AuthError> {
    let device_id = Uuid::parse_str(device_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let (tokens, issue_id) = issue_tokens(&mut *tx, device_id, access_ttl_secs).await?;
    sqlx::query("UPDATE device_tokens SET successor = ? WHERE token_hash = ?")
        .bind(issue_id)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
    Ok(tokens)
}

/// Whether the tokens of `issue_id` are all still unused — its refresh token unexchanged, its
/// access token never presented — and were issued within `LOST_ANSWER_WINDOW_MS`. Past that
/// window an unused successor is more likely a device that went quiet than an answer lost in
/// transit, and a stolen old token must not be able to take its place: that is a replay.
async fn never_used(
    tx: &mut sqlx::SqliteConnection,
    issue_id: &str,
    now: i64,
) -> Result<bool, AuthError> {
    let unused: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM device_tokens WHERE issue_id = ?1 AND kind = 'refresh' \
                          AND used_at IS NULL AND expires_at > ?2 AND created_at > ?3) \
            AND NOT EXISTS (SELECT 1 FROM device_tokens WHERE issue_id = ?1 AND kind = 'access' \
                          AND used_at IS NOT NULL)",
    )
    .bind(issue_id)
    .bind(now)
    .bind(now - LOST_ANSWER_WINDOW_MS)
    .fetch_one(&mut *tx)
    .await?;
    Ok(unused)
}

async fn revoke_in(
    tx: &mut sqlx::SqliteConnection,
    device_id: &str,
    now: i64,
) -> Result<bool, AuthError> {
    let updated =
        sqlx::query("UPDATE devices SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM device_tokens WHERE device_id = ?")
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Revokes a device at once: its tokens are deleted, so its next request gets 401. The caller
/// closes its open connections (`live::Live::revoke_device`).
pub async fn revoke(db: &Db, device_id: Uuid) -> Result<(), AuthError> {
    let mut tx = db.begin().await?;
    let found = revoke_in(&mut tx, &device_id.to_string(), now_ms()).await?;
    tx.commit().await?;
    if found {
        Ok(())
    } else {
        Err(AuthError::NotFound)
    }
}

/// The device behind a live access token, refreshing its last-seen time at most once a minute.
pub async fn authenticate_access(db: &Db, access_token: &str) -> Result<Option<Uuid>, AuthError> {
    let now = now_ms();
    let row = sqlx::query(
        "SELECT t.device_id, t.used_at, d.last_seen_at FROM device_tokens t JOIN devices d ON d.id = t.device_id \
         WHERE t.token_hash = ? AND t.kind = 'access' AND t.expires_at > ? AND d.revoked_at IS NULL",
    )
    .bind(hash_token(access_token))
    .bind(now)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let device_id: String = row.try_get("device_id")?;
    // The first use is recorded (once per token): it tells a lost refresh answer from a replay.
    // Recording it is the check itself, so a retry that retires this token at the same moment
    // either sees it used or wins, and then this request is refused.
    if row.try_get::<Option<i64>, _>("used_at")?.is_none() {
        let marked = sqlx::query(
            "UPDATE device_tokens SET used_at = ? \
             WHERE token_hash = ? AND kind = 'access' AND expires_at > ? \
               AND device_id IN (SELECT id FROM devices WHERE revoked_at IS NULL) \
             RETURNING device_id",
        )
        .bind(now)
        .bind(hash_token(access_token))
        .bind(now)
        .fetch_optional(db)
        .await?;
        if marked.is_none() {
            return Ok(None);
        }
    }
    let last_seen: Option<i64> = row.try_get("last_seen_at")?;
    if last_seen.is_none_or(|t| now - t > TOUCH_INTERVAL_MS) {
        sqlx::query("UPDATE devices SET last_seen_at = ? WHERE id = ?")
            .bind(now)
            .bind(&device_id)
            .execute(db)
            .await?;
    }
    Ok(Some(
        Uuid::parse_str(&device_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    ))
}

/// What became of the device access tokens behind these hashes: live (until they expire),
/// expired, or revoked (the device was revoked, or the token retired).
pub async fn access_states(
    db: &Db,
    token_hashes: &[&str],
) -> Result<HashMap<String, TokenState>, sqlx::Error> {
    let now = now_ms();
    let mut found = HashMap::new();
    for chunk in token_hashes.chunks(super::live::BATCH) {
        let sql = format!(
            "SELECT t.token_hash, t.expires_at, d.revoked_at \
             FROM device_tokens t JOIN devices d ON d.id = t.device_id \
             WHERE t.kind = 'access' AND t.token_hash IN ({})",
            super::live::placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for hash in chunk {
            query = query.bind(*hash);
        }
        for row in query.fetch_all(db).await? {
            let hash: String = row.try_get("token_hash")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let revoked_at: Option<i64> = row.try_get("revoked_at")?;
            let state = if revoked_at.is_some() {
                TokenState::Revoked
            } else if expires_at <= now {
                TokenState::Expired
            } else {
                TokenState::Valid {
                    until_ms: Some(expires_at),
                }
            };
            found.insert(hash, state);
        }
    }
    Ok(token_hashes
        .iter()
        .map(|h| {
            let state = found.get(*h).copied().unwrap_or(TokenState::Revoked);
            (h.to_string(), state)
        })
        .collect())
}

/// Devices that are still paired, newest first.
pub async fn list(db: &Db) -> Result<Vec<Device>, AuthError> {
    let rows = sqlx::query(
        "SELECT id, name, platform, created_at, last_seen_at FROM devices \
         WHERE revoked_at IS NULL ORDER BY created_at DESC",
    )
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Ok(Device {
                id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                name: row.try_get("name")?,
                platform: row.try_get("platform")?,
                created_at: from_ms(row.try_get("created_at")?),
                last_seen_at: row.try_get::<Option<i64>, _>("last_seen_at")?.map(from_ms),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    #[test]
    fn garbage_is_not_a_pairing_token() {
        assert!(decode_pairing_token("").is_none());
        assert!(decode_pairing_token("not base64 !!").is_none());
        assert!(decode_pairing_token(&URL_SAFE_NO_PAD.encode(b"{\"v\":2}")).is_none());
        assert!(decode_pairing_token(&"A".repeat(10_000)).is_none());
    }

    #[test]
    fn device_fields() {
        assert!(validate_device_fields("Jay's phone", "android").is_ok());
        assert!(validate_device_fields("", "android").is_err());
        assert!(validate_device_fields("x\u{0}y", "android").is_err());
        assert!(validate_device_fields("phone", "Android OS").is_err());
        assert!(validate_device_fields("phone", "../etc").is_err());
    }
}
