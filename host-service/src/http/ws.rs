//! `GET /api/chat/ws`: live chat for people.
//!
//! A client subscribes to channels with the last `seq` it has; the server replays everything
//! after it from the database, then streams live events, skipping what the replay already
//! covered. Each socket has a bounded outbox: a client that can't keep up is disconnected
//! (close code 4008) rather than allowed to slow the channel down; it reconnects and resumes.
//!
//! A socket lives only as long as the credential that opened it: when that is revoked (device
//! revoked, logout, password reset) or runs out (the access token's expiry, the session's
//! lifetime), the socket is closed with code 4001 and the reason `revoked` or `expired`. Every
//! frame is also checked against the database before it is acted on, so a credential ended by
//! another process can't post even before the periodic re-check closes the socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use taos_proto::chat::{ClientEvent, NewMessage, ServerEvent, CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED};
use taos_proto::error::ErrorBody;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::human_member;
use super::live::LiveAuth;
use super::AppState;
use crate::auth::live::{Ended, LiveGuard};
use crate::auth::Principal;
use crate::chat::hub::Published;

pub const PROTOCOL: &str = "taos.v1";
const OUTBOX: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);
const PONG_TIMEOUT: Duration = Duration::from_secs(60);
const REPLAY_PAGE: i64 = 500;
const CLOSE_INTERNAL: u16 = 1011;
const MAX_FRAME_BYTES: usize = 256 * 1024;
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;

/// Only HTTP/1.1 upgrades (`GET`): the public listener does not offer extended CONNECT
/// (RFC 8441), so browsers never try a WebSocket over HTTP/2. Should it ever, the Origin check
/// already covers that form (`extract::is_h2_websocket`), and a test says it is not offered.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat_ws))
}

/// WebSocket for live chat. Authenticate with the session cookie, `Authorization: Bearer`, or
/// (browsers) a `bearer.<token>` entry in `Sec-WebSocket-Protocol` next to `taos.v1`.
/// Client frames are `ClientEvent`s, server frames `ServerEvent`s. The socket is closed with
/// code 4001 (reason `revoked` or `expired`) when its credential ends: authenticate again.
#[utoipa::path(get, path = "/api/chat/ws", tag = "chat",
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn chat_ws(
    LiveAuth { principal, guard }: LiveAuth,
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let member = human_member(&state, &principal).await?;
    Ok(ws
        .protocols([PROTOCOL])
        .max_message_size(MAX_FRAME_BYTES)
        // tungstenite's default 128 KiB buffers per socket would cost 128 MiB for 1000
        // phones; chat frames are small and the outbox already bounds what is queued.
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_write_buffer_size(MAX_FRAME_BYTES * 4)
        .on_upgrade(move |socket| run(state, principal, guard, member, socket)))
}

fn encode(event: &ServerEvent) -> WsMessage {
    WsMessage::Text(serde_json::to_string(event).unwrap_or_default().into())
}

fn error_event(code: &str, message: impl Into<String>) -> WsMessage {
    encode(&ServerEvent::Error {
        code: code.to_string(),
        message: message.into(),
    })
}

struct Connection {
    state: AppState,
    principal: Principal,
    member: String,
    out: mpsc::Sender<WsMessage>,
    too_slow: Arc<Notify>,
    subscriptions: HashMap<String, JoinHandle<()>>,
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_string().into(),
    }
}

async fn run(
    state: AppState,
    principal: Principal,
    mut guard: LiveGuard,
    member: String,
    socket: WebSocket,
) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<WsMessage>(OUTBOX);
    // A close goes out ahead of whatever is still queued: a revoked client gets nothing more,
    // and a slow one (whose outbox is full) still learns why it was dropped.
    let (close_tx, mut close_rx) = oneshot::channel::<CloseFrame>();
    let mut writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                close = &mut close_rx => {
                    if let Ok(frame) = close {
                        // The peer may already be gone; closing is all that is left either way.
                        let _ = sink.send(WsMessage::Close(Some(frame))).await;
                    }
                    break;
                }
                message = out_rx.recv() => {
                    let Some(message) = message else { break };
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The peer may already be gone; closing is all that is left either way.
        let _ = sink.close().await;
    });
    let mut conn = Connection {
        state: state.clone(),
        principal,
        member,
        out: out.clone(),
        too_slow: Arc::new(Notify::new()),
        subscriptions: HashMap::new(),
    };
    let policy = state.session_policy();
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let too_slow = conn.too_slow.clone();
    let close = loop {
        tokio::select! {
            // An ended credential wins over a frame that arrived at the same moment.
            biased;
            ended = guard.ended() => break Some(unauthorized(ended, &conn.principal)),
            _ = shutdown.changed() => break Some(close_frame(1001, "host shutting down")),
            _ = too_slow.notified() => {
                break Some(close_frame(CLOSE_TOO_SLOW, "too slow; reconnect and resume with after_seq"));
            }
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break None };
                last_heard = Instant::now();
                match frame {
                    WsMessage::Text(text) => {
                        match guard.recheck(&state.db, &policy).await {
                            Ok(None) => conn.handle(text.as_str()).await,
                            Ok(Some(ended)) => break Some(unauthorized(ended, &conn.principal)),
                            Err(e) => {
                                tracing::warn!(error = %e, "re-checking a socket's credential failed");
                                break Some(close_frame(CLOSE_INTERNAL, "internal error"));
                            }
                        }
                    }
                    WsMessage::Binary(_) => {
                        // Fails only once the writer ended, and then the reader ends too.
                        let _ = out.send(error_event("bad_frame", "send JSON text frames")).await;
                    }
                    WsMessage::Close(_) => break None,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PONG_TIMEOUT {
                    break None;
                }
                if out.try_send(WsMessage::Ping(Default::default())).is_err() {
                    break None;
                }
            }
        }
    };
    for (_, task) in conn.subscriptions.drain() {
        task.abort();
    }
    if let Some(frame) = close {
        // The writer may have ended first (peer gone): no one to close for.
        let _ = close_tx.send(frame);
    }
    drop(conn);
    drop(out);
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        // A client that stopped reading can't hold the task.
        writer.abort();
    }
}

