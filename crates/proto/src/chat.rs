use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The longest message the host stores, in characters (Unicode scalar values).
pub const MAX_CONTENT_CHARS: usize = 32_000;
// The OpenAPI document states the limit as `maxLength: 32000` on message contents (clients
// warn before sending more); attributes need a literal, so keep the two equal here.
const _: () = assert!(MAX_CONTENT_CHARS == 32000);

/// WebSocket close code: the client fell too far behind; reconnect and resume with `after_seq`.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// WebSocket close code: the credential that opened the socket was revoked (reason `revoked`)
/// or ran out (reason `expired`). Authenticate again — refresh the device token, or sign in —
/// rather than reconnecting with the same credential.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;

/// The host's rule for a message's text, shared so the app refuses what the host would refuse
/// before it queues it offline (a queued message the host later rejects would only fail then).
pub fn check_content(content: &str) -> Result<(), String> {
    if content.trim().is_empty() {
        return Err("content must not be empty".into());
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        ));
    }
    Ok(())
}

/// The host's rule for a sender's `client_id` (what makes a retried send idempotent).
pub fn check_client_id(client_id: &str) -> Result<(), String> {
    let ok = !client_id.is_empty()
        && client_id.len() <= 64
        && client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("client_id must be 1-64 characters of letters, digits, '-' or '_'".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChannelType {
    Dm,
    Group,
    Topic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// Agents answer when named (`@slug`, `@all`); in a DM, always.
    #[default]
    Quiet,
    /// Every agent member gets every user message (subject to cooldown).
    Lively,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChannelSettings {
    pub response_mode: ResponseMode,
    /// How far agent-to-agent replies may chain after a user message, 1-10.
    pub max_hops: u32,
    /// An agent not named in a message is addressed at most once per this many seconds, 0-60.
    pub cooldown_seconds: u32,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            response_mode: ResponseMode::Quiet,
            max_hops: 3,
            cooldown_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Channel {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelType,
    /// Agent slugs and `user:<username>` ids.
    pub members: Vec<String>,
    pub settings: ChannelSettings,
    pub created_at: DateTime<Utc>,
    /// The newest sequence number in this channel.
    pub last_seq: i64,
    pub archived: bool,
    /// The member (`user:<username>`) who made it; besides the owner, only they may rename,
    /// archive or delete it or change its people. `null` for DMs and older channels.
    #[serde(default)]
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    #[serde(rename = "type", default = "default_channel_type")]
    pub kind: ChannelType,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub settings: Option<ChannelSettingsPatch>,
}

fn default_channel_type() -> ChannelType {
    ChannelType::Group
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChannelSettingsPatch {
    #[serde(default)]
    pub response_mode: Option<ResponseMode>,
    #[serde(default)]
    pub max_hops: Option<u32>,
    #[serde(default)]
    pub cooldown_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub archived: Option<bool>,
    #[serde(default)]
    pub settings: Option<ChannelSettingsPatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    Add,
    Remove,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    pub action: MemberAction,
    /// An agent slug or `user:<username>`.
    pub member: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthorType {
    User,
    Agent,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Pending,
    Streaming,
    Complete,
    Error,
}

/// Why an agent's turn failed, as the host explains it: kept in a failed (`state: error`)
/// agent message's `metadata.failure`, so every client shows the reason in the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnFailure {
    /// What failed, one of `taos_proto::bridge::ERROR_CODES` or `model_unavailable` (no enabled
    /// provider offers the agent's model), for clients that want their own words.
    pub code: String,
    /// One sentence for people: what went wrong.
    pub reason: String,
    /// What to do about it, if anything can be done.
    pub hint: Option<String>,
    /// What the agent reported, as it said it (shortened), for the curious and for bug reports.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: String,
    pub channel_id: String,
    /// The sequence number of this message's latest visible change.
    pub seq: i64,
    pub author_id: String,
    pub author_type: AuthorType,
    /// Empty once deleted.
    pub content: String,
    pub content_type: String,
    pub thread_id: Option<String>,
    pub state: MessageState,
    pub client_id: Option<String>,
    /// Free-form details. An agent message that failed (`state: error`) carries
    /// `failure`: a `TurnFailure`, the reason in words.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    pub channel_id: String,
    /// At most 32 000 characters (Unicode scalar values, as Rust counts them).
    #[cfg_attr(feature = "openapi", schema(max_length = 32000))]
    pub content: String,
    /// Client-made id: re-sending the same one returns the existing message.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub thread_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MessageEdit {
    #[cfg_attr(feature = "openapi", schema(max_length = 32000))]
    pub content: String,
}

/// What the WebSocket sends. Every event but `message_delta`, `typing`, `ack` and `error` has
/// the channel's `seq`; `message` carries a message's full current state (also when a
/// streaming reply completes), so clients upsert by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "with serde_json's preserve_order (which the ACP SDK turns on in workspace builds) \
              a message's JSON metadata is larger; events are built once and sent, not stored"
)]
pub enum ServerEvent {
    Message {
        channel_id: String,
        seq: i64,
        message: Message,
    },
    MessageEdit {
        channel_id: String,
        seq: i64,
        message_id: String,
        content: String,
        edited_at: DateTime<Utc>,
    },
    MessageState {
        channel_id: String,
        seq: i64,
        message_id: String,
        state: MessageState,
    },
    MessageDelete {
        channel_id: String,
        seq: i64,
        message_id: String,
        deleted_at: DateTime<Utc>,
    },
    MessageDelta {
        channel_id: String,
        message_id: String,
        delta: String,
    },
    Typing {
        channel_id: String,
        member: String,
    },
    /// Sent after a subscribe's replay: everything up to `last_seq` has been sent.
    Subscribed {
        channel_id: String,
        last_seq: i64,
    },
    /// Answer to a `message` sent over the socket.
    Ack {
        channel_id: String,
        client_id: Option<String>,
        message_id: String,
        seq: i64,
    },
    Error {
        code: String,
        message: String,
    },
}

impl ServerEvent {
    pub fn seq(&self) -> Option<i64> {
        match self {
            ServerEvent::Message { seq, .. }
            | ServerEvent::MessageEdit { seq, .. }
            | ServerEvent::MessageState { seq, .. }
            | ServerEvent::MessageDelete { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

/// What a WebSocket client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientEvent {
    Subscribe {
        channel_id: String,
        #[serde(default)]
        after_seq: Option<i64>,
    },
    Unsubscribe {
        channel_id: String,
    },
    Message {
        channel_id: String,
        #[cfg_attr(feature = "openapi", schema(max_length = 32000))]
        content: String,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        thread_id: Option<String>,
    },
    Typing {
        channel_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_needs_text_and_a_bounded_length() {
        assert!(check_content("hi").is_ok());
        assert!(check_content(&"é".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert!(check_content("").is_err());
        assert!(check_content(" \n\t ").is_err());
        assert!(check_content(&"a".repeat(MAX_CONTENT_CHARS + 1)).is_err());
    }

    #[test]
    fn client_ids_are_short_and_plain() {
        assert!(check_client_id("0193a1b2-c3d4_e5").is_ok());
        assert!(check_client_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a b", "a/b", "nul\0", "é"] {
            assert!(check_client_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_client_id(&"a".repeat(65)).is_err());
    }
}
