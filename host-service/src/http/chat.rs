//! `/api/chat/*`: channels, members and messages over HTTP. The WebSocket is in `ws`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use taos_proto::chat::{
    Channel, ChannelPatch, MemberChange, Message, MessageEdit, NewChannel, NewMessage,
};
use taos_proto::error::ErrorBody;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{human_member, Auth, Json, Path, Query};
use super::AppState;
use crate::auth::Principal;
use crate::chat::Viewer;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(get_channel, patch_channel, delete_channel))
        .routes(routes!(change_member))
        .routes(routes!(post_message))
        .routes(routes!(list_messages))
        .routes(routes!(edit_message, delete_message))
        .routes(routes!(cancel_answer))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ChannelFilter {
    archived: Option<bool>,
    /// An agent slug or `user:<username>`.
    member: Option<String>,
}

/// Channels, oldest first.
#[utoipa::path(get, path = "/api/chat/channels", tag = "chat", params(ChannelFilter),
    responses((status = 200, description = "Channels", body = Vec<Channel>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_channels(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Query(f): Query<ChannelFilter>,
) -> Result<Json<Vec<Channel>>, ApiError> {
    let mut channels = state
        .chat
        .list_channels(f.archived, f.member.as_deref())
        .await?;
    let me = chat_identity(&state, &principal).await?;
    channels.retain(|c| Viewer::of(me.as_deref()).sees(c));
    Ok(Json(channels))
}

/// Who the principal is to chat: `None` for the owner side (which may see and change every
/// channel), else the person's member id.
pub(super) async fn chat_identity(
    state: &AppState,
    principal: &Principal,
) -> Result<Option<String>, ApiError> {
    if principal.acts_as_owner() {
        Ok(None)
    } else {
        Ok(Some(human_member(state, principal).await?))
    }
}

/// The channel, if this principal may see it (the WebSocket asks too).
pub(super) async fn visible_channel(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Channel, ApiError> {
    let me = chat_identity(state, principal).await?;
    Ok(state
        .chat
        .visible_channel(Viewer::of(me.as_deref()), id)
        .await?)
}

/// The channel, if this principal may change it.
async fn manageable_channel(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Channel, ApiError> {
    let me = chat_identity(state, principal).await?;
    Ok(state
        .chat
        .manageable_channel(Viewer::of(me.as_deref()), id)
        .await?)
}

/// Creates a channel; the caller is its first member and may manage it. Only the owner may
/// include agents.
#[utoipa::path(post, path = "/api/chat/channels", tag = "chat", request_body = NewChannel,
    responses((status = 201, description = "The channel", body = Channel),
        (status = 400, description = "Bad name, settings or unknown member", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn create_channel(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Json(body): Json<NewChannel>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    if body.kind == taos_proto::chat::ChannelType::Dm {
        return Err(ApiError::bad_request(
            "DM channels are made with their agent",
        ));
    }
    let me = chat_identity(&state, &principal).await?;
    for member in &body.members {
        Viewer::of(me.as_deref()).may_add(member)?;
    }
    let creator = human_member(&state, &principal).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.chat.create_channel(&body, &creator).await?),
    ))
}

/// One channel.
#[utoipa::path(get, path = "/api/chat/channels/{id}", tag = "chat",
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "The channel", body = Channel),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn get_channel(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Channel>, ApiError> {
    Ok(Json(visible_channel(&state, &principal, &id).await?))
}

/// Renames, archives, or changes settings (`response_mode` quiet|lively, `max_hops` 1-10,
/// `cooldown_seconds` 0-60). The owner or the channel's creator.
#[utoipa::path(patch, path = "/api/chat/channels/{id}", tag = "chat", request_body = ChannelPatch,
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "The channel", body = Channel),
        (status = 400, description = "Bad value", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Neither the owner nor the channel's creator", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn patch_channel(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(patch): Json<ChannelPatch>,
) -> Result<Json<Channel>, ApiError> {
    manageable_channel(&state, &principal, &id).await?;
    Ok(Json(state.chat.update_channel(&id, &patch).await?))
}

/// Deletes the channel and every message in it. The owner or the channel's creator.
#[utoipa::path(delete, path = "/api/chat/channels/{id}", tag = "chat",
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 204, description = "Deleted with its messages"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Neither the owner nor the channel's creator", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn delete_channel(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    manageable_channel(&state, &principal, &id).await?;
    state.chat.delete_channel(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds or removes a member (an agent slug or `user:<username>`). The owner may change any
/// channel; a channel's creator may add and remove people and remove agents; any member may
/// leave. Only the owner adds agents.
#[utoipa::path(post, path = "/api/chat/channels/{id}/members", tag = "chat", request_body = MemberChange,
    params(("id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "The channel", body = Channel),
        (status = 400, description = "Unknown agent or user, or a DM", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not allowed to make this change", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn change_member(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(change): Json<MemberChange>,
) -> Result<Json<Channel>, ApiError> {
    let me = chat_identity(&state, &principal).await?;
    state
        .chat
        .check_member_change(
            Viewer::of(me.as_deref()),
            &id,
            change.action,
            &change.member,
        )
        .await?;
    Ok(Json(
        state
            .chat
            .change_member(&id, change.action, &change.member)
            .await?,
    ))
}

/// Posts a message as the caller and routes it to the agents that should get it. Re-sending
/// the same `client_id` returns the existing message with 200 instead of a duplicate.
#[utoipa::path(post, path = "/api/chat/messages", tag = "chat", request_body = NewMessage,
    responses((status = 201, description = "Posted", body = Message),
        (status = 200, description = "Already posted with this client_id", body = Message),
        (status = 400, description = "Empty or too long content, bad client_id", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not a member of the channel", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "Channel archived", body = ErrorBody)))]
async fn post_message(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Json(body): Json<NewMessage>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let author = human_member(&state, &principal).await?;
    let (message, created) = state
        .bridge
        .post_as_user(&state.chat, &author, &body)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(message)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MessageParams {
    /// Every message changed after this seq, in seq order, deletes as tombstones.
    after_seq: Option<i64>,
    /// History: messages created before this seq.
    before_seq: Option<i64>,
    /// 1-500, default 100.
    limit: Option<i64>,
}

/// A channel's messages: catch-up with `after_seq`, or history pages with `before_seq`.
#[utoipa::path(get, path = "/api/chat/channels/{id}/messages", tag = "chat",
    params(("id" = String, Path, description = "Channel id"), MessageParams),
    responses((status = 200, description = "Messages in seq order", body = Vec<Message>),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody)))]
async fn list_messages(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<MessageParams>,
) -> Result<Json<Vec<Message>>, ApiError> {
    visible_channel(&state, &principal, &id).await?;
    Ok(Json(
        state
            .chat
            .messages(&id, p.after_seq, p.before_seq, p.limit.unwrap_or(100))
            .await?,
    ))
}

/// Edits a message (its author only).
#[utoipa::path(patch, path = "/api/chat/messages/{id}", tag = "chat", request_body = MessageEdit,
    params(("id" = String, Path, description = "Message id")),
    responses((status = 200, description = "The edited message", body = Message),
        (status = 400, description = "Empty content", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the author", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody)))]
async fn edit_message(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<MessageEdit>,
) -> Result<Json<Message>, ApiError> {
    let editor = human_member(&state, &principal).await?;
    Ok(Json(state.chat.edit(&id, &editor, &body.content).await?))
}

/// Deletes a message (its author, or the owner). It stays as a tombstone for catch-up.
#[utoipa::path(delete, path = "/api/chat/messages/{id}", tag = "chat",
    params(("id" = String, Path, description = "Message id")),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the author or the owner", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody)))]
async fn delete_message(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = human_member(&state, &principal).await?;
    state
        .chat
        .delete(&id, &actor, principal.acts_as_owner())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops an agent's answer in progress (a streaming agent message), for anyone who can see its
/// channel. The stop is stored, then the agent is told on its bridge stream (at once, or when
/// its stream comes back if it is away); it drops the work, ends its tools, and settles the
/// message as failed with `failure.code: cancelled`.
#[utoipa::path(post, path = "/api/chat/messages/{id}/cancel", tag = "chat",
    params(("id" = String, Path, description = "The agent's streaming message")),
    responses((status = 202, description = "Stored, and sent to the agent (now or when it reconnects)"),
        (status = 400, description = "Not an agent's answer", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such message", body = ErrorBody),
        (status = 409, description = "The answer is not in progress", body = ErrorBody)))]
async fn cancel_answer(
    Auth(principal): Auth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let message = state.chat.message(&id).await?;
    visible_channel(&state, &principal, &message.channel_id).await?;
    let by = human_member(&state, &principal).await?;
    state.bridge.cancel(&message, &by).await?;
    // A tool call of that answer waiting for approval waits for nothing now.
    if let Some(trace_id) = message.metadata["trace_id"].as_str() {
        let agent = crate::agents::get_by_slug(&state.db, &message.author_id).await?;
        state
            .approvals
            .cancel_for_trace(agent.id, trace_id, &by)
            .await?;
    }
    Ok(StatusCode::ACCEPTED)
}
