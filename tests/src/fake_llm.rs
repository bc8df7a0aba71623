//! A fake OpenAI-compatible LLM provider for tests: the one stand-in the tests use (paid APIs
//! are out of reach). Real LiteLLM sits between it and the host.
//!
//! Serves `/v1/models`, `/v1/chat/completions` (streamed or not, usage in the last chunk) and
//! `/v1/embeddings`, checks the API key it was given, counts calls, and can be told to fail:
//! every call at once, or per model (see [`Behaviour`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

/// The text every completion answers with.
pub const REPLY: &str = "Hello from the fake model.";
pub const PROMPT_TOKENS: i64 = 10;
pub const COMPLETION_TOKENS: i64 = 5;

/// What the fake does for one model's chat completions. Models without one answer [`REPLY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// HTTP 500 before any text.
    Fail,
    /// Streams the first word of [`REPLY`], then waits for [`FakeLlm::break_off`] and breaks
    /// the connection: no finish reason, no `[DONE]`, no clean end of the body. (Waiting makes
    /// sure the word got through first.) Non-streamed calls answer normally.
    BreakAfterFirstWord,
    /// Streams the first word of [`REPLY`], then sends nothing more, ever. (Non-streamed calls
    /// answer normally.)
    StallAfterFirstWord,
}

#[derive(Default)]
pub struct FakeState {
    pub api_key: String,
    pub models: Vec<String>,
    pub fail: AtomicBool,
    pub calls: AtomicU64,
    pub unauthorized: AtomicU64,
    pub behaviours: Mutex<HashMap<String, Behaviour>>,
    /// The body of every authorized chat completion request, in order.
    pub chat_requests: Mutex<Vec<Value>>,
    /// Models whose [`Behaviour::BreakAfterFirstWord`] streams break off now.
    pub broken_off: watch::Sender<Vec<String>>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start(api_key: &str, models: &[&str]) -> FakeLlm {
        let state = Arc::new(FakeState {
            api_key: api_key.to_string(),
            models: models.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        });
        let app = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake llm");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeLlm { addr, state, task }
    }

    /// The base URL a provider would be configured with.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_failing(&self, fail: bool) {
        self.state.fail.store(fail, Ordering::SeqCst);
    }

    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// From now on, chat completions for `model` go as `behaviour` says.
    pub fn set_behaviour(&self, model: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), behaviour);
    }

    /// Breaks off `model`'s [`Behaviour::BreakAfterFirstWord`] streams: those waiting and any
    /// later ones, right after their first word.
    pub fn break_off(&self, model: &str) {
        self.state
            .broken_off
            .send_modify(|models| models.push(model.to_string()));
    }

    /// The bodies of the chat completion requests that match `filter`, in order.
    pub fn chat_requests(&self, filter: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.state
            .chat_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|body| filter(body))
            .cloned()
            .collect()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(state: &FakeState, headers: &HeaderMap) -> bool {
    if state.api_key.is_empty() {
        return true;
    }
    let expected = format!("Bearer {}", state.api_key);
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    if !ok {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "bad key", "type": "auth"}})),
    )
        .into_response()
}

async fn list_models(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "fake"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    state
        .chat_requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(body.clone());
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    let behaviour = state
        .behaviours
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&model)
        .copied();
    if state.fail.load(Ordering::SeqCst) || behaviour == Some(Behaviour::Fail) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "fake outage", "type": "server_error"}})),
        )
            .into_response();
    }
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS});
    if body["stream"].as_bool() == Some(true) {
        let mut frames = Vec::new();
        for (i, word) in REPLY.split_inclusive(' ').enumerate() {
            let chunk = json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": if i == 0 { json!({"role": "assistant", "content": word}) } else { json!({"content": word}) }, "finish_reason": null}]});
            frames.push(format!("data: {chunk}\n\n"));
        }
        let last = json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        frames.push(format!("data: {last}\n\n"));
        if body["stream_options"]["include_usage"].as_bool() == Some(true) {
            let usage_chunk = json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage});
            frames.push(format!("data: {usage_chunk}\n\n"));
        }
        frames.push("data: [DONE]\n\n".to_string());
        let stream = match behaviour {
            Some(Behaviour::BreakAfterFirstWord) => {
                let first = frames[0].clone();
                let mut told = state.broken_off.subscribe();
                let model = model.clone();
                // An error from the body stream makes the server abort the connection.
                let rest = futures_util::stream::once(async move {
                    let _ = told.wait_for(|models| models.contains(&model)).await;
                    Err(std::io::Error::other("the fake breaks off"))
                });
                futures_util::stream::iter([Ok(first)]).chain(rest).boxed()
            }
            Some(Behaviour::StallAfterFirstWord) => {
                let first = frames[0].clone();
                futures_util::stream::iter([Ok(first)])
                    .chain(futures_util::stream::pending())
                    .boxed()
            }
            Some(Behaviour::Fail) | None => {
                futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>)).boxed()
            }
        };
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    Json(json!({"id": "fake-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
        "usage": usage}))
    .into_response()
}

async fn embeddings(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({"object": "list", "model": body["model"], "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
    .into_response()
}
