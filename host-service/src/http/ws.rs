//! `GET /api/chat/ws`: live chat for people.
//!
//! A client subscribes to channels with the last `seq` it has; the server replays everything
//! after it from the database, then streams live events, skipping what the replay already
//! covered. Each socket has a bounded outbox: a client that can't keep up is disconnected
//! (close code 4008) rather than allowed to slow the channel down; it reconnects and resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use taos_proto::chat::{ClientEvent, NewMessage, ServerEvent};
use taos_proto::error::ErrorBody;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{human_member, Auth};
use super::AppState;
use crate::auth::Principal;
use crate::chat::hub::Published;

pub const PROTOCOL: &str = "taos.v1";
const OUTBOX: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(20);
const PONG_TIMEOUT: Duration = Duration::from_secs(60);
const REPLAY_PAGE: i64 = 500;
const CLOSE_TOO_SLOW: u16 = 4008;
const MAX_FRAME_BYTES: usize = 256 * 1024;
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(chat_ws))
}

/// WebSocket for live chat. Authenticate with the session cookie, `Authorization: Bearer`, or
/// (browsers) a `bearer.<token>` entry in `Sec-WebSocket-Protocol` next to `taos.v1`.
/// Client frames are `ClientEvent`s, server frames `ServerEvent`s.
#[utoipa::path(get, path = "/api/chat/ws", tag = "chat",
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn chat_ws(
    Auth(principal): Auth,
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
        .on_upgrade(move |socket| run(state, principal, member, socket)))
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

async fn run(state: AppState, principal: Principal, member: String, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<WsMessage>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let closing = matches!(message, WsMessage::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
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
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let too_slow = conn.too_slow.clone();
    loop {
        tokio::select! {
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                match frame {
                    WsMessage::Text(text) => conn.handle(text.as_str()).await,
                    WsMessage::Binary(_) => {
                        let _ = out.send(error_event("bad_frame", "send JSON text frames")).await;
                    }
                    WsMessage::Close(_) => break,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PONG_TIMEOUT {
                    break;
                }
                if out.try_send(WsMessage::Ping(Default::default())).is_err() {
                    break;
                }
            }
            _ = too_slow.notified() => {
                let _ = out.try_send(WsMessage::Close(Some(CloseFrame {
                    code: CLOSE_TOO_SLOW,
                    reason: "too slow; reconnect and resume with after_seq".into(),
                })));
                break;
            }
            _ = shutdown.changed() => {
                let _ = out.try_send(WsMessage::Close(Some(CloseFrame {
                    code: 1001,
                    reason: "host shutting down".into(),
                })));
                break;
            }
        }
    }
    for (_, task) in conn.subscriptions.drain() {
        task.abort();
    }
    drop(conn);
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

impl Connection {
    async fn send(&self, message: WsMessage) {
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
                match super::chat::post_as_user(&self.state, &self.member, &body).await {
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
