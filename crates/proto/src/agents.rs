use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::approvals::ToolPolicy;
use crate::text_enum::text_enum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// A process running anywhere that connects through the bridge with its agent token.
    External,
    /// An agent the host runs in a container (incus, or Docker).
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

/// Where an agent is in its life. Stored in the `agents.status` column as the same word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// An external agent, or an agent restored without a container: it answers when connected.
    Ready,
    /// A container agent whose deploy is running.
    Deploying,
    Running,
    Stopped,
    /// Stopped by its owner's pause or by the disk monitor; its deliveries wait.
    Paused,
    /// A restore that could not bring the container back up.
    Failed,
    /// In the archive: not listed, no credentials.
    Archived,
    /// Restored in the database, container not yet up.
    Restoring,
}

text_enum!(AgentStatus {
    Ready => "ready",
    Deploying => "deploying",
    Running => "running",
    Stopped => "stopped",
    Paused => "paused",
    Failed => "failed",
    Archived => "archived",
    Restoring => "restoring",
});

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
    pub status: AgentStatus,
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
    /// Whether its tool calls run at once (`auto`), wait for a person (`ask`) or never run
    /// (`off`).
    #[serde(default)]
    pub tool_policy: ToolPolicy,
    /// Per-tool policies over `tool_policy`, e.g. `{"shell": "ask", "read_file": "auto"}`.
    #[serde(default)]
    pub tool_overrides: BTreeMap<String, ToolPolicy>,
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
    /// Default `auto`.
    #[serde(default)]
    pub tool_policy: Option<ToolPolicy>,
    /// Per-tool policies over `tool_policy` (at most 32), e.g. `{"shell": "ask"}`.
    #[serde(default)]
    pub tool_overrides: Option<BTreeMap<String, ToolPolicy>>,
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
    /// Replaces the agent's policy.
    #[serde(default)]
    pub tool_policy: Option<ToolPolicy>,
    /// Per-tool policies over `tool_policy` (at most 32; replaces the whole map), e.g. `{"shell": "ask"}`.
    #[serde(default)]
    pub tool_overrides: Option<BTreeMap<String, ToolPolicy>>,
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
    /// Default `auto`.
    #[serde(default)]
    pub tool_policy: Option<ToolPolicy>,
    /// Per-tool policies over `tool_policy` (at most 32), e.g. `{"shell": "ask"}`.
    #[serde(default)]
    pub tool_overrides: Option<BTreeMap<String, ToolPolicy>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployAccepted {
    pub agent: Agent,
    pub deploy_id: String,
}

/// The steps of a deploy, in the order incus runs them (Docker runs `configure` before `start`
/// and has no `service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeployStepName {
    /// The agent's record, token, LLM key and DM (done when the deploy is accepted).
    Credentials,
    Container,
    Start,
    /// The agent's credentials pushed into its container.
    Configure,
    /// The framework's service restarted to read them.
    Service,
    /// The agent's sidecar connected to the bridge.
    Bridge,
}

text_enum!(DeployStepName {
    Credentials => "credentials",
    Container => "container",
    Start => "start",
    Configure => "configure",
    Service => "service",
    Bridge => "bridge",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

text_enum!(StepState {
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
});

/// Where a deploy ended, or `running` while it runs. Stored in `deploys.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    Running,
    Succeeded,
    /// A step failed (or the host stopped mid-deploy) and everything it made was undone.
    RolledBack,
}

text_enum!(DeployOutcome {
    Running => "running",
    Succeeded => "succeeded",
    RolledBack => "rolled_back",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployStep {
    pub name: DeployStepName,
    pub state: StepState,
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
    pub status: DeployOutcome,
    pub steps: Vec<DeployStep>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How full an agent's disk is, with hysteresis (stored in `agent_disk.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Ok,
    /// Over 87.5 %, and until it is below 80 % again: the owner is warned.
    Warn,
    /// Full: the agent is paused until it has room again.
    Hard,
}

text_enum!(DiskState {
    Ok => "ok",
    Warn => "warn",
    Hard => "hard",
});

/// An agent's disk, as last sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskStatus {
    pub slug: String,
    pub used_bytes: Option<u64>,
    pub quota_bytes: u64,
    /// 0–100.
    pub percent: Option<f64>,
    pub state: DiskState,
    pub last_checked_at: Option<DateTime<Utc>>,
}

/// An archived agent: what restore brings back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchivedAgent {
    pub id: String,
    pub agent_id: String,
    /// The slug it had; restore tries to give it back.
    pub slug: String,
    pub display_name: String,
    pub container: Option<String>,
    pub snapshot: Option<String>,
    pub archived_at: DateTime<Utc>,
    /// Where its container is kept now (`pool` for agents without one).
    #[serde(default)]
    pub location: ArchiveLocation,
    /// The backup repository's snapshot holding the container while it is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_snapshot: Option<String>,
}

/// Where an archived agent's container is (see `archive_target` in the backup settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ArchiveLocation {
    /// On the runtime's storage pool.
    #[default]
    Pool,
    /// Being exported into the backup repository.
    MovingOut,
    /// In the backup repository only; a restore brings it back first.
    Backup,
    /// Being brought back from the backup repository.
    MovingIn,
}

text_enum!(ArchiveLocation {
    Pool => "pool",
    MovingOut => "moving_out",
    Backup => "backup",
    MovingIn => "moving_in",
});

