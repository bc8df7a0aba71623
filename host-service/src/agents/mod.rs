//! The agent lifecycle, one file per part:
//!
//! - `records`: agent rows, slugs, agent tokens and LLM keys (re-exported here, so
//!   `agents::get_by_slug` reads as before);
//! - `deploy`: the deploy state machine (steps, progress events, rollback, recovery at start);
//! - `archive`: archive, restore, purge and the `agent_ops` journal they share;
//! - `lifecycle`: start, stop, restart, pause, resume, and the service log;
//! - `quota`: the disk quota monitor;
//! - `recycle`: the recycle bin inside agents;
//! - `frameworks`: the framework catalog compiled into the binary.

pub mod archive;
pub mod capacity;
pub mod deploy;
pub mod frameworks;
pub mod lifecycle;
pub mod quota;
pub mod records;
pub mod recycle;

// The records are what most of the host means by "agents"; the glob keeps their paths short.
pub use records::*;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use taos_proto::agents::AgentNetwork;
use tokio::sync::watch;

/// What the lifecycle modules (and `isolation`, `legacy`) work on: the stores and services
/// they orchestrate and where agents reach the host. `server` builds it once; HTTP handlers
/// reach it as `state.agents`. Cheap to clone, so background tasks take their own.
#[derive(Clone)]
pub struct AgentHost(Arc<AgentHostInner>);

pub struct AgentHostInner {
    pub db: crate::db::Db,
    /// The host's data dir (archives live under it).
    pub data_dir: PathBuf,
    /// The container runtime, if one answered at start.
    pub runtime: Option<crate::runtime::ContainerRuntime>,
    /// `[runtime]`: the agents' subnets, for keeping their network rules up to date.
    pub runtime_config: crate::config::RuntimeConfig,
    pub chat: Arc<crate::chat::Chat>,
    pub bridge: Arc<crate::bridge::Bridge>,
    pub traces: crate::trace::TraceStore,
    pub hub: Arc<crate::notify::EventHub>,
    pub llm: Arc<crate::llm::Llm>,
    /// Open connections by credential: an agent's gateway calls end when it loses its key.
    pub live: Arc<crate::auth::live::Live>,
    /// Where the agent listener is bound; containers' proxy devices connect here.
    pub agent_addr: SocketAddr,
    /// Where containers reach the agent listener when the runtime has no proxy devices
    /// (Docker: the gateway of each agent network, where the listener also binds).
    pub agent_gateways: Vec<(AgentNetwork, SocketAddr)>,
    /// Docker: the agents' bridges, for the firewall (kept in step by `isolation`).
    pub agent_bridges: Vec<crate::runtime::firewall::AgentBridge>,
    /// Whether agents can be isolated yet (incus prepares in the background at start).
    pub isolation: watch::Receiver<crate::isolation::Readiness>,
    /// Flips to true when the host begins shutting down; background loops end on it.
    pub shutdown: watch::Receiver<bool>,
}

impl AgentHost {
    pub fn new(inner: AgentHostInner) -> Self {
        AgentHost(Arc::new(inner))
    }
}

/// The API view of an agent: its record plus live bridge state and its DM channel.
pub async fn view(
    host: &AgentHost,
    record: &AgentRecord,
) -> Result<taos_proto::agents::Agent, crate::chat::ChatError> {
    let dm = host.chat.dm_of(record.id).await?;
    Ok(record.to_api(host.bridge.is_connected(record.id), dm))
}

impl Deref for AgentHost {
    type Target = AgentHostInner;
    fn deref(&self) -> &AgentHostInner {
        &self.0
    }
}
