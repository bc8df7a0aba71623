//! Chat: channels, members and messages, with one sequence number per channel.
//!
//! Every change a client can see (new message, edit, state change, delete) takes the channel's
//! next `seq` inside the same transaction that makes the change, and stamps the message's
//! `seq`. A client that was away asks for `after_seq` and gets exactly what changed. Writers to
//! one channel are serialized and publish after commit, so live events arrive in seq order.

pub mod access;
pub mod hub;
pub mod router;

use sqlx::Row;
use taos_proto::bridge::ContextMessage;
use taos_proto::chat::{
    AuthorType, Channel, ChannelPatch, ChannelSettings, ChannelSettingsPatch, ChannelType,
    MemberAction, Message, MessageState, NewChannel, ServerEvent, TurnFailure,
};
use uuid::Uuid;

use crate::agents;
use crate::db::{from_ms, now_ms, Db};
use hub::ChatHub;

pub use access::Viewer;

pub use taos_proto::chat::MAX_CONTENT_CHARS;
pub const MAX_CHANNEL_NAME_CHARS: usize = 100;
pub const MAX_PAGE: i64 = 500;
pub const USER_MEMBER_PREFIX: &str = "user:";

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored data: {0}")]
    Decode(String),
}

impl From<agents::AgentError> for ChatError {
    fn from(e: agents::AgentError) -> Self {
        match e {
            agents::AgentError::NotFound => ChatError::NotFound("no such agent"),
            agents::AgentError::BadInput(m) => ChatError::BadInput(m),
            agents::AgentError::Db(e) => ChatError::Db(e),
            agents::AgentError::Decode(m) => ChatError::Decode(m),
        }
    }
}

/// The chat member id of a person.
pub fn user_member(username: &str) -> String {
    format!("{USER_MEMBER_PREFIX}{username}")
}

fn json_decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ChatError> {
    serde_json::from_str(text).map_err(|e| ChatError::Decode(e.to_string()))
}

fn validate_settings(
    base: ChannelSettings,
    patch: Option<&ChannelSettingsPatch>,
) -> Result<ChannelSettings, ChatError> {
    let Some(patch) = patch else {
        return Ok(base);
    };
    let mut s = base;
    if let Some(mode) = patch.response_mode {
        s.response_mode = mode;
    }
    if let Some(hops) = patch.max_hops {
        if !(1..=10).contains(&hops) {
            return Err(ChatError::BadInput(
                "max_hops must be between 1 and 10".into(),
            ));
        }
        s.max_hops = hops;
    }
    if let Some(cd) = patch.cooldown_seconds {
        if cd > 60 {
            return Err(ChatError::BadInput(
                "cooldown_seconds must be between 0 and 60".into(),
            ));
        }
        s.cooldown_seconds = cd;
    }
    Ok(s)
}

fn validate_channel_name(name: &str) -> Result<(), ChatError> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_CHANNEL_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ChatError::BadInput(format!(
            "name must be 1-{MAX_CHANNEL_NAME_CHARS} printable characters"
        )));
    }
    Ok(())
}

fn validate_client_id(client_id: &str) -> Result<(), ChatError> {
    taos_proto::chat::check_client_id(client_id).map_err(ChatError::BadInput)
}

fn validate_content(content: &str) -> Result<(), ChatError> {
    taos_proto::chat::check_content(content).map_err(ChatError::BadInput)
}

const MESSAGE_COLUMNS: &str =
    "id, channel_id, seq, author_id, author_type, content, content_type, \
     thread_id, state, client_id, metadata, created_at, edited_at, deleted_at";

fn author_type_str(t: AuthorType) -> &'static str {
    match t {
        AuthorType::User => "user",
        AuthorType::Agent => "agent",
        AuthorType::System => "system",
    }
}

fn state_str(s: MessageState) -> &'static str {
    match s {
        MessageState::Pending => "pending",
        MessageState::Streaming => "streaming",
        MessageState::Complete => "complete",
        MessageState::Error => "error",
    }
}

fn author_type_from_str(text: &str) -> Result<AuthorType, ChatError> {
    match text {
        "user" => Ok(AuthorType::User),
        "agent" => Ok(AuthorType::Agent),
        "system" => Ok(AuthorType::System),
        other => Err(ChatError::Decode(format!("unknown author type {other:?}"))),
    }
}

fn state_from_str(text: &str) -> Result<MessageState, ChatError> {
    match text {
        "pending" => Ok(MessageState::Pending),
        "streaming" => Ok(MessageState::Streaming),
        "complete" => Ok(MessageState::Complete),
        "error" => Ok(MessageState::Error),
        other => Err(ChatError::Decode(format!(
            "unknown message state {other:?}"
        ))),
    }
}

fn message_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Message, ChatError> {
    let author_type: &str = row.try_get("author_type")?;
    let state: &str = row.try_get("state")?;
    let metadata: &str = row.try_get("metadata")?;
    Ok(Message {
        id: row.try_get("id")?,
        channel_id: row.try_get("channel_id")?,
        seq: row.try_get("seq")?,
        author_id: row.try_get("author_id")?,
        author_type: author_type_from_str(author_type)?,
        content: row.try_get("content")?,
        content_type: row.try_get("content_type")?,
        thread_id: row.try_get("thread_id")?,
        state: state_from_str(state)?,
        client_id: row.try_get("client_id")?,
        metadata: json_decode(metadata)?,
        created_at: from_ms(row.try_get("created_at")?),
        edited_at: row.try_get::<Option<i64>, _>("edited_at")?.map(from_ms),
        deleted_at: row.try_get::<Option<i64>, _>("deleted_at")?.map(from_ms),
    })
}

