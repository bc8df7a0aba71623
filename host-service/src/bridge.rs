//! The agent bridge: routing user messages to agents through a durable per-agent outbox, and
//! turning agents' replies back into chat messages and traces.
//!
//! A delivery is stored (with the agent's next delivery sequence number) before any stream
//! sees it. Streams send deliveries after the client's `Last-Event-ID`; one without it gets
//! every delivery the agent has not answered yet. Only the newest stream per agent is live.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Row;
use taos_proto::agents::{AgentKind, AgentStatus};
use taos_proto::bridge::{ContextMessage, Reply, ReplyAccepted, ReplyKind, UserMessageDelivery};
use taos_proto::chat::{AuthorType, Message, MessageState, NewMessage};
use taos_proto::trace::{TraceEvent, TraceKind};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::agents::{self, AgentRecord};
use crate::chat::{router, Chat, ChatError, Post, USER_MEMBER_PREFIX};
use crate::db::{from_ms, now_ms, Db};
use crate::failure;
use crate::trace::TraceStore;

/// How many earlier messages travel with a delivery.
pub const CONTEXT_MESSAGES: i64 = 20;
pub const PAGE: i64 = 100;
/// A stream without `Last-Event-ID` gets at most this many unanswered deliveries…
pub const MAX_UNANSWERED: i64 = 1000;
/// …from at most this long ago.
pub const UNANSWERED_RESEND_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    BadInput(String),
    #[error("this trace_id was never delivered to this agent")]
    UnknownTrace,
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored data: {0}")]
    Decode(String),
}

impl From<agents::AgentError> for BridgeError {
    fn from(e: agents::AgentError) -> Self {
        BridgeError::Chat(e.into())
    }
}

/// What a reply needs to know about the delivery it answers.
struct Delivered {
    channel_id: String,
    thread_id: Option<String>,
    hops: u32,
    placeholder: Option<String>,
    answered: bool,
}

/// A stored delivery, ready to send.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    pub seq: i64,
    pub payload: UserMessageDelivery,
}

#[derive(Default)]
struct StreamBuffer {
    text: String,
    /// False when the host restarted mid-stream: earlier deltas were lost with the process,
    /// so the text here is only the tail and can't stand in for the whole reply.
    from_start: bool,
}

struct AgentLive {
    /// Bumped on every new delivery or pause change, to wake the agent's stream.
    wake: watch::Sender<u64>,
    /// The id of the newest stream; older streams end when they see it change.
    generation: u64,
    connected: bool,
    /// The slug its stream was opened under, to name it in presence events.
    slug: String,
}

/// An agent's bridge stream came or went: `agent.connected` / `agent.disconnected` on
/// `/api/events`, so screens show it without a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub slug: String,
    pub connected: bool,
}

pub struct Bridge {
    db: Db,
    traces: TraceStore,
    live: Mutex<HashMap<Uuid, AgentLive>>,
    /// Streaming text so far, per (agent, trace_id), for a `final` without content.
    buffers: Mutex<HashMap<(Uuid, String), StreamBuffer>>,
    /// Routing of one channel's messages is serialized, so deliveries keep chat order.
    route_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Replies from one agent are handled one at a time, so a placeholder is made once.
    reply_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    cooldowns: router::Cooldowns,
    /// (channel, agent) pairs already told "queued", until the agent connects or resumes.
    notices: Mutex<HashSet<(String, Uuid)>>,
    /// Presence changes, sent while `live` is locked so they leave in the order they happened;
    /// one task publishes them.
    presence: mpsc::UnboundedSender<Presence>,
}

