//! The HTTP surface: state, routers and middleware. Handlers are thin: parse, authorize, call
//! one domain function, map its result.

pub mod agent_api;
pub mod agents;
pub mod approvals;
pub mod archive;
pub mod auth;
pub mod backup;
pub mod chat;
pub mod deploy;
pub mod devices;
pub mod error;
pub mod extract;
pub mod gateway;
pub mod hosts;
pub mod lifecycle;
pub mod live;
pub mod llm;
pub mod notifications;
pub mod ops;
pub mod overview;
pub mod prompts;
pub mod quota;
pub mod recycle;
pub mod settings;
pub mod trace;
pub mod ui;
pub mod ws;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use taos_pin::SpkiPin;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::auth::ratelimit::LoginLimiter;
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::notify::EventHub;
use error::ApiError;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub db: Db,
    pub config: Config,
    pub data_dir: PathBuf,
    pub pin: SpkiPin,
    pub local_token: String,
    /// The owner, read once it exists (see [`crate::auth::users::OwnerCache`]).
    pub owner: crate::auth::users::OwnerCache,
    pub host_name: String,
    /// `host:port` strings put in pairing tokens.
    pub pairing_addresses: Vec<String>,
    pub login_limiter: LoginLimiter,
    /// Open WebSockets, event streams and gateway calls, by the credential that opened them.
    pub live: Arc<crate::auth::live::Live>,
    pub hub: Arc<EventHub>,
    pub llm: Arc<crate::llm::Llm>,
    pub chat: Arc<crate::chat::Chat>,
    pub bridge: Arc<crate::bridge::Bridge>,
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Backup settings and runs.
    pub backups: crate::backup::Backups,
    pub traces: crate::trace::TraceStore,
    /// Trace events per agent per second (`[traces]`), one token per event.
    pub trace_limiter: crate::ratelimit::RateLimiter,
    /// Bridge replies per agent per second (`[bridge]`), one token per reply.
    pub reply_limiter: crate::ratelimit::RateLimiter,
    pub metrics: Metrics,
    /// The agent lifecycle (deploy, archive, quota…): handlers call into it with this.
    pub agents: crate::agents::AgentHost,
    /// Subsystem → status, refreshed in the background so `/api/health` costs no I/O.
    pub health: RwLock<BTreeMap<String, String>>,
    pub started_at: Instant,
    /// Flips to true when the host begins shutting down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl AppInner {
    /// Browser session lifetimes from `[auth]`.
    pub fn session_policy(&self) -> crate::auth::sessions::SessionPolicy {
        crate::auth::sessions::SessionPolicy::from_secs(
            self.config.auth.session_idle_secs,
            self.config.auth.session_lifetime_secs,
        )
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taos host API",
        description = "The taos agent host. Every route needs a session cookie (with X-CSRF-Token \
                       on state-changing requests), a device access token, or the local admin \
                       token from loopback, except those marked with an empty security requirement."
    ),
    modifiers(&SecuritySchemes),
    // The chat WebSocket's frames and a failed message's `metadata.failure`, so clients can
    // generate their types like the REST ones.
    components(schemas(
        taos_proto::chat::ClientEvent,
        taos_proto::chat::ServerEvent,
        taos_proto::chat::TurnFailure
    )),
    security(("session_cookie" = []), ("bearer" = []))
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::sessions::SESSION_COOKIE,
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A device access token (taos_at_…) or, from loopback only, the local \
                         admin token (taos_lt_…)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The public API: every route, with its OpenAPI operation.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::routes())
        .merge(overview::routes())
        .merge(auth::routes())
        .merge(devices::routes())
        .merge(notifications::routes())
        .merge(agents::routes())
        .merge(approvals::routes())
        .merge(chat::routes())
        .merge(ws::routes())
        .merge(trace::routes())
        .merge(llm::routes())
        .merge(deploy::routes())
        .merge(archive::routes())
        .merge(lifecycle::routes())
        .merge(prompts::routes())
        .merge(quota::routes())
        .merge(recycle::routes())
        .merge(settings::routes())
        .merge(backup::routes())
}

/// The generated OpenAPI document, built once.
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = api_routes().split_for_parts();
        doc.to_pretty_json().unwrap_or_default()
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn count_response(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record_response(response.status().as_u16(), started);
    response
}

