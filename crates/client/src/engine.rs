//! The sync engine: while the app runs it keeps the cache in step with the active host. On
//! every (re)connect it catches up each channel with `after_seq`, sends the outbox, then
//! follows the chat WebSocket and `/api/events` (resuming with `Last-Event-ID`). Everything
//! the UI needs to know arrives as an [`AppEvent`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use taos_proto::chat::{Channel, ClientEvent, Message, ServerEvent};
use taos_proto::events::HostEvent;
use tokio::sync::{mpsc, watch, Notify};

use crate::cache::{Cache, CacheError, OutboxItem};
use crate::net::{LiveEvent, NetError};
use crate::notify::{self, NativeNotification};
use crate::outbox;
use crate::session::{Session, SessionError};

const LAST_EVENT_ID: &str = "last_event_id";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The host's largest page of messages.
const CATCH_UP_PAGE: usize = 500;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppEvent {
    /// Reachability changed; `detail` says why when offline.
    Connection {
        online: bool,
        detail: Option<String>,
    },
    /// The host signed this device out: back to pairing.
    Revoked,
    ChannelsChanged,
    /// A message as it now stands in the cache.
    Message {
        message: Message,
    },
    /// Streaming text, not stored until the message completes.
    Delta {
        channel_id: String,
        message_id: String,
        delta: String,
    },
    Outbox {
        items: Vec<OutboxItem>,
    },
    Host {
        event: HostEvent,
    },
    /// The host no longer has the events we missed: reload everything.
    Resync,
    Notify {
        notification: NativeNotification,
    },
    /// Agent replies not yet seen, over all channels (see `notify::Unread`).
    Unread {
        total: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("the chat connection closed")]
    Closed,
    /// The host ended the token a connection was opened with (expired, or revoked): get a
    /// fresh one and reconnect. A revoked device finds out when the refresh fails.
    #[error("the host asked to authenticate again")]
    Reauthenticate,
}

pub struct Engine {
    pub session: Arc<Session>,
    pub cache: Cache,
    events: mpsc::UnboundedSender<AppEvent>,
    /// The channel on screen (no reply notifications for it) and the replies not yet seen.
    attention: notify::Attention,
    /// Something was queued: flush now.
    wake: Notify,
    /// The host is reachable again: resume the event stream now rather than after backoff.
    events_wake: Notify,
}