impl Bridge {
    /// The bridge, and the receiving end of its presence changes (see [`publish_presence`]).
    pub fn new(db: Db, traces: TraceStore) -> (Self, mpsc::UnboundedReceiver<Presence>) {
        let (presence, changes) = mpsc::unbounded_channel();
        let bridge = Bridge {
            db,
            traces,
            live: Mutex::new(HashMap::new()),
            buffers: Mutex::new(HashMap::new()),
            route_locks: Mutex::new(HashMap::new()),
            reply_locks: Mutex::new(HashMap::new()),
            cooldowns: router::Cooldowns::default(),
            notices: Mutex::new(HashSet::new()),
            presence,
        };
        (bridge, changes)
    }

    fn with_live<T>(&self, agent: Uuid, f: impl FnOnce(&mut AgentLive) -> T) -> T {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = live.entry(agent).or_insert_with(|| AgentLive {
            wake: watch::channel(0).0,
            generation: 0,
            connected: false,
            slug: String::new(),
        });
        f(entry)
    }

    /// Sets whether the agent is connected; a change is announced. Call inside `with_live`.
    fn set_connected(&self, live: &mut AgentLive, connected: bool) {
        if live.connected != connected {
            live.connected = connected;
            // Only fails once the publisher is gone, at shutdown.
            let _ = self.presence.send(Presence {
                slug: live.slug.clone(),
                connected,
            });
        }
    }

    pub fn is_connected(&self, agent: Uuid) -> bool {
        self.with_live(agent, |l| l.connected)
    }

    /// Wakes the agent's stream (new delivery, or pause state changed).
    pub fn wake(&self, agent: Uuid) {
        self.with_live(agent, |l| l.wake.send_modify(|n| *n += 1));
    }

    /// Registers a new stream for the agent (`slug` names it); any older stream ends.
    pub fn subscribe(&self, agent: Uuid, slug: &str) -> (u64, watch::Receiver<u64>) {
        let (generation, rx) = self.with_live(agent, |l| {
            l.generation += 1;
            l.slug = slug.to_string();
            self.set_connected(l, true);
            l.wake.send_modify(|n| *n += 1);
            (l.generation, l.wake.subscribe())
        });
        self.clear_notices(agent);
        (generation, rx)
    }

    /// Ends the agent's current stream (after its token was rotated: the old holder must not
    /// keep receiving).
    pub fn kick(&self, agent: Uuid) {
        self.with_live(agent, |l| {
            l.generation += 1;
            self.set_connected(l, false);
            l.wake.send_modify(|n| *n += 1);
        });
    }

    /// Held across "store a message, route it" so one channel's deliveries keep chat order.
    pub fn route_lock(&self, channel_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.route_locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(channel_id.to_string()).or_default().clone()
    }

    pub fn is_current(&self, agent: Uuid, generation: u64) -> bool {
        self.with_live(agent, |l| l.generation == generation)
    }

    /// A stream ended; the agent is disconnected unless a newer stream took over.
    pub fn unsubscribe(&self, agent: Uuid, generation: u64) {
        self.with_live(agent, |l| {
            if l.generation == generation {
                self.set_connected(l, false);
            }
        });
    }

    pub fn clear_notices(&self, agent: Uuid) {
        let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        notices.retain(|(_, a)| *a != agent);
    }

    /// The newest delivery sequence number given to the agent (0 if none).
    pub async fn last_delivery_seq(&self, agent: Uuid) -> Result<i64, BridgeError> {
        Ok(crate::agents::delivery_seq(&self.db, agent).await?)
    }

