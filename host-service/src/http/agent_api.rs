//! The agent listener's API: the bridge stream, replies, and trace ingest. Every route takes
//! only an agent token, valid only for that agent's own resources.
//! Paths are TinyAgentOS's, so existing openclaw integrations work unchanged.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use taos_proto::bridge::{Reply, ReplyAccepted, ReplyKind};
use taos_proto::trace::{NewTraceEvent, TraceAck, TraceBatch};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{AgentAuth, Json, Path, Query};
use super::AppState;
use crate::agents::AgentRecord;

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/openclaw/sessions/{agent}/events`: the agent's deliveries as SSE. `id:` is the
/// delivery seq; reconnect with `Last-Event-ID` to get exactly the ones after it. Without it,
/// every delivery not yet answered is sent. A newer stream for the same agent ends this one.
pub async fn events(
    auth: AgentAuth,
    State(state): State<AppState>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    auth.require_self(&agent)?;
    let record = auth.0;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a delivery seq"))?,
        ),
        None => None,
    };
    let newest = state.bridge.last_delivery_seq(record.id).await?;
    // An id the host never gave (say, after a restore from backup) can't be trusted to skip
    // anything: treat it like no id at all.
    let (backlog, cursor) = match last_event_id {
        Some(id) if id <= newest => (Vec::new(), id),
        _ => (state.bridge.unanswered(record.id, newest).await?, newest),
    };
    let (generation, wake) = state.bridge.subscribe(record.id, &record.slug);
    tracing::info!(agent = %record.slug, cursor, backlog = backlog.len(), "bridge stream connected");
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(pump(
        state.clone(),
        record,
        generation,
        wake,
        tx,
        backlog,
        cursor,
    ));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

async fn pump(
    state: AppState,
    agent: AgentRecord,
    generation: u64,
    mut wake: tokio::sync::watch::Receiver<u64>,
    tx: mpsc::Sender<Event>,
    mut backlog: Vec<crate::bridge::StoredDelivery>,
    mut cursor: i64,
) {
    let mut shutdown = state.shutdown.clone();
    // `cancel` events go out between deliveries, without an id (they are not deliveries).
    let mut cancels = state.bridge.cancel_receiver(agent.id);
    // Then the cancels made while no stream was listening (subscribed first, so none falls
    // between; one sent twice is harmless).
    match state.bridge.pending_cancels(agent.id).await {
        Ok(pending) => {
            for data in pending {
                let event = Event::default()
                    .event(taos_proto::bridge::CANCEL_EVENT)
                    .data(data);
                if tx.send(event).await.is_err() {
                    state.bridge.unsubscribe(agent.id, generation);
                    return;
                }
            }
        }
        Err(e) => {
            tracing::error!(agent = %agent.slug, error = %e, "reading pending cancels failed")
        }
    }
    loop {
        // Consume the wake before checking the generation, so a wake that announces a newer
        // stream is never swallowed by this one.
        wake.borrow_and_update();
        if !state.bridge.is_current(agent.id, generation) {
            break; // a newer stream took over
        }
        // An update's bridge check: without an id, as it is no stored delivery.
        if let Some(check) = state.bridge.check_delivery(agent.id, generation) {
            let event = Event::default()
                .event("user_message")
                .json_data(&check)
                .unwrap_or_else(|_| Event::default().comment("unencodable delivery"));
            if tx.send(event).await.is_err() {
                break;
            }
        }
        let paused = crate::agents::get_by_id(&state.db, agent.id)
            .await
            .map(|a| a.paused)
            .unwrap_or(true);
        if !paused {
            for delivery in std::mem::take(&mut backlog) {
                if !state.bridge.is_current(agent.id, generation)
                    || tx.send(to_event(&delivery)).await.is_err()
                {
                    state.bridge.unsubscribe(agent.id, generation);
                    return;
                }
            }
            loop {
                let batch = match state.bridge.deliveries_after(agent.id, cursor).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::error!(agent = %agent.slug, error = %e, "reading deliveries failed");
                        state.bridge.unsubscribe(agent.id, generation);
                        return;
                    }
                };
                let full = batch.len() as i64 == crate::bridge::PAGE;
                for delivery in batch {
                    if !state.bridge.is_current(agent.id, generation) {
                        return;
                    }
                    if tx.send(to_event(&delivery)).await.is_err() {
                        state.bridge.unsubscribe(agent.id, generation);
                        return;
                    }
                    cursor = delivery.seq;
                }
                if !full {
                    break;
                }
            }
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() { break },
            cancel = cancels.recv() => match cancel {
                Ok(data) => {
                    let event = Event::default().event(taos_proto::bridge::CANCEL_EVENT).data(data);
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tx.closed() => break,
            _ = shutdown.changed() => break,
        }
    }
    state.bridge.unsubscribe(agent.id, generation);
    tracing::info!(agent = %agent.slug, "bridge stream ended");
}

fn to_event(delivery: &crate::bridge::StoredDelivery) -> Event {
    Event::default()
        .id(delivery.seq.to_string())
        .event("user_message")
        .json_data(&delivery.payload)
        .unwrap_or_else(|_| Event::default().comment("unencodable delivery"))
}

/// `POST /api/openclaw/sessions/{agent}/reply` → 202. Each reply (a delta too) takes one token
/// of the agent's reply rate (`[bridge]`); beyond it, 429 with Retry-After and nothing done. A
/// reply that only becomes a trace event (tool call or result, reasoning) has the trace event
/// size limit (413).
pub async fn reply(
    auth: AgentAuth,
    State(state): State<AppState>,
    Path(agent): Path<String>,
    Json(body): Json<Reply>,
) -> Result<(StatusCode, Json<ReplyAccepted>), ApiError> {
    auth.require_self(&agent)?;
    state.reply_limiter.take(auth.0.id, 1)?;
    // The answer to an update's bridge check goes to the check, not the chat.
    if state.bridge.check_reply(auth.0.id, &body) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(ReplyAccepted {
                accepted: true,
                message_id: None,
            }),
        ));
    }
    if matches!(
        body.kind,
        ReplyKind::ToolCall | ReplyKind::ToolResult | ReplyKind::Reasoning
    ) {
        let text = [&body.content, &body.tool, &body.error]
            .iter()
            .map(|t| t.as_deref().map_or(0, str::len))
            .sum::<usize>();
        let json = [&body.args, &body.result]
            .iter()
            .map(|v| v.as_ref().map_or(0, crate::trace::json_bytes))
            .sum::<usize>();
        let max = usize::try_from(state.config.traces.max_event_bytes).unwrap_or(usize::MAX);
        if text + json > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                format!(
                    "this reply is {} bytes; the limit is {max} ([traces] max_event_bytes). \
                     Nothing was stored.",
                    text + json
                ),
            ));
        }
    }
    let accepted = state.bridge.reply(&state.chat, &auth.0, body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// `POST /api/trace`: one event; `agent_name` is forced to the calling agent.
pub async fn trace_one(
    auth: AgentAuth,
    State(state): State<AppState>,
    Json(event): Json<NewTraceEvent>,
) -> Result<Json<TraceAck>, ApiError> {
    Ok(Json(
        super::trace::ingest(&state, Some(&auth.0), vec![event]).await?,
    ))
}

/// `POST /api/trace/batch {events: [...]}`.
pub async fn trace_batch(
    auth: AgentAuth,
    State(state): State<AppState>,
    Json(batch): Json<TraceBatch>,
) -> Result<Json<TraceAck>, ApiError> {
    Ok(Json(
        super::trace::ingest(&state, Some(&auth.0), batch.events).await?,
    ))
}

/// `GET /api/agents/{agent}/trace` on the agent listener: the agent's own trace, with the
/// owner's route's filters and pages (the weekly-summary prompt reads it through the sidecar's
/// `read_trace` tool, so the token never reaches the model). Another agent's → 403. Each read
/// takes a token of the agent's reply rate first (429 beyond it): a read opens hour buckets.
pub(crate) async fn own_trace(
    auth: AgentAuth,
    State(state): State<AppState>,
    Path(agent): Path<String>,
    Query(params): Query<super::agents::TraceParams>,
) -> Result<Json<taos_proto::trace::TraceList>, ApiError> {
    auth.require_self(&agent)?;
    state.reply_limiter.take(auth.0.id, 1)?;
    Ok(Json(
        super::agents::trace_page(&state, &auth.0.slug, &params).await?,
    ))
}

impl From<crate::backup::drill_bridge::DrillBridgeError> for ApiError {
    fn from(e: crate::backup::drill_bridge::DrillBridgeError) -> Self {
        use crate::backup::drill_bridge::DrillBridgeError;
        match e {
            DrillBridgeError::NotFound => ApiError::not_found(e.to_string()),
            DrillBridgeError::Unauthorized => ApiError::unauthorized(),
            DrillBridgeError::BadInput(why) => ApiError::bad_request(why),
        }
    }
}

/// `GET /drill/{session}/api/openclaw/sessions/{agent}/events`: a restore drill's copy of an
/// agent gets the drill's one message, with the drill's own credential (see
/// `backup::drill_bridge`); the stream ends when the drill closes the session.
pub async fn drill_events(
    State(state): State<AppState>,
    Path((session, agent)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (delivery, closed) = state.backups.drill_bridge().delivery(
        &session,
        super::extract::authorization_bearer(&headers),
        &agent,
    )?;
    tracing::info!(agent = %agent, "restore drill's copy connected to its drill session");
    let first = Event::default()
        .id(delivery.delivery_seq.to_string())
        .event("user_message")
        .json_data(&delivery)
        .map_err(ApiError::internal)?;
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold((Some(first), closed), move |(first, mut closed)| {
        let mut shutdown = shutdown.clone();
        async move {
            if let Some(event) = first {
                return Some((Ok(event), (None, closed)));
            }
            // Held open until the drill closes the session (its sender drops) or the host
            // stops; a second delivery never comes.
            tokio::select! {
                _ = async { while closed.changed().await.is_ok() {} } => {}
                _ = shutdown.changed() => {}
            }
            None
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// `POST /drill/{session}/api/openclaw/sessions/{agent}/reply` → 202: the copy's reply to the
/// drill's message (nothing is stored; the drill records the outcome).
pub async fn drill_reply(
    State(state): State<AppState>,
    Path((session, agent)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Reply>,
) -> Result<(StatusCode, Json<ReplyAccepted>), ApiError> {
    state.backups.drill_bridge().reply(
        &session,
        super::extract::authorization_bearer(&headers),
        &agent,
        &body,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplyAccepted {
            accepted: true,
            message_id: None,
        }),
    ))
}