/// What a new message needs.
pub struct Post<'a> {
    pub channel_id: &'a str,
    pub author_id: &'a str,
    pub author_type: AuthorType,
    pub content: &'a str,
    pub client_id: Option<&'a str>,
    pub thread_id: Option<&'a str>,
    pub state: MessageState,
    pub metadata: serde_json::Value,
}

/// What [`Chat::prepare_post`] found.
pub enum Prepared {
    /// This author already posted this `client_id`: the message they posted then.
    Posted(Message),
    Pending(PendingPost),
}

/// What [`Chat::check_post`] found.
pub enum Drafted {
    /// This author already posted this `client_id`: the message they posted then.
    Posted(Message),
    New {
        channel: Channel,
        post: QueuedPost,
    },
}

/// A checked post holding its channel's write lock (so seqs and publishes keep chat order),
/// not stored yet.
pub struct PendingPost {
    pub channel: Channel,
    /// The message as it will be stored; its `seq` is given by [`PendingPost::insert`].
    pub message: Message,
    created_at: i64,
    serial: tokio::sync::OwnedMutexGuard<()>,
}

/// A message stored in a transaction, to [`Chat::publish`] once that commits.
pub struct StoredPost {
    pub message: Message,
    serial: tokio::sync::OwnedMutexGuard<()>,
}

impl PendingPost {
    /// Stores the message (with the channel's next seq) in the caller's transaction.
    pub async fn insert(self, tx: &mut sqlx::SqliteConnection) -> Result<StoredPost, ChatError> {
        let (queued, serial) = self.into_queued();
        let message = queued.insert(tx).await?;
        Ok(StoredPost { message, serial })
    }

    /// The post without its hold on the channel's write lock, for a writer that fixes its
    /// place in chat order another way (a group commit queued under the lock), and the lock.
    pub fn into_queued(self) -> (QueuedPost, tokio::sync::OwnedMutexGuard<()>) {
        let PendingPost {
            message,
            created_at,
            serial,
            ..
        } = self;
        (
            QueuedPost {
                message,
                created_at,
            },
            serial,
        )
    }
}

/// A checked post to store in a transaction whose commit is ordered by its caller; publish it
/// with [`Chat::announce`] once committed, under the channel's write lock.
pub struct QueuedPost {
    pub message: Message,
    created_at: i64,
}

impl QueuedPost {
    /// Stores the message with the channel's next seq; returns it as stored.
    pub async fn insert(self, tx: &mut sqlx::SqliteConnection) -> Result<Message, ChatError> {
        let QueuedPost {
            mut message,
            created_at,
        } = self;
        // Two statements sent as one (each statement on its own is a round trip to SQLite's
        // worker thread): take the channel's next seq, and insert the message with it. No
        // channel, no row: nothing is inserted, and RETURNING gives nothing.
        let seq: i64 = sqlx::query_scalar(
            "UPDATE channels SET last_seq = last_seq + 1 WHERE id = ?2; \
             INSERT INTO messages (id, channel_id, seq, created_seq, author_id, author_type, content, \
             thread_id, state, client_id, metadata, created_at) \
             SELECT ?1, ?2, last_seq, last_seq, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM channels WHERE id = ?2 \
             RETURNING seq",
        )
        .bind(&message.id)
        .bind(&message.channel_id)
        .bind(&message.author_id)
        .bind(author_type_str(message.author_type))
        .bind(&message.content)
        .bind(&message.thread_id)
        .bind(state_str(message.state))
        .bind(&message.client_id)
        .bind(message.metadata.to_string())
        .bind(created_at)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ChatError::NotFound("no such channel"))?;
        message.seq = seq;
        Ok(message)
    }
}

/// The message this author already posted with this `client_id` in this channel, read in the
/// caller's transaction (so it sees a re-send stored earlier in the same one).
pub async fn posted_with_client_id(
    tx: &mut sqlx::SqliteConnection,
    message: &Message,
) -> Result<Option<Message>, ChatError> {
    let Some(cid) = &message.client_id else {
        return Ok(None);
    };
    let row = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND author_id = ? AND client_id = ?"
    ))
    .bind(&message.channel_id)
    .bind(&message.author_id)
    .bind(cid)
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// The chat store plus its live hub.
pub struct Chat {
    db: Db,
    pub hub: ChatHub,
}

impl Chat {
    pub fn new(db: Db) -> Self {
        Chat {
            db,
            hub: ChatHub::default(),
        }
    }

    pub async fn channel(&self, id: &str) -> Result<Channel, ChatError> {
        channel_on(&self.db, id).await
    }

