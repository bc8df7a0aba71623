//! `/api/agents/*`: agent records, agent tokens, and reading an agent's trace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use taos_proto::agents::{Agent, AgentPatch, AgentWithToken, NewAgent};
use taos_proto::error::ErrorBody;
use taos_proto::trace::{TraceHistogram, TraceKind, TraceList, TraceTotals};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{human_member, Auth, Json, OwnerLike, Path, Query};
use super::AppState;
use crate::agents;
use crate::agents::archive::{self, ArchivedAgent};
use crate::trace::pages::{self, Cursor};
use crate::trace::{self, TraceQuery};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, patch_agent, archive_agent))
        .routes(routes!(rotate_token))
        .routes(routes!(agent_trace))
        .routes(routes!(agent_trace_totals))
        .routes(routes!(agent_trace_histogram))
}

/// Agents, oldest first. Never includes a secret.
#[utoipa::path(get, path = "/api/agents", tag = "agents",
    responses((status = 200, description = "All agents", body = Vec<Agent>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_agents(
    _auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<Vec<Agent>>, ApiError> {
    let mut out = Vec::new();
    for record in agents::list(&state.db).await? {
        out.push(agents::view(&state.agents, &record).await?);
    }
    Ok(Json(out))
}

/// Creates an external agent (it connects through the bridge with the returned token) and its
/// DM channel with the owner. The token is shown only here.
#[utoipa::path(post, path = "/api/agents", tag = "agents", request_body = NewAgent,
    responses((status = 201, description = "The agent and its token", body = AgentWithToken),
        (status = 400, description = "Bad name, emoji, color or model", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 409, description = "No owner account yet", body = ErrorBody)))]
async fn create_agent(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<NewAgent>,
) -> Result<(StatusCode, Json<AgentWithToken>), ApiError> {
    let owner = human_member(&state, &principal).await?;
    let (record, token, llm_key) = agents::create_with_dm(&state.db, &body, &owner).await?;
    tracing::info!(agent = %record.slug, "agent created");
    let agent = agents::view(&state.agents, &record).await?;
    Ok((
        StatusCode::CREATED,
        Json(AgentWithToken {
            agent,
            agent_token: token,
            llm_key: Some(llm_key),
        }),
    ))
}

/// Archives an agent: stops it, snapshots and renames its container, exports its chat, makes
/// its channels read-only, revokes its credentials, and frees its name. Restorable.
#[utoipa::path(delete, path = "/api/agents/{slug}", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Archived", body = ArchivedAgent),
        (status = 204, description = "Its container was gone and it had no history: removed"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "Still deploying", body = ErrorBody),
        (status = 500, description = "The snapshot failed; nothing changed", body = ErrorBody)))]
pub async fn archive_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    Ok(match archive::archive(&state.agents, &slug).await? {
        archive::Archived::Archived(a) => Json(a).into_response(),
        archive::Archived::Removed => StatusCode::NO_CONTENT.into_response(),
    })
}

/// One agent.
#[utoipa::path(get, path = "/api/agents/{slug}", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn get_agent(
    _auth: Auth,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    let record = agents::get_by_slug(&state.db, &slug).await?;
    Ok(Json(agents::view(&state.agents, &record).await?))
}

/// Changes display name, emoji, color, or pauses/resumes the agent.
#[utoipa::path(patch, path = "/api/agents/{slug}", tag = "agents", request_body = AgentPatch,
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent", body = Agent),
        (status = 400, description = "Bad value", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn patch_agent(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Json(patch): Json<AgentPatch>,
) -> Result<Json<Agent>, ApiError> {
    let before = agents::get_by_slug(&state.db, &slug).await?;
    // Models must be ones a provider serves; the gateway follows the change at once.
    let wanted: Vec<&String> = patch
        .model
        .iter()
        .filter(|m| !m.is_empty())
        .chain(patch.fallback_models.iter().flatten())
        .collect();
    if !wanted.is_empty() {
        let available: Vec<String> = state
            .llm
            .models()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|m| m.name)
            .collect();
        if let Some(unknown) = wanted.iter().find(|m| !available.contains(m)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_model",
                format!(
                    "no provider serves {unknown:?}; available: {}",
                    if available.is_empty() {
                        "none (add a provider)".to_string()
                    } else {
                        available.join(", ")
                    }
                ),
            ));
        }
    }
    let record = agents::update(&state.db, &slug, &patch).await?;
    if before.paused != record.paused {
        if !record.paused {
            state.bridge.clear_notices(record.id);
        }
        state.bridge.wake(record.id);
        state
            .hub
            .announce(
                "agent.status",
                serde_json::json!({"slug": record.slug, "paused": record.paused}),
            )
            .await;
    }
    Ok(Json(agents::view(&state.agents, &record).await?))
}

