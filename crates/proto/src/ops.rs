use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` when every subsystem is ok, else `degraded`.
    pub status: String,
    /// The host's version. Only for authenticated callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Subsystem name → `ok`, `disabled`, or a short reason it is not ok. Only for
    /// authenticated callers: versions and runtime details help an attacker pick an exploit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystems: Option<BTreeMap<String, String>>,
}

/// `GET /api/host`: where people and agents reach this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostInfo {
    pub host_name: String,
    /// `host:port` addresses pairing codes carry, in the order the app tries them.
    pub pairing_addresses: Vec<String>,
    /// False when every pairing address is a loopback address: a phone can't reach any of
    /// them (the public listener is bound to loopback, `[server] bind`).
    pub pairing_reachable: bool,
    /// The agent listener for a sidecar on this machine (`TAOS_BRIDGE_URL`). It is bound to
    /// loopback, so an external agent's sidecar must run on the host itself (or reach it
    /// through a tunnel it sets up).
    pub agent_url: String,
    /// The LLM gateway's OpenAI-compatible base URL on the agent listener (`OPENAI_BASE_URL`).
    pub gateway_url: String,
    /// The host's TLS key pin, `sha256/<base64>`.
    pub fingerprint: String,
}

/// One sample of the host's own figures, taken every `[overview] sample_secs` and kept 7 days.
/// A figure the host could not read is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSample {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Share of CPU time spent busy since the previous sample, 0–100 (all cores together);
    /// `null` for the first sample after a start, which has nothing to compare with.
    pub cpu_percent: Option<f64>,
    /// `MemTotal - MemAvailable`: memory the kernel can't hand out without swapping.
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// The filesystem holding the host's data dir (database, traces, archives).
    pub data_disk_used_bytes: Option<u64>,
    pub data_disk_total_bytes: Option<u64>,
    /// Where agents' root disks live: the incus storage pool, or Docker's data root.
    pub pool_used_bytes: Option<u64>,
    pub pool_total_bytes: Option<u64>,
}

/// One sample of an agent's memory and disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentSample {
    pub at: chrono::DateTime<chrono::Utc>,
    /// From the runtime; `null` while the container is stopped.
    pub memory_used_bytes: Option<u64>,
    /// The disk quota monitor's last reading (what its quota is judged by).
    pub disk_used_bytes: Option<u64>,
    pub disk_quota_bytes: Option<u64>,
}

/// One agent on the home screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentOverview {
    pub slug: String,
    pub display_name: String,
    pub emoji: String,
    pub status: crate::agents::AgentStatus,
    /// Whether its sidecar follows its stream now.
    pub connected: bool,
    /// Its container's memory at the last sample; `null` for external agents and stopped
    /// containers.
    pub memory_used_bytes: Option<u64>,
    /// Container agents only: the disk quota monitor's last reading and the quota.
    pub disk_used_bytes: Option<u64>,
    pub disk_quota_bytes: Option<u64>,
    pub disk_state: Option<crate::agents::DiskState>,
    /// LLM spend in the current UTC day, in USD.
    pub spend_today_usd: f64,
}

/// `GET /api/host/overview`, and the data of the `host.overview` event: the board at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostOverview {
    pub host_name: String,
    /// The newest host sample; `null` until the first one is taken (a second after start).
    pub sample: Option<HostSample>,
    /// How often samples are taken, in seconds.
    pub sample_secs: u64,
    pub llm: crate::llm::LlmState,
    /// Why LiteLLM is not ready, when it isn't.
    pub llm_error: Option<String>,
    /// The container runtime in words, as `/api/health` says it: `ok: incus 6.0.4 …`,
    /// `disabled: …` or `error: …`.
    pub runtime: String,
    pub agents: Vec<AgentOverview>,
    /// All agents' LLM spend in the current UTC day, in USD.
    pub spend_today_usd: f64,
}

/// One agent's samples in `SampleHistory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentHistory {
    pub slug: String,
    pub samples: Vec<AgentSample>,
}

/// `GET /api/host/samples`: samples of the last `hours`, averaged into buckets of
/// `bucket_secs` (memory and CPU averaged, disk the bucket's highest), oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleHistory {
    pub hours: u32,
    pub bucket_secs: u64,
    pub host: Vec<HostSample>,
    pub agents: Vec<AgentHistory>,
}
