//! The per-agent LLM gateway in front of LiteLLM.
//!
//! An agent calls `/v1/chat/completions` (or `/v1/embeddings`) with its own LLM key. The
//! gateway checks the model against the agent's allowed list and its budget, forwards the
//! request to LiteLLM with the host's master key, passes the answer back chunk by chunk, and
//! afterwards records usage, cost and an `llm_call` trace. Agents never see the master key or
//! a provider key.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use taos_proto::trace::TraceKind;

use super::budget::{self, CallUsage};
use super::providers;
use crate::agents::AgentRecord;
use crate::bridge::new_event;
use crate::db::Db;
use crate::notify::EventHub;
use crate::trace::TraceStore;

/// An OpenAI-style error (`{"error": {"message", "type", "code"}}`), what OpenAI clients expect
/// from a `/v1` endpoint.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl GatewayError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "code": self.status.to_string()}})
    }
}

/// The models an agent may use: its model, then its fallbacks.
pub fn allowed_models(agent: &AgentRecord) -> Vec<String> {
    let mut models: Vec<String> = agent.model.iter().cloned().collect();
    for m in &agent.fallback_models {
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    models
}

/// What every call needs from the host.
pub struct CallContext {
    pub db: Db,
    pub hub: Arc<EventHub>,
    pub traces: TraceStore,
    pub agent: AgentRecord,
    /// The chat message this call answers, from `X-Taos-Trace-Id`, so the `llm_call` trace
    /// lands under the same trace id as `message_in` and `message_out`.
    pub trace_id: Option<String>,
    pub trace_content_bytes: usize,
}

/// The OpenAI request fields the gateway forwards. Anything else is refused: LiteLLM honours
/// its own body keys (`fallbacks`, `router_settings_override`, `mock_*`, `api_base`…), which
/// would let an agent reach models, endpoints or keys it was not given.
const ALLOWED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "functions",
    "function_call",
    // embeddings
    "input",
    "encoding_format",
    "dimensions",
];