/// Issues a new agent token; the old one stops working at once.
#[utoipa::path(post, path = "/api/agents/{slug}/token/rotate", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The agent and its new token", body = AgentWithToken),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn rotate_token(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<AgentWithToken>, ApiError> {
    let (record, token) = agents::rotate_token(&state.db, &slug).await?;
    // Whoever holds the old token loses the stream they already have open, too.
    state.bridge.kick(record.id);
    tracing::info!(agent = %record.slug, "agent token rotated");
    let agent = agents::view(&state.agents, &record).await?;
    Ok(Json(AgentWithToken {
        agent,
        agent_token: token,
        llm_key: None,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TraceParams {
    kind: Option<String>,
    channel_id: Option<String>,
    trace_id: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive.
    since: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive.
    until: Option<String>,
    /// 1-1000, default 100.
    limit: Option<usize>,
    /// The `next_cursor` of the previous page: continue after it.
    cursor: Option<String>,
}

fn parse_time_param(
    name: &str,
    v: &Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    v.as_deref()
        .map(|t| {
            trace::parse_time(t).ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be epoch seconds or RFC 3339"))
            })
        })
        .transpose()
}

fn parse_kind_param(kind: &Option<String>) -> Result<Option<TraceKind>, ApiError> {
    kind.as_deref()
        .map(|k| {
            TraceKind::parse(k).ok_or_else(|| ApiError::bad_request(format!("unknown kind {k:?}")))
        })
        .transpose()
}

impl TraceParams {
    fn to_query(&self) -> Result<TraceQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        let since = parse_time_param("since", &self.since)?;
        let until = parse_time_param("until", &self.until)?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return Err(ApiError::bad_request("since must not be after until"));
            }
        }
        Ok(TraceQuery {
            kind: parse_kind_param(&self.kind)?,
            channel_id: self.channel_id.clone(),
            trace_id: self.trace_id.clone(),
            since,
            until,
            limit,
        })
    }
}

/// An agent's trace, newest first, merged from its hourly buckets. Page with `cursor`: each
/// full page carries the `next_cursor` to pass for the next, older one.
#[utoipa::path(get, path = "/api/agents/{slug}/trace", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug"), TraceParams),
    responses((status = 200, description = "Trace events, newest first", body = TraceList),
        (status = 400, description = "Bad filter or cursor, or since after until", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn agent_trace(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(params): Query<TraceParams>,
) -> Result<Json<TraceList>, ApiError> {
    Ok(Json(trace_page(&state, &slug, &params).await?))
}

/// One page of an agent's trace (the owner's route, and the agent's own on its listener).
pub(super) async fn trace_page(
    state: &AppState,
    slug: &str,
    params: &TraceParams,
) -> Result<TraceList, ApiError> {
    trace::validate_slug(slug)?;
    let query = params.to_query()?;
    let cursor = params.cursor.as_deref().map(Cursor::parse).transpose()?;
    let agent = agents::get_by_slug(&state.db, slug).await?;
    let (events, next) = pages::page(&state.traces, &agent.slug, &query, cursor.as_ref()).await?;
    Ok(TraceList {
        agent_name: agent.slug,
        schema_version: 1,
        events,
        next_cursor: next.map(|c| c.to_string()),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TotalsParams {
    kind: Option<String>,
    channel_id: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive; default 30 days before `until`.
    since: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive; default now. At most 92 days after `since`.
    until: Option<String>,
}

/// Per-UTC-day totals of an agent's trace over a range: events by kind, tokens and cost,
/// counted on the host over every matching event (not a page of them).
#[utoipa::path(get, path = "/api/agents/{slug}/trace/totals", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug"), TotalsParams),
    responses((status = 200, description = "Totals per day, newest first", body = TraceTotals),
        (status = 400, description = "Bad filter, or a range longer than 92 days", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn agent_trace_totals(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(params): Query<TotalsParams>,
) -> Result<Json<TraceTotals>, ApiError> {
    trace::validate_slug(&slug)?;
    let until = parse_time_param("until", &params.until)?.unwrap_or_else(chrono::Utc::now);
    let since =
        parse_time_param("since", &params.since)?.unwrap_or(until - chrono::TimeDelta::days(30));
    let query = TraceQuery {
        kind: parse_kind_param(&params.kind)?,
        channel_id: params.channel_id.clone(),
        trace_id: None,
        since: Some(since),
        until: Some(until),
        limit: trace::MAX_LIST_LIMIT,
    };
    let agent = agents::get_by_slug(&state.db, &slug).await?;
    let days = pages::totals_per_day(&state.traces, &agent.slug, &query).await?;
    Ok(Json(TraceTotals {
        agent_name: agent.slug,
        since,
        until,
        days,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistogramParams {
    kind: Option<String>,
    /// Only this channel's events (read event by event: the hour index is not per channel).
    channel_id: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive; default 24 hours before `until`.
    since: Option<String>,
    /// Epoch seconds or RFC 3339, inclusive; default now. At most 92 days after `since`.
    until: Option<String>,
}

/// Per-UTC-hour totals of an agent's trace over a range (events by kind, tokens, cost), from the
/// host's hour index: only the hours the range cuts are read event by event.
#[utoipa::path(get, path = "/api/agents/{slug}/trace/histogram", tag = "agents",
    params(("slug" = String, Path, description = "Agent slug"), HistogramParams),
    responses((status = 200, description = "Totals per hour, newest first", body = TraceHistogram),
        (status = 400, description = "Unknown kind, bad time, since after until, or a range longer than 92 days", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn agent_trace_histogram(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Query(params): Query<HistogramParams>,
) -> Result<Json<TraceHistogram>, ApiError> {
    trace::validate_slug(&slug)?;
    let until = parse_time_param("until", &params.until)?.unwrap_or_else(chrono::Utc::now);
    let since =
        parse_time_param("since", &params.since)?.unwrap_or(until - chrono::TimeDelta::hours(24));
    let query = TraceQuery {
        kind: parse_kind_param(&params.kind)?,
        channel_id: params.channel_id.clone(),
        since: Some(since),
        until: Some(until),
        limit: trace::MAX_LIST_LIMIT,
        ..TraceQuery::default()
    };
    let agent = agents::get_by_slug(&state.db, &slug).await?;
    let hours = pages::totals_per_hour(&state.traces, &agent.slug, &query).await?;
    Ok(Json(TraceHistogram {
        agent_name: agent.slug,
        since,
        until,
        hours,
    }))
}
