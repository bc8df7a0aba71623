//! Notifications for people, and the host event log behind `GET /api/events`.
//!
//! Every event is written to `host_events` before it is broadcast, and publishing is serialized,
//! so subscribers see strictly increasing ids and a reconnecting client can ask the table for
//! exactly what it missed. The table is bounded; older ids are pruned.
//!
//! Each notification and event has an audience: the owner (everything the host raises itself)
//! or one other user. The owner side sees everything; another user sees only what is theirs.

use sqlx::Row;
use taos_proto::events::{
    HostEvent, Level, NewNotification, Notification, MAX_NOTIFICATION_DATA_BYTES,
};
use tokio::sync::{broadcast, Mutex};
use uuid::Uuid;

use crate::db::{from_ms, now_ms, Db};

/// How many host events are kept for resuming clients.
pub const EVENT_RETENTION: i64 = 10_000;
/// How many notifications are kept per recipient (the owner, or each other user); older ones
/// are deleted as new ones arrive, so a chatty script can't grow the database without bound.
pub const NOTIFICATION_RETENTION: i64 = 1_000;
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
    #[error("bad stored value: {0}")]
    Decode(String),
}

/// Who a notification or host event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The owner, their devices and the local admin.
    Owner,
    /// One other user (the owner sees it too).
    User(Uuid),
}

impl Audience {
    fn column(self) -> Option<String> {
        match self {
            Audience::Owner => None,
            Audience::User(id) => Some(id.to_string()),
        }
    }

    fn from_column(value: Option<String>) -> Result<Audience, NotifyError> {
        match value {
            None => Ok(Audience::Owner),
            Some(text) => Uuid::parse_str(&text)
                .map(Audience::User)
                .map_err(|e| NotifyError::Decode(e.to_string())),
        }
    }
}

/// Whose notifications and events are being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// The owner side: sees everything.
    Owner,
    /// Another user: sees only what is addressed to them.
    User(Uuid),
}

impl Viewer {
    pub fn sees(self, audience: Audience) -> bool {
        match (self, audience) {
            (Viewer::Owner, _) => true,
            (Viewer::User(me), Audience::User(them)) => me == them,
            (Viewer::User(_), Audience::Owner) => false,
        }
    }

    /// The `user_id` to filter on; `None` means no filter.
    fn filter(self) -> Option<String> {
        match self {
            Viewer::Owner => None,
            Viewer::User(id) => Some(id.to_string()),
        }
    }
}

/// A host event on its way to live subscribers, with who may see it.
#[derive(Debug, Clone)]
pub struct Published {
    pub event: HostEvent,
    pub audience: Audience,
    /// Sent to live subscribers only, never stored: it has no id, and a client that misses
    /// it gets the next one (the home screen's periodic `host.overview`).
    pub transient: bool,
}

