use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// A process running anywhere that connects through the bridge with its agent token.
    External,
    /// An agent the host runs in an incus container.
    Container,
}

/// Where a container agent's network traffic may go. The agent listener and the LLM gateway on
/// the host are always reachable (incus: through proxy devices; Docker: on the network's
/// gateway); the host's other ports, link-local addresses and cloud metadata never are.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentNetwork {
    /// Public internet addresses only: no LAN (RFC 1918, CGNAT, ULA), no other agents.
    #[default]
    Internet,
    /// The internet and the LAN (private ranges), still not the host or other agents.
    Lan,
    /// No network at all, only the host's agent listener and LLM gateway.
    None,
}

impl AgentNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentNetwork::Internet => "internet",
            AgentNetwork::Lan => "lan",
            AgentNetwork::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<AgentNetwork> {
        match text {
            "internet" => Some(AgentNetwork::Internet),
            "lan" => Some(AgentNetwork::Lan),
            "none" => Some(AgentNetwork::None),
            _ => None,
        }
    }
}

/// An agent as people see it. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    pub id: Uuid,
    pub slug: String,
    pub display_name: String,
    pub emoji: String,
    pub color: String,
    pub kind: AgentKind,
    /// e.g. `ready`, later `deploying`, `running`, `stopped`, `archived`.
    pub status: String,
    pub model: Option<String>,
    pub fallback_models: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub paused: bool,
    /// Whether the agent's bridge stream is connected right now.
    pub connected: bool,
    /// The DM channel between the owner and this agent.
    pub dm_channel_id: Option<String>,
    /// For container agents: what its network may reach (chosen at deploy).
    #[serde(default)]
    pub network: Option<AgentNetwork>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Display name; the slug is made from it.
    pub name: String,
    #[serde(default)]
    pub emoji: Option<String>,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub fallback_models: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub emoji: Option<String>,
    #[serde(default)]
    pub color: Option<String>,
    /// A paused agent's deliveries wait in its outbox.
    #[serde(default)]
    pub paused: Option<bool>,
    /// Must be a model some provider serves.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub fallback_models: Option<Vec<String>>,
}

/// Answer to creating an agent or rotating its token: the token is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentWithToken {
    pub agent: Agent,
    /// `taos_ag_…`, valid only on the agent listener and only for this agent.
    pub agent_token: String,
    /// `taos_llm_…`, the agent's key for the LLM gateway (`/v1` on the agent listener). Only
    /// when the agent is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_key: Option<String>,
}

/// A deployed agent's root disk quota when the request names none, in GiB.
pub const DEFAULT_DISK_QUOTA_GIB: u64 = 40;
// The OpenAPI document states it as the field's `default` (the UI shows it from there);
// attributes need a literal, so keep the two equal here.
const _: () = assert!(DEFAULT_DISK_QUOTA_GIB == 40);

/// `POST /api/agents/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub name: String,
    /// A framework id from `GET /api/frameworks` (e.g. `direct`).
    pub framework: String,
    pub model: String,
    #[serde(default)]
    pub fallback_models: Option<Vec<String>>,
    #[serde(default)]
    pub emoji: Option<String>,
    #[serde(default)]
    pub color: Option<String>,
    #[serde(default)]
    pub memory_limit_mib: Option<u64>,
    #[serde(default)]
    pub cpu_limit: Option<u32>,
    /// Root disk quota in GiB, 1-4096; default 40.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = 40))]
    pub disk_quota_gib: Option<u64>,
    /// What the agent's network may reach; default `internet` (no LAN, host or metadata).
    #[serde(default)]
    pub network: AgentNetwork,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployAccepted {
    pub agent: Agent,
    pub deploy_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployStep {
    pub name: String,
    /// pending | running | done | failed | skipped
    pub state: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployStatus {
    pub id: String,
    pub slug: String,
    pub framework: String,
    /// running | succeeded | rolled_back
    pub status: String,
    pub steps: Vec<DeployStep>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
