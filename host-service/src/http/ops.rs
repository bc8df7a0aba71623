//! Health, the OpenAPI document, and Prometheus metrics.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use taos_proto::error::ErrorBody;
use taos_proto::llm::LlmState;
use taos_proto::ops::Health;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Json, MaybeAuth, OwnerOrAdmin};
use super::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi))
        .routes(routes!(metrics))
}

/// Liveness: the status for anyone, plus the version and every subsystem with credentials.
#[utoipa::path(get, path = "/api/health", tag = "ops", security((), ("session_cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "The host is up. `version` and `subsystems` only for an authenticated caller", body = Health)))]
pub async fn health(
    State(state): State<AppState>,
    MaybeAuth(principal): MaybeAuth,
) -> Json<Health> {
    let (status, subsystems) = health_status(&state);
    let detailed = principal.is_some();
    Json(Health {
        status,
        version: detailed.then(|| env!("CARGO_PKG_VERSION").to_string()),
        subsystems: detailed.then_some(subsystems),
    })
}

/// The agent listener's health: only `{"status"}`; agents need no more.
pub async fn agent_health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: health_status(&state).0,
        version: None,
        subsystems: None,
    })
}

/// `ok` or `degraded`, and the status of each subsystem.
fn health_status(state: &AppState) -> (String, BTreeMap<String, String>) {
    let mut subsystems = state.health.read().map(|m| m.clone()).unwrap_or_default();
    let llm = state.llm.supervisor.status();
    let llm_text = match llm.state {
        LlmState::Ready => "ok".to_string(),
        // Not installed, or no provider yet: the host works, agents just can't call models.
        LlmState::Unavailable => format!(
            "disabled: {}",
            llm.last_error.unwrap_or_else(|| "unavailable".into())
        ),
        LlmState::Starting => "starting".to_string(),
        LlmState::Restarting => "restarting".to_string(),
        LlmState::Failed => "failed".to_string(),
    };
    subsystems.insert("llm".to_string(), llm_text);
    let all_ok = subsystems
        .values()
        .all(|v| v == "ok" || v.starts_with("ok: ") || v.starts_with("disabled"));
    let status = if all_ok { "ok" } else { "degraded" }.to_string();
    (status, subsystems)
}

/// This document: OpenAPI 3.1, generated from the code.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn openapi(_auth: Auth) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}

/// Prometheus metrics (text exposition format). Owner or local admin only.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner or local admin", body = ErrorBody)))]
async fn metrics(_auth: OwnerOrAdmin, State(state): State<AppState>) -> impl IntoResponse {
    let subscribers = state.hub.subscriber_count() as f64;
    let body = state.metrics.render(
        state.started_at,
        &[(
            "taos_event_stream_clients",
            "Clients connected to GET /api/events.",
            subscribers,
        )],
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
