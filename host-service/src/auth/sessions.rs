//! Browser sessions: an opaque cookie token (stored hashed) plus a per-session CSRF token.
//!
//! A session ends after `idle` without a request (sliding) and in any case `lifetime` after
//! sign-in, so a stolen cookie that is kept busy still stops working.

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;

use super::live::TokenState;
use super::{hash_token, new_secret, AuthError, Principal};
use crate::db::{now_ms, Db};

/// `__Host-`: browsers accept it only with `Secure`, `Path=/` and no `Domain`, so no other
/// host (a sibling subdomain, a plain-HTTP page on the same name) can plant or shadow it.
pub const SESSION_COOKIE: &str = "__Host-taos_session";
pub const CSRF_COOKIE: &str = "__Host-taos_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sliding expiry is refreshed at most this often, so reads don't turn into writes.
const TOUCH_INTERVAL_MS: i64 = 60 * 1000;

/// How long sessions live (from `[auth]` in taos.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Without a request for this long, the session ends.
    pub idle_ms: i64,
    /// This long after sign-in the session ends, however busy it is.
    pub lifetime_ms: i64,
}

impl SessionPolicy {
    pub fn from_secs(idle_secs: u64, lifetime_secs: u64) -> SessionPolicy {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        SessionPolicy {
            idle_ms: ms(idle_secs),
            lifetime_ms: ms(lifetime_secs),
        }
    }

    /// When a session that was last used `now` ends: idle expiry, capped by its lifetime.
    fn expiry(&self, created_at: i64, now: i64) -> i64 {
        (now.saturating_add(self.idle_ms)).min(created_at.saturating_add(self.lifetime_ms))
    }

    /// The cookie's Max-Age: the browser may keep it for the session's whole lifetime; the
    /// host ends it earlier when it goes idle.
    pub fn cookie_max_age_secs(&self) -> i64 {
        self.lifetime_ms / 1000
    }
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy::from_secs(7 * 24 * 3600, 30 * 24 * 3600)
    }
}

pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
}

pub async fn create(
    db: &Db,
    user_id: Uuid,
    policy: &SessionPolicy,
) -> Result<NewSession, AuthError> {
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
    .bind(policy.expiry(now, now))
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

pub async fn lookup(
    db: &Db,
    token: &str,
    policy: &SessionPolicy,
) -> Result<Option<SessionInfo>, AuthError> {
    let now = now_ms();
    let token_hash = hash_token(token);
    // The lifetime is checked here too, not only through `expires_at`, so a shorter configured
    // lifetime applies to sessions made before the change.
    let row = sqlx::query(
        "SELECT s.csrf_token, s.created_at, s.last_seen_at, u.id, u.username, u.is_owner \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = ? AND s.expires_at > ? AND s.created_at > ?",
    )
    .bind(&token_hash)
    .bind(now)
    .bind(now.saturating_sub(policy.lifetime_ms))
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let created_at: i64 = row.try_get("created_at")?;
    let last_seen: i64 = row.try_get("last_seen_at")?;
    if now - last_seen > TOUCH_INTERVAL_MS {
        sqlx::query("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE token_hash = ?")
            .bind(now)
            .bind(policy.expiry(created_at, now))
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

/// Ends a session. Returns the hash it was stored under, so its live connections can be closed.
pub async fn revoke(db: &Db, token: &str) -> Result<String, AuthError> {
    let token_hash = hash_token(token);
    sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
        .bind(&token_hash)
        .execute(db)
        .await?;
    Ok(token_hash)
}

/// What became of the sessions behind these token hashes: live (until their lifetime ends),
/// expired, or gone (signed out, password reset, user deleted).
pub async fn states(
    db: &Db,
    token_hashes: &[&str],
    policy: &SessionPolicy,
) -> Result<HashMap<String, TokenState>, sqlx::Error> {
    let now = now_ms();
    let mut found = HashMap::new();
    for chunk in token_hashes.chunks(super::live::BATCH) {
        let sql = format!(
            "SELECT s.token_hash, s.created_at, s.expires_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash IN ({})",
            super::live::placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for hash in chunk {
            query = query.bind(*hash);
        }
        for row in query.fetch_all(db).await? {
            let hash: String = row.try_get("token_hash")?;
            let created_at: i64 = row.try_get("created_at")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let ends_at = created_at.saturating_add(policy.lifetime_ms);
            let state = if expires_at <= now || ends_at <= now {
                TokenState::Expired
            } else {
                TokenState::Valid {
                    until_ms: Some(ends_at),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_slides_but_never_past_the_lifetime() {
        let policy = SessionPolicy::from_secs(10, 100);
        assert_eq!(policy.expiry(0, 0), 10_000);
        assert_eq!(policy.expiry(0, 50_000), 60_000);
        assert_eq!(policy.expiry(0, 95_000), 100_000);
        assert_eq!(policy.cookie_max_age_secs(), 100);
        let huge = SessionPolicy::from_secs(u64::MAX, u64::MAX);
        assert_eq!(huge.expiry(i64::MAX - 1, i64::MAX - 1), i64::MAX);
    }
}