/// Reads a request's whole body before the handler runs, within `[server] body_timeout_secs`
/// and `max_body_bytes`. The listener's deadlines cover request heads and idle connections,
/// not a request in flight: without this, a client that sends a head and then dribbles or
/// stalls its body holds its connection slot for ever. Every body here is small JSON that
/// handlers buffer anyway, so reading it first costs nothing extra.
async fn read_body_in_time(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody as _;
    use axum::response::IntoResponse;
    if request.body().size_hint().exact() == Some(0) {
        return next.run(request).await;
    }
    let limit = usize::try_from(state.config.server.max_body_bytes).unwrap_or(usize::MAX);
    let secs = state.config.server.body_timeout_secs;
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(Duration::from_secs(secs), read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than the host accepts",
                )
                .into_response()
            } else {
                ApiError::bad_request("the request body could not be read").into_response()
            }
        }
        Err(_) => ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {secs} s ([server] body_timeout_secs)"),
        )
        .into_response(),
    }
}

/// Middleware shared by both listeners: request ids, tracing, body limit and deadline, safe
/// headers.
fn common_layers(router: Router, state: &AppState) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %request_id,
        )
    });
    router
        .layer(DefaultBodyLimit::max(
            usize::try_from(state.config.server.max_body_bytes).unwrap_or(usize::MAX),
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_response,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
}

/// The public listener's app: people, over TLS.
pub fn public_app(state: &AppState) -> Router {
    let (router, _) = api_routes().split_for_parts();
    let router = router
        // The web UI for GETs outside /api; JSON 404 for everything else.
        .fallback(ui::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        // Before anything else answers: only this host's own names (DNS rebinding).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            hosts::check_host,
        ));
    common_layers(router, state)
}

/// The agent listener's app: agents only, by agent token.
pub fn agent_app(state: &AppState) -> Router {
    use axum::routing::{get, post};
    let router = Router::new()
        .route("/api/health", get(ops::agent_health))
        .route(
            "/api/openclaw/sessions/{agent}/events",
            get(agent_api::events),
        )
        .route(
            "/api/openclaw/sessions/{agent}/reply",
            post(agent_api::reply),
        )
        .route(
            "/api/openclaw/sessions/{agent}/approvals",
            post(approvals::agent_request),
        )
        // A restore drill's copy of an agent: its own session, never the live agent's.
        .route(
            "/drill/{session}/api/openclaw/sessions/{agent}/events",
            get(agent_api::drill_events),
        )
        .route(
            "/drill/{session}/api/openclaw/sessions/{agent}/reply",
            post(agent_api::drill_reply),
        )
        .route("/api/trace", post(agent_api::trace_one))
        .route("/api/trace/batch", post(agent_api::trace_batch))
        .route("/api/agents/{agent}/trace", get(agent_api::own_trace))
        .route("/api/openclaw/bootstrap", get(gateway::bootstrap))
        // OpenAI-compatible gateway; also without /v1 for clients whose base URL lacks it.
        .route("/v1/chat/completions", post(gateway::chat_completions))
        .route("/v1/embeddings", post(gateway::embeddings))
        .route("/v1/models", get(gateway::models))
        .route("/chat/completions", post(gateway::chat_completions))
        .route("/embeddings", post(gateway::embeddings))
        .route("/models", get(gateway::models))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    common_layers(router, state)
}

/// Keeps the health map current: checks the database every few seconds.
pub fn spawn_health_checker(state: AppState) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            let db_status = match sqlx::query_scalar::<_, i64>("SELECT 1")
                .fetch_one(&state.db)
                .await
            {
                Ok(_) => "ok".to_string(),
                Err(e) => {
                    tracing::warn!(error = %e, "database health check failed");
                    "unreachable".to_string()
                }
            };
            if let Ok(mut map) = state.health.write() {
                map.insert("database".to_string(), db_status);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the generated document, committed so it can be read without running
    /// the host. Regenerate with `UPDATE_OPENAPI=1 cargo test -p taos-host openapi`.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = format!("{}\n", super::openapi_json());
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale; run UPDATE_OPENAPI=1 cargo test -p taos-host openapi"
        );
    }
}
