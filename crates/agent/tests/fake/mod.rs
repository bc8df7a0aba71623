//! A fake of the host's agent listener (bridge stream, replies, traces) and LLM gateway
//! (`/v1/chat/completions`), small enough to read in one go.

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
use taos_proto::trace::{NewTraceEvent, TraceKind};
use tokio::sync::{mpsc, watch};

pub const AGENT: &str = "helper";
pub const TOKEN: &str = "taos_ag_fake_token";
pub const LLM_KEY: &str = "sk-fake-llm-key";
pub const CHANNEL: &str = "chan-1";

/// What the fake gateway does for a model.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Streams these pieces, a little apart, then finishes properly.
    Answer(Vec<&'static str>),
    /// Streams these pieces with `gap` between them (for shutdown tests).
    Slow(Vec<&'static str>, Duration),
    /// HTTP 500 before any content.
    Fail500,
    /// HTTP 429 with the gateway's `budget_exceeded` code.
    Budget429,
    /// Streams these pieces, then the connection ends without `[DONE]`.
    CutOff(Vec<&'static str>),
}

#[derive(Default)]
pub struct Recorded {
    /// `Last-Event-ID` of each bridge stream request, in order (`None`: not sent).
    pub last_event_ids: Vec<Option<String>>,
    pub replies: Vec<Reply>,
    pub traces: Vec<NewTraceEvent>,
    /// Bodies of chat completion requests.
    pub llm_requests: Vec<serde_json::Value>,
    /// `X-Taos-Trace-Id` of each chat completion request.
    pub llm_trace_ids: Vec<Option<String>>,
}

pub struct FakeState {
    /// Every delivery ever made: (seq, trace id, JSON payload).
    deliveries: watch::Sender<Vec<(i64, String, serde_json::Value)>>,
    /// Bumped to end every open stream.
    drop_streams: watch::Sender<u64>,
    /// This many stream requests are refused with 401 before one is accepted.
    refuse_streams: AtomicU32,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    pub recorded: Mutex<Recorded>,
}

pub struct FakeHost {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

impl FakeHost {
    pub async fn start() -> FakeHost {
        let state = Arc::new(FakeState {
            deliveries: watch::channel(Vec::new()).0,
            drop_streams: watch::channel(0).0,
            refuse_streams: AtomicU32::new(0),
            behaviours: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Recorded::default()),
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

    /// The sidecar's environment pointing at this fake.
    pub fn env(&self, models: &str) -> HashMap<&'static str, String> {
        let (primary, fallbacks) = models.split_once(',').unwrap_or((models, ""));
        HashMap::from([
            ("TAOS_BRIDGE_URL", format!("http://{}", self.addr)),
            ("TAOS_AGENT_NAME", AGENT.to_string()),
            ("TAOS_AGENT_TOKEN", TOKEN.to_string()),
            ("OPENAI_BASE_URL", format!("http://{}/v1", self.addr)),
            ("OPENAI_API_KEY", LLM_KEY.to_string()),
            ("TAOS_MODEL", primary.to_string()),
            ("TAOS_FALLBACK_MODELS", fallbacks.to_string()),
        ])
    }

    /// A config for running the sidecar in-process, with short delays.
    pub fn config(&self, models: &str) -> Config {
        let env = self.env(models);
        let mut config = Config::from_lookup(|name| env.get(name).cloned()).unwrap();
        config.timings.backoff_start = Duration::from_millis(50);
        config.timings.backoff_max = Duration::from_millis(200);
        config.timings.refused_retry = Duration::from_millis(100);
        config.timings.shutdown_grace = Duration::from_millis(300);
        config
    }

    pub fn set_model(&self, model: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(model.to_string(), behaviour);
    }

    pub fn refuse_next_streams(&self, count: u32) {
        self.state.refuse_streams.store(count, Ordering::SeqCst);
    }

    /// Queues a delivery for the agent; returns its trace id.
    pub fn deliver(&self, text: &str, context: serde_json::Value) -> String {
        let mut trace_id = String::new();
        self.state.deliveries.send_modify(|list| {
            let seq = list.len() as i64 + 1;
            trace_id = format!("msg-{seq}");
            let payload = serde_json::json!({
                "id": trace_id, "trace_id": trace_id, "delivery_seq": seq,
                "channel_id": CHANNEL, "from": "user:ana", "text": text,
                "created_at": "2026-01-01T00:00:00Z", "hops_since_user": 1,
                "force_respond": true, "context": context, "thread_id": null,
            });
            list.push((seq, trace_id.clone(), payload));
        });
        trace_id
    }

    /// Ends every open bridge stream, as a host restart would.
    pub fn drop_streams(&self) {
        self.state.drop_streams.send_modify(|n| *n += 1);
    }

    pub fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.state.recorded.lock().unwrap())
    }

    pub fn replies_for(&self, trace_id: &str) -> Vec<Reply> {
        self.recorded(|r| {
            r.replies
                .iter()
                .filter(|reply| reply.trace_id == trace_id)
                .cloned()
                .collect()
        })
    }

    pub fn is_settled(&self, trace_id: &str) -> bool {
        self.replies_for(trace_id)
            .iter()
            .any(|r| matches!(r.kind, ReplyKind::Final | ReplyKind::Error))
    }

    pub fn llm_models(&self) -> Vec<String> {
        self.recorded(|r| {
            r.llm_requests
                .iter()
                .map(|body| body["model"].as_str().unwrap_or_default().to_string())
                .collect()
        })
    }

    pub fn lifecycle_events(&self) -> Vec<String> {
        self.recorded(|r| {
            r.traces
                .iter()
                .filter(|t| t.kind == TraceKind::Lifecycle)
                .map(|t| t.payload["event"].as_str().unwrap_or_default().to_string())
                .collect()
        })
    }
}

/// Polls `check` until it holds; panics after a few seconds naming `what`.
pub async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
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
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state
        .recorded
        .lock()
        .unwrap()
        .last_event_ids
        .push(last_event_id.clone());
    if state
        .refuse_streams
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return unauthorized();
    }
    let cursor: Option<i64> = last_event_id.and_then(|id| id.parse().ok());
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(pump(state.clone(), cursor, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(100)))
        .into_response()
}