/// Checks a request body before it is forwarded: a JSON object with only OpenAI fields,
/// naming an allowed model, from an agent within its budget.
pub async fn admit(ctx: &CallContext, body: &serde_json::Value) -> Result<String, GatewayError> {
    if let Some(fields) = body.as_object() {
        if let Some(unknown) = fields
            .keys()
            .find(|k| !ALLOWED_FIELDS.contains(&k.as_str()))
        {
            return Err(GatewayError::new(
                400,
                "invalid_request_error",
                format!("unsupported field {unknown:?}"),
            ));
        }
    }
    let model = body
        .get("model")
        .and_then(|m| m.as_str())
        .ok_or_else(|| {
            GatewayError::new(400, "invalid_request_error", "the body needs a \"model\"")
        })?
        .to_string();
    let allowed = allowed_models(&ctx.agent);
    if !allowed.contains(&model) {
        return Err(GatewayError::new(
            403,
            "model_not_allowed",
            format!(
                "model {model:?} is not allowed for agent {}; allowed: {}",
                ctx.agent.slug,
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        ));
    }
    match budget::exceeded(&ctx.db, ctx.agent.id).await {
        Ok(Some((spent, budget))) => Err(GatewayError::new(
            429,
            "budget_exceeded",
            format!(
                "agent {} spent ${spent:.4} of its ${:.2} budget for this period",
                ctx.agent.slug, budget.limit_usd
            ),
        )),
        Ok(None) => Ok(model),
        Err(e) => {
            tracing::error!(error = %e, "budget check failed");
            Err(GatewayError::new(
                500,
                "internal_error",
                "budget check failed",
            ))
        }
    }
}

/// The catalog entry of a model (its provider and prices), read once per call.
async fn catalog_entry(db: &Db, model: &str) -> Option<providers::CatalogModel> {
    let catalog = providers::list(db).await.ok()?;
    providers::catalog_models(&catalog)
        .into_iter()
        .find(|m| m.name == model)
}

/// Price-based cost when LiteLLM reports none.
fn priced_cost(entry: Option<&providers::CatalogModel>, tokens_in: i64, tokens_out: i64) -> f64 {
    entry
        .map(|m| {
            (tokens_in as f64 * m.input_usd_per_mtok.unwrap_or(0.0)
                + tokens_out as f64 * m.output_usd_per_mtok.unwrap_or(0.0))
                / 1_000_000.0
        })
        .unwrap_or(0.0)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What a finished call leaves behind.
#[derive(Debug, Default)]
pub struct Outcome {
    pub model: String,
    pub status: u16,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// LiteLLM's own figure, from the `x-litellm-response-cost` header.
    pub reported_cost: Option<f64>,
    pub response_text: String,
    pub error: Option<String>,
    pub stream: bool,
}

/// Records usage, budget alerts and the `llm_call` trace. Runs after the response is done.
pub async fn finish(
    ctx: &CallContext,
    request: &serde_json::Value,
    outcome: Outcome,
    started: Instant,
) {
    let failed = !(200..300).contains(&outcome.status);
    let mut outcome = outcome;
    if outcome.stream && !failed && outcome.tokens_in == 0 && outcome.tokens_out == 0 {
        // The stream ended (or the client left) before the usage chunk: estimate from the
        // text (about 4 characters a token) rather than let the call go unaccounted.
        let prompt_chars = request
            .get("messages")
            .map(|m| m.to_string().len())
            .unwrap_or(0);
        outcome.tokens_in = (prompt_chars / 4) as i64;
        outcome.tokens_out = (outcome.response_text.len() / 4).max(1) as i64;
    }
    let entry = catalog_entry(&ctx.db, &outcome.model).await;
    let cost = match outcome.reported_cost {
        Some(cost) if cost.is_finite() && cost > 0.0 => cost,
        _ => priced_cost(entry.as_ref(), outcome.tokens_in, outcome.tokens_out),
    };
    let usage = CallUsage {
        model: outcome.model.clone(),
        tokens_in: outcome.tokens_in,
        tokens_out: outcome.tokens_out,
        cost_usd: cost,
        failed,
    };
    if let Err(e) = budget::record(&ctx.db, &ctx.hub, ctx.agent.id, &ctx.agent.slug, &usage).await {
        tracing::error!(agent = %ctx.agent.slug, error = %e, "recording LLM usage failed");
    }
    let provider = entry.map(|m| m.provider);
    let trace_id = ctx
        .trace_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let mut event = new_event(&ctx.agent.slug, TraceKind::LlmCall, &trace_id, "");
    event.channel_id = None;
    event.model = Some(outcome.model.clone());
    event.backend_name = provider;
    event.duration_ms = Some(started.elapsed().as_millis() as i64);
    event.tokens_in = Some(outcome.tokens_in);
    event.tokens_out = Some(outcome.tokens_out);
    event.cost_usd = Some(cost);
    event.error = outcome.error.clone();
    let max = ctx.trace_content_bytes;
    let messages = request
        .get("messages")
        .or_else(|| request.get("input"))
        .map(|m| truncate(&m.to_string(), max))
        .unwrap_or_default();
    event.payload = serde_json::json!({
        "status": if failed { "failure" } else { "success" },
        "messages": messages,
        "response": truncate(&outcome.response_text, max),
        "metadata": {"stream": outcome.stream, "http_status": outcome.status},
    });
    if let Err(e) = ctx.traces.append(&ctx.agent.slug, vec![event]).await {
        tracing::error!(agent = %ctx.agent.slug, error = %e, "llm_call trace failed");
    }
}

/// Reads usage and text out of a non-streamed answer.
pub fn read_completion(body: &[u8], outcome: &mut Outcome) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let usage = &json["usage"];
    outcome.tokens_in = usage["prompt_tokens"].as_i64().unwrap_or(0);
    outcome.tokens_out = usage["completion_tokens"].as_i64().unwrap_or(0);
    if let Some(text) = json["choices"][0]["message"]["content"].as_str() {
        outcome.response_text = text.to_string();
    }
    if let Some(message) = json["error"]["message"].as_str() {
        outcome.error = Some(message.to_string());
    }
}

/// Watches an SSE stream as it passes: collects the text and the usage in the last chunk.
#[derive(Default)]
struct StreamWatch {
    pending: String,
    outcome: Outcome,
    text_limit: usize,
}

impl StreamWatch {
    fn feed(&mut self, chunk: &[u8]) {
        self.pending.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" || data.is_empty() {
                continue;
            }
            let Ok(json) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(piece) = json["choices"][0]["delta"]["content"].as_str() {
                if self.outcome.response_text.len() < self.text_limit {
                    self.outcome.response_text.push_str(piece);
                }
            }
            if json["usage"].is_object() {
                self.outcome.tokens_in = json["usage"]["prompt_tokens"].as_i64().unwrap_or(0);
                self.outcome.tokens_out = json["usage"]["completion_tokens"].as_i64().unwrap_or(0);
            }
            if let Some(message) = json["error"]["message"].as_str() {
                self.outcome.error = Some(message.to_string());
            }
        }
        // A line longer than this is no SSE line we care about; don't let it grow forever.
        if self.pending.len() > 1024 * 1024 {
            self.pending.clear();
        }
    }
}

/// Runs `finish` when the stream ends or the client goes away, whichever comes first.
struct FinishOnDrop {
    watch: Arc<Mutex<StreamWatch>>,
    ctx: Option<CallContext>,
    request: Option<serde_json::Value>,
    started: Instant,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        let (Some(ctx), Some(request)) = (self.ctx.take(), self.request.take()) else {
            return;
        };
        let outcome = {
            let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut watch.outcome)
        };
        let started = self.started;
        tokio::spawn(async move { finish(&ctx, &request, outcome, started).await });
    }
}

/// Passes an upstream SSE body through unchanged while watching it for usage; the call is
/// recorded when the stream is done or dropped.
pub fn passthrough(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    ctx: CallContext,
    request: serde_json::Value,
    mut outcome: Outcome,
    started: Instant,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    outcome.stream = true;
    let text_limit = ctx.trace_content_bytes;
    let watch = Arc::new(Mutex::new(StreamWatch {
        pending: String::new(),
        outcome,
        text_limit,
    }));
    let guard = FinishOnDrop {
        watch: watch.clone(),
        ctx: Some(ctx),
        request: Some(request),
        started,
    };
    upstream.map(move |chunk| {
        let _keep = &guard;
        match chunk {
            Ok(bytes) => {
                watch.lock().unwrap_or_else(|p| p.into_inner()).feed(&bytes);
                Ok(bytes)
            }
            Err(e) => {
                let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
                w.outcome.error = Some("the upstream stream broke".into());
                w.outcome.status = 502;
                Err(std::io::Error::other(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_watch_finds_text_and_usage_across_chunk_boundaries() {
        let mut w = StreamWatch {
            text_limit: 1000,
            ..Default::default()
        };
        w.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"con");
        w.feed(b"tent\":\"lo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(w.outcome.response_text, "Hello");
        assert_eq!((w.outcome.tokens_in, w.outcome.tokens_out), (7, 2));
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
