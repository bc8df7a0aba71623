//! A client of openclaw's gateway WebSocket protocol (v4), only as much of it as the sidecar
//! uses: the `connect` handshake with the shared token, requests (`chat.send`, `chat.abort`)
//! and the events that follow.
//!
//! Frames: `{type:"req",id,method,params}` out; `{type:"res",id,ok,payload|error}` and
//! `{type:"event",event,payload}` in. Everything that comes in is treated as hostile input
//! (openclaw runs what the agent's model decides): frames and messages are size-capped by the
//! WebSocket layer, and the bytes taken per connection are counted against a budget.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::Secret;

pub const PROTOCOL: u32 = 4;
/// The largest frame and message taken from the gateway. A `chat` event carries the whole
/// answer so far, so this bounds an answer's size too.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// The bytes one connection may take in all; a turn past it is stopped.
pub const MAX_CONNECTION_BYTES: u64 = 256 * 1024 * 1024;
/// Events held while waiting for a response; past it the connection is dropped.
const MAX_QUEUED_EVENTS: usize = 10_000;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot reach openclaw's gateway: {0}")]
    Connect(String),
    #[error("openclaw's gateway closed the connection")]
    Closed,
    #[error("openclaw's gateway broke the protocol: {0}")]
    Protocol(String),
    #[error("openclaw's gateway sent more than the sidecar takes ({0})")]
    TooMuch(String),
    /// The gateway answered a request with an error.
    #[error("openclaw refused {method}: {message}")]
    Refused {
        method: String,
        code: String,
        message: String,
        /// `UNAVAILABLE` while it is still starting: worth asking again.
        retryable: bool,
    },
    #[error("openclaw's gateway did not answer in time")]
    Timeout,
}

/// Where the gateway listens and how to prove we may use it.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    pub port: u16,
    pub token: Secret,
}

impl GatewayAddr {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// One event from the gateway.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub payload: Value,
}

pub struct Gateway {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    /// Events that arrived while a response was awaited, in order.
    queued: VecDeque<Event>,
    taken: u64,
}

impl Gateway {
    /// Connects and completes the handshake: the server's `connect.challenge`, our `connect`
    /// with the shared token, its `hello-ok`.
    pub async fn connect(addr: &GatewayAddr) -> Result<Gateway, GatewayError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Gateway::handshake(addr))
            .await
            .map_err(|_| GatewayError::Timeout)?
    }

    async fn handshake(addr: &GatewayAddr) -> Result<Gateway, GatewayError> {
        let stream = TcpStream::connect(("127.0.0.1", addr.port))
            .await
            .map_err(|e| GatewayError::Connect(e.to_string()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let url = format!("ws://127.0.0.1:{}/", addr.port);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| GatewayError::Connect(e.to_string()))?;
        let mut gateway = Gateway {
            ws,
            next_id: 0,
            queued: VecDeque::new(),
            taken: 0,
        };
        let first = gateway.read_frame().await?;
        if first["type"] != "event" || first["event"] != "connect.challenge" {
            return Err(GatewayError::Protocol(
                "the first frame was not connect.challenge".into(),
            ));
        }
        let hello = gateway
            .request(
                "connect",
                json!({
                    "minProtocol": PROTOCOL, "maxProtocol": PROTOCOL,
                    "client": {"id": "gateway-client", "version": env!("CARGO_PKG_VERSION"),
                               "platform": "linux", "mode": "backend"},
                    "role": "operator",
                    // `operator.admin` for `chat.send`'s `suppressCommandInterpretation` (a
                    // "system provenance" field): without it, a message starting with `/` from
                    // anyone in the channel, another agent included, would be an openclaw
                    // command (`/exec` changes the exec policy). The shared token allows every
                    // scope anyway; asking for them changes nothing it could do.
                    "scopes": ["operator.read", "operator.write", "operator.admin"],
                    "caps": [],
                    "auth": {"token": addr.token.expose()},
                }),
            )
            .await?;
        if hello["type"] != "hello-ok" {
            return Err(GatewayError::Protocol(
                "connect was not answered with hello-ok".into(),
            ));
        }
        Ok(gateway)
    }

    /// Sends a request and waits for its response; events arriving meanwhile are kept for
    /// [`Gateway::next_event`].
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, GatewayError> {
        self.next_id += 1;
        let id = format!("taos-{}", self.next_id);
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| GatewayError::Connect(e.to_string()))?;
        loop {
            let frame = self.read_frame().await?;
            match frame["type"].as_str() {
                Some("res") if frame["id"] == id.as_str() => {
                    if frame["ok"] == true {
                        return Ok(frame["payload"].clone());
                    }
                    let error = &frame["error"];
                    let code = text(&error["code"], 100);
                    return Err(GatewayError::Refused {
                        method: method.to_string(),
                        retryable: code == "UNAVAILABLE" || error["retryable"] == true,
                        message: text(&error["message"], 500),
                        code,
                    });
                }
                Some("event") => {
                    if self.queued.len() >= MAX_QUEUED_EVENTS {
                        return Err(GatewayError::TooMuch("events while waiting".into()));
                    }
                    self.queued.push_back(to_event(frame));
                }
                _ => {}
            }
        }
    }

    /// The next event (responses to nothing we asked are skipped).
    pub async fn next_event(&mut self) -> Result<Event, GatewayError> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(event);
        }
        loop {
            let frame = self.read_frame().await?;
            if frame["type"] == "event" {
                return Ok(to_event(frame));
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Value, GatewayError> {
        loop {
            let message = match self.ws.next().await {
                None => return Err(GatewayError::Closed),
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    return Err(match e {
                        Error::Capacity(e) => GatewayError::TooMuch(e.to_string()),
                        Error::ConnectionClosed | Error::AlreadyClosed => GatewayError::Closed,
                        e => GatewayError::Connect(e.to_string()),
                    });
                }
            };
            let bytes = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(bytes) => bytes.as_ref(),
                Message::Close(_) => return Err(GatewayError::Closed),
                _ => continue,
            };
            self.taken += bytes.len() as u64;
            if self.taken > MAX_CONNECTION_BYTES {
                return Err(GatewayError::TooMuch(format!(
                    "over {MAX_CONNECTION_BYTES} bytes on one connection"
                )));
            }
            return serde_json::from_slice(bytes)
                .map_err(|_| GatewayError::Protocol("a frame that is not JSON".into()));
        }
    }

    /// Closes the connection politely; errors don't matter any more.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

