//! The one transport between the app and a host: REST, the chat WebSocket and the live event
//! stream all go through here, over TLS that trusts exactly the host key pinned at pairing
//! (host names are ignored: a board's address changes) or, for a host behind a real
//! certificate, the system's CAs.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use taos_pin::SpkiPin;
use taos_proto::chat::{ClientEvent, ServerEvent};
use taos_proto::events::HostEvent;
use taos_proto::sse::SseParser;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How the app decides to trust a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", content = "pin", rename_all = "snake_case")]
pub enum Trust {
    /// Only the key whose SPKI SHA-256 this is (base64), whatever the certificate says.
    #[serde(with = "pin_base64")]
    Pinned(SpkiPin),
    /// The system's certificate authorities and the host name, as a browser would.
    SystemCa,
}

mod pin_base64 {
    use serde::{Deserialize, Deserializer, Serializer};
    use taos_pin::SpkiPin;

    pub fn serialize<S: Serializer>(pin: &SpkiPin, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&pin.to_base64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpkiPin, D::Error> {
        let text = String::deserialize(d)?;
        SpkiPin::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No answer at all: the host is off, asleep or out of reach. The app goes offline.
    #[error("cannot reach the host at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// Something answered, but not with the pinned key: never talk to it.
    #[error("the host at {0} is not the one this app was paired with (its key changed)")]
    WrongKey(String),
    #[error("the host refused the credentials")]
    Unauthorized,
    /// The host answered with an error of its own.
    #[error("{status}: {message}")]
    Host {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
}

impl NetError {
    pub fn is_offline(&self) -> bool {
        matches!(self, NetError::Unreachable { .. })
    }
}

/// The rustls client configuration for a trust mode.
pub fn tls_config(trust: Trust) -> Result<rustls::ClientConfig, NetError> {
    Ok(match trust {
        Trust::Pinned(pin) => taos_pin::pinned_client_config(pin),
        Trust::SystemCa => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                tracing::warn!("no system certificate authorities found");
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| NetError::Protocol(format!("TLS setup: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        }
    })
}

/// A connection to one host address (`host:port`) with one trust decision.
#[derive(Clone)]
pub struct Link {
    address: String,
    trust: Trust,
    http: reqwest::Client,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.address)
            .field("trust", &self.trust)
            .finish()
    }
}

impl Link {
    pub fn new(address: &str, trust: Trust) -> Result<Link, NetError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let http = builder
            .use_preconfigured_tls(tls_config(trust)?)
            .build()
            .map_err(|e| NetError::Protocol(e.to_string()))?;
        Ok(Link {
            address: address.to_string(),
            trust,
            http,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    fn classify(&self, e: &reqwest::Error) -> NetError {
        // A handshake refused by our verifier shows as a connect error whose source chain
        // names the certificate; anything else at connect time means the host isn't there.
        let chain = error_chain(e);
        if chain.contains("ApplicationVerificationFailure")
            || chain.contains("invalid peer certificate")
        {
            NetError::WrongKey(self.address.clone())
        } else if e.is_connect() || e.is_timeout() || e.is_request() {
            NetError::Unreachable {
                address: self.address.clone(),
                reason: chain,
            }
        } else {
            NetError::Protocol(chain)
        }
    }

    /// Sends a JSON request; `token` is a device access token.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<(StatusCode, Vec<u8>), NetError> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, bearer(token)?);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).map_err(|e| NetError::Protocol(e.to_string()))?);
        }
        let response = request.send().await.map_err(|e| self.classify(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.classify(&e))?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(NetError::Unauthorized);
        }
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(NetError::Host {
                status: status.as_u16(),
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or("the host refused the request")
                    .to_string(),
            });
        }
        Ok((status, bytes.to_vec()))
    }

    /// A JSON request whose answer is parsed as `T`.
    pub async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, NetError> {
        let (_, bytes) = self.send(method, path, token, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| NetError::Protocol(e.to_string()))
    }

    /// Opens `/api/events`, resuming after `last_event_id`.
    pub async fn events(
        &self,
        token: &str,
        last_event_id: Option<i64>,
    ) -> Result<EventStream, NetError> {
        let mut request = self
            .http
            .get(self.url("/api/events"))
            .timeout(Duration::from_secs(24 * 3600))
            .header(AUTHORIZATION, bearer(token)?)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.map_err(|e| self.classify(&e))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(NetError::Unauthorized),
            other => return Err(NetError::Protocol(format!("events answered {other}"))),
        }
        Ok(EventStream {
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            pending: Vec::new(),
        })
    }

    /// Opens the chat WebSocket with a bearer token, through the same trust decision.
    pub async fn chat_socket(&self, token: &str) -> Result<ChatSocket, NetError> {
        let mut config = tls_config(self.trust)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let unreachable = |reason: String| NetError::Unreachable {
            address: self.address.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let host = self
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(&self.address);
        // With a pin the name is not checked, but TLS still needs one to send.
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .or_else(|_| rustls::pki_types::ServerName::try_from("taos-host".to_string()))
            .map_err(|e| NetError::Protocol(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("ApplicationVerificationFailure") || text.contains("certificate") {
                    NetError::WrongKey(self.address.clone())
                } else {
                    unreachable(text)
                }
            })?;
        let mut request = format!("wss://{}/api/chat/ws", self.address)
            .into_client_request()
            .map_err(|e| NetError::Protocol(e.to_string()))?;
        request.headers_mut().insert(AUTHORIZATION, bearer(token)?);
        let (stream, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401 => {
                    NetError::Unauthorized
                }
                other => NetError::Protocol(other.to_string()),
            })?;
        Ok(ChatSocket {
            stream,
            close_code: None,
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, NetError> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| NetError::Protocol("a token with characters a header can't carry".into()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&format!("{s:?}"));
        source = s.source();
    }
    text
}

/// `/api/events`, parsed.
pub struct EventStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    pending: Vec<taos_proto::sse::SseEvent>,
}

/// What the live event stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    Event(HostEvent),
    /// The host no longer has the events after our last id: reload state.
    Resync,
    /// The token the stream was opened with was revoked or expired; the stream ends.
    /// Authenticate again (a refresh; a revoked device fails it) before reconnecting.
    Unauthorized,
}

impl EventStream {
    /// The next event; `None` when the stream ends (reconnect with the last id).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            if !self.pending.is_empty() {
                let event = self.pending.remove(0);
                if event.event == taos_proto::events::EVENT_RESYNC {
                    return Some(LiveEvent::Resync);
                }
                if event.event == taos_proto::events::EVENT_UNAUTHORIZED {
                    return Some(LiveEvent::Unauthorized);
                }
                if let Ok(parsed) = serde_json::from_str::<HostEvent>(&event.data) {
                    return Some(LiveEvent::Event(parsed));
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.pending = self.parser.push(&chunk).ok()?;
        }
    }
}

/// The chat WebSocket, typed.
pub struct ChatSocket {
    stream:
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// The code of the host's close frame, once one came.
    close_code: Option<u16>,
}

impl ChatSocket {
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), NetError> {
        let text = serde_json::to_string(event).map_err(|e| NetError::Protocol(e.to_string()))?;
        self.stream
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|e| NetError::Protocol(e.to_string()))
    }

    /// The next server event; `None` when the socket closes (reconnect and resubscribe — but
    /// see `closed_unauthorized`).
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            match self.stream.next().await?.ok()? {
                WsMessage::Text(text) => {
                    if let Ok(event) = serde_json::from_str(text.as_str()) {
                        return Some(event);
                    }
                }
                WsMessage::Close(frame) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return None;
                }
                _ => {}
            }
        }
    }

    /// Whether the host closed the socket because its token was revoked or expired (code 4001):
    /// reconnecting needs a fresh token, not the same one.
    pub fn closed_unauthorized(&self) -> bool {
        self.close_code == Some(taos_proto::chat::CLOSE_UNAUTHORIZED)
    }
}
