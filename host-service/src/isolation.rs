//! Agents' network isolation: what the host sets up once at start so that a deploy only names
//! it, keeps in step with the machine's addresses, and re-applies to existing containers.
//!
//! incus: two bridges with fixed subnets (`taos-inet`, `taos-lan`), each with a network ACL
//! that allows only the destinations of its choice (`runtime::netpolicy`) and rejects the rest
//! both ways, and the `taos-agent` profile (unprivileged, no nesting, isolated uid range, a NIC
//! that can't spoof addresses and is isolated from the bridge's other ports). `none` has no
//! NIC: the proxy devices to the agent listener connect from the host side.
//!
//! Docker: three networks without inter-container traffic (`none` is internal), and host
//! firewall rules (`runtime::firewall`) for what each may reach; the agent listener binds on
//! each network's gateway and is the only port of the host agents reach.

use std::net::SocketAddr;
use std::time::Duration;

use taos_proto::agents::AgentNetwork;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agents::AgentHost;
use crate::config::RuntimeConfig;
use crate::runtime::firewall::{self, AgentBridge};
use crate::runtime::incus::AgentSubnets;
use crate::runtime::netpolicy::HostFacts;
use crate::runtime::{ContainerRuntime, Runtime};

/// How often the host's addresses are compared with what the rules were made from.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// How long a deploy waits for the start-up preparation before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether agents can be isolated yet. Under incus the preparation runs in the background at
/// start (its REST calls would otherwise delay the first answer); deploys and restores wait
/// for it, and are refused if it failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    Preparing,
    Ready,
    Failed(String),
}

/// What [`prepare`] made.
#[derive(Default)]
pub struct Prepared {
    /// Docker: the agent networks' bridges.
    pub bridges: Vec<AgentBridge>,
    /// Docker: the agent listener bound on each agent network's gateway.
    pub listeners: Vec<(AgentNetwork, TcpListener)>,
}

fn subnets(config: &RuntimeConfig) -> AgentSubnets {
    AgentSubnets {
        internet: config.incus_internet_subnet.clone(),
        lan: config.incus_lan_subnet.clone(),
    }
}

/// incus: makes (or brings up to date) the agents' bridges, ACLs and profile now, for a
/// restore that imports agents' containers before any host has run on this incus.
pub async fn prepare_incus_now(
    incus: &crate::runtime::incus::Incus,
    config: &RuntimeConfig,
) -> Result<(), String> {
    incus
        .prepare_agents(&subnets(config), &HostFacts::gather())
        .await
        .map_err(|e| format!("cannot set up the agents' networks and profile: {e}"))
}

/// At start, before the listeners serve: what must exist before then. Docker: the agent
/// networks, the listener bound on each gateway and the firewall rules (an error: the host
/// runs without a runtime rather than deploy agents with open networks). incus: nothing yet,
/// see [`spawn_prepare`]. Returns the readiness to start with.
pub async fn prepare(
    runtime: &ContainerRuntime,
    config: &RuntimeConfig,
    agent_port: u16,
) -> Result<(Prepared, Readiness), String> {
    match runtime {
        ContainerRuntime::Incus(_) => Ok((Prepared::default(), Readiness::Preparing)),
        ContainerRuntime::Docker(_) => {
            let prepared = prepare_now(runtime, config, agent_port).await?;
            Ok((prepared, Readiness::Ready))
        }
    }
}

/// incus: makes (or brings up to date) the agents' bridges, ACLs and profile in the background
/// ([`reconcile`] waits for it). A failure is reported in `/api/health` and refuses
/// deploys and restores, which wait for this. `on_failure` gets the reason (the server puts it
/// in `/api/health`; this module doesn't know about HTTP).
pub fn spawn_prepare(
    host: AgentHost,
    ready: watch::Sender<Readiness>,
    on_failure: impl FnOnce(&str) + Send + 'static,
) {
    if !matches!(host.runtime, Some(ContainerRuntime::Incus(_))) {
        return;
    }
    tokio::spawn(async move {
        let Some(runtime) = host.runtime.as_ref() else {
            return;
        };
        match prepare_now(runtime, &host.runtime_config, host.agent_addr.port()).await {
            Ok(_) => {
                // Fails only when every reader is gone (shutdown).
                let _ = ready.send(Readiness::Ready);
            }
            Err(why) => {
                tracing::error!(error = %why, "agents can't be isolated; deploys are refused");
                on_failure(&why);
                // Fails only when every reader is gone (shutdown).
                let _ = ready.send(Readiness::Failed(why));
            }
        }
    });
}

