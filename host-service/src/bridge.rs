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
use taos_proto::chat::{AuthorType, Channel, Message, MessageState, NewMessage};
use taos_proto::trace::{TraceEvent, TraceKind};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::agents::{self, AgentRecord};
use crate::chat::{
    router, Chat, ChatError, Drafted, Post, QueuedPost, ToolStep, USER_MEMBER_PREFIX,
};
use crate::db::{from_ms, now_ms, Db};
use crate::failure;
use crate::group_commit::{CommitFailed, Finish, GroupCommit, Work};
use crate::round_trip::{self, RoundTrip};
use crate::trace::TraceStore;

/// How many earlier messages travel with a delivery.
pub const CONTEXT_MESSAGES: i64 = 20;
pub const PAGE: i64 = 100;
/// A stream without `Last-Event-ID` gets at most this many unanswered deliveries…
pub const MAX_UNANSWERED: i64 = 1000;
/// …from at most this long ago.
pub const UNANSWERED_RESEND_MS: i64 = 24 * 3600 * 1000;
/// A tool call's id, as an agent names it.
pub const MAX_CALL_ID_CHARS: usize = 200;

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
    /// The message's transaction did not commit; nothing of it is stored. Sending it again
    /// (with its `client_id`) is safe.
    #[error(transparent)]
    NotStored(#[from] crate::group_commit::CommitFailed),
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

/// Where a delivery's answer goes: its channel, the answer's message once there is one, and
/// whether the answer is settled.
#[derive(Debug, Clone)]
pub struct DeliveryPlace {
    pub channel_id: String,
    pub message_id: Option<String>,
    pub answered: bool,
}

/// The data of a `cancel` event on the bridge stream.
fn cancel_event(trace_id: &str, by: &str) -> String {
    serde_json::json!(taos_proto::bridge::CancelTurn {
        trace_id: trace_id.to_string(),
        by: by.to_string(),
    })
    .to_string()
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
    /// `cancel` events (JSON `CancelTurn`) for the agent's live stream.
    cancels: tokio::sync::broadcast::Sender<String>,
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
    /// People's messages and their deliveries, committed together with others sent meanwhile.
    commits: GroupCommit,
    /// Round trips asked for by an update's gate, one per agent at a time (see
    /// [`Bridge::check_round_trip`]).
    checks: Mutex<HashMap<Uuid, Check>>,
}

/// A round trip through an agent's live bridge, outside the chat.
struct Check {
    round_trip: RoundTrip,
    /// The stream generation it was sent on: a newer stream (the agent reconnected) gets it
    /// again.
    sent_on: Option<u64>,
}

/// What the delivery of a bridge check says. The gateway refuses the model call it leads to
/// (it is the check's trace), so no budget is spent and the agent answers with an error.
pub const CHECK_TEXT: &str = "taos update check: please answer";

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("agent {0} is not connected to the bridge")]
    NotConnected(String),
    #[error("a bridge check of agent {0} is already running")]
    Busy(String),
    #[error("agent {slug} did not answer within {seconds} s")]
    NoAnswer { slug: String, seconds: u64 },
}