/// One file or folder in an agent's recycle bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecycleItem {
    pub id: String,
    pub original_path: String,
    /// When it was deleted, UTC (RFC 3339).
    pub deleted_at: String,
    pub size_bytes: u64,
}

/// Whether an agent's recycle bin could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RecycleState {
    Ok,
    /// The container is not running: the list is empty because nobody could look.
    ContainerOffline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecycleList {
    pub agent: String,
    pub items: Vec<RecycleItem>,
    pub status: RecycleState,
}

/// An admin prompt the owner can send an agent ("audit with agent").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptInfo {
    pub name: String,
    pub summary: String,
    pub version: u32,
    pub required_variables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prompt {
    #[serde(flatten)]
    pub info: PromptInfo,
    pub body: String,
}

/// A framework a deploy can install, as its `manifest.toml` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub description: String,
    /// beta | alpha | broken
    pub verification: String,
    /// Place in the framework picker, lowest first (`GET /api/frameworks` is sorted by it):
    /// openclaw leads, as it did in TinyAgentOS.
    pub order: u32,
    /// The incus image alias agents of this framework start from.
    pub image: String,
    /// The systemd service that runs the agent inside the container.
    pub service: String,
    /// The mode the taos-agent sidecar runs in (`TAOS_AGENT_MODE` in its credentials file):
    /// `direct` (chat only, the default), `tools` (the built-in tool-using agent),
    /// `openclaw` (the sidecar drives openclaw in the container) or `acp` (an Agent Client
    /// Protocol agent, named in `[acp]`).
    #[serde(default)]
    pub agent_mode: Option<String>,
    /// With `agent_mode = "acp"`: the Agent Client Protocol agent the sidecar starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acp: Option<AcpAgent>,
    pub install: Install,
    pub requires: Requires,
}

impl Manifest {
    /// The sidecar mode for this framework's agents.
    pub fn agent_mode(&self) -> &str {
        self.agent_mode.as_deref().unwrap_or("direct")
    }

    /// Checks what the sidecar would refuse to start with: an `acp` framework needs an `[acp]`
    /// table with a command (argv: program first, no empty parts) and plain variable names;
    /// no other framework has one.
    pub fn validate(&self) -> Result<(), String> {
        match (self.agent_mode(), &self.acp) {
            ("acp", None) => Err(format!(
                "{}: agent_mode \"acp\" needs an [acp] table with a command",
                self.id
            )),
            ("acp", Some(acp)) => acp.validate().map_err(|e| format!("{}: {e}", self.id)),
            (_, Some(_)) => Err(format!(
                "{}: an [acp] table needs agent_mode = \"acp\"",
                self.id
            )),
            (_, None) => Ok(()),
        }
    }
}

/// `[acp]` in a manifest: how the sidecar starts the agent (never through a shell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcpAgent {
    /// The program and its arguments, e.g. `["opencode", "acp"]`.
    pub command: Vec<String>,
    /// Extra environment for the agent. Values may use `${OPENAI_BASE_URL}`,
    /// `${OPENAI_API_KEY}` (the agent's own gateway key), `${TAOS_MODEL}`,
    /// `${TAOS_AGENT_NAME}` and `${HOME}`; `${NAME:json}` is the value escaped for the inside
    /// of a JSON string.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl AcpAgent {
    pub fn validate(&self) -> Result<(), String> {
        if self.command.is_empty() {
            return Err("the [acp] command is empty; it needs at least the program".into());
        }
        if self
            .command
            .iter()
            .any(|a| a.is_empty() || a.contains(['\0', '\n', '\r']))
        {
            return Err("each part of the [acp] command must be non-empty, on one line".into());
        }
        for (name, value) in &self.env {
            let plain = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !plain || value.contains(['\0', '\n', '\r']) {
                return Err(format!(
                    "[acp] env: {name:?} must be A-Z, 0-9 and _ with a one-line value"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// none | script
    pub method: String,
    #[serde(default)]
    pub script: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Memory the framework needs, in MiB: the container's limit unless the deploy sets one,
    /// and what must be free on the host for a deploy to start.
    pub ram_mb: u64,
    pub disk_mb: u64,
    /// CPUs the framework needs: the container's limit unless the deploy sets one.
    pub cpus: u32,
}

/// What the host has free for new agents, for the framework picker to compare with each
/// manifest's `requires`. A figure the host could not read is `null`, with the reason in
/// `problems`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostCapacity {
    /// Memory a new agent can have, in bytes: the kernel's `MemAvailable` less what running
    /// agents may still grow into under their limits (what the deploy's memory check counts).
    pub memory_available_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Free space where agents' root disks live (the incus storage pool, or Docker's data
    /// root), in bytes.
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    /// That storage in words, e.g. `incus storage pool "default" (btrfs)`.
    pub storage: Option<String>,
    /// Why a figure is missing, in words.
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text_enum::assert_text_matches_serde;

    #[test]
    fn stored_words_are_the_wire_words() {
        assert_text_matches_serde(AgentStatus::ALL);
        assert_text_matches_serde(DeployStepName::ALL);
        assert_text_matches_serde(StepState::ALL);
        assert_text_matches_serde(DeployOutcome::ALL);
        assert_text_matches_serde(DiskState::ALL);
        assert_text_matches_serde(ArchiveLocation::ALL);
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it() {
        let err = "sleeping".parse::<AgentStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown AgentStatus \"sleeping\"");
    }
}