/// Waits until agents can be isolated: Ok, or why they can't (deploys and restores refuse).
pub async fn ready(host: &AgentHost) -> Result<(), String> {
    let mut rx = host.isolation.clone();
    let waited =
        tokio::time::timeout(READY_TIMEOUT, rx.wait_for(|r| *r != Readiness::Preparing)).await;
    match waited {
        Ok(Ok(readiness)) => match &*readiness {
            Readiness::Failed(why) => Err(why.clone()),
            _ => Ok(()),
        },
        Ok(Err(_)) => Err("the host is stopping".into()),
        Err(_) => Err("the agents' networks are still being set up; try again".into()),
    }
}

/// Makes (or brings up to date) the agents' networks, ACLs, profile and firewall rules.
async fn prepare_now(
    runtime: &ContainerRuntime,
    config: &RuntimeConfig,
    agent_port: u16,
) -> Result<Prepared, String> {
    let started = std::time::Instant::now();
    let facts = HostFacts::gather();
    match runtime {
        ContainerRuntime::Incus(incus) => {
            incus
                .prepare_agents(&subnets(config), &facts)
                .await
                .map_err(|e| format!("cannot set up the agents' networks and profile: {e}"))?;
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "agents' networks, ACLs and profile are in place"
            );
            Ok(Prepared::default())
        }
        ContainerRuntime::Docker(docker) => {
            let bridges = docker
                .prepare_agent_networks()
                .await
                .map_err(|e| format!("cannot set up the agents' networks: {e}"))?;
            let mut listeners = Vec::new();
            for bridge in &bridges {
                let addr = SocketAddr::new(bridge.gateway.into(), agent_port);
                let tcp = TcpListener::bind(addr).await.map_err(|e| {
                    format!(
                        "cannot bind the agent listener on Docker's agent network at {addr}: {e}"
                    )
                })?;
                listeners.push((bridge.mode, tcp));
            }
            firewall::apply(&bridges, &facts)
                .await
                .map_err(|e| e.to_string())?;
            // After binding: the rule is only ever there for a port a host listens on.
            firewall::open_listener(&bridges, agent_port)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "agents' networks and firewall rules are in place"
            );
            Ok(Prepared { bridges, listeners })
        }
    }
}

/// At shutdown: Docker agents can no longer reach this host's (closed) listener port.
pub async fn release(host: &AgentHost) {
    if !host.agent_bridges.is_empty() {
        firewall::close_listener(&host.agent_bridges, host.agent_addr.port()).await;
    }
}

/// Every minute: if the machine's addresses changed (DHCP, a new interface), the ACLs or
/// firewall rules are made again from the new ones, so a new host address is never reachable.
pub fn spawn_refresher(host: AgentHost) {
    if host.runtime.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut last = HostFacts::gather();
        let mut shutdown = host.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let facts = HostFacts::gather();
            if facts == last {
                continue;
            }
            let result = match host.runtime.as_ref() {
                Some(ContainerRuntime::Incus(incus)) => incus
                    .update_agent_acls(&subnets(&host.runtime_config), &facts)
                    .await
                    .map_err(|e| e.to_string()),
                Some(ContainerRuntime::Docker(_)) => firewall::apply(&host.agent_bridges, &facts)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            };
            match result {
                Ok(()) => {
                    tracing::info!("the host's addresses changed; agents' network rules updated");
                    last = facts;
                }
                Err(e) => tracing::error!(error = %e, "updating agents' network rules failed"),
            }
        }
    });
}

/// At start: every container agent gets the profile and network of its choice (agents made
/// before, or changed by hand, are brought back in line).
pub async fn reconcile(host: &AgentHost) {
    let Some(rt) = host.runtime.as_ref() else {
        return;
    };
    if ready(host).await.is_err() {
        return;
    }
    let Ok(list) = crate::agents::list(&host.db).await else {
        return;
    };
    for agent in list {
        let Some(container) = agent.container.as_deref() else {
            continue;
        };
        if agent.status == taos_proto::agents::AgentStatus::Deploying
            || !rt.exists(container).await.unwrap_or(false)
        {
            continue;
        }
        match rt.set_agent_network(container, agent.network).await {
            Ok(true) => tracing::info!(
                agent = %agent.slug,
                network = agent.network.as_str(),
                "agent's network isolation re-applied"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                agent = %agent.slug,
                error = %e,
                "could not apply the agent's network isolation"
            ),
        }
    }
}