fn unauthorized(ended: Ended, principal: &Principal) -> CloseFrame {
    tracing::info!(
        who = %principal.label(),
        reason = ended.as_str(),
        "chat socket closed: its credential ended"
    );
    close_frame(CLOSE_UNAUTHORIZED, ended.as_str())
}

impl Connection {
    async fn send(&self, message: WsMessage) {
        // Fails only once the writer ended (peer gone); the read loop ends next.
        let _ = self.out.send(message).await;
    }

    async fn handle(&mut self, text: &str) {
        let event: ClientEvent = match serde_json::from_str(text) {
            Ok(event) => event,
            Err(e) => return self.send(error_event("invalid_json", e.to_string())).await,
        };
        match event {
            ClientEvent::Subscribe {
                channel_id,
                after_seq,
            } => self.subscribe(channel_id, after_seq).await,
            ClientEvent::Unsubscribe { channel_id } => {
                if let Some(task) = self.subscriptions.remove(&channel_id) {
                    task.abort();
                }
            }
            ClientEvent::Message {
                channel_id,
                content,
                client_id,
                thread_id,
            } => {
                let body = NewMessage {
                    channel_id: channel_id.clone(),
                    content,
                    client_id: client_id.clone(),
                    thread_id,
                };
                let posted = self
                    .state
                    .bridge
                    .post_as_user(&self.state.chat, &self.member, &body)
                    .await
                    .map_err(ApiError::from);
                match posted {
                    Ok((message, _)) => {
                        self.send(encode(&ServerEvent::Ack {
                            channel_id,
                            client_id,
                            message_id: message.id,
                            seq: message.seq,
                        }))
                        .await
                    }
                    Err(e) => self.send(error_event(e.code, e.message)).await,
                }
            }
            ClientEvent::Typing { channel_id } => {
                match self.state.chat.channel(&channel_id).await {
                    Ok(channel) if channel.members.contains(&self.member) => {
                        self.state.chat.typing(&channel_id, &self.member)
                    }
                    Ok(_) => {
                        self.send(error_event("forbidden", "not a member of this channel"))
                            .await
                    }
                    Err(e) => {
                        self.send(error_event(ApiError::from(e).code, "no such channel"))
                            .await
                    }
                }
            }
        }
    }

    async fn subscribe(&mut self, channel_id: String, after_seq: Option<i64>) {
        if let Some(old) = self.subscriptions.remove(&channel_id) {
            old.abort();
        }
        // Check access before touching the hub, so made-up ids can't grow it.
        if let Err(e) =
            super::chat::visible_channel(&self.state, &self.principal, &channel_id).await
        {
            return self.send(error_event(e.code, e.message)).await;
        }
        // Subscribe before reading the backlog so nothing falls between the two.
        let live = self.state.chat.hub.subscribe(&channel_id);
        let channel = match self.state.chat.channel(&channel_id).await {
            Ok(channel) => channel,
            Err(e) => {
                return self
                    .send(error_event(ApiError::from(e).code, "no such channel"))
                    .await
            }
        };
        let mut cursor = channel.last_seq;
        if let Some(after) = after_seq {
            cursor = after;
            loop {
                let page = match self
                    .state
                    .chat
                    .messages(&channel_id, Some(cursor), None, REPLAY_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        return self
                            .send(error_event(ApiError::from(e).code, "replay failed"))
                            .await
                    }
                };
                let full = page.len() as i64 == REPLAY_PAGE;
                for message in page {
                    cursor = message.seq;
                    self.send(encode(&ServerEvent::Message {
                        channel_id: channel_id.clone(),
                        seq: message.seq,
                        message,
                    }))
                    .await;
                }
                if !full {
                    break;
                }
            }
        }
        self.send(encode(&ServerEvent::Subscribed {
            channel_id: channel_id.clone(),
            last_seq: cursor,
        }))
        .await;
        let task = tokio::spawn(forward(
            live,
            self.out.clone(),
            self.too_slow.clone(),
            cursor,
        ));
        self.subscriptions.insert(channel_id, task);
    }
}

/// Moves a channel's live events into the socket's outbox, skipping what replay sent. Never
/// waits on a full outbox: that client is too slow and gets disconnected.
async fn forward(
    mut live: broadcast::Receiver<Arc<Published>>,
    out: mpsc::Sender<WsMessage>,
    too_slow: Arc<Notify>,
    mut cursor: i64,
) {
    loop {
        match live.recv().await {
            Ok(event) => {
                if let Some(seq) = event.seq {
                    if seq <= cursor {
                        continue;
                    }
                    cursor = seq;
                }
                match out.try_send(WsMessage::Text(event.json.clone().into())) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        too_slow.notify_one();
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                too_slow.notify_one();
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
