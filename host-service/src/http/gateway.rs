//! The agent listener's LLM gateway (`/v1/…`, OpenAI-compatible, by the agent's LLM key) and
//! the openclaw bootstrap document.
//!
//! A call lives only as long as the key it was made with: each call is registered under its
//! key (`auth::live`), and rotating the key or archiving the agent cuts it — a streamed answer
//! breaks off mid-stream, a call still waiting for LiteLLM gets 401.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::extract::{authorization_bearer, AgentAuth, Query};
use super::AppState;
use crate::agents::{self, AgentRecord};
use crate::auth::hash_token;
use crate::auth::live::{Credential, Ended, LiveGuard};
use crate::llm::gateway::{self, CallContext, CallKind, GatewayError, Outcome};
use taos_proto::llm::LlmState;

/// How long a call waits for LiteLLM while it starts or restarts (it takes tens of seconds;
/// more on a small board). The sidecar waits up to five minutes for a model's first byte.
const LLM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

/// An agent by its LLM key (`taos_llm_…`), and the count of LLM key endings taken before the
/// key was read (see `Live::open_llm_key`).
pub struct LlmAuth(pub AgentRecord, u64);

impl FromRequestParts<AppState> for LlmAuth {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized =
            || GatewayError::new(401, "invalid_api_key", "missing or invalid API key");
        let key = authorization_bearer(&parts.headers).ok_or_else(unauthorized)?;
        let revocations = state.live.llm_revocations();
        match agents::authenticate_llm(&state.db, key).await {
            Ok(Some(agent)) => Ok(LlmAuth(agent, revocations)),
            Ok(None) => Err(unauthorized()),
            Err(e) => {
                tracing::error!(error = %e, "LLM key lookup failed");
                Err(GatewayError::new(500, "internal_error", "internal error"))
            }
        }
    }
}

fn context(state: &AppState, agent: AgentRecord, headers: &HeaderMap) -> CallContext {
    let trace_id = headers
        .get("x-taos-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(String::from);
    CallContext {
        db: state.db.clone(),
        hub: state.hub.clone(),
        traces: state.traces.clone(),
        agent,
        trace_id,
        trace_content_bytes: state.llm.trace_content_bytes,
        ledger: state.llm.ledger.clone(),
        max_concurrent: state.config.llm.max_concurrent_calls,
        default_max_tokens: state.config.llm.default_max_tokens,
        model: Default::default(),
        reservation: None,
    }
}

/// `POST /v1/chat/completions` (also `/chat/completions`).
pub async fn chat_completions(
    LlmAuth(agent, revocations): LlmAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(state, (agent, revocations), headers, body, CallKind::Chat).await
}

/// `POST /v1/embeddings` (also `/embeddings`).
pub async fn embeddings(
    LlmAuth(agent, revocations): LlmAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    forward(
        state,
        (agent, revocations),
        headers,
        body,
        CallKind::Embeddings,
    )
    .await
}

fn key_ended(ended: Ended) -> GatewayError {
    GatewayError::new(
        401,
        "invalid_api_key",
        format!("the API key was {} during the call", ended.as_str()),
    )
}

/// Registers the call under the key it was made with (checked again after registering if a key
/// ended since it was read, so a rotation that raced the authentication is not missed).
async fn register_call(
    state: &AppState,
    (agent, revocations): (&AgentRecord, u64),
    headers: &HeaderMap,
) -> Result<LiveGuard, GatewayError> {
    let key = authorization_bearer(headers).unwrap_or_default();
    let credential = Credential::LlmKey {
        agent_id: agent.id,
        key_hash: hash_token(key),
    };
    match state
        .live
        .open_llm_key(&state.db, &state.session_policy(), credential, revocations)
        .await
    {
        Ok(Some(guard)) => Ok(guard),
        Ok(None) => Err(key_ended(Ended::Revoked)),
        Err(e) => {
            tracing::error!(error = %e, "LLM key re-check failed");
            Err(GatewayError::new(500, "internal_error", "internal error"))
        }
    }
}

/// Passes `body` through until the call's key ends; then the stream fails, so the client sees
/// a broken answer (not a complete one) and the upstream call is dropped.
fn cut_when_key_ends(
    body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    guard: LiveGuard,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some((Box::pin(body), guard)), |open| async move {
        let (mut body, mut guard) = open?;
        tokio::select! {
            biased;
            ended = guard.ended() => {
                tracing::info!(reason = ended.as_str(), "LLM key ended; cutting a streamed call");
                let cut = std::io::Error::other(format!("the API key was {}", ended.as_str()));
                Some((Err(cut), None))
            }
            chunk = body.next() => chunk.map(|chunk| (chunk, Some((body, guard)))),
        }
    })
}

