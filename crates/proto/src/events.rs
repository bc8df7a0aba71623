use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "info" => Some(Level::Info),
            "warning" => Some(Level::Warning),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub level: Level,
    /// What raised it, e.g. `disk_quota`, `llm.budget`, `deploy`.
    pub source: String,
    pub title: String,
    pub message: String,
    pub read: bool,
    /// Source-specific details (agent slug, numbers, links).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
    /// The user it is for; `null` means the owner. The owner sees every notification, other
    /// users only their own.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewNotification {
    pub level: Level,
    pub title: String,
    #[serde(default)]
    pub message: String,
    /// Defaults to `api`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<serde_json::Value>,
}

/// The largest `data` a notification may carry, as JSON, in bytes.
pub const MAX_NOTIFICATION_DATA_BYTES: usize = 4096;

/// Body of `POST /api/notifications`: a notification and, optionally, who it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PostNotification {
    pub level: Level,
    pub title: String,
    #[serde(default)]
    pub message: String,
    /// Defaults to `api`.
    #[serde(default)]
    pub source: Option<String>,
    /// A JSON object of at most 4096 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<serde_json::Value>,
    /// The username of the user it is for; omitted, it is for the owner.
    #[serde(default)]
    pub user: Option<String>,
}

impl PostNotification {
    /// The notification itself, and who it is for.
    pub fn split(self) -> (NewNotification, Option<String>) {
        (
            NewNotification {
                level: self.level,
                title: self.title,
                message: self.message,
                source: self.source,
                data: self.data,
            },
            self.user,
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadAllResponse {
    /// How many notifications changed from unread to read.
    pub updated: u64,
}

/// One event on `GET /api/events`. The SSE `id:` is `id`, the SSE `event:` is `kind`, and the SSE
/// `data:` is this whole object as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostEvent {
    pub id: i64,
    /// e.g. `notification.created`, `notification.read`, `agent.status`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// SSE event name sent when a client's `Last-Event-ID` is older than the oldest event the host
/// still keeps: the client missed events it can no longer get and should reload its state.
pub const EVENT_RESYNC: &str = "resync";

/// SSE event name sent last on a stream whose credential was revoked or expired (data:
/// `{"reason": "revoked" | "expired"}`): authenticate again rather than just reconnecting.
pub const EVENT_UNAUTHORIZED: &str = "unauthorized";
