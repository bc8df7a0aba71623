//! A fake OpenAI-compatible LLM provider for tests: the one stand-in the tests use (paid APIs
//! are out of reach). Real LiteLLM sits between it and the host.
//!
//! Serves `/v1/models`, `/v1/chat/completions` (streamed or not, usage in the last chunk) and
//! `/v1/embeddings`, checks the API key it was given, counts calls, and can be told to fail
//! (every call, or per model: see [`Behaviour`]), to hold calls open, or to answer from a
//! script of tool calls and final texts ([`FakeLlm::script`], [`Scripted`]). Like vLLM or Ollama, it fetches `http(s)` image URLs it is sent (only on
//! 127.0.0.1: tests never reach further). [`Recorder`] is a listener that only records what
//! reaches it, and can redirect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// One scripted answer (see [`FakeLlm::script`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Scripted {
    /// The model calls one tool with these arguments (a JSON object).
    Call { tool: String, args: Value },
    /// The model answers with this text and calls nothing.
    Final(String),
}

impl Scripted {
    pub fn call(tool: &str, args: Value) -> Scripted {
        Scripted::Call {
            tool: tool.to_string(),
            args,
        }
    }

    pub fn final_text(text: &str) -> Scripted {
        Scripted::Final(text.to_string())
    }
}

/// A model's scripted answers: the queue first, then `forever` for every later call (or
/// [`REPLY`] when there is none).
#[derive(Debug, Clone, Default)]
struct Script {
    queue: std::collections::VecDeque<Scripted>,
    forever: Option<Scripted>,
    /// Numbers the calls' ids, so each is unique within the conversation.
    calls: u64,
}