async fn forward(
    state: AppState,
    (agent, revocations): (AgentRecord, u64),
    headers: HeaderMap,
    body: Bytes,
    kind: CallKind,
) -> Response {
    let mut guard = match register_call(&state, (&agent, revocations), &headers).await {
        Ok(guard) => guard,
        Err(e) => return e.into_response(),
    };
    let path = match kind {
        CallKind::Chat => "/v1/chat/completions",
        CallKind::Embeddings => "/v1/embeddings",
    };
    let started = Instant::now();
    let Ok(mut request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return GatewayError::new(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
        )
        .into_response();
    };
    if !request.is_object() {
        return GatewayError::new(
            400,
            "invalid_request_error",
            "the body must be a JSON object",
        )
        .into_response();
    }
    let mut ctx = context(&state, agent, &headers);
    // An update's bridge check ends here: the round trip is the bridge's, not the model's.
    if let Some(trace_id) = &ctx.trace_id {
        if state.bridge.is_check_trace(ctx.agent.id, trace_id) {
            return GatewayError::new(
                409,
                "bridge_check",
                "this is taos's bridge check after an update: no model is called for it",
            )
            .into_response();
        }
    }
    let supervisor = &state.llm.supervisor;
    // Without the catalog a model has no owner's prices (an agent with a budget is then refused
    // a model LiteLLM can't price either), as when it is not in the catalog.
    let catalog = state.llm.catalog().await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the provider catalog failed");
        Default::default()
    });
    let admitted = match gateway::admit(&mut ctx, kind, &mut request, &catalog, |m| {
        supervisor.model_facts(m)
    })
    .await
    {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let (model, stream) = (admitted.model, admitted.stream);
    if stream {
        // Ask for usage in the last chunk, so streamed calls are accounted too.
        request["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut outcome = Outcome {
        model,
        ..Default::default()
    };
    // LiteLLM's listener belongs to the host for its whole life, so while LiteLLM is down a
    // connection would wait in the backlog: answer at once instead. While it starts (after
    // the host or an update of it started) or restarts, the call waits for it, a bounded
    // time: that is seconds to a minute, and the agent's turn would otherwise fail.
    let send = async {
        let ready = match supervisor.state() {
            LlmState::Ready => true,
            LlmState::Starting | LlmState::Restarting => {
                supervisor.wait_while_starting(LLM_START_WAIT).await == LlmState::Ready
            }
            LlmState::Unavailable | LlmState::Failed => false,
        };
        if ready {
            state
                .llm
                .client
                .post(format!("{}{path}", supervisor.base_url()))
                .bearer_auth(supervisor.master_key())
                .json(&request)
                .send()
                .await
                .map_err(|e| e.to_string())
        } else {
            Err("not ready".to_string())
        }
    };
    let upstream = tokio::select! {
        biased;
        ended = guard.ended() => Err(Some(ended)),
        upstream = send => upstream.map_err(|e| {
            tracing::warn!(error = %e, state = ?supervisor.state(), "LiteLLM unreachable");
            None
        }),
    };
    let response = match upstream {
        Ok(response) => response,
        Err(ended) => {
            let err = match ended {
                Some(ended) => key_ended(ended),
                None => GatewayError::new(
                    503,
                    "llm_unavailable",
                    format!(
                        "the LLM service is not available right now ({:?}); see /api/llm/status",
                        supervisor.state()
                    ),
                ),
            };
            outcome.status = err.status;
            outcome.error = Some(err.message.clone());
            tokio::spawn(async move { gateway::finish(ctx, &request, outcome, started).await });
            return err.into_response();
        }
    };
    outcome.status = response.status().as_u16();
    outcome.reported_cost = response
        .headers()
        .get("x-litellm-response-cost")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| header::HeaderValue::from_static("application/json"));
    if stream && status.is_success() {
        let body = gateway::passthrough(response.bytes_stream(), ctx, request, outcome, started);
        let body = cut_when_key_ends(body, guard);
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let read = tokio::select! {
        biased;
        ended = guard.ended() => Err(Some(ended)),
        read = response.bytes() => read.map_err(|_| None),
    };
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(ended) => {
            let err = match ended {
                Some(ended) => key_ended(ended),
                None => GatewayError::new(
                    502,
                    "upstream_error",
                    "the LLM service broke off its answer",
                ),
            };
            outcome.status = err.status;
            outcome.error = Some(err.message.clone());
            tokio::spawn(async move { gateway::finish(ctx, &request, outcome, started).await });
            return err.into_response();
        }
    };
    gateway::read_completion(&bytes, &mut outcome);
    tokio::spawn(async move { gateway::finish(ctx, &request, outcome, started).await });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /v1/models`: only the models this agent may use.
pub async fn models(LlmAuth(agent, _): LlmAuth) -> axum::Json<serde_json::Value> {
    let data: Vec<serde_json::Value> = gateway::allowed_models(&agent)
        .into_iter()
        .map(
            |id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "taos"}),
        )
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data}))
}

#[derive(Debug, Deserialize)]
pub struct BootstrapParams {
    agent: Option<String>,
}

/// `GET /api/openclaw/bootstrap?agent=<slug>`: the TinyAgentOS bootstrap document, with the
/// agent's own token (never an admin one) as `channel.auth_bearer`.
pub async fn bootstrap(
    auth: AgentAuth,
    State(_state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<BootstrapParams>,
) -> Result<axum::Json<serde_json::Value>, super::error::ApiError> {
    let slug = params
        .agent
        .filter(|a| !a.is_empty())
        .ok_or_else(|| super::error::ApiError::bad_request("agent query parameter required"))?;
    auth.require_self(&slug)?;
    let agent = auth.0;
    // The address the agent used to reach us is the one its framework should use too.
    let base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| "http://127.0.0.1:6970".to_string());
    let token = authorization_bearer(&headers)
        .unwrap_or_default()
        .to_string();
    let primary = agent.model.clone().unwrap_or_default();
    let models: Vec<serde_json::Value> = gateway::allowed_models(&agent)
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|m| serde_json::json!({"id": m, "name": m, "contextWindow": 128000, "maxTokens": 16384, "input": ["text"], "reasoning": false}))
        .collect();
    Ok(axum::Json(serde_json::json!({
        "schema_version": 1,
        "agent_name": agent.slug,
        "session_id": agent.slug,
        "models": {"providers": {"litellm": {
            "api": "openai-completions",
            "baseUrl": "http://127.0.0.1:4000",
            "apiKey": "${LITELLM_API_KEY}",
            "models": models,
        }}},
        "agents": {"defaults": {"model": {"primary": if primary.is_empty() { String::new() } else { format!("litellm/{primary}") }}}},
        "channel": {
            "provider": "taos",
            "events_url": format!("{base}/api/openclaw/sessions/{}/events", agent.slug),
            "reply_url": format!("{base}/api/openclaw/sessions/{}/reply", agent.slug),
            "auth_bearer": token,
        },
        "memory": null,
        "skills_mcp_url": null,
    })))
}
