//! The per-agent LLM gateway in front of LiteLLM.
//!
//! An agent calls `/v1/chat/completions` (or `/v1/embeddings`) with its own LLM key. The
//! gateway admits the call ([`admit`]: the agent is not paused, the body is well-formed and
//! carries no URL LiteLLM or a provider would fetch from the host's network, the model is
//! allowed, and a reservation of the call's worst-case cost fits the agent's budget and its cap
//! on calls in flight), forwards it to LiteLLM with the host's master key, passes the answer
//! back chunk by chunk, and afterwards settles the reservation with the real cost and writes an
//! `llm_call` trace. Agents never see the master key or a provider key.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use taos_proto::trace::TraceKind;

use super::budget::{self, CallUsage, Refusal};
use super::providers;
use super::validate;
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
    /// For a 429 that clears by itself: when to try again.
    pub retry_after_secs: Option<u64>,
}

impl GatewayError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        GatewayError::new(400, "invalid_request_error", message)
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
    /// Calls in flight per agent, shared by every call.
    pub ledger: Arc<budget::Ledger>,
    /// The most calls the agent may have in flight (`[llm] max_concurrent_calls`).
    pub max_concurrent: u32,
    /// `max_tokens` for a chat call that sets none (`[llm] default_max_tokens`), unless the
    /// model's own maximum is lower.
    pub default_max_tokens: u64,
    /// What the host knows of the model, filled in by [`admit`].
    pub model: ModelFacts,
    /// The call's reservation once admitted: settled by [`finish`], or at its full amount if the
    /// call is dropped before that.
    pub reservation: Option<Reservation>,
}

/// What the host knows about a model when it admits a call.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub provider: Option<String>,
    /// USD per million tokens, in and out: the owner's prices if both are set, else LiteLLM's
    /// cost map's, else unknown.
    pub prices: Option<(f64, f64)>,
    /// The most a model writes in one answer, from LiteLLM's cost map.
    pub max_output_tokens: Option<u64>,
}

impl ModelFacts {
    fn cost(&self, tokens_in: u64, tokens_out: u64) -> Option<f64> {
        self.prices.map(|(input, output)| {
            (tokens_in as f64 * input + tokens_out as f64 * output) / 1_000_000.0
        })
    }
}

/// Which endpoint a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Chat,
    Embeddings,
}

/// A call's share of its agent's budget and concurrency, held while the call runs. Dropping it
/// unsettled (the client went away before an answer) settles it at the full reserved amount:
/// the provider may still bill the call, and nothing says what it used.
pub struct Reservation {
    db: Db,
    hub: Arc<EventHub>,
    ledger: Arc<budget::Ledger>,
    agent: uuid::Uuid,
    slug: String,
    model: String,
    id: String,
    pub amount_usd: f64,
    /// Writing the reservation's row, started at admission off the request path.
    recorded: Option<tokio::task::JoinHandle<()>>,
}

impl Reservation {
    /// Records the real usage and gives the room back, as one step for admission.
    async fn settle(mut self, usage: CallUsage) {
        let recorded = self.recorded.take();
        settle_reservation(
            self.db.clone(),
            self.hub.clone(),
            self.ledger.clone(),
            (
                self.agent,
                self.slug.clone(),
                self.id.clone(),
                self.amount_usd,
            ),
            recorded,
            usage,
        )
        .await;
    }
}

async fn settle_reservation(
    db: Db,
    hub: Arc<EventHub>,
    ledger: Arc<budget::Ledger>,
    (agent, slug, id, amount): (uuid::Uuid, String, String, f64),
    recorded: Option<tokio::task::JoinHandle<()>>,
    usage: CallUsage,
) {
    // The row must exist before it is settled, or it would outlive the call.
    if let Some(recorded) = recorded {
        // Only its completion matters; a recording task that failed logged why.
        let _ = recorded.await;
    }
    if let Err(e) = ledger
        .settle(&db, &hub, (agent, &slug), (&id, amount), &usage)
        .await
    {
        tracing::error!(agent = %slug, error = %e, "settling an LLM call failed");
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Settled calls took `recorded` (and everything else is cheap to leave).
        let Some(recorded) = self.recorded.take() else {
            return;
        };
        let usage = CallUsage {
            model: self.model.clone(),
            cost_usd: self.amount_usd,
            failed: true,
            ..Default::default()
        };
        tokio::spawn(settle_reservation(
            self.db.clone(),
            self.hub.clone(),
            self.ledger.clone(),
            (
                self.agent,
                self.slug.clone(),
                self.id.clone(),
                self.amount_usd,
            ),
            Some(recorded),
            usage,
        ));
    }
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

/// What [`admit`] found out about an admitted call.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub model: String,
    pub stream: bool,
}