    /// Checks that a member id names an existing agent or user.
    async fn check_member_exists(&self, member: &str) -> Result<(), ChatError> {
        if let Some(username) = member.strip_prefix(USER_MEMBER_PREFIX) {
            if !crate::auth::users::exists(&self.db, username).await? {
                return Err(ChatError::BadInput(format!("unknown user {username}")));
            }
            return Ok(());
        }
        match agents::get_by_slug(&self.db, member).await {
            Ok(_) => Ok(()),
            Err(agents::AgentError::NotFound) => {
                Err(ChatError::BadInput(format!("unknown agent {member:?}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn create_channel(
        &self,
        new: &NewChannel,
        creator: &str,
    ) -> Result<Channel, ChatError> {
        validate_channel_name(&new.name)?;
        let settings = validate_settings(ChannelSettings::default(), new.settings.as_ref())?;
        let mut members = vec![creator.to_string()];
        for m in &new.members {
            self.check_member_exists(m).await?;
            if !members.contains(m) {
                members.push(m.clone());
            }
        }
        if members.len() > 200 {
            return Err(ChatError::BadInput("at most 200 members".into()));
        }
        let id = Uuid::now_v7().to_string();
        let mut tx = self.db.begin().await?;
        insert_channel(
            &mut tx,
            &id,
            new.name.trim(),
            new.kind,
            &settings,
            None,
            Some(creator),
            &members,
        )
        .await?;
        tx.commit().await?;
        self.channel(&id).await
    }

    pub async fn list_channels(
        &self,
        archived: Option<bool>,
        member: Option<&str>,
    ) -> Result<Vec<Channel>, ChatError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM channels c WHERE (? IS NULL OR archived = ?) \
             AND (? IS NULL OR EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = c.id AND m.member = ?)) \
             ORDER BY created_at, id",
        )
        .bind(archived)
        .bind(archived)
        .bind(member)
        .bind(member)
        .fetch_all(&self.db)
        .await?;
        let mut channels = Vec::with_capacity(ids.len());
        for id in ids {
            channels.push(self.channel(&id).await?);
        }
        Ok(channels)
    }

    pub async fn update_channel(
        &self,
        id: &str,
        patch: &ChannelPatch,
    ) -> Result<Channel, ChatError> {
        let current = self.channel(id).await?;
        let name = patch.name.clone().unwrap_or(current.name.clone());
        validate_channel_name(&name)?;
        let settings = validate_settings(current.settings.clone(), patch.settings.as_ref())?;
        let archived = patch.archived.unwrap_or(current.archived);
        sqlx::query("UPDATE channels SET name = ?, settings = ?, archived = ? WHERE id = ?")
            .bind(name.trim())
            .bind(serde_json::to_string(&settings).unwrap_or_default())
            .bind(archived)
            .bind(id)
            .execute(&self.db)
            .await?;
        self.channel(id).await
    }

    /// Deletes the channel and all its messages (and its undelivered bridge deliveries).
    pub async fn delete_channel(&self, id: &str) -> Result<(), ChatError> {
        let lock = self.hub.write_lock(id);
        let _serial = lock.lock().await;
        let mut tx = self.db.begin().await?;
        crate::bridge::drop_unanswered_in_channel(&mut tx, id).await?;
        let deleted = sqlx::query("DELETE FROM channels WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(ChatError::NotFound("no such channel"));
        }
        tx.commit().await?;
        self.hub.forget(id);
        Ok(())
    }

    pub async fn change_member(
        &self,
        id: &str,
        action: MemberAction,
        member: &str,
    ) -> Result<Channel, ChatError> {
        let channel = self.channel(id).await?;
        match action {
            MemberAction::Add => {
                self.check_member_exists(member).await?;
                if channel.kind == ChannelType::Dm {
                    return Err(ChatError::BadInput("a DM's members can't change".into()));
                }
                sqlx::query(
                    "INSERT OR IGNORE INTO channel_members (channel_id, member, added_at) VALUES (?, ?, ?)",
                )
                .bind(id)
                .bind(member)
                .bind(now_ms())
                .execute(&self.db)
                .await?;
            }
            MemberAction::Remove => {
                if channel.kind == ChannelType::Dm {
                    return Err(ChatError::BadInput("a DM's members can't change".into()));
                }
                let removed =
                    sqlx::query("DELETE FROM channel_members WHERE channel_id = ? AND member = ?")
                        .bind(id)
                        .bind(member)
                        .execute(&self.db)
                        .await?;
                if removed.rows_affected() == 0 {
                    return Err(ChatError::BadInput(format!("{member} is not a member")));
                }
            }
        }
        self.channel(id).await
    }

    pub async fn message(&self, id: &str) -> Result<Message, ChatError> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?
        .ok_or(ChatError::NotFound("no such message"))?;
        message_from_row(&row)
    }

    /// With `after_seq`: every message changed after it, in seq order (deletes as tombstones).
    /// Otherwise the newest `limit` messages created before `before_seq` (if given), oldest first.
    pub async fn messages(
        &self,
        channel_id: &str,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Message>, ChatError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ChatError::BadInput(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        self.channel(channel_id).await?;
        let rows = if let Some(after) = after_seq {
            sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            ))
            .bind(channel_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.db)
            .await?
        } else {
            let mut rows = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND created_seq < ? \
                 ORDER BY created_seq DESC LIMIT ?"
            ))
            .bind(channel_id)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.db)
            .await?;
            rows.reverse();
            rows
        };
        rows.iter().map(message_from_row).collect()
    }

    /// The last `n` visible messages of a channel other than `except` (the message they are
    /// context for, if it is stored already), oldest first: what an agent gets as context.
    /// Only the columns the context carries are read.
    pub async fn context(
        conn: &mut sqlx::SqliteConnection,
        channel_id: &str,
        except: &str,
        n: i64,
    ) -> Result<Vec<ContextMessage>, ChatError> {
        let rows = sqlx::query(
            "SELECT author_id, author_type, content FROM messages WHERE channel_id = ? \
             AND deleted_at IS NULL AND author_type != 'system' AND id != ? \
             ORDER BY created_seq DESC LIMIT ?",
        )
        .bind(channel_id)
        .bind(except)
        .bind(n)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .rev()
            .map(|row| {
                Ok(ContextMessage {
                    author_id: row.try_get("author_id")?,
                    author_type: author_type_from_str(row.try_get("author_type")?)?,
                    content: row.try_get("content")?,
                })
            })
            .collect()
    }

    /// Posts a message. Returns it and whether it is new (`false`: the same `client_id` was
    /// already posted by this author, and that message is returned instead).
    pub async fn post(&self, post: Post<'_>) -> Result<(Message, bool), ChatError> {
        let pending = match self.prepare_post(post).await? {
            Prepared::Posted(message) => return Ok((message, false)),
            Prepared::Pending(pending) => pending,
        };
        let mut tx = self.db.begin().await?;
        let stored = pending.insert(&mut tx).await?;
        tx.commit().await?;
        Ok((self.publish(stored), true))
    }

    /// Checks a post and takes its channel's write lock, without storing anything yet: the
    /// caller stores it with [`PendingPost::insert`] inside its own transaction, together with
    /// whatever must commit with it (the bridge's deliveries), then calls [`Chat::publish`].
    /// One commit per message, and nobody sees a message whose deliveries are not stored.
    ///
    /// Everything read from the database is read here, before the caller's transaction
    /// begins: a transaction must not wait for a second pooled connection (with the pool
    /// full of writers waiting for the write lock, it would wait for itself).
    pub async fn prepare_post(&self, post: Post<'_>) -> Result<Prepared, ChatError> {
        // Each read on a connection of its own, given back before the lock is waited for
        // (whoever holds it may need a connection).
        let channel = self
            .check_author(&mut *self.db.acquire().await?, &post)
            .await?;
        let serial = self.hub.write_lock(post.channel_id).lock_owned().await;
        let drafted = self
            .draft(&mut *self.db.acquire().await?, post, channel)
            .await?;
        Ok(match drafted {
            Drafted::Posted(message) => Prepared::Posted(message),
            Drafted::New { channel, post } => Prepared::Pending(PendingPost {
                channel,
                message: post.message,
                created_at: post.created_at,
                serial,
            }),
        })
    }

    /// [`Chat::prepare_post`] without the channel's write lock, for a writer whose place in
    /// chat order is fixed elsewhere (the group commit, which takes the lock itself) and whose
    /// transaction checks `client_id` again ([`posted_with_client_id`]): a re-send racing its
    /// original gets past the check here. Reads on `conn`: a caller with more to read before
    /// its transaction reads it all on one connection (each connection taken from the pool
    /// and given back costs round trips to its worker thread, and a connection that did not
    /// make the latest commit starts its next read with an empty page cache).
    pub async fn check_post(
        &self,
        conn: &mut sqlx::SqliteConnection,
        post: Post<'_>,
    ) -> Result<Drafted, ChatError> {
        let channel = self.check_author(&mut *conn, &post).await?;
        self.draft(conn, post, channel).await
    }

    /// The checks that need no lock: content, client id, the channel (not archived) and
    /// that the author is a member. Returns the channel.
    async fn check_author(
        &self,
        conn: &mut sqlx::SqliteConnection,
        post: &Post<'_>,
    ) -> Result<Channel, ChatError> {
        // A streaming placeholder starts empty and fills in with deltas; a failed agent turn
        // may have said nothing (its reason is in `metadata.failure`).
        let may_be_empty = matches!(post.state, MessageState::Streaming | MessageState::Error);
        if !(may_be_empty && post.content.is_empty()) {
            validate_content(post.content)?;
        }
        if let Some(cid) = post.client_id {
            validate_client_id(cid)?;
        }
        let channel = channel_on(conn, post.channel_id).await?;
        if channel.archived {
            return Err(ChatError::Conflict("the channel is archived".into()));
        }
        if post.author_type != AuthorType::System
            && !channel.members.iter().any(|m| m == post.author_id)
        {
            return Err(ChatError::Forbidden(format!(
                "{} is not a member of this channel",
                post.author_id
            )));
        }
        Ok(channel)
    }

    /// The message as it will be stored, unless this author already posted its `client_id`;
    /// checks that a thread's parent is in the channel and names the thread by its root.
    async fn draft(
        &self,
        conn: &mut sqlx::SqliteConnection,
        post: Post<'_>,
        channel: Channel,
    ) -> Result<Drafted, ChatError> {
        if let Some(cid) = post.client_id {
            let existing = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE channel_id = ? AND author_id = ? AND client_id = ?"
            ))
            .bind(post.channel_id)
            .bind(post.author_id)
            .bind(cid)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = existing {
                return Ok(Drafted::Posted(message_from_row(&row)?));
            }
        }
        // A reply to a reply joins its parent's thread: a thread is named by its root, so
        // people, agents (one ACP session per thread) and the UI all see one conversation.
        let thread_id = match post.thread_id {
            None => None,
            Some(thread) => {
                let parent: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT thread_id FROM messages WHERE id = ? AND channel_id = ?",
                )
                .bind(thread)
                .bind(post.channel_id)
                .fetch_optional(&mut *conn)
                .await?;
                match parent {
                    None => {
                        return Err(ChatError::BadInput(
                            "thread_id is not a message in this channel".into(),
                        ))
                    }
                    Some(root) => Some(root.unwrap_or_else(|| thread.to_string())),
                }
            }
        };
        let now = now_ms();
        let message = Message {
            id: Uuid::now_v7().to_string(),
            channel_id: post.channel_id.to_string(),
            // Given by `insert`, in the caller's transaction.
            seq: 0,
            author_id: post.author_id.to_string(),
            author_type: post.author_type,
            content: post.content.to_string(),
            content_type: "text".into(),
            thread_id,
            state: post.state,
            client_id: post.client_id.map(str::to_string),
            metadata: post.metadata,
            created_at: from_ms(now),
            edited_at: None,
            deleted_at: None,
        };
        Ok(Drafted::New {
            channel,
            post: QueuedPost {
                message,
                created_at: now,
            },
        })
    }

    /// Sends a message stored by [`PendingPost::insert`] (and committed) to the channel's
    /// clients, then lets the channel's next post go ahead.
    pub fn publish(&self, stored: StoredPost) -> Message {
        let StoredPost { message, serial } = stored;
        self.announce(&message);
        drop(serial);
        message
    }

    /// Sends a committed new message to the channel's clients. The caller holds the channel's
    /// write lock, so events leave in seq order.
    pub fn announce(&self, message: &Message) {
        self.hub.publish(
            &message.channel_id,
            &ServerEvent::Message {
                channel_id: message.channel_id.clone(),
                seq: message.seq,
                message: message.clone(),
            },
        );
    }

    /// Edits a message's content (author only).
    pub async fn edit(&self, id: &str, editor: &str, content: &str) -> Result<Message, ChatError> {
        validate_content(content)?;
        let message = self.message(id).await?;
        if message.deleted_at.is_some() {
            return Err(ChatError::NotFound("no such message"));
        }
        if message.author_id != editor {
            return Err(ChatError::Forbidden(
                "only the author can edit a message".into(),
            ));
        }
        let lock = self.hub.write_lock(&message.channel_id);
        let _serial = lock.lock().await;
        let mut tx = self.db.begin().await?;
        let seq = next_seq(&mut tx, &message.channel_id).await?;
        let now = now_ms();
        // Checked under the channel lock, so an edit racing a delete can't undo it.
        let updated = sqlx::query(
            "UPDATE messages SET content = ?, edited_at = ?, seq = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(content)
        .bind(now)
        .bind(seq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ChatError::NotFound("no such message"));
        }
        tx.commit().await?;
        self.hub.publish(
            &message.channel_id,
            &ServerEvent::MessageEdit {
                channel_id: message.channel_id.clone(),
                seq,
                message_id: id.to_string(),
                content: content.to_string(),
                edited_at: from_ms(now),
            },
        );
        self.message(id).await
    }

    /// Soft-deletes a message (author, or the owner): the row stays as a tombstone without content.
    pub async fn delete(
        &self,
        id: &str,
        actor: &str,
        actor_is_owner: bool,
    ) -> Result<(), ChatError> {
        let message = self.message(id).await?;
        if message.deleted_at.is_some() {
            return Err(ChatError::NotFound("no such message"));
        }
        if message.author_id != actor && !actor_is_owner {
            return Err(ChatError::Forbidden(
                "only the author or the owner can delete a message".into(),
            ));
        }
        let lock = self.hub.write_lock(&message.channel_id);
        let _serial = lock.lock().await;
        let mut tx = self.db.begin().await?;
        let seq = next_seq(&mut tx, &message.channel_id).await?;
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE messages SET content = '', deleted_at = ?, seq = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(seq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ChatError::NotFound("no such message"));
        }
        tx.commit().await?;
        self.hub.publish(
            &message.channel_id,
            &ServerEvent::MessageDelete {
                channel_id: message.channel_id.clone(),
                seq,
                message_id: id.to_string(),
                deleted_at: from_ms(now),
            },
        );
        Ok(())
    }

    /// Completes a (streaming or new) agent message with its full content: one seq, and a
    /// `message` event with the whole message so clients that missed deltas get it all.
    pub async fn complete(&self, id: &str, content: &str) -> Result<Message, ChatError> {
        validate_content(content)?;
        let message = self.message(id).await?;
        let lock = self.hub.write_lock(&message.channel_id);
        let _serial = lock.lock().await;
        let mut tx = self.db.begin().await?;
        let seq = next_seq(&mut tx, &message.channel_id).await?;
        // A message deleted while it streamed stays deleted.
        let updated = sqlx::query(
            "UPDATE messages SET content = ?, state = 'complete', seq = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(content)
        .bind(seq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ChatError::NotFound("the message was deleted"));
        }
        tx.commit().await?;
        self.publish_stored(id, seq).await
    }

    /// Reads a message just committed at `seq` and sends it whole to the channel's listeners.
    async fn publish_stored(&self, id: &str, seq: i64) -> Result<Message, ChatError> {
        let message = self.message(id).await?;
        self.hub.publish(
            &message.channel_id,
            &ServerEvent::Message {
                channel_id: message.channel_id.clone(),
                seq,
                message: message.clone(),
            },
        );
        Ok(message)
    }

    /// Marks a (streaming) agent message failed: keeps the text that streamed (`partial`, if the
    /// host still has it), stores why in `metadata.failure`, and sends the whole message (one
    /// seq, one `message` event) so every client shows the reason, also after a reload.
    pub async fn fail(
        &self,
        id: &str,
        partial: Option<&str>,
        failure: &TurnFailure,
    ) -> Result<Message, ChatError> {
        if let Some(text) = partial {
            if text.chars().count() > MAX_CONTENT_CHARS {
                return Err(ChatError::BadInput("the reply is too long".into()));
            }
        }
        let failure =
            serde_json::to_value(failure).map_err(|e| ChatError::Decode(e.to_string()))?;
        self.rewrite_answer(id, partial, Some(MessageState::Error), |_, metadata| {
            metadata.insert("failure".into(), failure);
            Ok(())
        })
        .await
    }

    /// Records a step of an agent's tool use on its (streaming) answer, in
    /// `metadata.tools`: a call adds an entry, a result fills in the entry with the same
    /// `call_id` (or adds one). Stored, so a reload shows the steps; one seq and one `message`
    /// event, so every client upserts it. `content` is the text streamed so far, when the host
    /// has it from the start, so the event does not blank what clients have shown.
    pub async fn record_tool_step(
        &self,
        id: &str,
        step: ToolStep,
        content: Option<&str>,
    ) -> Result<Message, ChatError> {
        self.rewrite_answer(id, content, None, |message, metadata| {
            if message.state != MessageState::Streaming {
                return Err(ChatError::Conflict("the answer is already settled".into()));
            }
            add_tool_step(metadata, step);
            Ok(())
        })
        .await
    }

    /// Changes an agent's answer in place: `change` edits its metadata as it is under the
    /// channel's write lock (read there, so concurrent changes don't overwrite each other);
    /// `content` and `state`, when given, replace the message's. One seq and one `message`
    /// event, so every client upserts it.
    async fn rewrite_answer(
        &self,
        id: &str,
        content: Option<&str>,
        state: Option<MessageState>,
        change: impl FnOnce(
            &Message,
            &mut serde_json::Map<String, serde_json::Value>,
        ) -> Result<(), ChatError>,
    ) -> Result<Message, ChatError> {
        let message = self.message(id).await?;
        let lock = self.hub.write_lock(&message.channel_id);
        let _serial = lock.lock().await;
        let message = self.message(id).await?;
        let mut metadata = match &message.metadata {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        change(&message, &mut metadata)?;
        let mut tx = self.db.begin().await?;
        let seq = next_seq(&mut tx, &message.channel_id).await?;
        let updated = sqlx::query(
            "UPDATE messages SET content = COALESCE(?, content), state = COALESCE(?, state), \
             metadata = ?, seq = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(content)
        .bind(state.map(state_str))
        .bind(serde_json::Value::Object(metadata).to_string())
        .bind(seq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ChatError::NotFound("the message was deleted"));
        }
        tx.commit().await?;
        self.publish_stored(id, seq).await
    }

    pub async fn set_state(&self, id: &str, state: MessageState) -> Result<(), ChatError> {
        let message = self.message(id).await?;
        let lock = self.hub.write_lock(&message.channel_id);
        let _serial = lock.lock().await;
        let mut tx = self.db.begin().await?;
        let seq = next_seq(&mut tx, &message.channel_id).await?;
        let updated = sqlx::query(
            "UPDATE messages SET state = ?, seq = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(state_str(state))
        .bind(seq)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(ChatError::NotFound("the message was deleted"));
        }
        tx.commit().await?;
        self.hub.publish(
            &message.channel_id,
            &ServerEvent::MessageState {
                channel_id: message.channel_id.clone(),
                seq,
                message_id: id.to_string(),
                state,
            },
        );
        Ok(())
    }

    /// An ephemeral streaming fragment: broadcast, not stored, no seq.
    pub fn delta(&self, channel_id: &str, message_id: &str, delta: &str) {
        self.hub.publish(
            channel_id,
            &ServerEvent::MessageDelta {
                channel_id: channel_id.to_string(),
                message_id: message_id.to_string(),
                delta: delta.to_string(),
            },
        );
    }

    pub fn typing(&self, channel_id: &str, member: &str) {
        self.hub.publish(
            channel_id,
            &ServerEvent::Typing {
                channel_id: channel_id.to_string(),
                member: member.to_string(),
            },
        );
    }

    /// The DM channel of an agent, if it has one.
    pub async fn dm_of(&self, agent_id: Uuid) -> Result<Option<String>, ChatError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM channels WHERE dm_agent_id = ? LIMIT 1")
                .bind(agent_id.to_string())
                .fetch_optional(&self.db)
                .await?,
        )
    }
}

