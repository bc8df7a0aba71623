//! User accounts. The first one is the owner, made by first-run setup or `taos-host user create`.

use sqlx::Row;
use taos_proto::auth::User;
use uuid::Uuid;

use super::{password, AuthError};
use crate::db::{from_ms, now_ms, Db};

pub const MAX_USERNAME_CHARS: usize = 64;

pub fn validate_username(username: &str) -> Result<(), AuthError> {
    let ok_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let starts_ok = username
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if username.is_empty() || username.len() > MAX_USERNAME_CHARS || !ok_chars || !starts_ok {
        return Err(AuthError::BadInput(format!(
            "username must be 1-{MAX_USERNAME_CHARS} characters of letters, digits, '.', '_' or \
             '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<User, sqlx::Error> {
    let id: String = row.try_get("id")?;
    Ok(User {
        id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        username: row.try_get("username")?,
        is_owner: row.try_get("is_owner")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

pub async fn count(db: &Db) -> Result<i64, AuthError> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(db)
        .await?)
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<User>, AuthError> {
    let row = sqlx::query("SELECT id, username, is_owner, created_at FROM users WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

pub async fn by_username(db: &Db, username: &str) -> Result<Option<User>, AuthError> {
    let row =
        sqlx::query("SELECT id, username, is_owner, created_at FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(db)
            .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

/// Whether a user with this name exists.
pub async fn exists(db: &Db, username: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = ?")
        .bind(username)
        .fetch_one(db)
        .await?;
    Ok(n > 0)
}

/// The owner, for whom the owner's paired devices act.
/// The owner, once there is one, kept in memory: the owner's account is made once (first-run
/// setup), can't be deleted, and no username changes, so once found it stays right for the
/// life of the process (a restore runs with the host stopped). Until setup, each call reads
/// and finds none. Saves a statement (a round trip to SQLite's worker thread) on every
/// request made as the owner by a device or the local admin, chat posts among them.
#[derive(Debug, Default)]
pub struct OwnerCache(std::sync::OnceLock<User>);

impl OwnerCache {
    pub async fn get(&self, db: &Db) -> Result<Option<User>, AuthError> {
        if let Some(user) = self.0.get() {
            return Ok(Some(user.clone()));
        }
        let found = owner(db).await?;
        if let Some(user) = &found {
            // Another request may have set it first: the same row, so either is right.
            let _ = self.0.set(user.clone());
        }
        Ok(found)
    }
}

pub async fn owner(db: &Db) -> Result<Option<User>, AuthError> {
    let row = sqlx::query(
        "SELECT id, username, is_owner, created_at FROM users WHERE is_owner = 1 ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

/// First-run setup: creates the owner only while there is no user at all. The check and the
/// insert are one statement, so two racing setup requests can't both succeed.
pub async fn setup_owner(db: &Db, username: &str, password_text: &str) -> Result<User, AuthError> {
    validate_username(username)?;
    password::validate(password_text)?;
    if count(db).await? > 0 {
        return Err(AuthError::AlreadyConfigured);
    }
    let hash = password::hash(password_text.to_string()).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_owner, created_at) \
         SELECT ?, ?, ?, 1, ? WHERE NOT EXISTS (SELECT 1 FROM users)",
    )
    .bind(id.to_string())
    .bind(username)
    .bind(hash)
    .bind(now_ms())
    .execute(db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AuthError::AlreadyConfigured);
    }
    get(db, id).await?.ok_or(AuthError::NotFound)
}

/// Creates a user from the CLI. The first user becomes the owner.
pub async fn create(db: &Db, username: &str, password_text: &str) -> Result<User, AuthError> {
    validate_username(username)?;
    password::validate(password_text)?;
    let hash = password::hash(password_text.to_string()).await?;
    let id = Uuid::new_v4();
    let result = sqlx::query(
        "INSERT INTO users (id, username, password_hash, is_owner, created_at) \
         VALUES (?, ?, ?, NOT EXISTS (SELECT 1 FROM users), ?)",
    )
    .bind(id.to_string())
    .bind(username)
    .bind(hash)
    .bind(now_ms())
    .execute(db)
    .await;
    match result {
        Ok(_) => get(db, id).await?.ok_or(AuthError::NotFound),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(AuthError::BadInput(
            format!("user {username} already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Sets a new password and signs the user out everywhere: their sessions are deleted. A host
/// running in this process closes their open connections with `live::Live::revoke_user`; a
/// host in another process (this is what `taos-host user reset-password` calls) finds the
/// sessions gone at its next re-check (`[auth] recheck_secs`) and on their next chat message.
pub async fn reset_password(
    db: &Db,
    username: &str,
    password_text: &str,
) -> Result<User, AuthError> {
    password::validate(password_text)?;
    let hash = password::hash(password_text.to_string()).await?;
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "UPDATE users SET password_hash = ? WHERE username = ? \
         RETURNING id, username, is_owner, created_at",
    )
    .bind(hash)
    .bind(username)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AuthError::NotFound)?;
    let user = user_from_row(&row)?;
    sqlx::query("DELETE FROM sessions WHERE user_id = ?")
        .bind(user.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(user)
}

/// Changes a user's own password after checking the current one, and ends every other
/// session of theirs: whoever else holds one of them (a forgotten browser, a thief) is signed
/// out; the session asking (`keep_session_hash`) stays. Returns the ended sessions' token
/// hashes so the caller can close their live connections. The update only lands if the
/// password is still the one that was checked, so two racing changes can't both win with it.
pub async fn change_password(
    db: &Db,
    user_id: Uuid,
    current: &str,
    new_password: &str,
    keep_session_hash: &str,
) -> Result<Vec<String>, AuthError> {
    password::validate(new_password)?;
    if current.len() > password::MAX_PASSWORD_BYTES {
        return Err(AuthError::WrongPassword);
    }
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = ?")
        .bind(user_id.to_string())
        .fetch_optional(db)
        .await?
        .ok_or(AuthError::NotFound)?;
    if !password::verify(current.to_string(), stored.clone()).await? {
        return Err(AuthError::WrongPassword);
    }
    let hash = password::hash(new_password.to_string()).await?;
    let mut tx = db.begin().await?;
    let updated =
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?")
            .bind(hash)
            .bind(user_id.to_string())
            .bind(stored)
            .execute(&mut *tx)
            .await?;
    if updated.rows_affected() == 0 {
        return Err(AuthError::WrongPassword);
    }
    let ended: Vec<String> = sqlx::query_scalar(
        "DELETE FROM sessions WHERE user_id = ? AND token_hash != ? RETURNING token_hash",
    )
    .bind(user_id.to_string())
    .bind(keep_session_hash)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ended)
}

/// Every account, oldest (the owner) first.
pub async fn list(db: &Db) -> Result<Vec<User>, AuthError> {
    let rows = sqlx::query(
        "SELECT id, username, is_owner, created_at FROM users ORDER BY created_at, username",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
}

/// Deletes an account other than the owner's. Its sessions and notifications go with it (by
/// cascade); it leaves every channel and loses the right to change the channels it made, so an
/// account made later under the same name starts with nothing of the old one's. Messages it
/// wrote stay, under its name. The caller closes its live connections (`Live::revoke_user`).
pub async fn delete(db: &Db, id: Uuid) -> Result<User, AuthError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query("SELECT id, username, is_owner, created_at FROM users WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AuthError::NotFound)?;
    let user = user_from_row(&row)?;
    if user.is_owner {
        return Err(AuthError::BadInput(
            "the owner's account can't be deleted".into(),
        ));
    }
    crate::chat::forget_user(&mut tx, &user.username).await?;
    sqlx::query("DELETE FROM users WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(user)
}

/// Checks a username and password. Unknown users cost the same time as wrong passwords and get
/// the same error, so the answer says nothing about which usernames exist.
pub async fn authenticate(db: &Db, username: &str, password_text: &str) -> Result<User, AuthError> {
    if password_text.len() > password::MAX_PASSWORD_BYTES || username.len() > MAX_USERNAME_CHARS {
        return Err(AuthError::InvalidCredentials);
    }
    let row = sqlx::query(
        "SELECT id, username, is_owner, created_at, password_hash FROM users WHERE username = ?",
    )
    .bind(username)
    .fetch_optional(db)
    .await?;
    let stored_hash = match &row {
        Some(r) => r.try_get::<String, _>("password_hash")?,
        None => password::DUMMY_HASH.to_string(),
    };
    let ok = password::verify(password_text.to_string(), stored_hash).await?;
    match row {
        Some(r) if ok => {
            let user = user_from_row(&r)?;
            sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
                .bind(now_ms())
                .bind(user.id.to_string())
                .execute(db)
                .await?;
            Ok(user)
        }
        _ => Err(AuthError::InvalidCredentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("owner").is_ok());
        assert!(validate_username("jay.l-2_x").is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", "a\0b", "ü", &"a".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }
}