impl Engine {
    pub fn new(
        session: Arc<Session>,
        cache: Cache,
        events: mpsc::UnboundedSender<AppEvent>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            session,
            cache,
            events,
            attention: notify::Attention::default(),
            wake: Notify::new(),
            events_wake: Notify::new(),
        })
    }

    fn host(&self) -> &str {
        &self.session.host.device_id
    }

    fn emit(&self, event: AppEvent) {
        // No UI subscribed yet (or any more): the cache holds the state it would show.
        let _ = self.events.send(event);
    }

    /// Stops waiting out a backoff and tries the host now (the UI's "retry", a network change).
    pub fn reconnect_now(&self) {
        self.wake.notify_one();
        self.events_wake.notify_one();
    }

    pub async fn set_focus(&self, channel: Option<String>) {
        self.attention
            .set_focus(channel, |total| self.emit(AppEvent::Unread { total }))
            .await;
    }

    /// Writes a message: into the outbox at once (shown as queued), sent as soon as the host
    /// is reachable.
    pub async fn send(
        &self,
        channel_id: &str,
        content: &str,
        thread_id: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<OutboxItem, CacheError> {
        let item = self
            .cache
            .enqueue(self.host(), channel_id, content, thread_id, client_id)
            .await?;
        self.emit_outbox().await;
        self.wake.notify_one();
        Ok(item)
    }

    async fn emit_outbox(&self) {
        if let Ok(items) = self.cache.outbox(self.host(), None).await {
            self.emit(AppEvent::Outbox { items });
        }
    }

    /// Brings the cache up to date over REST: channels, then every change after what each
    /// channel has, then agents.
    pub async fn catch_up(&self) -> Result<(), EngineError> {
        let channels: Vec<Channel> = self
            .session
            .call::<_, ()>(Method::GET, "/api/chat/channels", None)
            .await?;
        self.cache.put_channels(self.host(), &channels).await?;
        for channel in &channels {
            // Page through every change after what the cache has: a sync point may only move
            // past changes the cache has actually applied.
            let mut after = self.cache.synced_seq(self.host(), &channel.id).await?;
            while after < channel.last_seq {
                let page: Vec<Message> = self
                    .session
                    .call::<_, ()>(
                        Method::GET,
                        &format!(
                            "/api/chat/channels/{}/messages?after_seq={after}&limit={CATCH_UP_PAGE}",
                            channel.id
                        ),
                        None,
                    )
                    .await?;
                self.cache.put_messages(self.host(), &page).await?;
                let Some(last) = page.iter().map(|m| m.seq).max() else {
                    break;
                };
                after = last;
                if page.len() < CATCH_UP_PAGE {
                    break;
                }
            }
        }
        if let Ok(agents) = self
            .session
            .call::<Vec<serde_json::Value>, ()>(Method::GET, "/api/agents", None)
            .await
        {
            self.cache.put_agents(self.host(), &agents).await?;
        }
        self.emit(AppEvent::ChannelsChanged);
        Ok(())
    }

    /// Sends what is queued; reports the outbox afterwards.
    pub async fn flush(&self) -> Result<outbox::Flushed, CacheError> {
        let flushed = outbox::flush(&self.session, &self.cache).await?;
        // The chat socket may resume after these (the cache already has them), so the UI
        // learns of them here.
        for message in &flushed.messages {
            self.emit(AppEvent::Message {
                message: message.clone(),
            });
        }
        self.emit_outbox().await;
        Ok(flushed)
    }

    /// Runs until `stop` turns true or the device is revoked, reconnecting with backoff.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let events = tokio::spawn(self.clone().follow_events(stop.clone()));
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = tokio::select! {
                outcome = self.connect_once() => outcome,
                _ = stop.wait_for(|s| *s) => break,
            };
            match outcome {
                Err(EngineError::Session(SessionError::Revoked)) => {
                    self.emit(AppEvent::Revoked);
                    break;
                }
                Err(EngineError::Reauthenticate) => {
                    // Not a network problem: no "offline", the link stays. The next attempt
                    // refreshes the token first (and learns if the device was revoked).
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    self.emit(AppEvent::Connection {
                        online: false,
                        detail: Some(e.to_string()),
                    });
                    self.session.reset_link().await;
                }
                Ok(()) => backoff = Duration::from_secs(1),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        events.abort();
    }

    async fn connect_once(&self) -> Result<(), EngineError> {
        let token = self.session.access_token().await?;
        let link = self.session.link().await.map_err(SessionError::from)?;
        self.catch_up().await?;
        self.emit(AppEvent::Connection {
            online: true,
            detail: None,
        });
        self.events_wake.notify_one();
        let flushed = self.flush().await?;
        if flushed.revoked {
            return Err(SessionError::Revoked.into());
        }
        let mut socket = match link.chat_socket(&token).await {
            Ok(socket) => socket,
            Err(NetError::Unauthorized) => {
                self.session.forget_token(&token).await;
                return Err(EngineError::Reauthenticate);
            }
            Err(e) => return Err(SessionError::from(e).into()),
        };
        for channel in self.cache.channels(self.host()).await? {
            socket
                .send(&ClientEvent::Subscribe {
                    channel_id: channel.channel.id.clone(),
                    after_seq: Some(channel.synced_seq),
                })
                .await
                .map_err(SessionError::from)?;
        }
        loop {
            tokio::select! {
                event = socket.next() => {
                    let Some(event) = event else {
                        if socket.closed_unauthorized() {
                            self.session.forget_token(&token).await;
                            return Err(EngineError::Reauthenticate);
                        }
                        return Err(EngineError::Closed);
                    };
                    self.on_chat_event(event).await?;
                }
                _ = self.wake.notified() => {
                    let flushed = self.flush().await?;
                    if flushed.revoked {
                        return Err(SessionError::Revoked.into());
                    }
                }
            }
        }
    }

    async fn on_chat_event(&self, event: ServerEvent) -> Result<(), EngineError> {
        if let ServerEvent::MessageDelta {
            channel_id,
            message_id,
            delta,
        } = &event
        {
            self.emit(AppEvent::Delta {
                channel_id: channel_id.clone(),
                message_id: message_id.clone(),
                delta: delta.clone(),
            });
        }
        if let Some(message) = self.cache.apply(self.host(), &event).await? {
            if matches!(event, ServerEvent::Message { .. }) {
                self.maybe_notify_reply(&message).await;
            }
            self.emit(AppEvent::Message { message });
        }
        Ok(())
    }

    async fn maybe_notify_reply(&self, message: &Message) {
        let Ok(Some(channel)) = self.cache.channel(self.host(), &message.channel_id).await else {
            return;
        };
        self.attention
            .reply(
                message,
                &channel.channel.name,
                channel.muted,
                |notification, total| {
                    self.emit(AppEvent::Notify { notification });
                    self.emit(AppEvent::Unread { total });
                },
            )
            .await;
    }

    /// Follows `/api/events` for as long as the app runs, resuming after the last event seen.
    async fn follow_events(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        while !*stop.borrow() {
            if let Err(e) = self.follow_events_once().await {
                match e {
                    EngineError::Session(SessionError::Revoked) => return,
                    EngineError::Reauthenticate => backoff = Duration::from_secs(1),
                    e => tracing::debug!(error = %e, "event stream ended"),
                }
            } else {
                backoff = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.events_wake.notified() => backoff = Duration::from_secs(1),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn follow_events_once(&self) -> Result<(), EngineError> {
        let token = self.session.access_token().await?;
        let link = self.session.link().await.map_err(SessionError::from)?;
        let last = self
            .cache
            .meta(self.host(), LAST_EVENT_ID)
            .await?
            .and_then(|v| v.parse::<i64>().ok());
        let mut stream = match link.events(&token, last).await {
            Ok(stream) => stream,
            Err(NetError::Unauthorized) => {
                self.session.forget_token(&token).await;
                return Err(EngineError::Reauthenticate);
            }
            Err(e) => return Err(SessionError::from(e).into()),
        };
        while let Some(live) = stream.next().await {
            match live {
                LiveEvent::Resync => {
                    self.emit(AppEvent::Resync);
                    if let Err(e) = self.catch_up().await {
                        // The next resync or reconnect catches up; the cache stays as it was.
                        tracing::warn!("catching up after a resync failed: {e}");
                    }
                }
                LiveEvent::Unauthorized => {
                    self.session.forget_token(&token).await;
                    return Err(EngineError::Reauthenticate);
                }
                LiveEvent::Event(event) => {
                    self.cache
                        .set_meta(self.host(), LAST_EVENT_ID, &event.id.to_string())
                        .await?;
                    if let Some(notification) = notify::for_host_event(&event) {
                        self.emit(AppEvent::Notify { notification });
                    }
                    self.emit(AppEvent::Host { event });
                }
            }
        }
        Ok(())
    }
}
