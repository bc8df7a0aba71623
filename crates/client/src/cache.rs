//! The offline cache (SQLite in the app's data dir): channels, messages, agents, the outbox and
//! the live stream's resume point, per paired host. The chat screen reads from here first; the
//! sync engine writes what the host says.

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use taos_proto::chat::{Channel, Message, ServerEvent};

use crate::sync;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the offline cache failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the offline cache could not be opened: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the offline cache holds something unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the offline cache's folder could not be made private: {0}")]
    Io(#[from] std::io::Error),
    /// A message the host would refuse is not queued: it would only fail later.
    #[error("{0}")]
    BadInput(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CachedChannel {
    #[serde(flatten)]
    pub channel: Channel,
    /// The highest seq applied here: where catch-up resumes.
    pub synced_seq: i64,
    pub muted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxItem {
    pub client_id: String,
    pub channel_id: String,
    pub content: String,
    pub thread_id: Option<String>,
    /// `queued`, `sent` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub message_id: Option<String>,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Cache {
    pool: SqlitePool,
}

impl Cache {
    /// Opens (creating) the cache. Its folder is made 0700 and the database file 0600 before
    /// SQLite opens it, so the chats it holds — and SQLite's `-wal` and `-shm` files, created
    /// with the process umask — are never readable by other users of the machine.
    pub async fn open(path: &Path) -> Result<Cache, CacheError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        private_file(path)?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Cache { pool })
    }

    /// Stores the channel list as the host gave it (keeping what the cache knows: sync
    /// point, mute) and forgets channels the host no longer lists.
    pub async fn put_channels(&self, host: &str, channels: &[Channel]) -> Result<(), CacheError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = channels.iter().map(|c| c.id.as_str()).collect();
        let known: Vec<String> = sqlx::query_scalar("SELECT id FROM channels WHERE host_id = ?")
            .bind(host)
            .fetch_all(&mut *tx)
            .await?;
        for gone in known.iter().filter(|id| !ids.contains(&id.as_str())) {
            sqlx::query("DELETE FROM channels WHERE host_id = ? AND id = ?")
                .bind(host)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM messages WHERE host_id = ? AND channel_id = ?")
                .bind(host)
                .bind(gone)
                .execute(&mut *tx)
                .await?;
        }
        for channel in channels {
            sqlx::query(
                "INSERT INTO channels (host_id, id, body) VALUES (?, ?, ?) \
                 ON CONFLICT (host_id, id) DO UPDATE SET body = excluded.body",
            )
            .bind(host)
            .bind(&channel.id)
            .bind(serde_json::to_string(channel)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn channels(&self, host: &str) -> Result<Vec<CachedChannel>, CacheError> {
        let rows =
            sqlx::query("SELECT body, last_seq, muted FROM channels WHERE host_id = ? ORDER BY id")
                .bind(host)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(cached_channel).collect()
    }

    /// One cached channel.
    pub async fn channel(&self, host: &str, id: &str) -> Result<Option<CachedChannel>, CacheError> {
        let row =
            sqlx::query("SELECT body, last_seq, muted FROM channels WHERE host_id = ? AND id = ?")
                .bind(host)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(cached_channel).transpose()
    }

    pub async fn synced_seq(&self, host: &str, channel: &str) -> Result<i64, CacheError> {
        Ok(
            sqlx::query_scalar("SELECT last_seq FROM channels WHERE host_id = ? AND id = ?")
                .bind(host)
                .bind(channel)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    pub async fn set_muted(
        &self,
        host: &str,
        channel: &str,
        muted: bool,
    ) -> Result<(), CacheError> {
        sqlx::query("UPDATE channels SET muted = ? WHERE host_id = ? AND id = ?")
            .bind(muted as i64)
            .bind(host)
            .bind(channel)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies one chat event; returns the message as it now stands if it changed.
    pub async fn apply(
        &self,
        host: &str,
        event: &ServerEvent,
    ) -> Result<Option<Message>, CacheError> {
        let Some(id) = sync::message_id(event) else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT body FROM messages WHERE host_id = ? AND id = ?")
                .bind(host)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let existing: Option<Message> = existing.map(|b| serde_json::from_str(&b)).transpose()?;
        let merged = sync::merge(existing.as_ref(), event);
        if let Some(message) = &merged {
            upsert_message(&mut *tx, host, message).await?;
        }
        if let Some(seq) = event.seq() {
            let channel = match event {
                ServerEvent::Message { channel_id, .. }
                | ServerEvent::MessageEdit { channel_id, .. }
                | ServerEvent::MessageState { channel_id, .. }
                | ServerEvent::MessageDelete { channel_id, .. } => channel_id.as_str(),
                _ => "",
            };
            sqlx::query(
                "UPDATE channels SET last_seq = MAX(last_seq, ?) WHERE host_id = ? AND id = ?",
            )
            .bind(seq)
            .bind(host)
            .bind(channel)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(merged)
    }

    /// Stores a message the host just accepted from us, without moving the channel's sync
    /// point: changes before it may not be in the cache yet, and catch-up resumes from there.
    pub async fn store_sent(&self, host: &str, message: &Message) -> Result<(), CacheError> {
        upsert_message(&self.pool, host, message).await
    }

    /// Applies messages fetched over REST (catch-up), each as its full current state.
    pub async fn put_messages(&self, host: &str, messages: &[Message]) -> Result<(), CacheError> {
        for message in messages {
            self.apply(
                host,
                &ServerEvent::Message {
                    channel_id: message.channel_id.clone(),
                    seq: message.seq,
                    message: message.clone(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The newest `limit` messages of a channel (older than `before_ms` if given), oldest first.
    pub async fn messages(
        &self,
        host: &str,
        channel: &str,
        limit: i64,
        before_ms: Option<i64>,
    ) -> Result<Vec<Message>, CacheError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM messages WHERE host_id = ? AND channel_id = ? AND created_at < ? \
             ORDER BY created_at DESC, id DESC LIMIT ?",
        )
        .bind(host)
        .bind(channel)
        .bind(before_ms.unwrap_or(i64::MAX))
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|b| serde_json::from_str(b))
            .collect::<Result<Vec<Message>, _>>()?;
        out.reverse();
        Ok(out)
    }

    pub async fn put_agents(
        &self,
        host: &str,
        agents: &[serde_json::Value],
    ) -> Result<(), CacheError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM agents WHERE host_id = ?")
            .bind(host)
            .execute(&mut *tx)
            .await?;
        for agent in agents {
            let slug = agent["slug"].as_str().unwrap_or_default();
            sqlx::query("INSERT OR REPLACE INTO agents (host_id, slug, body) VALUES (?, ?, ?)")
                .bind(host)
                .bind(slug)
                .bind(agent.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn agents(&self, host: &str) -> Result<Vec<serde_json::Value>, CacheError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body FROM agents WHERE host_id = ? ORDER BY slug")
                .bind(host)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect())
    }

    pub async fn meta(&self, host: &str, key: &str) -> Result<Option<String>, CacheError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE host_id = ? AND key = ?")
                .bind(host)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn set_meta(&self, host: &str, key: &str, value: &str) -> Result<(), CacheError> {
        sqlx::query("INSERT OR REPLACE INTO meta (host_id, key, value) VALUES (?, ?, ?)")
            .bind(host)
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Queues a message to send; its `client_id` is what makes a resend harmless. Queuing a
    /// `client_id` that is already queued (or sent) changes nothing and returns that item.
    pub async fn enqueue(
        &self,
        host: &str,
        channel: &str,
        content: &str,
        thread_id: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<OutboxItem, CacheError> {
        taos_proto::chat::check_content(content).map_err(CacheError::BadInput)?;
        if let Some(client_id) = client_id {
            taos_proto::chat::check_client_id(client_id).map_err(CacheError::BadInput)?;
        }
        let client_id = client_id
            .map(String::from)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query(
            "INSERT OR IGNORE INTO outbox (host_id, client_id, position, channel_id, content, thread_id, created_at) \
             VALUES (?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM outbox WHERE host_id = ?), ?, ?, ?, ?)",
        )
        .bind(host)
        .bind(&client_id)
        .bind(host)
        .bind(channel)
        .bind(content)
        .bind(thread_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // The item as stored: the new one, or the one already queued under this client_id.
        let row = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE host_id = ? AND client_id = ?"
        ))
        .bind(host)
        .bind(&client_id)
        .fetch_one(&self.pool)
        .await?;
        outbox_item(&row)
    }

    /// Outbox items in send order; `state` filters (`None`: all).
    pub async fn outbox(
        &self,
        host: &str,
        state: Option<&str>,
    ) -> Result<Vec<OutboxItem>, CacheError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE host_id = ? AND (? IS NULL OR state = ?) ORDER BY position"
        ))
        .bind(host)
        .bind(state)
        .bind(state)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_item).collect()
    }

    pub async fn outbox_attempted(
        &self,
        host: &str,
        client_id: &str,
        error: Option<&str>,
    ) -> Result<(), CacheError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE host_id = ? AND client_id = ?",
        )
        .bind(error)
        .bind(host)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn outbox_sent(
        &self,
        host: &str,
        client_id: &str,
        message_id: &str,
    ) -> Result<(), CacheError> {
        sqlx::query(
            "UPDATE outbox SET state = 'sent', message_id = ?, last_error = NULL WHERE host_id = ? AND client_id = ?",
        )
        .bind(message_id)
        .bind(host)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn outbox_failed(
        &self,
        host: &str,
        client_id: &str,
        error: &str,
    ) -> Result<(), CacheError> {
        sqlx::query(
            "UPDATE outbox SET state = 'failed', last_error = ? WHERE host_id = ? AND client_id = ?",
        )
        .bind(error)
        .bind(host)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Puts a failed item back in the queue (the user pressed retry).
    pub async fn outbox_retry(&self, host: &str, client_id: &str) -> Result<(), CacheError> {
        sqlx::query(
            "UPDATE outbox SET state = 'queued' WHERE host_id = ? AND client_id = ? AND state = 'failed'",
        )
        .bind(host)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets everything about a host (after unpairing).
    pub async fn forget_host(&self, host: &str) -> Result<(), CacheError> {
        let mut tx = self.pool.begin().await?;
        for table in ["channels", "messages", "agents", "outbox", "meta"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE host_id = ?"))
                .bind(host)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Creates `dir` (and parents) 0700, or tightens an existing one to 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if std::fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates the database file 0600 if it is missing, or tightens an existing one.
fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        // Used on unix only.
        let _ = path;
        Ok(())
    }
}

const OUTBOX_COLUMNS: &str =
    "client_id, channel_id, content, thread_id, state, attempts, last_error, message_id, created_at";

fn outbox_item(r: &sqlx::sqlite::SqliteRow) -> Result<OutboxItem, CacheError> {
    Ok(OutboxItem {
        client_id: r.try_get("client_id")?,
        channel_id: r.try_get("channel_id")?,
        content: r.try_get("content")?,
        thread_id: r.try_get("thread_id")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        message_id: r.try_get("message_id")?,
        created_at: r.try_get("created_at")?,
    })
}

fn cached_channel(row: &sqlx::sqlite::SqliteRow) -> Result<CachedChannel, CacheError> {
    Ok(CachedChannel {
        channel: serde_json::from_str(row.try_get::<&str, _>("body")?)?,
        synced_seq: row.try_get("last_seq")?,
        muted: row.try_get::<i64, _>("muted")? != 0,
    })
}

/// Stores a message's current state unless the cache already has a newer one.
async fn upsert_message<'e, E>(db: E, host: &str, message: &Message) -> Result<(), CacheError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO messages (host_id, id, channel_id, seq, created_at, body) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (host_id, id) DO UPDATE SET seq = excluded.seq, body = excluded.body \
         WHERE excluded.seq >= messages.seq",
    )
    .bind(host)
    .bind(&message.id)
    .bind(&message.channel_id)
    .bind(message.seq)
    .bind(message.created_at.timestamp_millis())
    .bind(serde_json::to_string(message)?)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_cache_folder_is_private_before_the_database_opens() {
        let root = tempfile::tempdir().unwrap();
        // A fresh folder, several levels down, as on first start.
        let dir = root.path().join("app/data");
        let db = dir.join("cache.db");
        let cache = Cache::open(&db).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        drop(cache);

        // A folder some earlier version (or the platform) made world-readable is tightened,
        // and so is the database in it, before SQLite writes anything.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cache = Cache::open(&db).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        // What SQLite made next to the database is inside the private folder.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(path.parent().map(mode), Some(0o700), "{}", path.display());
        }
        drop(cache);
    }
}
