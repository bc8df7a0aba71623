//! `/api/llm/status`, `/api/providers/*`, and agents' budgets, usage and LLM keys.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use taos_proto::error::ErrorBody;
use taos_proto::llm::{
    Budget, LlmKey, LlmStatus, ModelInfo, NewProvider, Provider, ProviderModel, ProviderPatch,
    ProviderTest, ProviderTestResult, SpendOverview, Usage,
};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Auth, Json, OwnerLike, Path, Query};
use super::AppState;
use crate::agents;
use crate::llm::budget;
use crate::llm::providers;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(llm_status))
        .routes(routes!(list_providers, create_provider))
        .routes(routes!(patch_provider, delete_provider))
        .routes(routes!(test_provider))
        .routes(routes!(list_models))
        .routes(routes!(refresh_models))
        .routes(routes!(set_budget))
        .routes(routes!(get_usage))
        .routes(routes!(usage_overview))
        .routes(routes!(rotate_llm_key))
}

async fn reload(state: &AppState) {
    if let Err(e) = state.llm.reload().await {
        tracing::error!(error = %e, "regenerating the LiteLLM config failed");
    }
}

/// LiteLLM's state, models, last error and log tail. Owner side only: the log can name
/// providers, models and agents' requests.
#[utoipa::path(get, path = "/api/llm/status", tag = "llm",
    responses((status = 200, description = "LiteLLM's state", body = LlmStatus),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn llm_status(_auth: OwnerLike, State(state): State<AppState>) -> Json<LlmStatus> {
    Json(state.llm.supervisor.status())
}

/// Providers. Keys are never returned, only `has_api_key`.
#[utoipa::path(get, path = "/api/providers", tag = "llm",
    responses((status = 200, description = "Providers", body = Vec<Provider>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn list_providers(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<Provider>>, ApiError> {
    Ok(Json(
        providers::list(&state.db)
            .await?
            .iter()
            .map(|p| p.to_api())
            .collect(),
    ))
}

/// Adds a provider. Without `models`, they are discovered from `<url>/models`.
#[utoipa::path(post, path = "/api/providers", tag = "llm", request_body = NewProvider,
    responses((status = 201, description = "The provider", body = Provider),
        (status = 400, description = "Bad input, or discovery failed", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody)))]
async fn create_provider(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<NewProvider>,
) -> Result<(StatusCode, Json<Provider>), ApiError> {
    providers::validate_name(&body.name)?;
    let url = providers::resolve_url(body.kind, body.url.as_deref())?;
    let discovered = if body.models.is_none() {
        let (models, _) = state
            .llm
            .discover(body.kind, &url, body.api_key.as_deref(), true)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "discovery_failed",
                    format!("could not list the provider's models ({e}); give them as `models`"),
                )
            })?;
        models
            .into_iter()
            .map(|id| ProviderModel {
                id,
                input_usd_per_mtok: None,
                output_usd_per_mtok: None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let record = providers::create(&state.db, &state.llm.secrets, &body, discovered).await?;
    tracing::info!(provider = %record.name, models = record.models.len(), "provider added");
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(record.to_api())))
}

/// Changes a provider's URL, key (empty string removes it), models or enabled flag.
#[utoipa::path(patch, path = "/api/providers/{name}", tag = "llm", request_body = ProviderPatch,
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, description = "The provider", body = Provider),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody)))]
async fn patch_provider(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(patch): Json<ProviderPatch>,
) -> Result<Json<Provider>, ApiError> {
    let record = providers::update(&state.db, &state.llm.secrets, &name, &patch).await?;
    reload(&state).await;
    Ok(Json(record.to_api()))
}

/// Removes a provider.
#[utoipa::path(delete, path = "/api/providers/{name}", tag = "llm",
    params(("name" = String, Path, description = "Provider name")),
    responses((status = 204, description = "Removed"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody)))]