/// Admits a call before anything is sent upstream, in this order: the agent is not paused
/// (403); the body has only OpenAI fields of the right types (400); its content parts carry no
/// URL but `data:` and public `https` (400); the model is allowed (403); its worst-case cost
/// is known if the agent has a budget (403); and a reservation of that cost fits the agent's
/// budget and concurrency cap (429). A chat call without `max_tokens` gets one here, so the
/// reservation is a real bound. On success `ctx` holds the reservation.
pub async fn admit(
    ctx: &mut CallContext,
    kind: CallKind,
    body: &mut serde_json::Value,
    catalog: &[providers::CatalogModel],
    litellm_facts: impl FnOnce(&str) -> Option<ModelFacts>,
) -> Result<Admitted, GatewayError> {
    if ctx.agent.paused {
        return Err(paused_error(ctx).await);
    }
    if let Some(fields) = body.as_object() {
        if let Some(unknown) = fields
            .keys()
            .find(|k| !ALLOWED_FIELDS.contains(&k.as_str()))
        {
            return Err(GatewayError::invalid(format!(
                "unsupported field {unknown:?}"
            )));
        }
    }
    let shape = validate::check_fields(body).map_err(GatewayError::invalid)?;
    validate::check_urls(body).map_err(GatewayError::invalid)?;
    let model = body
        .get("model")
        .and_then(|m| m.as_str())
        .ok_or_else(|| GatewayError::invalid("the body needs a \"model\""))?
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
    ctx.model = model_facts(catalog, &model, litellm_facts);

    // The output bound: what the caller asked for, else the default cap (never above what the
    // model can write), which is then sent upstream so the provider stops there too.
    let output_tokens = match (kind, shape.max_tokens) {
        (CallKind::Embeddings, _) => 0,
        (CallKind::Chat, Some(max)) => max,
        (CallKind::Chat, None) => {
            let cap = ctx
                .model
                .max_output_tokens
                .map_or(ctx.default_max_tokens, |m| m.min(ctx.default_max_tokens))
                .max(1);
            body["max_tokens"] = serde_json::json!(cap);
            cap
        }
    };
    // Every byte of the body could be a token (byte-level BPE never makes a token of less than
    // a byte), so its length bounds the prompt. Generous for long texts, and held only while
    // the call runs.
    let prompt_tokens = body.to_string().len() as u64;
    let amount = ctx
        .model
        .cost(prompt_tokens, output_tokens.saturating_mul(shape.n));

    let agent = ctx.agent.id;
    let reserved = ctx
        .ledger
        .reserve(&ctx.db, agent, amount, ctx.max_concurrent)
        .await;
    let amount = match reserved {
        Ok(Ok(amount)) => amount,
        Ok(Err(refusal)) => return Err(refusal_error(ctx, &model, refusal)),
        Err(e) => {
            tracing::error!(error = %e, "budget check failed");
            return Err(GatewayError::new(
                500,
                "internal_error",
                "budget check failed",
            ));
        }
    };
    let id = uuid::Uuid::now_v7().to_string();
    let recorded = {
        let (db, id, model) = (ctx.db.clone(), id.clone(), model.clone());
        tokio::spawn(async move {
            if let Err(e) = budget::record_reservation(&db, &id, agent, &model, amount).await {
                tracing::error!(error = %e, "recording an LLM reservation failed");
            }
        })
    };
    ctx.reservation = Some(Reservation {
        db: ctx.db.clone(),
        hub: ctx.hub.clone(),
        ledger: ctx.ledger.clone(),
        agent,
        slug: ctx.agent.slug.clone(),
        model: model.clone(),
        id,
        amount_usd: amount,
        recorded: Some(recorded),
    });
    Ok(Admitted {
        model,
        stream: shape.stream,
    })
}

async fn paused_error(ctx: &CallContext) -> GatewayError {
    // Only the wording depends on it: a failed read says "paused" without the reason.
    let for_disk = crate::agents::quota::paused_for_disk(&ctx.db, ctx.agent.id)
        .await
        .unwrap_or(false);
    let why = if for_disk {
        "it ran out of disk; the owner can resize its disk"
    } else {
        "the owner paused it"
    };
    GatewayError::new(
        403,
        "agent_paused",
        format!(
            "agent {} is paused ({why}); LLM calls are refused until it resumes",
            ctx.agent.slug
        ),
    )
}

