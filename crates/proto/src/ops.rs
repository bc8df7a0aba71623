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