async fn delete_provider(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    providers::delete(&state.db, &name).await?;
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks that a provider endpoint answers, and lists its models. Stores nothing.
#[utoipa::path(post, path = "/api/providers/test", tag = "llm", request_body = ProviderTest,
    responses((status = 200, description = "Whether it answered", body = ProviderTestResult),
        (status = 400, description = "Bad URL", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn test_provider(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Json(body): Json<ProviderTest>,
) -> Result<Json<ProviderTestResult>, ApiError> {
    let url = providers::resolve_url(body.kind, body.url.as_deref())?;
    let started = std::time::Instant::now();
    Ok(Json(
        match state
            .llm
            .discover(body.kind, &url, body.api_key.as_deref(), true)
            .await
        {
            Ok((models, ms)) => ProviderTestResult {
                reachable: true,
                response_ms: ms,
                models,
                error: None,
            },
            Err(e) => ProviderTestResult {
                reachable: false,
                response_ms: started.elapsed().as_millis() as u64,
                models: Vec::new(),
                error: Some(e),
            },
        },
    ))
}

/// Every model an agent can be given.
#[utoipa::path(get, path = "/api/providers/models", tag = "llm",
    responses((status = 200, description = "Models", body = Vec<ModelInfo>),
        (status = 401, description = "No credentials", body = ErrorBody)))]
async fn list_models(
    _auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    Ok(Json(state.llm.models().await?))
}

/// Re-discovers each provider's models (`<url>/models`, with its stored key, no redirects
/// followed) and updates the catalog, keeping the owner's prices for models still offered.
/// LiteLLM restarts only if the list changed. Returns every model, as `GET` does.
#[utoipa::path(post, path = "/api/providers/models/refresh", tag = "llm",
    responses((status = 200, description = "Models", body = Vec<ModelInfo>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn refresh_models(
    _auth: OwnerLike,
    State(state): State<AppState>,
) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    // Reloaded even if an update failed part way: those before it are committed, and the
    // gateway's kept catalog must not outlive them.
    let updated: Result<(), ApiError> = async {
        for provider in providers::list(&state.db).await? {
            let key = provider.api_key(&state.llm.secrets);
            let Ok((found, _)) = state
                .llm
                .discover(provider.kind, &provider.url, key.as_deref(), false)
                .await
            else {
                continue;
            };
            // Keep the owner's prices for models that are still there.
            let models: Vec<ProviderModel> = found
                .into_iter()
                .map(|id| {
                    provider
                        .models
                        .iter()
                        .find(|m| m.id == id)
                        .cloned()
                        .unwrap_or(ProviderModel {
                            id,
                            input_usd_per_mtok: None,
                            output_usd_per_mtok: None,
                        })
                })
                .collect();
            if models != provider.models {
                let patch = ProviderPatch {
                    models: Some(models),
                    ..Default::default()
                };
                providers::update(&state.db, &state.llm.secrets, &provider.name, &patch).await?;
            }
        }
        Ok(())
    }
    .await;
    reload(&state).await;
    updated?;
    Ok(Json(state.llm.models().await?))
}

/// Sets an agent's LLM budget (USD per UTC day or month).
#[utoipa::path(put, path = "/api/agents/{slug}/budget", tag = "llm", request_body = Budget,
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The budget", body = Budget),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn set_budget(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Json(body): Json<Budget>,
) -> Result<Json<Budget>, ApiError> {
    let agent = agents::get_by_slug(&state.db, &slug).await?;
    state
        .llm
        .ledger
        .set_budget(&state.db, agent.id, &body)
        .await?;
    Ok(Json(body))
}

/// What an agent used, per day and model, and its spend in the current budget period.
#[utoipa::path(get, path = "/api/agents/{slug}/usage", tag = "llm",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "Usage", body = Usage),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn get_usage(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Usage>, ApiError> {
    let agent = agents::get_by_slug(&state.db, &slug).await?;
    Ok(Json(budget::usage(&state.db, agent.id, &agent.slug).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OverviewParams {
    /// How many UTC days, ending today: 1-366, default 30.
    days: Option<u32>,
}

/// Every current agent's spend per UTC day and model over the last `days` days, with budgets
/// and current-period spend: what the spend screen draws.
#[utoipa::path(get, path = "/api/usage", tag = "llm", params(OverviewParams),
    responses((status = 200, description = "Spend per agent, day and model", body = SpendOverview),
        (status = 400, description = "days out of range or not a number", body = ErrorBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody)))]
async fn usage_overview(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Query(params): Query<OverviewParams>,
) -> Result<Json<SpendOverview>, ApiError> {
    let agents = agents::list(&state.db).await?;
    let days = params.days.unwrap_or(30);
    Ok(Json(
        budget::overview(&state.db, agents, days, chrono::Utc::now()).await?,
    ))
}

/// Issues a new LLM key for the agent; the old one stops working at once, and gateway calls
/// still running on it are cut.
#[utoipa::path(post, path = "/api/agents/{slug}/llm-key/rotate", tag = "llm",
    params(("slug" = String, Path, description = "Agent slug")),
    responses((status = 200, description = "The new key, shown once", body = LlmKey),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not the owner", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody)))]
async fn rotate_llm_key(
    _auth: OwnerLike,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<LlmKey>, ApiError> {
    let (agent, llm_key) = agents::rotate_llm_key(&state.db, &slug).await?;
    // Calls still running on the old key end too (streams break off).
    let cut = state.live.revoke_agent_llm(agent.id);
    tracing::info!(agent = %agent.slug, calls_cut = cut, "LLM key rotated");
    Ok(Json(LlmKey { llm_key }))
}
