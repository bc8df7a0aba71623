use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    Openai,
    Anthropic,
    Openrouter,
    Kilocode,
    Ollama,
    LlamaCpp,
    Vllm,
    OpenaiCompatible,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Openai => "openai",
            ProviderType::Anthropic => "anthropic",
            ProviderType::Openrouter => "openrouter",
            ProviderType::Kilocode => "kilocode",
            ProviderType::Ollama => "ollama",
            ProviderType::LlamaCpp => "llama-cpp",
            ProviderType::Vllm => "vllm",
            ProviderType::OpenaiCompatible => "openai-compatible",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProviderModel {
    pub id: String,
    /// Price in USD per million input tokens, used when LiteLLM reports no cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_usd_per_mtok: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_usd_per_mtok: Option<f64>,
}

/// A provider as clients see it: never its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Provider {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderType,
    pub url: String,
    pub has_api_key: bool,
    pub models: Vec<ProviderModel>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewProvider {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Defaults to the type's known URL (required for `openai-compatible`).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    /// Discovered from `<url>/models` when left out.
    #[serde(default)]
    pub models: Option<Vec<ProviderModel>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProviderPatch {
    #[serde(default)]
    pub url: Option<String>,
    /// An empty string removes the key.
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<ProviderModel>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProviderTest {
    #[serde(rename = "type")]
    pub kind: ProviderType,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderTestResult {
    pub reachable: bool,
    pub response_ms: u64,
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A model an agent may be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelInfo {
    pub name: String,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_usd_per_mtok: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_usd_per_mtok: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LlmState {
    Starting,
    Ready,
    Restarting,
    /// Not installed, or nothing to serve yet (no provider models).
    Unavailable,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmStatus {
    pub state: LlmState,
    pub version: Option<String>,
    pub models: Vec<String>,
    pub last_error: Option<String>,
    /// The end of LiteLLM's log, for diagnosing a failed start.
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub limit_usd: f64,
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub model: String,
    pub requests: i64,
    pub failures: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub agent_name: String,
    pub budget: Option<Budget>,
    /// Spend in the budget's current period (this UTC month if there is no budget).
    pub period_spend_usd: f64,
    pub rows: Vec<UsageRow>,
}

/// One agent's spend over a range of days (`GET /api/usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentSpend {
    pub agent_name: String,
    pub display_name: String,
    pub budget: Option<Budget>,
    /// Spend in the budget's current period (this UTC month if there is no budget).
    pub period_spend_usd: f64,
    /// Per UTC day and model within the range, oldest day first.
    pub rows: Vec<UsageRow>,
}

/// Every current agent's spend per UTC day and model over the last `days` days, for the
/// spend screen (one call instead of one per agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpendOverview {
    /// First UTC day of the range, `YYYY-MM-DD`.
    pub from_day: String,
    /// Last UTC day of the range (today), `YYYY-MM-DD`.
    pub to_day: String,
    /// Current agents (archived ones are left out), oldest first, with or without usage.
    pub agents: Vec<AgentSpend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmKey {
    /// `taos_llm_…`, shown once: the agent's key for the LLM gateway.
    pub llm_key: String,
}
