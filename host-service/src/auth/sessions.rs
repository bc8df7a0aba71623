//! Browser sessions: an opaque cookie token (stored hashed) plus a per-session CSRF token.

use sqlx::Row;
use uuid::Uuid;

use super::{hash_token, new_secret, AuthError, Principal};
use crate::db::{now_ms, Db};

pub const SESSION_COOKIE: &str = "taos_session";
pub const CSRF_COOKIE: &str = "taos_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Sliding expiry is refreshed at most this often, so reads don't turn into writes.
const TOUCH_INTERVAL_MS: i64 = 60 * 1000;

pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
}

pub async fn create(db: &Db, user_id: Uuid) -> Result<NewSession, AuthError> {
    let token = new_secret("");
    let csrf_token = new_secret("");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at, last_seen_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(hash_token(&token))
    .bind(user_id.to_string())
    .bind(&csrf_token)
    .bind(now)
    .bind(now + SESSION_TTL_MS)
    .bind(now)
    .execute(db)
    .await?;
    // Expired sessions are swept here rather than by a timer: logins are rare, rows are small.
    sqlx::query("DELETE FROM sessions WHERE expires_at < ?")
        .bind(now)
        .execute(db)
        .await?;
    Ok(NewSession { token, csrf_token })
}

/// A live session: who it is, and its CSRF token.
pub struct SessionInfo {
    pub principal: Principal,
    pub csrf_token: String,
}

pub async fn lookup(db: &Db, token: &str) -> Result<Option<SessionInfo>, AuthError> {
    let now = now_ms();
    let token_hash = hash_token(token);
    let row = sqlx::query(
        "SELECT s.csrf_token, s.last_seen_at, u.id, u.username, u.is_owner \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = ? AND s.expires_at > ?",
    )
    .bind(&token_hash)
    .bind(now)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let last_seen: i64 = row.try_get("last_seen_at")?;
    if now - last_seen > TOUCH_INTERVAL_MS {
        sqlx::query("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE token_hash = ?")
            .bind(now)
            .bind(now + SESSION_TTL_MS)
            .bind(&token_hash)
            .execute(db)
            .await?;
    }
    let id: String = row.try_get("id")?;
    Ok(Some(SessionInfo {
        principal: Principal::User {
            user_id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            username: row.try_get("username")?,
            is_owner: row.try_get("is_owner")?,
        },
        csrf_token: row.try_get("csrf_token")?,
    }))
}

pub async fn revoke(db: &Db, token: &str) -> Result<(), AuthError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
        .bind(hash_token(token))
        .execute(db)
        .await?;
    Ok(())
}