/// Like the host: with an id, everything after it; without, everything not yet answered.
async fn pump(state: Arc<FakeState>, cursor: Option<i64>, tx: mpsc::Sender<Event>) {
    let mut deliveries = state.deliveries.subscribe();
    let mut drops = state.drop_streams.subscribe();
    drops.borrow_and_update();
    let mut sent_up_to = cursor.unwrap_or(0);
    let mut first = true;
    loop {
        let list = deliveries.borrow_and_update().clone();
        for (seq, trace_id, payload) in list {
            if seq <= sent_up_to {
                continue;
            }
            sent_up_to = seq;
            let answered = {
                let recorded = state.recorded.lock().unwrap();
                recorded.replies.iter().any(|r| {
                    r.trace_id == trace_id && matches!(r.kind, ReplyKind::Final | ReplyKind::Error)
                })
            };
            if first && cursor.is_none() && answered {
                continue;
            }
            let event = Event::default()
                .id(seq.to_string())
                .event("user_message")
                .json_data(&payload)
                .unwrap();
            if tx.send(event).await.is_err() {
                return;
            }
        }
        first = false;
        tokio::select! {
            changed = deliveries.changed() => if changed.is_err() { return },
            _ = drops.changed() => return,
            _ = tx.closed() => return,
        }
    }
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
    state.recorded.lock().unwrap().replies.push(reply);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true, "message_id": message_id})),
    )
        .into_response()
}

async fn trace(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(event): Json<NewTraceEvent>,
) -> Response {
    if !bearer_is(&headers, TOKEN) {
        return unauthorized();
    }
    let id = event.id.clone().unwrap_or_else(|| "generated".to_string());
    state.recorded.lock().unwrap().traces.push(event);
    Json(serde_json::json!({"ids": [id], "agent_name": AGENT, "schema_version": 1})).into_response()
}

async fn chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if !bearer_is(&headers, LLM_KEY) {
        return unauthorized();
    }
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let trace_id = headers
        .get("x-taos-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    {
        let mut recorded = state.recorded.lock().unwrap();
        recorded.llm_requests.push(body);
        recorded.llm_trace_ids.push(trace_id);
    }
    let behaviour = state
        .behaviours
        .lock()
        .unwrap()
        .get(&model)
        .cloned()
        .unwrap_or(Behaviour::Answer(vec!["Hel", "lo", " wor", "ld", "!"]));
    let (pieces, gap, finish) = match behaviour {
        Behaviour::Fail500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": {"message": "upstream broke", "type": "internal_error", "code": "500"}})),
            )
                .into_response()
        }
        Behaviour::Budget429 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(serde_json::json!({"error": {"message": "monthly budget used up", "type": "budget_exceeded", "code": "429"}})),
            )
                .into_response()
        }
        Behaviour::Answer(pieces) => (pieces, Duration::from_millis(15), true),
        Behaviour::Slow(pieces, gap) => (pieces, gap, true),
        Behaviour::CutOff(pieces) => (pieces, Duration::from_millis(15), false),
    };
    let mut frames: Vec<String> = pieces
        .iter()
        .map(|piece| {
            let chunk = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}],
            });
            format!("data: {chunk}\n\n")
        })
        .collect();
    if finish {
        let last = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        });
        frames.push(format!("data: {last}\n\n"));
        frames.push("data: [DONE]\n\n".to_string());
    }
    // The first frame goes at once, the rest `gap` apart.
    let frames = frames.into_iter().enumerate();
    let stream = futures_util::stream::unfold(frames, move |mut frames| async move {
        let (index, frame) = frames.next()?;
        if index > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((Ok::<_, Infallible>(frame), frames))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}
