//! `/api/admin-prompts` and sending one to an agent.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use taos_proto::chat::{Message, NewMessage};
use taos_proto::error::ErrorBody;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{human_member, Auth, Json, OwnerLike, Path};
use super::AppState;
use crate::prompts::{self, Prompt, PromptInfo};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_prompts))
        .routes(routes!(get_prompt))
        .routes(routes!(send_prompt))
}

/// Admin prompts (without their bodies).
#[utoipa::path(get, path = "/api/admin-prompts", tag = "agents",
    responses((status = 200, description = "Prompts", body = Vec<PromptInfo>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_prompts(_auth: Auth) -> Json<Vec<PromptInfo>> {
    Json(prompts::all().into_iter().map(|p| p.info).collect())
}

/// One admin prompt with its body.
#[utoipa::path(get, path = "/api/admin-prompts/{name}", tag = "agents",
    params(("name" = String, Path, description = "Prompt name")),
    responses((status = 200, description = "The prompt", body = Prompt),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 404, description = "No such prompt", body = ErrorBody)))]
async fn get_prompt(_auth: Auth, Path(name): Path<String>) -> Result<Json<Prompt>, ApiError> {
    Ok(Json(prompts::get(&name)?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendPrompt {
    /// Values for the prompt's `required_variables`.
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// Posts a prompt into the agent's DM as the owner ("audit with agent"); the agent gets it like
/// any message.
#[utoipa::path(post, path = "/api/agents/{slug}/admin-prompts/{name}", tag = "agents", request_body = SendPrompt,
    params(("slug" = String, Path, description = "Agent slug"), ("name" = String, Path, description = "Prompt name")),
    responses((status = 201, description = "The message posted", body = Message),
        (status = 400, description = "Invalid name or missing variables", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent or prompt", body = ErrorBody)))]
async fn send_prompt(
    OwnerLike(principal): OwnerLike,
    State(state): State<AppState>,
    Path((slug, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    // The body is optional: none means no variables.
    let request: SendPrompt = if body.is_empty() {
        SendPrompt::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let prompt = prompts::get(&name)?;
    let text = prompts::render(&prompt, &request.variables)?;
    let agent = crate::agents::get_by_slug(&state.db, &slug).await?;
    let dm = state
        .chat
        .dm_of(agent.id)
        .await?
        .ok_or_else(|| ApiError::not_found("the agent has no DM channel"))?;
    let owner = human_member(&state, &principal).await?;
    let body = NewMessage {
        channel_id: dm,
        content: text,
        client_id: None,
        thread_id: None,
    };
    let (message, _) = state
        .bridge
        .post_as_user(&state.chat, &owner, &body)
        .await?;
    Ok((StatusCode::CREATED, Json(message)))
}