/// A channel with its members, read with `exec` (the pool, or a connection a caller reads
/// several things on).
async fn channel_on<'e>(
    exec: impl sqlx::SqliteExecutor<'e>,
    id: &str,
) -> Result<Channel, ChatError> {
    // The members come along as one JSON array: one statement, one round trip.
    let row = sqlx::query(
        "SELECT id, name, type, settings, created_at, last_seq, archived, created_by, \
         (SELECT json_group_array(member ORDER BY added_at, member) FROM channel_members \
          WHERE channel_id = c.id) AS members \
         FROM channels c WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(exec)
    .await?
    .ok_or(ChatError::NotFound("no such channel"))?;
    let kind: &str = row.try_get("type")?;
    let settings: &str = row.try_get("settings")?;
    let members: &str = row.try_get("members")?;
    Ok(Channel {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: match kind {
            "dm" => ChannelType::Dm,
            "group" => ChannelType::Group,
            "topic" => ChannelType::Topic,
            other => return Err(ChatError::Decode(format!("unknown channel type {other:?}"))),
        },
        members: json_decode(members)?,
        settings: json_decode(settings)?,
        created_at: from_ms(row.try_get("created_at")?),
        last_seq: row.try_get("last_seq")?,
        archived: row.try_get("archived")?,
        created_by: row.try_get("created_by")?,
    })
}

async fn next_seq(tx: &mut sqlx::SqliteConnection, channel_id: &str) -> Result<i64, ChatError> {
    sqlx::query_scalar(
        "UPDATE channels SET last_seq = last_seq + 1 WHERE id = ? RETURNING last_seq",
    )
    .bind(channel_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ChatError::NotFound("no such channel"))
}

/// Inserts a channel and its members inside a caller's transaction. `created_by` (a member id)
/// may manage the channel besides the owner; DMs have none.
#[allow(clippy::too_many_arguments)]
pub async fn insert_channel(
    tx: &mut sqlx::SqliteConnection,
    id: &str,
    name: &str,
    kind: ChannelType,
    settings: &ChannelSettings,
    dm_agent_id: Option<Uuid>,
    created_by: Option<&str>,
    members: &[String],
) -> Result<(), ChatError> {
    let now = now_ms();
    let kind_text = match kind {
        ChannelType::Dm => "dm",
        ChannelType::Group => "group",
        ChannelType::Topic => "topic",
    };
    sqlx::query(
        "INSERT INTO channels (id, name, type, settings, created_at, dm_agent_id, created_by) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(name)
    .bind(kind_text)
    .bind(serde_json::to_string(settings).unwrap_or_default())
    .bind(now)
    .bind(dm_agent_id.map(|u| u.to_string()))
    .bind(created_by)
    .execute(&mut *tx)
    .await?;
    for (i, member) in members.iter().enumerate() {
        sqlx::query(
            "INSERT OR IGNORE INTO channel_members (channel_id, member, added_at) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(member)
        .bind(now + i as i64)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Creates an agent's DM channel with the owner, inside the agent-creating transaction.
pub async fn create_dm(
    tx: &mut sqlx::SqliteConnection,
    agent: &agents::AgentRecord,
    owner_member: &str,
) -> Result<String, ChatError> {
    let id = Uuid::now_v7().to_string();
    insert_channel(
        tx,
        &id,
        &agent.display_name,
        ChannelType::Dm,
        &ChannelSettings::default(),
        Some(agent.id),
        None,
        &[owner_member.to_string(), agent.slug.clone()],
    )
    .await?;
    Ok(id)
}

// An agent's DM across archive and restore. The archive decides when; these keep the chat's
// tables (`channels`, `channel_members`, `messages`) the chat module's own.

/// The DM channels of an agent.
pub async fn dm_channels(db: &Db, agent: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM channels WHERE dm_agent_id = ?")
        .bind(agent.to_string())
        .fetch_all(db)
        .await
}

/// How many messages an agent's DM channels hold.
pub async fn dm_message_count(db: &Db, agent: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE channel_id IN (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(agent.to_string())
    .fetch_one(db)
    .await
}

/// Deletes an agent's DM channels (and, by cascade, their messages and members), in the
/// caller's transaction: a deploy rolled back takes its agent's DM with it.
pub async fn delete_dm_channels(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM channels WHERE dm_agent_id = ?")
        .bind(agent.to_string())
        .execute(tx)
        .await?;
    Ok(())
}

/// A deleted person leaves every channel, and the channels they made no longer name them, in
/// the caller's transaction (the one that deletes the user).
pub async fn forget_user(
    tx: &mut sqlx::SqliteConnection,
    username: &str,
) -> Result<(), sqlx::Error> {
    let member = user_member(username);
    sqlx::query("DELETE FROM channel_members WHERE member = ?")
        .bind(&member)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE channels SET created_by = NULL WHERE created_by = ?")
        .bind(&member)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Archiving: the agent's DM becomes read-only, and `slug` leaves every group channel, so a
/// new agent with this slug doesn't inherit them.
pub async fn archive_dm(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
    slug: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE channels SET archived = 1 WHERE dm_agent_id = ?")
        .bind(agent.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM channel_members WHERE member = ? AND channel_id NOT IN \
         (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(slug)
    .bind(agent.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Restoring: the DM is writable again, and its member list follows the agent from
/// `archived_slug` to `slug` (they differ when the old one was taken meanwhile).
pub async fn unarchive_dm(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
    archived_slug: &str,
    slug: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE channel_members SET member = ? WHERE member = ? AND channel_id IN \
         (SELECT id FROM channels WHERE dm_agent_id = ?)",
    )
    .bind(slug)
    .bind(archived_slug)
    .bind(agent.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE channels SET archived = 0 WHERE dm_agent_id = ?")
        .bind(agent.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Puts back an exported message if it is missing (idempotent: an existing id is kept) and
/// its channel still exists.
pub async fn import_message(db: &Db, m: &Message) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR IGNORE INTO messages (id, channel_id, seq, created_seq, author_id, author_type, \
         content, content_type, thread_id, state, client_id, metadata, created_at, edited_at, deleted_at) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM channels WHERE id = ?)",
    )
    .bind(&m.id)
    .bind(&m.channel_id)
    .bind(m.seq)
    .bind(m.seq)
    .bind(&m.author_id)
    .bind(serde_json::to_value(m.author_type).ok().and_then(|v| v.as_str().map(String::from)))
    .bind(&m.content)
    .bind(&m.content_type)
    .bind(&m.thread_id)
    .bind(serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(String::from)))
    .bind(&m.client_id)
    .bind(m.metadata.to_string())
    .bind(m.created_at.timestamp_millis())
    .bind(m.edited_at.map(|t| t.timestamp_millis()))
    .bind(m.deleted_at.map(|t| t.timestamp_millis()))
    .bind(&m.channel_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Steps kept on one message; later ones are counted in `metadata.tools_omitted` (they are
/// all in the traces).
pub const MAX_TOOL_STEPS: usize = 50;
/// Strings in a stored step (output, file text) are cut to this many characters; the traces
/// keep what the agent sent.
pub const MAX_TOOL_TEXT_CHARS: usize = 4000;

/// One step of an agent's tool use, as a chat message keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolStep {
    Call {
        call_id: String,
        tool: String,
        args: serde_json::Value,
    },
    Result {
        call_id: String,
        tool: String,
        result: serde_json::Value,
        success: bool,
    },
    /// Where the call's approval is (`{id, state, reason}`), shown as the step's `approval`.
    Approval {
        call_id: String,
        tool: String,
        approval: serde_json::Value,
    },
}

fn add_tool_step(metadata: &mut serde_json::Map<String, serde_json::Value>, step: ToolStep) {
    let steps = metadata
        .entry("tools")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if !steps.is_array() {
        *steps = serde_json::Value::Array(Vec::new());
    }
    let Some(steps) = steps.as_array_mut() else {
        return;
    };
    let (call_id, tool) = match &step {
        ToolStep::Call { call_id, tool, .. }
        | ToolStep::Result { call_id, tool, .. }
        | ToolStep::Approval { call_id, tool, .. } => (call_id.clone(), tool.clone()),
    };
    let existing = steps
        .iter()
        .position(|s| s["call_id"] == call_id.as_str() && s["tool"] == tool.as_str());
    let index = match existing {
        Some(i) => i,
        None if steps.len() >= MAX_TOOL_STEPS => {
            // Counted once per call, not once more for its result.
            if matches!(step, ToolStep::Call { .. }) {
                let omitted = metadata
                    .get("tools_omitted")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                metadata.insert("tools_omitted".into(), (omitted + 1).into());
            }
            return;
        }
        None => {
            steps.push(serde_json::json!({"call_id": call_id, "tool": tool}));
            steps.len() - 1
        }
    };
    let entry = &mut steps[index];
    match step {
        ToolStep::Call { mut args, .. } => {
            cut_strings(&mut args, MAX_TOOL_TEXT_CHARS);
            entry["args"] = args;
        }
        ToolStep::Result {
            mut result,
            success,
            ..
        } => {
            cut_strings(&mut result, MAX_TOOL_TEXT_CHARS);
            entry["result"] = result;
            entry["success"] = success.into();
        }
        ToolStep::Approval { approval, .. } => {
            entry["approval"] = approval;
        }
    }
}

/// Cuts every string in `value` longer than `max` characters, saying so in the string.
fn cut_strings(value: &mut serde_json::Value, max: usize) {
    match value {
        serde_json::Value::String(text) if text.chars().count() > max => {
            let kept: String = text.chars().take(max).collect();
            *text = format!("{kept}\n[... cut; the agent's traces have all of it ...]");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| cut_strings(v, max)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| cut_strings(v, max)),
        _ => {}
    }
}

/// In a backup's copy of the database (a connection of its own): how many messages it holds.
pub async fn message_count_in(conn: &mut sqlx::SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(conn)
        .await
}

/// Copies an agent's DM channels, their members and their messages from the database attached
/// as `bk` (a backup's copy of the same schema), in the caller's transaction.
pub async fn copy_dm_from_attached(
    conn: &mut sqlx::SqliteConnection,
    agent: Uuid,
) -> Result<(), sqlx::Error> {
    let id = agent.to_string();
    sqlx::query("INSERT INTO channels SELECT * FROM bk.channels WHERE dm_agent_id = ?")
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO channel_members SELECT * FROM bk.channel_members WHERE channel_id IN \
         (SELECT id FROM bk.channels WHERE dm_agent_id = ?)",
    )
    .bind(&id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO messages SELECT * FROM bk.messages WHERE channel_id IN \
         (SELECT id FROM bk.channels WHERE dm_agent_id = ?)",
    )
    .bind(&id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tool_step_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_join_their_calls_and_steps_are_bounded() {
        let mut meta = serde_json::Map::new();
        add_tool_step(
            &mut meta,
            ToolStep::Call {
                call_id: "c1".into(),
                tool: "shell".into(),
                args: json!({"command": "du -sh ~"}),
            },
        );
        add_tool_step(
            &mut meta,
            ToolStep::Result {
                call_id: "c1".into(),
                tool: "shell".into(),
                result: json!({"stdout": "x".repeat(MAX_TOOL_TEXT_CHARS + 10), "exit_code": 0}),
                success: true,
            },
        );
        let steps = meta["tools"].as_array().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0]["args"]["command"], "du -sh ~");
        assert_eq!(steps[0]["success"], true);
        let stdout = steps[0]["result"]["stdout"].as_str().unwrap();
        assert!(stdout.contains("cut; the agent's traces have all of it"));
        assert!(stdout.chars().count() < MAX_TOOL_TEXT_CHARS + 100);

        for i in 0..MAX_TOOL_STEPS + 3 {
            let call_id = format!("n{i}");
            add_tool_step(
                &mut meta,
                ToolStep::Call {
                    call_id: call_id.clone(),
                    tool: "list_dir".into(),
                    args: json!({}),
                },
            );
            add_tool_step(
                &mut meta,
                ToolStep::Result {
                    call_id,
                    tool: "list_dir".into(),
                    result: json!({}),
                    success: true,
                },
            );
        }
        assert_eq!(meta["tools"].as_array().unwrap().len(), MAX_TOOL_STEPS);
        assert_eq!(meta["tools_omitted"], 4);
    }
}