pub struct FakeState {
    pub api_key: String,
    pub models: Vec<String>,
    pub fail: AtomicBool,
    /// While set, a streamed answer sends its first chunk and then waits (a long generation).
    pub hold_stream: AtomicBool,
    pub calls: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Every credential presented (`Authorization` and `x-api-key` values), in order.
    pub keys_seen: Mutex<Vec<String>>,
    /// While true, completions wait before answering (see [`FakeLlm::hold`]).
    hold: tokio::sync::watch::Sender<bool>,
    /// Completions that arrived and are waiting or answering.
    pub in_flight: AtomicU64,
    pub behaviours: Mutex<HashMap<String, Behaviour>>,
    /// The body of every authorized chat completion request, in order.
    pub chat_requests: Mutex<Vec<Value>>,
    /// Models whose [`Behaviour::BreakAfterFirstWord`] streams break off now.
    pub broken_off: watch::Sender<Vec<String>>,
    scripts: Mutex<HashMap<String, Script>>,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            api_key: String::new(),
            models: Vec::new(),
            fail: AtomicBool::new(false),
            hold_stream: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            keys_seen: Mutex::new(Vec::new()),
            hold: tokio::sync::watch::channel(false).0,
            in_flight: AtomicU64::new(0),
            behaviours: Mutex::new(HashMap::new()),
            chat_requests: Mutex::new(Vec::new()),
            broken_off: watch::channel(Vec::new()).0,
            scripts: Mutex::new(HashMap::new()),
        }
    }
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

    /// Streamed answers stop after their first chunk until `set_holding(false)`.
    pub fn set_holding(&self, hold: bool) {
        self.state.hold_stream.store(hold, Ordering::SeqCst);
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

    /// From now on, `model` answers chat completions with `answers`, one per call, in order
    /// (tool calls, then usually a final text), so a tool-using agent's turn is deterministic.
    /// Once they are used up it answers [`REPLY`].
    pub fn script(&self, model: &str, answers: Vec<Scripted>) {
        let mut scripts = self.state.scripts.lock().unwrap_or_else(|p| p.into_inner());
        let script = scripts.entry(model.to_string()).or_default();
        script.queue = answers.into();
        script.forever = None;
    }

    /// From now on, `model` answers every chat completion with `answer`: a model that never
    /// finishes when it is a tool call.
    pub fn script_forever(&self, model: &str, answer: Scripted) {
        let mut scripts = self.state.scripts.lock().unwrap_or_else(|p| p.into_inner());
        let script = scripts.entry(model.to_string()).or_default();
        script.queue.clear();
        script.forever = Some(answer);
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

    /// Holds every completion (streamed or not) open until `release`.
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.state.hold.send_replace(false);
    }

    /// Completions that have arrived and not yet been answered in full.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Every credential presented to it so far.
    pub fn keys_seen(&self) -> Vec<String> {
        self.state
            .keys_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counts a completion in flight while it lives.
struct InFlight(Arc<FakeState>);

impl InFlight {
    fn new(state: &Arc<FakeState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(state: &FakeState, headers: &HeaderMap) -> bool {
    {
        let mut seen = state.keys_seen.lock().unwrap_or_else(|p| p.into_inner());
        for name in ["authorization", "x-api-key"] {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                seen.push(v.to_string());
            }
        }
    }
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
    let in_flight = InFlight::new(&state);
    fetch_image_urls(&body).await;
    let mut hold = state.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
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
    if let Some(answer) = next_scripted(&state, &model) {
        return scripted_response(&model, answer, body["stream"].as_bool() == Some(true));
    }
    // A real model stops at max_tokens: one token per word here.
    let limit = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|k| body[*k].as_u64())
        .min()
        .unwrap_or(u64::MAX);
    let words: Vec<&str> = REPLY
        .split_inclusive(' ')
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    let completion_tokens = (words.len() as i64).min(COMPLETION_TOKENS);
    let reply: String = words.concat();
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": PROMPT_TOKENS + completion_tokens});
    if body["stream"].as_bool() == Some(true) {
        let mut frames = Vec::new();
        for (i, word) in words.iter().enumerate() {
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
                // An error from the body stream makes the server abort the connection.
                let rest = futures_util::stream::once(async move {
                    let _counted = in_flight;
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
                let hold = state.clone();
                futures_util::stream::unfold(
                    (frames.into_iter(), true),
                    move |(mut frames, first)| {
                        let hold = hold.clone();
                        // Counted as in flight until the whole answer has gone out.
                        let _counted = &in_flight;
                        async move {
                            while !first && hold.hold_stream.load(Ordering::SeqCst) {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                            let frame = frames.next()?;
                            Some((Ok::<_, std::io::Error>(frame), (frames, false)))
                        }
                    },
                )
                .boxed()
            }
        };
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    Json(json!({"id": "fake-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": usage}))
    .into_response()
}

/// The next scripted answer for `model`, with its call id, if it has a script.
fn next_scripted(state: &FakeState, model: &str) -> Option<(String, Scripted)> {
    let mut scripts = state.scripts.lock().unwrap_or_else(|p| p.into_inner());
    let script = scripts.get_mut(model)?;
    let answer = script
        .queue
        .pop_front()
        .or_else(|| script.forever.clone())?;
    script.calls += 1;
    Some((format!("call_{}", script.calls), answer))
}

/// A scripted answer in OpenAI's shape, streamed or not.
fn scripted_response(model: &str, (call_id, answer): (String, Scripted), stream: bool) -> Response {
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS});
    let (message, finish) = match &answer {
        Scripted::Call { tool, args } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": call_id, "type": "function",
                "function": {"name": tool, "arguments": args.to_string()}}]}),
            "tool_calls",
        ),
        Scripted::Final(text) => (json!({"role": "assistant", "content": text}), "stop"),
    };
    if !stream {
        return Json(json!({"id": "fake-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
        .into_response();
    }
    let mut delta = message;
    if let Some(calls) = delta["tool_calls"].as_array_mut() {
        for (i, call) in calls.iter_mut().enumerate() {
            call["index"] = json!(i);
        }
    }
    let chunks = [
        json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]}),
        json!({"id": "fake-1", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
    ];
    let body: String = chunks
        .iter()
        .map(|c| format!("data: {c}\n\n"))
        .chain(["data: [DONE]\n\n".to_string()])
        .collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .expect("response")
}

/// Fetches the `http(s)://127.0.0.1…` image URLs in a chat body, as a local model server
/// that accepts image URLs does.
async fn fetch_image_urls(body: &Value) {
    let urls: Vec<String> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter_map(|part| {
            part["image_url"]["url"]
                .as_str()
                .or_else(|| part["image_url"].as_str())
        })
        .filter(|u| u.starts_with("http://127.0.0.1") || u.starts_with("https://127.0.0.1"))
        .map(String::from)
        .collect();
    let client = crate::plain_client(Duration::from_secs(5));
    for url in urls {
        let _ = client.get(&url).send().await;
    }
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

/// One request as a [`Recorder`] saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// A listener that records every request and answers 404, or a redirect to `redirect_to` (plus
/// the path) when one is set. For attacks: "does the key ever reach this address?".
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(redirect_to: Option<String>) -> Recorder {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let app = Router::new().fallback(move |request: axum::extract::Request| {
            let record = record.clone();
            let redirect_to = redirect_to.clone();
            async move {
                let path = request.uri().path().to_string();
                record.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                    method: request.method().to_string(),
                    path: path.clone(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).to_string(),
                            )
                        })
                        .collect(),
                });
                match redirect_to {
                    Some(to) => Response::builder()
                        .status(StatusCode::FOUND)
                        .header("location", format!("{to}{path}"))
                        .body(Body::empty())
                        .expect("response"),
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
