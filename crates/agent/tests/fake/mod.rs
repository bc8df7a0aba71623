//! A fake of the host's agent listener (bridge stream, replies, traces) and LLM gateway, for the
//! one fault the real host never produces: refusing the agent's token and then accepting it.
//! Everything else is tested against the real host.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use taos_agent::Config;
use taos_proto::bridge::{Reply, ReplyKind};
use tokio::sync::watch;

const AGENT: &str = "helper";
const TOKEN: &str = "taos_ag_fake_token";
const LLM_KEY: &str = "sk-fake-llm-key";

pub struct FakeState {
    /// Every delivery ever made, as JSON payloads; a delivery's seq is its index + 1.
    deliveries: watch::Sender<Vec<serde_json::Value>>,
    /// This many stream requests are refused with 401 before one is accepted.
    refuse_streams: AtomicU32,
    stream_requests: AtomicU32,
    replies: Mutex<Vec<Reply>>,
}

pub struct FakeHost {
    addr: SocketAddr,
    state: Arc<FakeState>,
}

impl FakeHost {
    pub async fn start() -> FakeHost {
        let state = Arc::new(FakeState {
            deliveries: watch::channel(Vec::new()).0,
            refuse_streams: AtomicU32::new(0),
            stream_requests: AtomicU32::new(0),
            replies: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/api/openclaw/sessions/{agent}/events", get(events))
            .route("/api/openclaw/sessions/{agent}/reply", post(reply))
            .route("/api/trace", post(trace))
            .route("/v1/chat/completions", post(chat))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeHost { addr, state }
    }

    /// A config for running the sidecar in-process against this fake, with short delays.
    pub fn config(&self) -> Config {
        let env = HashMap::from([
            ("TAOS_BRIDGE_URL", format!("http://{}", self.addr)),
            ("TAOS_AGENT_NAME", AGENT.to_string()),
            ("TAOS_AGENT_TOKEN", TOKEN.to_string()),
            ("OPENAI_BASE_URL", format!("http://{}/v1", self.addr)),
            ("OPENAI_API_KEY", LLM_KEY.to_string()),
            ("TAOS_MODEL", "small".to_string()),
        ]);
        let mut config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        config.timings.backoff_start = Duration::from_millis(50);
        config.timings.backoff_max = Duration::from_millis(200);
        config.timings.refused_retry = Duration::from_millis(100);
        config.timings.shutdown_grace = Duration::from_millis(300);
        config
    }

    pub fn refuse_next_streams(&self, count: u32) {
        self.state.refuse_streams.store(count, Ordering::SeqCst);
    }

    /// How many times the sidecar asked for the stream.
    pub fn stream_requests(&self) -> u32 {
        self.state.stream_requests.load(Ordering::SeqCst)
    }

    /// Queues a delivery for the agent; returns its trace id.
    pub fn deliver(&self, text: &str) -> String {
        let mut trace_id = String::new();
        self.state.deliveries.send_modify(|list| {
            let seq = list.len() + 1;
            trace_id = format!("msg-{seq}");
            list.push(serde_json::json!({
                "id": trace_id, "trace_id": trace_id, "delivery_seq": seq,
                "channel_id": "chan-1", "from": "user:ana", "text": text,
                "created_at": "2026-01-01T00:00:00Z", "hops_since_user": 1,
                "force_respond": true, "context": [], "thread_id": null,
            }));
        });
        trace_id
    }

    /// Whether a final reply for `trace_id` came in.
    pub fn is_answered(&self, trace_id: &str) -> bool {
        self.state
            .replies
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.trace_id == trace_id && r.kind == ReplyKind::Final)
    }
}

/// Polls `check` until it holds; panics naming `what` after a while (a hang guard only).
pub async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {expected}"))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": {"code": "invalid_token", "message": "no"}})),
    )
        .into_response()
}

async fn events(
    State(state): State<Arc<FakeState>>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Response {
    if agent != AGENT || !bearer_is(&headers, TOKEN) {
        return unauthorized();
    }
    state.stream_requests.fetch_add(1, Ordering::SeqCst);
    if state
        .refuse_streams
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return unauthorized();
    }
    // Every delivery, as they come: this fake is never reconnected to.
    let deliveries = state.deliveries.subscribe();
    let stream = futures_util::stream::unfold((deliveries, 0), |(mut rx, sent)| async move {
        loop {
            let list = rx.borrow_and_update().clone();
            if let Some(payload) = list.get(sent) {
                let event = Event::default()
                    .id((sent + 1).to_string())
                    .event("user_message")
                    .json_data(payload)
                    .unwrap();
                return Some((Ok::<_, Infallible>(event), (rx, sent + 1)));
            }
            rx.changed().await.ok()?;
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(100)))
        .into_response()
}

async fn reply(
    State(state): State<Arc<FakeState>>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    Json(reply): Json<Reply>,
) -> Response {
    if agent != AGENT || !bearer_is(&headers, TOKEN) {
        return unauthorized();
    }
    let message_id = format!("reply-to-{}", reply.trace_id);
    state.replies.lock().unwrap().push(reply);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true, "message_id": message_id})),
    )
        .into_response()
}

async fn trace(headers: HeaderMap) -> Response {
    if !bearer_is(&headers, TOKEN) {
        return unauthorized();
    }
    Json(serde_json::json!({"ids": ["generated"], "agent_name": AGENT, "schema_version": 1}))
        .into_response()
}

/// Answers every chat completion with "Hello!", streamed in one chunk.
async fn chat(headers: HeaderMap) -> Response {
    if !bearer_is(&headers, LLM_KEY) {
        return unauthorized();
    }
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "small",
        "choices": [{"index": 0, "delta": {"content": "Hello!"}, "finish_reason": "stop"}],
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(format!("data: {chunk}\n\ndata: [DONE]\n\n")))
        .unwrap()
}