impl Bridge {
    /// The bridge, and the receiving end of its presence changes (see [`publish_presence`]).
    pub fn new(db: Db, traces: TraceStore) -> (Self, mpsc::UnboundedReceiver<Presence>) {
        let (presence, changes) = mpsc::unbounded_channel();
        let commits = GroupCommit::start(db.clone());
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
            commits,
            checks: Mutex::new(HashMap::new()),
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
            cancels: tokio::sync::broadcast::channel(16).0,
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

    /// A round trip through the agent's live bridge stream, for an update's gate: a delivery of
    /// its own (no chat message, nothing stored) sent on the stream, and the agent's settled
    /// reply to it on the reply route. The model call it leads to is refused by the gateway
    /// ([`Bridge::is_check_trace`]), so the answer is an error reply naming that, and no budget
    /// is spent. Sent even while the agent is paused: it costs nothing.
    pub async fn check_round_trip(
        &self,
        agent: &AgentRecord,
        wait: Duration,
    ) -> Result<round_trip::Answer, CheckError> {
        if !self.is_connected(agent.id) {
            return Err(CheckError::NotConnected(agent.slug.clone()));
        }
        let mut answered = {
            let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            if checks.contains_key(&agent.id) {
                return Err(CheckError::Busy(agent.slug.clone()));
            }
            let round_trip = RoundTrip::new(
                "bridge check",
                "taos-check-",
                "user:taos-update",
                CHECK_TEXT,
            );
            let answered = round_trip.subscribe();
            checks.insert(
                agent.id,
                Check {
                    round_trip,
                    sent_on: None,
                },
            );
            answered
        };
        // Removed however this ends (a dropped request too), so the next check can run.
        struct Close<'a>(&'a Bridge, Uuid);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let mut checks = self.0.checks.lock().unwrap_or_else(|p| p.into_inner());
                checks.remove(&self.1);
            }
        }
        let _close = Close(self, agent.id);
        self.wake(agent.id);
        let answer = round_trip::wait_answer(&mut answered, wait).await;
        match &answer {
            Some(a) => {
                tracing::info!(agent = %agent.slug, reply = ?a.kind, "bridge check answered")
            }
            None => tracing::warn!(agent = %agent.slug, "bridge check: no answer within {wait:?}"),
        }
        answer.ok_or_else(|| CheckError::NoAnswer {
            slug: agent.slug.clone(),
            seconds: wait.as_secs(),
        })
    }

    /// The open check's delivery, if stream `generation` has not sent it yet.
    pub fn check_delivery(&self, agent: Uuid, generation: u64) -> Option<UserMessageDelivery> {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let check = checks.get_mut(&agent)?;
        if check.sent_on == Some(generation) {
            return None;
        }
        check.sent_on = Some(generation);
        Some(check.round_trip.delivery.clone())
    }

    /// Whether `trace_id` is the agent's open check (its replies and model calls go no further).
    pub fn is_check_trace(&self, agent: Uuid, trace_id: &str) -> bool {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks
            .get(&agent)
            .is_some_and(|c| c.round_trip.is_for(trace_id))
    }

    /// Takes the agent's reply when it is about its open check (true); else leaves it (false).
    pub fn check_reply(&self, agent: Uuid, reply: &Reply) -> bool {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        match checks.get(&agent) {
            Some(check) => check.round_trip.reply(reply).is_ok(),
            None => false,
        }
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

    /// Changes on every wake of the agent's stream, including when its token is rotated or it
    /// is archived ([`Bridge::kick`]): a long wait on the agent's behalf checks its token then.
    pub fn wake_receiver(&self, agent: Uuid) -> watch::Receiver<u64> {
        self.with_live(agent, |l| l.wake.subscribe())
    }

    /// Where the answer to one of this agent's deliveries goes.
    pub async fn delivery_place(
        &self,
        agent: Uuid,
        trace_id: &str,
    ) -> Result<DeliveryPlace, BridgeError> {
        let row = sqlx::query(
            "SELECT channel_id, reply_message_id, answered_at FROM deliveries \
             WHERE agent_id = ? AND trace_id = ?",
        )
        .bind(agent.to_string())
        .bind(trace_id)
        .fetch_optional(&self.db)
        .await?
        .ok_or(BridgeError::UnknownTrace)?;
        Ok(DeliveryPlace {
            channel_id: row.try_get("channel_id")?,
            message_id: row.try_get("reply_message_id")?,
            answered: row.try_get::<Option<i64>, _>("answered_at")?.is_some(),
        })
    }

    /// The `cancel` events for a stream of this agent (see [`Bridge::cancel`]).
    pub fn cancel_receiver(&self, agent: Uuid) -> tokio::sync::broadcast::Receiver<String> {
        self.with_live(agent, |l| l.cancels.subscribe())
    }

    /// Asks the agent to stop its answer in progress, `message` (a streaming agent message),
    /// on behalf of `by`. The request is stored on the delivery first, then sent on the
    /// agent's live stream if it has one; an agent that is away (or whose stream is being
    /// re-opened) gets it when its next stream starts ([`Bridge::pending_cancels`]). 409 when
    /// the answer is not in progress. The agent settles the answer with a `cancelled` error.
    pub async fn cancel(&self, message: &Message, by: &str) -> Result<(), BridgeError> {
        if message.author_type != AuthorType::Agent {
            return Err(BridgeError::BadInput(
                "only an agent's answer can be stopped".into(),
            ));
        }
        if message.state != MessageState::Streaming || message.deleted_at.is_some() {
            return Err(ChatError::Conflict("this answer is not in progress".into()).into());
        }
        let trace_id = message.metadata["trace_id"]
            .as_str()
            .ok_or_else(|| BridgeError::BadInput("this message answers no delivery".into()))?;
        let agent = agents::get_by_slug(&self.db, &message.author_id).await?;
        let stored = sqlx::query(
            "UPDATE deliveries SET cancelled_by = ? \
             WHERE agent_id = ? AND trace_id = ? AND answered_at IS NULL",
        )
        .bind(by)
        .bind(agent.id.to_string())
        .bind(trace_id)
        .execute(&self.db)
        .await?;
        if stored.rows_affected() == 0 {
            return Err(ChatError::Conflict("this answer is not in progress".into()).into());
        }
        let event = cancel_event(trace_id, by);
        // Not connected (or no stream listening right now): the next stream sends it.
        let sent = self.with_live(agent.id, |l| l.connected && l.cancels.send(event).is_ok());
        if !sent {
            tracing::info!(agent = %agent.slug, trace_id, "agent away; the cancel waits for its stream");
        }
        Ok(())
    }

    /// The `cancel` events (JSON `CancelTurn`) a new stream of this agent starts with: answers
    /// stopped from the chat that the agent has not settled yet, from the last day.
    pub async fn pending_cancels(&self, agent: Uuid) -> Result<Vec<String>, BridgeError> {
        let rows = sqlx::query(
            "SELECT trace_id, cancelled_by FROM deliveries WHERE agent_id = ? \
             AND cancelled_by IS NOT NULL AND answered_at IS NULL AND created_at > ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(agent.to_string())
        .bind(now_ms() - UNANSWERED_RESEND_MS)
        .bind(MAX_UNANSWERED)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                let trace_id: String = row.try_get("trace_id")?;
                let by: String = row.try_get("cancelled_by")?;
                Ok(cancel_event(&trace_id, &by))
            })
            .collect()
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
    ///
    /// The message and its deliveries commit together, in one transaction shared with the
    /// other messages sent meanwhile (a group commit): one fsync for them all, no moment when a
    /// message is stored but an agent's delivery is not, and the answer only once it is on
    /// disk. Its place in chat order is its place in the queue.
    pub async fn post_as_user(
        &self,
        chat: &Arc<Chat>,
        author: &str,
        body: &NewMessage,
    ) -> Result<(Message, bool), BridgeError> {
        chat.hub.person_posted();
        // Checked and routed without the channel's locks: only the queueing below orders it,
        // so people posting to one channel at once only wait for the shared commit. Everything
        // is read on one connection, given back before the commit is waited for.
        let mut conn = self.db.acquire().await?;
        let drafted = chat
            .check_post(
                &mut conn,
                Post {
                    channel_id: &body.channel_id,
                    author_id: author,
                    author_type: AuthorType::User,
                    content: &body.content,
                    client_id: body.client_id.as_deref(),
                    thread_id: body.thread_id.as_deref(),
                    state: MessageState::Complete,
                    metadata: serde_json::json!({}),
                },
            )
            .await?;
        let (channel, post) = match drafted {
            Drafted::Posted(message) => {
                drop(conn);
                return self.resent(chat, message).await;
            }
            Drafted::New { channel, post } => (channel, post),
        };
        // Context is the messages stored before it; one still in a batch may be missing, as
        // it would be had it been sent a moment later.
        let plan = self
            .plan_route(&mut conn, &channel, &post.message, 0)
            .await?;
        drop(conn);
        let (answer, answered) = oneshot::channel();
        let order = chat.hub.write_lock(&body.channel_id);
        self.commits.submit(
            &body.channel_id,
            order,
            store_post(chat.clone(), post, plan, answer),
        )?;
        let stored = answered.await.map_err(|_| {
            BridgeError::NotStored(crate::group_commit::CommitFailed(
                "the database did not take it".into(),
            ))
        })??;
        match stored {
            PostStored::Resent(message) => self.resent(chat, message).await,
            PostStored::New {
                message,
                plan,
                queued,
            } => {
                self.delivered(chat, &message, &plan, queued).await?;
                Ok((message, true))
            }
        }
    }

    /// A re-send of a stored `client_id`. Messages and deliveries commit together, so this
    /// only finishes a message stored before they did; deliveries are idempotent per agent,
    /// so nobody gets it twice.
    async fn resent(&self, chat: &Chat, message: Message) -> Result<(Message, bool), BridgeError> {
        let route_lock = self.route_lock(&message.channel_id);
        let _routing = route_lock.lock().await;
        self.route(chat, &message, 0).await?;
        Ok((message, false))
    }

    /// Sends a stored message on to the agents that should get it. Deliveries are stored
    /// (in one commit) before this returns. `hops_since_user` is the message's own hop count
    /// (0 for a user message).
    pub async fn route(
        &self,
        chat: &Chat,
        message: &Message,
        hops_since_user: u32,
    ) -> Result<(), BridgeError> {
        let channel = chat.channel(&message.channel_id).await?;
        let plan = self
            .plan_route(
                &mut *self.db.acquire().await?,
                &channel,
                message,
                hops_since_user,
            )
            .await?;
        if plan.recipients.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        let queued = store_deliveries(&mut tx, message, &plan, Stored::Earlier).await?;
        tx.commit().await?;
        self.delivered(chat, message, &plan, queued).await
    }

    /// Who gets a message, and the context that travels with it. Reads only, on `conn` (not
    /// in a transaction): called before the transaction that stores the deliveries begins.
    async fn plan_route(
        &self,
        conn: &mut sqlx::SqliteConnection,
        channel: &Channel,
        message: &Message,
        hops_since_user: u32,
    ) -> Result<RoutePlan, BridgeError> {
        let mut plan = RoutePlan {
            hops_since_user,
            recipients: Vec::new(),
            context: Vec::new(),
        };
        if !router::may_route(message.author_type, hops_since_user, &channel.settings) {
            return Ok(plan);
        }
        let agent_members: Vec<String> = channel
            .members
            .iter()
            .filter(|m| !m.starts_with(USER_MEMBER_PREFIX))
            .cloned()
            .collect();
        let candidates = router::candidates(
            channel.kind,
            &channel.settings,
            &agent_members,
            &message.author_id,
            &message.content,
        );
        if candidates.is_empty() {
            return Ok(plan);
        }
        let cooldown = Duration::from_secs(u64::from(channel.settings.cooldown_seconds));
        // The messages before this one (it may or may not be stored yet).
        plan.context = Chat::context(
            &mut *conn,
            &message.channel_id,
            &message.id,
            CONTEXT_MESSAGES,
        )
        .await?;
        for candidate in candidates {
            let agent = match agents::get_by_slug(&mut *conn, &candidate.slug).await {
                Ok(agent) => agent,
                Err(agents::AgentError::NotFound) => continue,
                Err(e) => return Err(e.into()),
            };
            if !self.cooldowns.try_address(
                &channel.id,
                &agent.slug,
                candidate.forced,
                cooldown,
                Instant::now(),
            ) {
                continue;
            }
            plan.recipients.push((agent, candidate.forced));
        }
        Ok(plan)
    }

    /// After the deliveries committed: wake the agents' streams, trace each delivery, and say
    /// in the channel (once) when an agent will only get it later.
    async fn delivered(
        &self,
        chat: &Chat,
        message: &Message,
        plan: &RoutePlan,
        queued: Vec<Option<i64>>,
    ) -> Result<(), BridgeError> {
        for ((agent, _), seq) in plan.recipients.iter().zip(queued) {
            let Some(seq) = seq else { continue };
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
                "hops_since_user": plan.hops_since_user + 1,
            });
            self.trace(&agent.slug, event);
            if agent.paused || !self.is_connected(agent.id) {
                self.notice_once(chat, &message.channel_id, agent).await?;
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
                self.tool_event(chat, agent, reply, &delivery).await
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

    /// A tool call, tool result or reasoning from the agent: always a trace event under the
    /// delivery's trace id; tool steps also show on the answer's chat message (made now, as a
    /// streaming placeholder, if the agent has said nothing yet) while the turn is open.
    async fn tool_event(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        reply: Reply,
        delivery: &Delivered,
    ) -> Result<ReplyAccepted, BridgeError> {
        if let Some(id) = &reply.call_id {
            if id.is_empty() || id.chars().count() > MAX_CALL_ID_CHARS {
                return Err(BridgeError::BadInput(format!(
                    "call_id must be 1-{MAX_CALL_ID_CHARS} characters"
                )));
            }
        }
        if reply.kind != ReplyKind::Reasoning && reply.tool.as_deref().is_none_or(str::is_empty) {
            return Err(BridgeError::BadInput(
                "a tool call or result needs `tool`".into(),
            ));
        }
        let mut event = new_event(
            &agent.slug,
            TraceKind::Reasoning,
            &reply.trace_id,
            &delivery.channel_id,
        );
        event.thread_id = delivery.thread_id.clone();
        let step = match reply.kind {
            ReplyKind::ToolCall => {
                event.kind = TraceKind::ToolCall;
                event.payload = serde_json::json!({"tool": reply.tool, "args": reply.args,
                    "call_id": reply.call_id, "caller": "agent"});
                Some(ToolStep::Call {
                    call_id: reply.call_id.clone().unwrap_or_default(),
                    tool: reply.tool.clone().unwrap_or_default(),
                    args: reply.args.clone().unwrap_or(serde_json::Value::Null),
                })
            }
            ReplyKind::ToolResult => {
                let success = reply.success.unwrap_or(true);
                event.kind = TraceKind::ToolResult;
                event.payload = serde_json::json!({
                    "tool": reply.tool,
                    "call_id": reply.call_id,
                    "result": reply.result,
                    "success": success,
                });
                Some(ToolStep::Result {
                    call_id: reply.call_id.clone().unwrap_or_default(),
                    tool: reply.tool.clone().unwrap_or_default(),
                    result: reply.result.clone().unwrap_or(serde_json::Value::Null),
                    success,
                })
            }
            _ => {
                event.payload = serde_json::json!({"text": reply.content.unwrap_or_default()});
                None
            }
        };
        self.trace(&agent.slug, event);
        let mut message_id = delivery.placeholder.clone();
        // Once answered, the message is settled: a late step is only a trace.
        if let (Some(step), false) = (step, delivery.answered) {
            match self
                .show_tool_step(chat, agent, &reply.trace_id, delivery, step)
                .await
            {
                Ok(id) => message_id = Some(id),
                // The message was deleted, the agent left the channel, or the answer settled
                // meanwhile: the step has nowhere to show, and the trace has it.
                Err(BridgeError::Chat(
                    ChatError::NotFound(_) | ChatError::Forbidden(_) | ChatError::Conflict(_),
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ReplyAccepted {
            accepted: true,
            message_id,
        })
    }

    /// Puts a tool step on the answer's message, making the (streaming) message first if the
    /// agent has not said anything yet. Returns the message id.
    async fn show_tool_step(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        trace_id: &str,
        delivery: &Delivered,
        step: ToolStep,
    ) -> Result<String, BridgeError> {
        let key = (agent.id, trace_id.to_string());
        let message_id = self.answer_message(chat, agent, trace_id, delivery).await?;
        let streamed = {
            let buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
            buffers
                .get(&key)
                .filter(|b| b.from_start && !b.text.is_empty())
                .map(|b| b.text.clone())
        };
        chat.record_tool_step(&message_id, step, streamed.as_deref())
            .await?;
        Ok(message_id)
    }

    /// The answer's chat message: the placeholder the delivery already has, or a new empty
    /// streaming message (remembered as the delivery's reply, with an empty buffer that streams
    /// from the start) for the first delta or tool step.
    async fn answer_message(
        &self,
        chat: &Chat,
        agent: &AgentRecord,
        trace_id: &str,
        delivery: &Delivered,
    ) -> Result<String, BridgeError> {
        if let Some(id) = &delivery.placeholder {
            return Ok(id.clone());
        }
        let (message, _) = chat
            .post(Post {
                channel_id: &delivery.channel_id,
                author_id: &agent.slug,
                author_type: AuthorType::Agent,
                content: "",
                client_id: None,
                thread_id: delivery.thread_id.as_deref(),
                state: MessageState::Streaming,
                metadata: serde_json::json!({"trace_id": trace_id, "hops_since_user": delivery.hops}),
            })
            .await?;
        self.set_reply_message(agent.id, trace_id, &message.id)
            .await?;
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        buffers.insert(
            (agent.id, trace_id.to_string()),
            StreamBuffer {
                text: String::new(),
                from_start: true,
            },
        );
        Ok(message.id)
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
        let message_id = self
            .answer_message(chat, agent, &reply.trace_id, delivery)
            .await?;
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

/// Who a message goes to, decided before its deliveries are stored.
struct RoutePlan {
    /// The routed message's own hop count; its deliveries carry one more.
    hops_since_user: u32,
    /// Each agent, and whether it must answer (mentioned).
    recipients: Vec<(AgentRecord, bool)>,
    context: Vec<ContextMessage>,
}

/// Whether the message of a delivery was stored in the same transaction (so no agent can have
/// had it yet) or earlier (a re-send or a reply routed on, which an agent may already have).
#[derive(Clone, Copy, PartialEq)]
enum Stored {
    JustNow,
    Earlier,
}

/// Stores one delivery per recipient in the caller's transaction. Returns, per recipient,
/// the delivery seq it got, or `None` if that agent already had this message.
async fn store_deliveries(
    tx: &mut sqlx::SqliteConnection,
    message: &Message,
    plan: &RoutePlan,
    stored: Stored,
) -> Result<Vec<Option<i64>>, BridgeError> {
    let mut queued = Vec::with_capacity(plan.recipients.len());
    for (agent, forced) in &plan.recipients {
        queued.push(
            store_delivery(
                tx,
                agent.id,
                message,
                plan.hops_since_user + 1,
                *forced,
                &plan.context,
                stored,
            )
            .await?,
        );
    }
    Ok(queued)
}

/// What a queued person's message became once its batch committed.
enum PostStored {
    /// The same author's `client_id` was stored first (a re-send racing its original).
    Resent(Message),
    New {
        message: Message,
        plan: RoutePlan,
        queued: Vec<Option<i64>>,
    },
}

/// The group-commit piece for a person's message: the message and its deliveries, in a
/// savepoint of the batch's transaction; after the commit it is announced (the committing task
/// holds the channel's write lock) and `answer` gets it.
fn store_post(
    chat: Arc<Chat>,
    post: QueuedPost,
    plan: RoutePlan,
    answer: oneshot::Sender<Result<PostStored, BridgeError>>,
) -> Work {
    Box::new(move |tx| {
        Box::pin(async move {
            let stored = async {
                if let Some(earlier) = crate::chat::posted_with_client_id(tx, &post.message).await?
                {
                    return Ok(PostStored::Resent(earlier));
                }
                let message = post.insert(tx).await?;
                let queued = store_deliveries(tx, &message, &plan, Stored::JustNow).await?;
                Ok::<_, BridgeError>(PostStored::New {
                    message,
                    plan,
                    queued,
                })
            }
            .await;
            match stored {
                Ok(PostStored::New {
                    message,
                    plan,
                    queued,
                }) => Some(Box::new(move |committed: Result<(), CommitFailed>| {
                    let stored = committed.map(|()| {
                        chat.announce(&message);
                        PostStored::New {
                            message,
                            plan,
                            queued,
                        }
                    });
                    // The sender may have gone (its connection closed); the message stays.
                    let _ = answer.send(stored.map_err(BridgeError::from));
                }) as Finish),
                other => {
                    // Nothing to keep: a re-send, or a failure its sender hears of.
                    let _ = answer.send(other);
                    None
                }
            }
        })
    })
}

/// Stores one delivery in a transaction. `None` if this agent already had it (same trace id):
/// it is not sent twice.
async fn store_delivery(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
    message: &Message,
    hops_since_user: u32,
    force_respond: bool,
    context: &[ContextMessage],
    stored: Stored,
) -> Result<Option<i64>, BridgeError> {
    // A savepoint, so a delivery the agent already had leaves its delivery_seq untouched
    // while the rest of the transaction goes on. A message stored in this transaction has a
    // new id, so no agent can have had it: that needs no savepoint (two statements, each a
    // round trip to SQLite's worker thread), and a clash would fail the insert, and with it
    // the message, rather than be skipped.
    let savepoint = stored == Stored::Earlier;
    let mut payload = UserMessageDelivery {
        id: message.id.clone(),
        trace_id: message.id.clone(),
        // Set below, once taken.
        delivery_seq: 0,
        channel_id: message.channel_id.clone(),
        from: message.author_id.clone(),
        text: message.content.clone(),
        created_at: message.created_at,
        hops_since_user,
        force_respond,
        context: context.to_vec(),
        thread_id: message.thread_id.clone(),
    };
    if !savepoint {
        // The agent's next number and the delivery in one round trip: the insert reads the
        // number back from the agent's row and writes it into the stored payload too.
        let statements = format!(
            "{}; INSERT INTO deliveries (agent_id, seq, trace_id, message_id, channel_id, \
             thread_id, hops_since_user, payload, created_at) \
             SELECT ?1, delivery_seq, ?2, ?3, ?4, ?5, ?6, json_set(?7, '$.delivery_seq', delivery_seq), ?8 \
             FROM agents WHERE id = ?1 RETURNING seq",
            crate::agents::TAKE_DELIVERY_SEQ
        );
        let seq: i64 = sqlx::query_scalar(&statements)
            .bind(agent.to_string())
            .bind(&payload.trace_id)
            .bind(&message.id)
            .bind(&message.channel_id)
            .bind(&message.thread_id)
            .bind(i64::from(hops_since_user))
            .bind(serde_json::to_string(&payload).map_err(|e| BridgeError::Decode(e.to_string()))?)
            .bind(now_ms())
            .fetch_one(&mut *tx)
            .await?;
        return Ok(Some(seq));
    }
    sqlx::query("SAVEPOINT delivery").execute(&mut *tx).await?;
    let seq = crate::agents::next_delivery_seq(&mut *tx, agent).await?;
    payload.delivery_seq = seq;
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO deliveries (agent_id, seq, trace_id, message_id, channel_id, \
         thread_id, hops_since_user, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(agent.to_string())
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
        sqlx::query("ROLLBACK TO delivery; RELEASE delivery")
            .execute(&mut *tx)
            .await?;
        return Ok(None);
    }
    sqlx::query("RELEASE delivery").execute(&mut *tx).await?;
    Ok(Some(seq))
}
