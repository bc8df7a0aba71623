//! Notifications for people, and the host event log behind `GET /api/events`.
//!
//! Every event is written to `host_events` before it is broadcast, and publishing is serialized,
//! so subscribers see strictly increasing ids and a reconnecting client can ask the table for
//! exactly what it missed. The table is bounded; older ids are pruned.

use sqlx::Row;
use taos_proto::events::{HostEvent, Level, NewNotification, Notification};
use tokio::sync::{broadcast, Mutex};

use crate::db::{from_ms, now_ms, Db};

/// How many host events are kept for resuming clients.
pub const EVENT_RETENTION: i64 = 10_000;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_MESSAGE_CHARS: usize = 4000;
pub const MAX_SOURCE_CHARS: usize = 64;
pub const MAX_LIST_LIMIT: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{0}")]
    BadInput(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot encode event data: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct EventHub {
    db: Db,
    live: broadcast::Sender<HostEvent>,
    publish_lock: Mutex<()>,
}

impl EventHub {
    pub fn new(db: Db) -> Self {
        let (live, _) = broadcast::channel(1024);
        EventHub {
            db,
            live,
            publish_lock: Mutex::new(()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.live.subscribe()
    }

    pub fn subscriber_count(&self) -> usize {
        self.live.receiver_count()
    }

    /// Stores an event and sends it to live subscribers.
    pub async fn publish(
        &self,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<HostEvent, NotifyError> {
        let _serial = self.publish_lock.lock().await;
        let mut tx = self.db.begin().await?;
        let event = insert_event(&mut tx, kind, data).await?;
        tx.commit().await?;
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Stores a notification and its `notification.created` event in one transaction.
    pub async fn notify(&self, new: NewNotification) -> Result<Notification, NotifyError> {
        let source = new.source.clone().unwrap_or_else(|| "api".to_string());
        validate(&new, &source)?;
        let data = new.data.unwrap_or_else(|| serde_json::json!({}));
        if !data.is_object() {
            return Err(NotifyError::BadInput("data must be a JSON object".into()));
        }
        let _serial = self.publish_lock.lock().await;
        let mut tx = self.db.begin().await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (created_at, level, source, title, message, data) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(now)
        .bind(new.level.as_str())
        .bind(&source)
        .bind(&new.title)
        .bind(&new.message)
        .bind(serde_json::to_string(&data)?)
        .fetch_one(&mut *tx)
        .await?;
        let notification = Notification {
            id,
            created_at: from_ms(now),
            level: new.level,
            source,
            title: new.title,
            message: new.message,
            read: false,
            data,
        };
        let event = insert_event(
            &mut tx,
            "notification.created",
            serde_json::to_value(&notification)?,
        )
        .await?;
        tx.commit().await?;
        let _ = self.live.send(event);
        Ok(notification)
    }

    pub async fn mark_read(&self, id: i64) -> Result<Notification, NotifyError> {
        let updated = sqlx::query("UPDATE notifications SET read = 1 WHERE id = ? AND read = 0")
            .bind(id)
            .execute(&self.db)
            .await?;
        let notification = get(&self.db, id).await?.ok_or(NotifyError::NotFound)?;
        if updated.rows_affected() == 1 {
            self.publish("notification.read", serde_json::json!({ "ids": [id] }))
                .await?;
        }
        Ok(notification)
    }

    pub async fn mark_all_read(&self) -> Result<u64, NotifyError> {
        let ids: Vec<i64> =
            sqlx::query_scalar("UPDATE notifications SET read = 1 WHERE read = 0 RETURNING id")
                .fetch_all(&self.db)
                .await?;
        if !ids.is_empty() {
            self.publish("notification.read", serde_json::json!({ "ids": ids }))
                .await?;
        }
        Ok(ids.len() as u64)
    }

    /// Events with id greater than `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<HostEvent>, NotifyError> {
        let rows = sqlx::query(
            "SELECT id, created_at, kind, data FROM host_events WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The oldest event id still kept, and the newest id ever given (0 if none).
    pub async fn id_range(&self) -> Result<(Option<i64>, i64), NotifyError> {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(id) FROM host_events")
            .fetch_one(&self.db)
            .await?;
        let newest: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'host_events'), 0)",
        )
        .fetch_one(&self.db)
        .await?;
        Ok((oldest, newest))
    }
}

fn validate(new: &NewNotification, source: &str) -> Result<(), NotifyError> {
    let bad = |m: String| Err(NotifyError::BadInput(m));
    if new.title.trim().is_empty() || new.title.chars().count() > MAX_TITLE_CHARS {
        return bad(format!("title must be 1-{MAX_TITLE_CHARS} characters"));
    }
    if new.message.chars().count() > MAX_MESSAGE_CHARS {
        return bad(format!(
            "message must be at most {MAX_MESSAGE_CHARS} characters"
        ));
    }
    let source_ok = !source.is_empty()
        && source.len() <= MAX_SOURCE_CHARS
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !source_ok {
        return bad(format!(
            "source must be 1-{MAX_SOURCE_CHARS} characters of letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::SqliteConnection,
    kind: &str,
    data: serde_json::Value,
) -> Result<HostEvent, NotifyError> {
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO host_events (created_at, kind, data) VALUES (?, ?, ?) RETURNING id",
    )
    .bind(now)
    .bind(kind)
    .bind(serde_json::to_string(&data)?)
    .fetch_one(&mut *tx)
    .await?;
    if id % 100 == 0 {
        sqlx::query("DELETE FROM host_events WHERE id <= ?")
            .bind(id - EVENT_RETENTION)
            .execute(&mut *tx)
            .await?;
    }
    Ok(HostEvent {
        id,
        kind: kind.to_string(),
        created_at: from_ms(now),
        data,
    })
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<HostEvent, NotifyError> {
    let data: String = row.try_get("data")?;
    Ok(HostEvent {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        created_at: from_ms(row.try_get("created_at")?),
        data: serde_json::from_str(&data)?,
    })
}

fn notification_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Notification, NotifyError> {
    let level: String = row.try_get("level")?;
    let data: String = row.try_get("data")?;
    Ok(Notification {
        id: row.try_get("id")?,
        created_at: from_ms(row.try_get("created_at")?),
        level: Level::parse(&level).unwrap_or(Level::Info),
        source: row.try_get("source")?,
        title: row.try_get("title")?,
        message: row.try_get("message")?,
        read: row.try_get("read")?,
        data: serde_json::from_str(&data)?,
    })
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Notification>, NotifyError> {
    let row = sqlx::query(
        "SELECT id, created_at, level, source, title, message, read, data FROM notifications WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(notification_from_row).transpose()
}

/// Newest first.
pub async fn list(
    db: &Db,
    unread_only: bool,
    limit: i64,
) -> Result<Vec<Notification>, NotifyError> {
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(NotifyError::BadInput(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let rows = sqlx::query(
        "SELECT id, created_at, level, source, title, message, read, data FROM notifications \
         WHERE (? = 0 OR read = 0) ORDER BY id DESC LIMIT ?",
    )
    .bind(unread_only)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(notification_from_row).collect()
}