    /// What a stream without `Last-Event-ID` starts with: deliveries up to `upto` that the
    /// agent has not answered, from the last day, oldest first. (A delivery an agent chose not
    /// to answer, in a lively channel, stops coming back after a day.)
    pub async fn unanswered(
        &self,
        agent: Uuid,
        upto: i64,
    ) -> Result<Vec<StoredDelivery>, BridgeError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM deliveries WHERE agent_id = ? AND seq <= ? \
             AND answered_at IS NULL AND created_at > ? ORDER BY seq LIMIT ?",
        )
        .bind(agent.to_string())
        .bind(upto)
        .bind(now_ms() - UNANSWERED_RESEND_MS)
        .bind(MAX_UNANSWERED)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    pub async fn deliveries_after(
        &self,
        agent: Uuid,
        after: i64,
    ) -> Result<Vec<StoredDelivery>, BridgeError> {
        let rows = sqlx::query(
            "SELECT seq, payload FROM deliveries WHERE agent_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(agent.to_string())
        .bind(after)
        .bind(PAGE)
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(stored_from_row).collect()
    }

    fn trace(&self, slug: &str, event: TraceEvent) {
        let traces = self.traces.clone();
        let slug = slug.to_string();
        // The trace store has its own zero-loss fallbacks; a chat reply must not wait on it.
        tokio::spawn(async move {
            if let Err(e) = traces.append(&slug, vec![event]).await {
                tracing::error!(agent = %slug, error = %e, "trace write failed");
            }
        });
    }

    /// Stores a person's message and routes it (the HTTP route and the chat WebSocket share
    /// this). Returns the message and whether it is new (false: a re-send of its `client_id`).
    pub async fn post_as_user(
        &self,
        chat: &Chat,
        author: &str,
        body: &NewMessage,
    ) -> Result<(Message, bool), BridgeError> {
        // Store and route under the channel's route lock, so agents get messages in chat order.
        let route_lock = self.route_lock(&body.channel_id);
        let _routing = route_lock.lock().await;
        let (message, created) = chat
            .post(Post {
                channel_id: &body.channel_id,
                author_id: author,
                author_type: AuthorType::User,
                content: &body.content,
                client_id: body.client_id.as_deref(),
                thread_id: body.thread_id.as_deref(),
                state: MessageState::Complete,
                metadata: serde_json::json!({}),
            })
            .await?;
        // Also on a re-send: if routing failed the first time, the retry finishes it.
        // Deliveries are idempotent per agent, so nobody gets the message twice.
        self.route(chat, &message, 0).await?;
        Ok((message, created))
    }

    /// Sends a message on to the agents that should get it. Deliveries are stored before this
    /// returns. `hops_since_user` is the message's own hop count (0 for a user message).
    pub async fn route(
        &self,
        chat: &Chat,
        message: &Message,
        hops_since_user: u32,
    ) -> Result<(), BridgeError> {
        let channel = chat.channel(&message.channel_id).await?;
        if !router::may_route(message.author_type, hops_since_user, &channel.settings) {
            return Ok(());
        }
        let agent_members: Vec<String> = channel
            .members
            .iter()
            .filter(|m| !m.starts_with(USER_MEMBER_PREFIX))
            .cloned()
            .collect();
        let recipients = router::candidates(
            channel.kind,
            &channel.settings,
            &agent_members,
            &message.author_id,
            &message.content,
        );
        if recipients.is_empty() {
            return Ok(());
        }
        let cooldown = Duration::from_secs(u64::from(channel.settings.cooldown_seconds));
        let context: Vec<ContextMessage> = chat
            .recent(&message.channel_id, CONTEXT_MESSAGES + 1)
            .await?
            .into_iter()
            .filter(|m| m.id != message.id)
            .map(|m| ContextMessage {
                author_id: m.author_id,
                author_type: m.author_type,
                content: m.content,
            })
            .collect();
        for recipient in recipients {
            let agent = match agents::get_by_slug(&self.db, &recipient.slug).await {
                Ok(agent) => agent,
                Err(agents::AgentError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            if !self.cooldowns.try_address(
                &channel.id,
                &agent.slug,
                recipient.forced,
                cooldown,
                Instant::now(),
            ) {
                continue;
            }
            let queued = self
                .enqueue(
                    &agent,
                    message,
                    hops_since_user + 1,
                    recipient.forced,
                    context.clone(),
                )
                .await?;
            if queued && (agent.paused || !self.is_connected(agent.id)) {
                self.notice_once(chat, &channel.id, &agent).await?;
            }
        }
        Ok(())
    }

    async fn notice_once(
        &self,
        chat: &Chat,
        channel_id: &str,
        agent: &AgentRecord,
    ) -> Result<(), BridgeError> {
        let first = {
            let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
            notices.insert((channel_id.to_string(), agent.id))
        };
        if !first {
            return Ok(());
        }
        let text = queued_notice(agent);
        chat.post(Post {
            channel_id,
            author_id: "system",
            author_type: AuthorType::System,
            content: &text,
            client_id: None,
            thread_id: None,
            state: MessageState::Complete,
            metadata: serde_json::json!({"notice": "agent_queued", "agent": agent.slug}),
        })
        .await?;
        Ok(())
    }

    /// Stores one delivery and wakes the agent's stream. False if this agent already had it.
    async fn enqueue(
        &self,
        agent: &AgentRecord,
        message: &Message,
        hops_since_user: u32,
        force_respond: bool,
        context: Vec<ContextMessage>,
    ) -> Result<bool, BridgeError> {
        let mut tx = self.db.begin().await?;
        let seq = crate::agents::next_delivery_seq(&mut tx, agent.id).await?;
        let payload = UserMessageDelivery {
            id: message.id.clone(),
            trace_id: message.id.clone(),
            delivery_seq: seq,
            channel_id: message.channel_id.clone(),
            from: message.author_id.clone(),
            text: message.content.clone(),
            created_at: message.created_at,
            hops_since_user,
            force_respond,
            context,
            thread_id: message.thread_id.clone(),
        };
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO deliveries (agent_id, seq, trace_id, message_id, channel_id, \
             thread_id, hops_since_user, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(agent.id.to_string())
        .bind(seq)
        .bind(&payload.trace_id)
        .bind(&message.id)
        .bind(&message.channel_id)
        .bind(&message.thread_id)
        .bind(i64::from(hops_since_user))
        .bind(serde_json::to_string(&payload).map_err(|e| BridgeError::Decode(e.to_string()))?)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Already delivered to this agent (same trace id): don't send it twice. Dropping
            // the transaction rolls the delivery_seq bump back.
            return Ok(false);
        }
        tx.commit().await?;
        self.wake(agent.id);
        let mut event = new_event(
            &agent.slug,
            TraceKind::MessageIn,
            &message.id,
            &message.channel_id,
        );
        event.thread_id = message.thread_id.clone();
        event.payload = serde_json::json!({
            "from": message.author_id,
            "text": message.content,
            "message_id": message.id,
            "delivery_seq": seq,
            "hops_since_user": hops_since_user,
        });
        self.trace(&agent.slug, event);
        Ok(true)
    }

    fn reply_lock(&self, agent: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.reply_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(agent).or_default().clone()
    }

    /// Handles one reply from an agent about a delivery.
    pub async fn reply(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        reply: Reply,
    ) -> Result<ReplyAccepted, BridgeError> {
        let lock = self.reply_lock(agent.id);
        let _serial = lock.lock().await;
        let row = sqlx::query(
            "SELECT channel_id, thread_id, hops_since_user, reply_message_id, answered_at \
             FROM deliveries WHERE agent_id = ? AND trace_id = ?",
        )
        .bind(agent.id.to_string())
        .bind(&reply.trace_id)
        .fetch_optional(&self.db)
        .await?
        .ok_or(BridgeError::UnknownTrace)?;
        let delivery = Delivered {
            channel_id: row.try_get("channel_id")?,
            thread_id: row.try_get("thread_id")?,
            hops: u32::try_from(row.try_get::<i64, _>("hops_since_user")?).unwrap_or(0),
            placeholder: row.try_get("reply_message_id")?,
            answered: row.try_get::<Option<i64>, _>("answered_at")?.is_some(),
        };
        if let Some(given) = &reply.channel_id {
            if *given != delivery.channel_id {
                return Err(BridgeError::BadInput(
                    "channel_id differs from the delivery's channel".into(),
                ));
            }
        }
        let trace_id = reply.trace_id.clone();
        let answers = matches!(
            reply.kind,
            ReplyKind::Delta | ReplyKind::Final | ReplyKind::Error
        );
        if answers && delivery.answered {
            return Err(BridgeError::BadInput(
                "this delivery was already answered".into(),
            ));
        }
        let result = match reply.kind {
            ReplyKind::Delta => self.delta(chat, agent, &reply, &delivery).await,
            ReplyKind::Final => self.finish(chat, agent, reply, &delivery).await,
            ReplyKind::Error => self.fail(chat, agent, reply, &delivery).await,
            ReplyKind::ToolCall | ReplyKind::ToolResult | ReplyKind::Reasoning => {
                let mut event = new_event(
                    &agent.slug,
                    TraceKind::Reasoning,
                    &reply.trace_id,
                    &delivery.channel_id,
                );
                match reply.kind {
                    ReplyKind::ToolCall => {
                        event.kind = TraceKind::ToolCall;
                        event.payload = serde_json::json!({"tool": reply.tool, "args": reply.args, "caller": "agent"});
                    }
                    ReplyKind::ToolResult => {
                        event.kind = TraceKind::ToolResult;
                        event.payload = serde_json::json!({
                            "tool": reply.tool,
                            "result": reply.result,
                            "success": reply.success.unwrap_or(true),
                        });
                    }
                    _ => {
                        event.payload =
                            serde_json::json!({"text": reply.content.unwrap_or_default()})
                    }
                }
                self.trace(&agent.slug, event);
                Ok(ReplyAccepted {
                    accepted: true,
                    message_id: None,
                })
            }
        };
        // A reply that can never land (the agent left the channel, it was archived or its
        // message deleted) settles the delivery, so it isn't resent on every reconnect.
        if answers {
            if let Err(BridgeError::Chat(
                ChatError::Forbidden(_) | ChatError::Conflict(_) | ChatError::NotFound(_),
            )) = &result
            {
                self.forget_buffer(agent.id, &trace_id);
                self.mark_answered(agent.id, &trace_id).await?;
            }
        }
        result
    }

    fn forget_buffer(&self, agent: Uuid, trace_id: &str) -> Option<StreamBuffer> {
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        buffers.remove(&(agent, trace_id.to_string()))
    }

    async fn delta(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        reply: &Reply,
        delivery: &Delivered,
    ) -> Result<ReplyAccepted, BridgeError> {
        let delta = reply
            .content
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| BridgeError::BadInput("a delta needs content".into()))?;
        let key = (agent.id, reply.trace_id.clone());
        let message_id = match &delivery.placeholder {
            Some(id) => id.clone(),
            None => {
                let (message, _) = chat
                    .post(Post {
                        channel_id: &delivery.channel_id,
                        author_id: &agent.slug,
                        author_type: AuthorType::Agent,
                        content: "",
                        client_id: None,
                        thread_id: delivery.thread_id.as_deref(),
                        state: MessageState::Streaming,
                        metadata: serde_json::json!({"trace_id": reply.trace_id, "hops_since_user": delivery.hops}),
                    })
                    .await?;
                self.set_reply_message(agent.id, &reply.trace_id, &message.id)
                    .await?;
                let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
                buffers.insert(
                    key.clone(),
                    StreamBuffer {
                        text: String::new(),
                        from_start: true,
                    },
                );
                message.id
            }
        };
        {
            let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            // No buffer for an existing placeholder: the host restarted mid-stream.
            let buffer = buffers.entry(key).or_default();
            if buffer.text.chars().count() + delta.chars().count() > crate::chat::MAX_CONTENT_CHARS
            {
                return Err(BridgeError::BadInput(
                    "the reply is longer than a message may be".into(),
                ));
            }
            buffer.text.push_str(&delta);
        }
        chat.delta(&delivery.channel_id, &message_id, &delta);
        Ok(ReplyAccepted {
            accepted: true,
            message_id: Some(message_id),
        })
    }

    async fn finish(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        reply: Reply,
        delivery: &Delivered,
    ) -> Result<ReplyAccepted, BridgeError> {
        let buffered = {
            let buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            buffers
                .get(&(agent.id, reply.trace_id.clone()))
                .map(|b| (b.text.clone(), b.from_start))
        };
        let content = match reply.content.filter(|c| !c.trim().is_empty()) {
            Some(content) => content,
            None => match buffered {
                Some((text, true)) if !text.trim().is_empty() => text,
                Some((_, false)) => {
                    return Err(BridgeError::BadInput(
                        "the host restarted during this stream and lost its start; send the \
                         whole reply as the final's content"
                            .into(),
                    ))
                }
                _ => return Err(BridgeError::BadInput("a final reply needs content".into())),
            },
        };
        // Routing of this channel stays in order with user posts.
        let route_lock = self.route_lock(&delivery.channel_id);
        let _routing = route_lock.lock().await;
        let message = match &delivery.placeholder {
            Some(id) => chat.complete(id, &content).await?,
            None => {
                chat.post(Post {
                    channel_id: &delivery.channel_id,
                    author_id: &agent.slug,
                    author_type: AuthorType::Agent,
                    content: &content,
                    client_id: None,
                    thread_id: delivery.thread_id.as_deref(),
                    state: MessageState::Complete,
                    metadata: serde_json::json!({"trace_id": reply.trace_id, "hops_since_user": delivery.hops}),
                })
                .await?
                .0
            }
        };
        self.forget_buffer(agent.id, &reply.trace_id);
        self.mark_answered(agent.id, &reply.trace_id).await?;
        let mut event = new_event(
            &agent.slug,
            TraceKind::MessageOut,
            &reply.trace_id,
            &delivery.channel_id,
        );
        event.thread_id = delivery.thread_id.clone();
        event.payload = serde_json::json!({"content": content, "message_id": message.id});
        self.trace(&agent.slug, event);
        // Agents hear each other in groups, within the hop limit.
        self.route(chat, &message, delivery.hops).await?;
        Ok(ReplyAccepted {
            accepted: true,
            message_id: Some(message.id),
        })
    }

    async fn fail(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        reply: Reply,
        delivery: &Delivered,
    ) -> Result<ReplyAccepted, BridgeError> {
        let text = reply.error.or(reply.content).unwrap_or_default();
        // Nothing fails silently: the failure is a message in the conversation, with the
        // reason in words, whether or not the agent had started answering.
        let facts = failure::facts(&self.db, agent).await;
        let failure = failure::explain(reply.error_code.as_deref(), &text, &facts);
        let buffered = self.forget_buffer(agent.id, &reply.trace_id);
        let message = match &delivery.placeholder {
            Some(id) => {
                // The text that streamed, unless the host restarted and has only its tail.
                let partial = buffered
                    .filter(|b| b.from_start && !b.text.is_empty())
                    .map(|b| b.text);
                chat.fail(id, partial.as_deref(), &failure).await?
            }
            None => {
                chat.post(Post {
                    channel_id: &delivery.channel_id,
                    author_id: &agent.slug,
                    author_type: AuthorType::Agent,
                    content: "",
                    client_id: None,
                    thread_id: delivery.thread_id.as_deref(),
                    state: MessageState::Error,
                    metadata: serde_json::json!({
                        "trace_id": reply.trace_id,
                        "hops_since_user": delivery.hops,
                        "failure": failure,
                    }),
                })
                .await?
                .0
            }
        };
        self.mark_answered(agent.id, &reply.trace_id).await?;
        let mut event = new_event(
            &agent.slug,
            TraceKind::Error,
            &reply.trace_id,
            &delivery.channel_id,
        );
        event.error = Some(text.clone());
        event.payload = serde_json::json!({
            "stage": "agent",
            "message": text,
            "code": failure.code,
            "reason": failure.reason,
            "message_id": message.id,
        });
        self.trace(&agent.slug, event);
        Ok(ReplyAccepted {
            accepted: true,
            message_id: Some(message.id),
        })
    }

    async fn set_reply_message(
        &self,
        agent: Uuid,
        trace_id: &str,
        message_id: &str,
    ) -> Result<(), BridgeError> {
        sqlx::query(
            "UPDATE deliveries SET reply_message_id = ? WHERE agent_id = ? AND trace_id = ?",
        )
        .bind(message_id)
        .bind(agent.to_string())
        .bind(trace_id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    async fn mark_answered(&self, agent: Uuid, trace_id: &str) -> Result<(), BridgeError> {
        sqlx::query("UPDATE deliveries SET answered_at = ? WHERE agent_id = ? AND trace_id = ?")
            .bind(now_ms())
            .bind(agent.to_string())
            .bind(trace_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

/// Drops the deliveries of a channel being deleted that no agent has answered yet, in the
/// caller's transaction (the one that deletes it), so none is sent about a channel that is gone.
pub async fn drop_unanswered_in_channel(
    tx: &mut sqlx::SqliteConnection,
    channel_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM deliveries WHERE channel_id = ? AND answered_at IS NULL")
        .bind(channel_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// The system notice for messages waiting on an agent that can't answer now: why, and what
/// the person can do about it.
fn queued_notice(agent: &AgentRecord) -> String {
    let name = &agent.display_name;
    if agent.paused {
        return format!(
            "{name} is paused; messages for it are queued until it resumes. Resume it on the \
             Agents screen."
        );
    }
    match (agent.kind, agent.status) {
        (AgentKind::Container, AgentStatus::Deploying) => format!(
            "{name} is not connected yet: it is still being deployed. Messages for it are \
             queued until it is up."
        ),
        (AgentKind::Container, AgentStatus::Stopped) => format!(
            "{name} is not connected: its container is stopped. Messages for it are queued \
             until it runs; start it on the Agents screen."
        ),
        (AgentKind::Container, _) => format!(
            "{name} is not connected; messages for it are queued until it connects. If it \
             stays away, restart it or read its logs on the Agents screen."
        ),
        (AgentKind::External, _) => format!(
            "{name} is not connected; messages for it are queued until it connects. Start its \
             sidecar (taos-agent) with the agent's token."
        ),
    }
}

/// Publishes presence changes as host events, in order, until the bridge is gone.
pub async fn publish_presence(
    mut changes: mpsc::UnboundedReceiver<Presence>,
    hub: std::sync::Arc<crate::notify::EventHub>,
) {
    while let Some(change) = changes.recv().await {
        let kind = if change.connected {
            "agent.connected"
        } else {
            "agent.disconnected"
        };
        let data = serde_json::json!({"slug": change.slug, "connected": change.connected});
        if let Err(e) = hub.publish(kind, data).await {
            tracing::warn!(agent = %change.slug, error = %e, "could not publish agent presence");
        }
    }
}

fn stored_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredDelivery, BridgeError> {
    let payload: String = row.try_get("payload")?;
    Ok(StoredDelivery {
        seq: row.try_get("seq")?,
        payload: serde_json::from_str(&payload).map_err(|e| BridgeError::Decode(e.to_string()))?,
    })
}

/// A trace event from the host about an agent, stamped now.
pub fn new_event(slug: &str, kind: TraceKind, trace_id: &str, channel_id: &str) -> TraceEvent {
    TraceEvent {
        v: 1,
        id: Uuid::now_v7().simple().to_string(),
        trace_id: Some(trace_id.to_string()),
        parent_id: None,
        created_at: from_ms(now_ms()),
        agent_name: slug.to_string(),
        kind,
        channel_id: Some(channel_id.to_string()),
        thread_id: None,
        backend_name: None,
        model: None,
        duration_ms: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        error: None,
        payload: serde_json::json!({}),
        agent_created_at: None,
    }
}
