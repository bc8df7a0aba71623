//! `/api/notifications/*` and the `GET /api/events` stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use taos_proto::error::ErrorBody;
use taos_proto::events::{
    HostEvent, Notification, PostNotification, ReadAllResponse, EVENT_RESYNC, EVENT_UNAUTHORIZED,
};
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Auth, Json, OwnerLike, Path, Query};
use super::live::LiveAuth;
use super::AppState;
use crate::auth::live::Ended;
use crate::auth::{users, Principal};
use crate::notify::{self, Audience, Published, Viewer};

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
const BACKLOG_PAGE: i64 = 500;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(mark_read))
        .routes(routes!(mark_all_read))
        .routes(routes!(events))
}

/// The owner, their devices and the local admin see every notification and event; another
/// user only those addressed to them.
pub fn viewer(principal: &Principal) -> Viewer {
    match principal {
        Principal::User {
            user_id,
            is_owner: false,
            ..
        } => Viewer::User(*user_id),
        _ => Viewer::Owner,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only unread notifications.
    unread_only: Option<bool>,
    /// 1-500, default 50.
    limit: Option<i64>,
}

/// Notifications, newest first: every one for the owner, their own for other users.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(ListParams),
    responses(
        (status = 200, description = "Notifications, newest first", body = Vec<Notification>),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    let items = notify::list(
        &state.db,
        viewer(&principal),
        params.unread_only.unwrap_or(false),
        params.limit.unwrap_or(50),
    )
    .await?;
    Ok(Json(items))
}

/// Raises a notification, for the owner or (with `user`) for another user. For scripts on the
/// host and for tests; subsystems raise their own. Owner side only. `data` is at most 4 KiB;
/// each recipient keeps their newest 1000 notifications.
#[utoipa::path(post, path = "/api/notifications", tag = "notifications",
    request_body = PostNotification,
    responses(
        (status = 201, description = "Created; also sent on /api/events", body = Notification),
        (status = 400, description = "Bad input, data over 4 KiB, or no such user", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn create(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<PostNotification>,
) -> Result<(StatusCode, Json<Notification>), ApiError> {
    let (new, username) = body.split();
    let audience = match username.as_deref() {
        None => Audience::Owner,
        Some(name) => match users::by_username(&state.db, name).await? {
            Some(user) if user.is_owner => Audience::Owner,
            Some(user) => Audience::User(user.id),
            None => return Err(ApiError::bad_request(format!("no user {name}"))),
        },
    };
    let username = match audience {
        Audience::Owner => None,
        Audience::User(_) => username,
    };
    Ok((
        StatusCode::CREATED,
        Json(state.hub.notify_to(new, audience, username).await?),
    ))
}

/// Marks one notification read (another user's is 404 to a user who isn't the owner).
#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications",
    params(("id" = i64, Path, description = "Notification id")),
    responses(
        (status = 200, description = "The notification, now read", body = Notification),
        (status = 400, description = "Not a notification id", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such notification", body = ErrorBody)))]
async fn mark_read(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Notification>, ApiError> {
    Ok(Json(state.hub.mark_read(id, viewer(&principal)).await?))
}

/// Marks every notification the caller sees read.
#[utoipa::path(post, path = "/api/notifications/read-all", tag = "notifications",
    responses(
        (status = 200, description = "How many changed", body = ReadAllResponse),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn mark_all_read(
    Auth(principal): Auth,
    State(state): State<AppState>,
) -> Result<Json<ReadAllResponse>, ApiError> {
    Ok(Json(ReadAllResponse {
        updated: state.hub.mark_all_read(viewer(&principal)).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// Resume after this event id (same as the `Last-Event-ID` header, which wins).
    last_event_id: Option<i64>,
}

/// Server-sent events: host events (`notification.created`, `notification.read`, …) with
/// `id:`. The owner side gets every event; another user only events addressed to them (their
/// own notifications). Reconnect with `Last-Event-ID` to get exactly what was missed; if that is older than
/// what the host keeps, the first event is `resync`. A keep-alive comment comes every 15 s.
/// When the credential that opened the stream is revoked or expires, the last event is
/// `unauthorized` (`{"reason": "revoked" | "expired"}`) and the stream ends: authenticate again.
#[utoipa::path(get, path = "/api/events", tag = "notifications", params(EventParams),
    responses(
        (status = 200, description = "An SSE stream; each data line is a HostEvent", content_type = "text/event-stream", body = HostEvent),
        (status = 400, description = "Bad Last-Event-ID", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn events(
    LiveAuth { principal, guard }: LiveAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let header_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))?,
        ),
        None => None,
    };
    let resume_after = header_id.or(params.last_event_id);
    // Subscribe before reading the backlog, so nothing published in between is lost; the
    // pump skips live events the backlog already covered.
    let live = state.hub.subscribe();
    let (oldest, newest) = state.hub.id_range().await?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let start = match resume_after {
        Some(after) => {
            let missed_is_gone = match oldest {
                Some(oldest) => after + 1 < oldest,
                None => after < newest,
            };
            if missed_is_gone {
                // The channel is new and empty, so this first event always fits.
                let _ = tx.try_send(Event::default().event(EVENT_RESYNC).data("{}"));
                newest
            } else {
                after
            }
        }
        None => newest,
    };
    tokio::spawn(pump_events(
        state.clone(),
        live,
        tx,
        start,
        viewer(&principal),
    ));
    // The guard rides in the response stream itself, so an ended credential cuts the stream
    // before anything still queued for it goes out; the pump stops when the stream is gone.
    let stream = futures_util::stream::unfold(Some((rx, guard)), |open| async move {
        let (mut rx, mut guard) = open?;
        tokio::select! {
            biased;
            ended = guard.ended() => Some((Ok(unauthorized_event(ended)), None)),
            event = rx.recv() => event.map(|event| (Ok(event), Some((rx, guard)))),
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn to_sse(event: &HostEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.kind.clone())
        .json_data(event)
        .unwrap_or_else(|_| Event::default().comment("unencodable event"))
}

/// A transient event: its kind and data, no id (it isn't stored, so there is nothing to
/// resume from), and not a `HostEvent` body, so clients that track ids never take it for one.
fn to_sse_transient(event: &HostEvent) -> Event {
    Event::default()
        .event(event.kind.clone())
        .json_data(&event.data)
        .unwrap_or_else(|_| Event::default().comment("unencodable event"))
}

fn unauthorized_event(ended: Ended) -> Event {
    Event::default()
        .event(EVENT_UNAUTHORIZED)
        .data(serde_json::json!({"reason": ended.as_str()}).to_string())
}

/// Sends the backlog after `cursor`, then live events, until the client goes or the host stops.
async fn pump_events(
    state: AppState,
    mut live: broadcast::Receiver<Published>,
    tx: mpsc::Sender<Event>,
    mut cursor: i64,
    viewer: Viewer,
) {
    let mut shutdown = state.shutdown.clone();
    let mut need_backlog = true;
    loop {
        if need_backlog {
            loop {
                let page = match state.hub.events_after(cursor, BACKLOG_PAGE, viewer).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the event backlog failed");
                        return;
                    }
                };
                let full = page.len() as i64 == BACKLOG_PAGE;
                for event in page {
                    cursor = event.id;
                    if tx.send(to_sse(&event)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            need_backlog = false;
        }
        tokio::select! {
            received = live.recv() => match received {
                Ok(Published { audience, .. }) if !viewer.sees(audience) => {}
                Ok(Published { event, transient: true, .. }) => {
                    if tx.send(to_sse_transient(&event)).await.is_err() {
                        return;
                    }
                }
                Ok(Published { event, .. }) if event.id <= cursor => {}
                Ok(Published { event, .. }) => {
                    cursor = event.id;
                    if tx.send(to_sse(&event)).await.is_err() {
                        return;
                    }
                }
                // Fell behind the live channel: the table still has everything.
                Err(broadcast::error::RecvError::Lagged(_)) => need_backlog = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}