fn refusal_error(ctx: &CallContext, model: &str, refusal: Refusal) -> GatewayError {
    match refusal {
        Refusal::Budget {
            spent,
            reserved,
            amount,
            budget,
        } => GatewayError::new(
            429,
            "budget_exceeded",
            format!(
                "agent {} spent ${spent:.4} of its ${:.2} budget for this period, ${reserved:.4} \
                 is reserved by calls in flight, and this call may cost up to ${amount:.4}",
                ctx.agent.slug, budget.limit_usd
            ),
        ),
        Refusal::PriceUnknown => GatewayError::new(
            403,
            "price_unknown",
            format!(
                "model {model:?} has no known price and agent {} has a budget, so the host cannot \
                 bound what the call costs; the owner can set the model's prices (0 for a free \
                 model) on its provider",
                ctx.agent.slug
            ),
        ),
        Refusal::Concurrency { open, cap } => GatewayError {
            retry_after_secs: Some(1),
            ..GatewayError::new(
                429,
                "rate_limit_exceeded",
                format!(
                    "agent {} already has {open} LLM calls in flight, the most it may \
                     ([llm] max_concurrent_calls = {cap}); retry when one has finished",
                    ctx.agent.slug
                ),
            )
        },
    }
}

/// The model's provider and prices (the owner's, from the catalog, else LiteLLM's) and output
/// limit.
fn model_facts(
    catalog: &[providers::CatalogModel],
    model: &str,
    litellm_facts: impl FnOnce(&str) -> Option<ModelFacts>,
) -> ModelFacts {
    let entry = catalog.iter().find(|m| m.name == model);
    let litellm = litellm_facts(model).unwrap_or_default();
    let owner_prices = entry
        .as_ref()
        .and_then(|m| Some((m.input_usd_per_mtok?, m.output_usd_per_mtok?)));
    ModelFacts {
        provider: entry.map(|m| m.provider.clone()),
        prices: owner_prices.or(litellm.prices),
        max_output_tokens: litellm.max_output_tokens,
    }
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
    /// Whether the answer reported its usage (the body's `usage`, or a stream's last chunk).
    pub usage_seen: bool,
    /// LiteLLM's own figure, from the `x-litellm-response-cost` header.
    pub reported_cost: Option<f64>,
    pub response_text: String,
    pub error: Option<String>,
    pub stream: bool,
}

/// What a call costs, by what the provider bills:
/// - LiteLLM's `x-litellm-response-cost`, when it has one;
/// - else the reported usage at the model's prices (0 when unpriced: only agents without a
///   budget can call unpriced models);
/// - an answer that never reported usage although the provider produced one (a stream cut off
///   or abandoned before its usage chunk) costs the whole reservation, the most it could;
/// - a call refused or failed before an answer (an error status, LiteLLM unreachable) costs
///   nothing.
fn settled_cost(ctx: &CallContext, outcome: &Outcome) -> f64 {
    let failed = !(200..300).contains(&outcome.status);
    if let Some(cost) = outcome.reported_cost.filter(|c| c.is_finite() && *c > 0.0) {
        return cost;
    }
    if outcome.usage_seen {
        let cost = ctx.model.cost(
            outcome.tokens_in.max(0) as u64,
            outcome.tokens_out.max(0) as u64,
        );
        return cost.unwrap_or(0.0);
    }
    // No usage. An answer (or a stream that started) costs the whole reservation; a call that
    // failed before any answer costs nothing.
    if failed && !outcome.stream {
        return 0.0;
    }
    ctx.reservation.as_ref().map_or(0.0, |r| r.amount_usd)
}

/// Settles the reservation with the call's real cost and writes the `llm_call` trace. Runs
/// after the response is done.
pub async fn finish(
    mut ctx: CallContext,
    request: &serde_json::Value,
    outcome: Outcome,
    started: Instant,
) {
    let failed = !(200..300).contains(&outcome.status);
    let mut outcome = outcome;
    let cost = settled_cost(&ctx, &outcome);
    if outcome.stream && !outcome.usage_seen && !outcome.response_text.is_empty() {
        // The stream ended (or the client left) before the usage chunk: estimate the tokens
        // from the text (about 4 characters a token) so the record shows something.
        let prompt_chars = request
            .get("messages")
            .map(|m| m.to_string().len())
            .unwrap_or(0);
        outcome.tokens_in = (prompt_chars / 4) as i64;
        outcome.tokens_out = (outcome.response_text.len() / 4).max(1) as i64;
    }
    let usage = CallUsage {
        model: outcome.model.clone(),
        tokens_in: outcome.tokens_in,
        tokens_out: outcome.tokens_out,
        cost_usd: cost,
        failed,
    };
    if let Some(reservation) = ctx.reservation.take() {
        reservation.settle(usage).await;
    }
    let provider = ctx.model.provider.clone();
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
    outcome.usage_seen = usage.is_object();
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
                self.outcome.usage_seen = true;
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
        tokio::spawn(async move { finish(ctx, &request, outcome, started).await });
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
        assert!(w.outcome.usage_seen);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