pub struct EventHub {
    db: Db,
    live: broadcast::Sender<Published>,
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

    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.live.subscribe()
    }

    pub fn subscriber_count(&self) -> usize {
        self.live.receiver_count()
    }

    /// Stores an event for the owner and sends it to live subscribers.
    pub async fn publish(
        &self,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<HostEvent, NotifyError> {
        self.publish_to(kind, data, Audience::Owner).await
    }

    /// Publishes an event that only reports a change already stored: if recording it fails,
    /// the change stands all the same (clients see it at their next read), so the failure is
    /// logged rather than returned.
    pub async fn announce(&self, kind: &str, data: serde_json::Value) {
        if let Err(e) = self.publish(kind, data).await {
            tracing::warn!(kind, error = %e, "a host event could not be recorded; live clients miss it");
        }
    }

    /// Sends a figure that is replaced by the next one (the owner's `host.overview`) to live
    /// subscribers without storing it; the SSE event carries `data` alone, without an id, so
    /// clients' `Last-Event-ID` stays on the stored events.
    pub fn broadcast_transient(&self, kind: &str, data: serde_json::Value) {
        let _ = self.live.send(Published {
            event: HostEvent {
                id: 0,
                kind: kind.to_string(),
                created_at: chrono::Utc::now(),
                data,
            },
            audience: Audience::Owner,
            transient: true,
        });
    }

    /// Stores an event for `audience` and sends it to live subscribers.
    pub async fn publish_to(
        &self,
        kind: &str,
        data: serde_json::Value,
        audience: Audience,
    ) -> Result<HostEvent, NotifyError> {
        let _serial = self.publish_lock.lock().await;
        let mut tx = self.db.begin().await?;
        let event = insert_event(&mut tx, kind, data, audience).await?;
        tx.commit().await?;
        // Committed first: with no live listener the event is still read from the database.
        let _ = self.live.send(Published {
            event: event.clone(),
            audience,
            transient: false,
        });
        Ok(event)
    }

    /// Stores a notification for the owner and its `notification.created` event.
    pub async fn notify(&self, new: NewNotification) -> Result<Notification, NotifyError> {
        self.notify_to(new, Audience::Owner, None).await
    }

    /// Stores a notification for `audience` (`username` names it in the answer) and its
    /// `notification.created` event in one transaction, and drops that recipient's
    /// notifications beyond the newest [`NOTIFICATION_RETENTION`].
    pub async fn notify_to(
        &self,
        new: NewNotification,
        audience: Audience,
        username: Option<String>,
    ) -> Result<Notification, NotifyError> {
        let source = new.source.clone().unwrap_or_else(|| "api".to_string());
        validate(&new, &source)?;
        let data = new.data.unwrap_or_else(|| serde_json::json!({}));
        if !data.is_object() {
            return Err(NotifyError::BadInput("data must be a JSON object".into()));
        }
        let data_text = serde_json::to_string(&data)?;
        if data_text.len() > MAX_NOTIFICATION_DATA_BYTES {
            return Err(NotifyError::BadInput(format!(
                "data must be at most {MAX_NOTIFICATION_DATA_BYTES} bytes of JSON"
            )));
        }
        let _serial = self.publish_lock.lock().await;
        let mut tx = self.db.begin().await?;
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (created_at, level, source, title, message, data, user_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(now)
        .bind(new.level.as_str())
        .bind(&source)
        .bind(&new.title)
        .bind(&new.message)
        .bind(&data_text)
        .bind(audience.column())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM notifications WHERE user_id IS ? AND id <= \
             (SELECT id FROM notifications WHERE user_id IS ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        )
        .bind(audience.column())
        .bind(audience.column())
        .bind(NOTIFICATION_RETENTION)
        .execute(&mut *tx)
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
            user: username,
        };
        let event = insert_event(
            &mut tx,
            "notification.created",
            serde_json::to_value(&notification)?,
            audience,
        )
        .await?;
        tx.commit().await?;
        // Committed first: with no live listener the event is still read from the database.
        let _ = self.live.send(Published {
            event,
            audience,
            transient: false,
        });
        Ok(notification)
    }

    /// Marks one notification read. One the viewer may not see is `NotFound`.
    pub async fn mark_read(&self, id: i64, viewer: Viewer) -> Result<Notification, NotifyError> {
        let (notification, audience) = get(&self.db, id)
            .await?
            .filter(|(_, audience)| viewer.sees(*audience))
            .ok_or(NotifyError::NotFound)?;
        let updated = sqlx::query("UPDATE notifications SET read = 1 WHERE id = ? AND read = 0")
            .bind(id)
            .execute(&self.db)
            .await?;
        if updated.rows_affected() == 1 {
            self.publish_to(
                "notification.read",
                serde_json::json!({ "ids": [id] }),
                audience,
            )
            .await?;
        }
        Ok(Notification {
            read: true,
            ..notification
        })
    }

    /// Marks every notification the viewer sees read; one `notification.read` event per
    /// recipient, so each user's stream learns only of their own.
    pub async fn mark_all_read(&self, viewer: Viewer) -> Result<u64, NotifyError> {
        let rows = sqlx::query(
            "UPDATE notifications SET read = 1 WHERE read = 0 AND (? IS NULL OR user_id = ?) \
             RETURNING id, user_id",
        )
        .bind(viewer.filter())
        .bind(viewer.filter())
        .fetch_all(&self.db)
        .await?;
        let mut by_audience: Vec<(Audience, Vec<i64>)> = Vec::new();
        for row in &rows {
            let audience = Audience::from_column(row.try_get("user_id")?)?;
            let id: i64 = row.try_get("id")?;
            match by_audience.iter_mut().find(|(a, _)| *a == audience) {
                Some((_, ids)) => ids.push(id),
                None => by_audience.push((audience, vec![id])),
            }
        }
        for (audience, ids) in by_audience {
            self.publish_to(
                "notification.read",
                serde_json::json!({ "ids": ids }),
                audience,
            )
            .await?;
        }
        Ok(rows.len() as u64)
    }

    /// Events the viewer may see with id greater than `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
        viewer: Viewer,
    ) -> Result<Vec<HostEvent>, NotifyError> {
        let rows = sqlx::query(
            "SELECT id, created_at, kind, data FROM host_events \
             WHERE id > ? AND (? IS NULL OR user_id = ?) ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(viewer.filter())
        .bind(viewer.filter())
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
    audience: Audience,
) -> Result<HostEvent, NotifyError> {
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO host_events (created_at, kind, data, user_id) VALUES (?, ?, ?, ?) RETURNING id",
    )
    .bind(now)
    .bind(kind)
    .bind(serde_json::to_string(&data)?)
    .bind(audience.column())
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

const NOTIFICATION_COLUMNS: &str = "n.id, n.created_at, n.level, n.source, n.title, n.message, \
     n.read, n.data, n.user_id, u.username";

fn notification_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Notification, NotifyError> {
    let level: String = row.try_get("level")?;
    let data: String = row.try_get("data")?;
    Ok(Notification {
        user: row.try_get("username")?,
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

/// One notification and who it is for.
pub async fn get(db: &Db, id: i64) -> Result<Option<(Notification, Audience)>, NotifyError> {
    let row = sqlx::query(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications n LEFT JOIN users u ON u.id = n.user_id \
         WHERE n.id = ?"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some((
            notification_from_row(&row)?,
            Audience::from_column(row.try_get("user_id")?)?,
        ))),
    }
}

/// The notifications the viewer may see, newest first.
pub async fn list(
    db: &Db,
    viewer: Viewer,
    unread_only: bool,
    limit: i64,
) -> Result<Vec<Notification>, NotifyError> {
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(NotifyError::BadInput(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let rows = sqlx::query(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications n LEFT JOIN users u ON u.id = n.user_id \
         WHERE (? = 0 OR n.read = 0) AND (? IS NULL OR n.user_id = ?) ORDER BY n.id DESC LIMIT ?"
    ))
    .bind(unread_only)
    .bind(viewer.filter())
    .bind(viewer.filter())
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter().map(notification_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(title: &str) -> NewNotification {
        NewNotification {
            level: Level::Info,
            title: title.to_string(),
            message: String::new(),
            source: None,
            data: None,
        }
    }

    async fn count(db: &Db, audience: Audience) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM notifications WHERE user_id IS ?")
            .bind(audience.column())
            .fetch_one(db)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_recipient_keeps_only_their_newest_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        let guest = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES (?, 'guest', 'x', 0)",
        )
        .bind(guest.to_string())
        .execute(&db)
        .await
        .unwrap();
        // A full backlog for the owner (written directly; one fsync per notification would be
        // slow) and a few for the guest.
        let mut tx = db.begin().await.unwrap();
        for i in 0..NOTIFICATION_RETENTION + 5 {
            sqlx::query(
                "INSERT INTO notifications (created_at, level, source, title, message) \
                 VALUES (?, 'info', 'test', ?, '')",
            )
            .bind(i)
            .bind(format!("old {i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let hub = EventHub::new(db.clone());
        for i in 0..3 {
            hub.notify_to(note(&format!("guest {i}")), Audience::User(guest), None)
                .await
                .unwrap();
        }
        assert_eq!(count(&db, Audience::User(guest)).await, 3);

        let newest = hub.notify(note("newest")).await.unwrap();
        assert_eq!(count(&db, Audience::Owner).await, NOTIFICATION_RETENTION);
        let guests = list(&db, Viewer::User(guest), false, 10).await.unwrap();
        assert_eq!(guests.len(), 3, "the guest's notifications are untouched");
        let kept = list(&db, Viewer::Owner, false, MAX_LIST_LIMIT)
            .await
            .unwrap();
        assert_eq!(kept[0].id, newest.id);
        let oldest: String = sqlx::query_scalar(
            "SELECT title FROM notifications WHERE user_id IS NULL ORDER BY id LIMIT 1",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(oldest, "old 6", "the six oldest went");
    }

    #[tokio::test]
    async fn data_over_4_kib_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).await.unwrap();
        let hub = EventHub::new(db.clone());
        let mut big = note("big");
        big.data = Some(serde_json::json!({ "blob": "a".repeat(MAX_NOTIFICATION_DATA_BYTES) }));
        assert!(matches!(
            hub.notify(big).await,
            Err(NotifyError::BadInput(_))
        ));
        assert_eq!(count(&db, Audience::Owner).await, 0);
    }
}