fn to_event(mut frame: Value) -> Event {
    Event {
        name: text(&frame["event"], 200),
        payload: frame["payload"].take(),
    }
}

/// A string field of hostile input, cut to `max` characters (empty when not a string).
pub fn text(value: &Value, max: usize) -> String {
    value
        .as_str()
        .map(|s| s.chars().take(max).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A gateway that completes the handshake, then sends `after` frames.
    async fn serve(after: Vec<Message>) -> GatewayAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let challenge =
                json!({"type": "event", "event": "connect.challenge", "payload": {"nonce": "n"}});
            ws.send(Message::text(challenge.to_string())).await.unwrap();
            let Some(Ok(Message::Text(connect))) = ws.next().await else {
                return;
            };
            let connect: Value = serde_json::from_str(connect.as_str()).unwrap();
            assert_eq!(connect["params"]["auth"]["token"], "tok");
            let hello = json!({"type": "res", "id": connect["id"], "ok": true, "payload": {"type": "hello-ok"}});
            ws.send(Message::text(hello.to_string())).await.unwrap();
            for frame in after {
                if ws.send(frame).await.is_err() {
                    return;
                }
            }
            // Every later request is refused as while openclaw is still starting.
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let req: Value = serde_json::from_str(text.as_str()).unwrap();
                let refused = json!({"type": "res", "id": req["id"], "ok": false,
                    "error": {"code": "UNAVAILABLE", "message": "gateway starting"}});
                if ws.send(Message::text(refused.to_string())).await.is_err() {
                    return;
                }
            }
        });
        GatewayAddr {
            port,
            token: Secret::new("tok".into()),
        }
    }

    #[tokio::test]
    async fn events_arrive_after_the_handshake() {
        let event = json!({"type": "event", "event": "chat", "payload": {"state": "final"}});
        let addr = serve(vec![Message::text(event.to_string())]).await;
        let mut gateway = Gateway::connect(&addr).await.unwrap();
        let got = gateway.next_event().await.unwrap();
        assert_eq!(got.name, "chat");
        assert_eq!(got.payload["state"], "final");
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_refused_before_it_is_parsed() {
        let huge = format!(
            "{{\"type\":\"event\",\"payload\":\"{}\"}}",
            "x".repeat(MAX_MESSAGE + 1)
        );
        let addr = serve(vec![Message::text(huge)]).await;
        let mut gateway = Gateway::connect(&addr).await.unwrap();
        let err = gateway.next_event().await.unwrap_err();
        assert!(matches!(err, GatewayError::TooMuch(_)), "{err}");
    }

    #[tokio::test]
    async fn a_frame_that_is_not_json_is_a_protocol_error() {
        let addr = serve(vec![Message::text("not json")]).await;
        let mut gateway = Gateway::connect(&addr).await.unwrap();
        let err = gateway.next_event().await.unwrap_err();
        assert!(matches!(err, GatewayError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn a_refused_request_says_why_and_whether_to_retry() {
        let addr = serve(vec![]).await;
        let mut gateway = Gateway::connect(&addr).await.unwrap();
        let err = gateway.request("chat.send", json!({})).await.unwrap_err();
        match err {
            GatewayError::Refused {
                method,
                code,
                message,
                retryable,
            } => {
                assert_eq!(method, "chat.send");
                assert_eq!(code, "UNAVAILABLE");
                assert_eq!(message, "gateway starting");
                assert!(retryable);
            }
            other => panic!("{other}"),
        }
    }
}
