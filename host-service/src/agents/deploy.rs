//! Deploying an agent into a container: a persisted state machine.
//!
//! Steps run in order and each is recorded (with timestamps) before and after it runs, and
//! announced on `/api/events`. Any failure rolls back everything the deploy created — the
//! container, the trace folder, the agent's credentials and its channel — and leaves the deploy
//! `rolled_back` with the reason. A host that stops mid-deploy rolls it back when it starts
//! again: no agent stays `deploying`.
//!
//! This module orchestrates several others (agents, chat, runtime, bridge), so it works on the
//! agent lifecycle's shared context (`AgentHost`) rather than on one store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::Row;
use taos_proto::agents::{
    AgentNetwork, AgentStatus, DeployOutcome, DeployRequest, DeployStatus, DeployStep,
    DeployStepName, NewAgent, StepState, DEFAULT_DISK_QUOTA_GIB,
};
use uuid::Uuid;

use crate::agents::frameworks::{self, Manifest};
use crate::agents::quota;
use crate::agents::AgentHost;
use crate::agents::{self, container_name, AgentRecord, NewKind};
use crate::db::{from_ms, now_ms, Db};
use crate::runtime::ContainerRuntime;
use crate::runtime::{CreateSpec, Device, Limits, Runtime, RuntimeError};

use DeployStepName::{Bridge, Configure, Container, Credentials, Service, Start};

pub const STEPS: &[DeployStepName] = &[Credentials, Container, Start, Configure, Service, Bridge];
/// Under Docker the credentials go in before the first start (the sidecar is the container's
/// main process, so there is no service to restart), and nothing waits for systemd. No host
/// folder is mounted into an agent's container under either runtime: traces come over HTTP.
pub const DOCKER_STEPS: &[DeployStepName] = &[Credentials, Container, Configure, Start, Bridge];
/// Test hooks: fail, or stop and wait to be killed, at the named step.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const BRIDGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Inside the container, both proxy devices lead to the host's agent listener.
pub(crate) const BRIDGE_PORT_INSIDE: u16 = 6969;
const LLM_PORT_INSIDE: u16 = 4000;
/// The agent's own credentials inside its container (0600), read by its service.
pub(crate) const CREDENTIALS_PATH: &str = "/etc/taos/agent.env";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    BadInput(String),
    #[error(
        "no container runtime: install incus (see docs/architecture.md, scripts/dev-incus.sh)"
    )]
    NoRuntime,
    /// The agents' networks could not be set up (yet): no agent is deployed unfenced.
    #[error("agents can't be isolated: {0}")]
    NoIsolation(String),
    /// The host lacks the memory the agent may take (the reason says how much, and what to do).
    #[error("{0}")]
    NotEnoughMemory(String),
    #[error("no deploy for that agent")]
    NotFound,
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Credentials exist only in memory during the deploy: the database keeps their hashes.
struct Secrets {
    agent_token: String,
    llm_key: String,
}

/// The steps of a deploy on this runtime.
pub fn steps_for(rt: &ContainerRuntime) -> &'static [DeployStepName] {
    steps(rt.has_proxy_devices())
}

/// The steps of a deploy on a runtime with proxy devices (incus) or without (Docker).
fn steps(proxy_devices: bool) -> &'static [DeployStepName] {
    if proxy_devices {
        STEPS
    } else {
        DOCKER_STEPS
    }
}

fn fresh_steps(names: &[DeployStepName]) -> Vec<DeployStep> {
    names
        .iter()
        .map(|name| DeployStep {
            name: *name,
            state: StepState::Pending,
            started_at: None,
            finished_at: None,
            detail: None,
        })
        .collect()
}

fn validate(req: &DeployRequest) -> Result<Manifest, DeployError> {
    let manifest = frameworks::get(&req.framework).ok_or_else(|| {
        let known: Vec<String> = frameworks::all().into_iter().map(|m| m.id).collect();
        DeployError::BadInput(format!(
            "unknown framework {:?}; known: {}",
            req.framework,
            known.join(", ")
        ))
    })?;
    if let Some(mib) = req.memory_limit_mib {
        if !(32..=262_144).contains(&mib) {
            return Err(DeployError::BadInput(
                "memory_limit_mib must be 32-262144".into(),
            ));
        }
    }
    if let Some(cpus) = req.cpu_limit {
        if !(1..=256).contains(&cpus) {
            return Err(DeployError::BadInput("cpu_limit must be 1-256".into()));
        }
    }
    if let Some(gib) = req.disk_quota_gib {
        if !(1..=4096).contains(&gib) {
            return Err(DeployError::BadInput(
                "disk_quota_gib must be 1-4096".into(),
            ));
        }
    }
    Ok(manifest)
}

/// Starts a deploy: checks the request, mints the agent (status `deploying`) with its
/// credentials and DM channel, records the deploy, and runs the remaining steps in the
/// background. Returns the agent and the deploy id.
pub async fn start(
    host: &AgentHost,
    owner_member: &str,
    req: DeployRequest,
) -> Result<(AgentRecord, String), DeployError> {
    let manifest = validate(&req)?;
    let Some(runtime) = host.runtime.as_ref() else {
        return Err(DeployError::NoRuntime);
    };
    check_memory(host, runtime, &manifest, req.memory_limit_mib).await?;
    crate::isolation::ready(host)
        .await
        .map_err(DeployError::NoIsolation)?;
    // Models must be ones a provider serves.
    let available: Vec<String> = host
        .llm
        .models()
        .await
        .map(|m| m.into_iter().map(|m| m.name).collect())
        .unwrap_or_default();
    for model in std::iter::once(&req.model).chain(req.fallback_models.iter().flatten()) {
        if !available.contains(model) {
            return Err(DeployError::BadInput(format!(
                "no provider serves {model:?}; available: {}",
                if available.is_empty() {
                    "none (add a provider)".into()
                } else {
                    available.join(", ")
                }
            )));
        }
    }
    let new = NewAgent {
        name: req.name.clone(),
        emoji: req.emoji.clone(),
        color: req.color.clone(),
        model: Some(req.model.clone()),
        fallback_models: req.fallback_models.clone(),
        tool_policy: req.tool_policy,
        tool_overrides: req.tool_overrides.clone(),
    };
    // Slugs must be free among agents and among containers (an archived agent's container, or
    // one made by hand, keeps its name).
    let base = agents::slugify(&req.name);
    let mut reserved = Vec::new();
    for n in 1..=50 {
        let candidate = agents::slug_candidate(&base, n);
        if candidate.is_empty() {
            break;
        }
        // If incus can't say, count the name as taken rather than risk someone's container.
        if runtime
            .exists(&container_name(&candidate))
            .await
            .unwrap_or(true)
        {
            reserved.push(candidate);
        }
    }
    let id = Uuid::now_v7().to_string();
    let mut tx = host.db.begin().await?;
    let (agent, agent_token, llm_key) = agents::create_with(
        &mut tx,
        &new,
        &NewKind::Container {
            framework: manifest.id.clone(),
            network: req.network,
        },
        &reserved,
    )
    .await?;
    crate::chat::create_dm(&mut tx, &agent, owner_member).await?;
    let mut steps = fresh_steps(steps_for(runtime));
    steps[0].state = StepState::Done;
    steps[0].started_at = Some(from_ms(now_ms()));
    steps[0].finished_at = Some(from_ms(now_ms()));
    let now = now_ms();
    sqlx::query(
        "INSERT INTO deploys (id, agent_id, slug, framework, status, steps, request, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(agent.id.to_string())
    .bind(&agent.slug)
    .bind(&manifest.id)
    .bind(DeployOutcome::Running.as_str())
    .bind(serde_json::to_string(&steps).unwrap_or_default())
    .bind(serde_json::to_string(&req).unwrap_or_default())
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let quota_bytes = req.disk_quota_gib.unwrap_or(DEFAULT_DISK_QUOTA_GIB) * 1024 * 1024 * 1024;
    quota::add_agent(&mut tx, agent.id, quota_bytes).await?;
    tx.commit().await?;
    tracing::info!(agent = %agent.slug, deploy = %id, framework = %manifest.id, "deploy started");
    let background = host.clone();
    let run = Run {
        deploy_id: id.clone(),
        agent: agent.clone(),
        manifest,
        request: req,
        secrets: Secrets {
            agent_token,
            llm_key,
        },
    };
    tokio::spawn(async move { run.execute(&background).await });
    Ok((agent, id))
}

const MIB: u64 = 1024 * 1024;

/// Refuses, before anything is made, an agent the host can't hold: its memory limit (the
/// request's, or the framework's need) must fit in what the kernel says is available, less what
/// agents already running (or deploying) may still grow into under their own limits — their
/// current use is already out of `MemAvailable`.
async fn check_memory(
    host: &AgentHost,
    rt: &ContainerRuntime,
    manifest: &Manifest,
    requested_mib: Option<u64>,
) -> Result<(), DeployError> {
    let Some(free) = free_memory_bytes(host, rt).await? else {
        tracing::warn!("no MemAvailable in /proc/meminfo: deploying without checking free memory");
        return Ok(());
    };
    memory_fits(manifest, requested_mib, free / MIB)
}

/// Memory a new agent can have now: what the kernel says is available, less what agents
/// already running (or deploying) may still grow into under their limits. The deploy check and
/// the framework picker (`GET /api/host/capacity`) use this one figure. `None` without
/// `MemAvailable` in /proc/meminfo.
pub async fn free_memory_bytes(
    host: &AgentHost,
    rt: &ContainerRuntime,
) -> Result<Option<u64>, DeployError> {
    let Some(available) = crate::sys::memory_available_bytes() else {
        return Ok(None);
    };
    let reserved = reserved_memory_bytes(host, rt).await?;
    Ok(Some(available.saturating_sub(reserved)))
}

/// The part of their memory limits that agents which run (or are being deployed) don't use yet.
async fn reserved_memory_bytes(
    host: &AgentHost,
    rt: &ContainerRuntime,
) -> Result<u64, DeployError> {
    // Each agent's newest deploy request says the limit it was given (later rows win).
    let requests: Vec<(String, String)> = sqlx::query_as(
        "SELECT agent_id, request FROM deploys WHERE agent_id IS NOT NULL ORDER BY created_at",
    )
    .fetch_all(&host.db)
    .await?;
    let limits: BTreeMap<String, Option<u64>> = requests
        .into_iter()
        .map(|(agent, request)| {
            let limit = serde_json::from_str::<DeployRequest>(&request)
                .ok()
                .and_then(|r| r.memory_limit_mib);
            (agent, limit)
        })
        .collect();
    let limit_of = |agent: &AgentRecord| {
        limits
            .get(&agent.id.to_string())
            .copied()
            .flatten()
            .or_else(|| {
                agent
                    .framework
                    .as_deref()
                    .and_then(frameworks::get)
                    .map(|m| m.requires.ram_mb)
            })
            .unwrap_or(0)
    };
    // A container not made yet (deploying) or not running uses nothing of its limit. The
    // runtime is asked about all of them at once: a deploy shouldn't wait N round trips.
    let used = |agent: AgentRecord| async move {
        let used = match agent.container.as_deref() {
            Some(container) => rt
                .state(container)
                .await
                .ok()
                .filter(|s| s.running)
                .and_then(|s| s.memory_used_bytes)
                .unwrap_or(0),
            None => 0,
        };
        (agent, used)
    };
    let active = agents::list(&host.db).await?.into_iter().filter(|a| {
        matches!(
            a.status,
            AgentStatus::Deploying | AgentStatus::Running | AgentStatus::Restoring
        )
    });
    let reserved = futures_util::future::join_all(active.map(used))
        .await
        .into_iter()
        .map(|(agent, used)| (limit_of(&agent) * MIB).saturating_sub(used))
        .sum();
    Ok(reserved)
}

/// Whether an agent with this limit fits in `free_mib`; if not, why, in words, and what to do.
fn memory_fits(
    manifest: &Manifest,
    requested_mib: Option<u64>,
    free_mib: u64,
) -> Result<(), DeployError> {
    let need_mib = requested_mib.unwrap_or(manifest.requires.ram_mb);
    if need_mib <= free_mib {
        return Ok(());
    }
    let gb = |mib: u64| format!("{:.1} GB", mib as f64 / 1024.0);
    Err(DeployError::NotEnoughMemory(match requested_mib {
        None => format!(
            "{} needs {} of RAM; this host has {} available — stop other agents or choose a \
             smaller framework",
            manifest.id,
            gb(need_mib),
            gb(free_mib)
        ),
        Some(_) => format!(
            "this agent's memory limit is {}; this host has {} available — stop other agents \
             or set a smaller memory limit",
            gb(need_mib),
            gb(free_mib)
        ),
    }))
}

struct Run {
    deploy_id: String,
    agent: AgentRecord,
    manifest: Manifest,
    request: DeployRequest,
    secrets: Secrets,
}

impl Run {
    async fn execute(self, host: &AgentHost) {
        let Some(runtime) = host.runtime.as_ref() else {
            self.roll_back(host, "no container runtime").await;
            return;
        };
        for &step in &steps_for(runtime)[1..] {
            self.mark(host, step, StepState::Running, None).await;
            let result = match crate::faults::check("deploy", step.as_str()).await {
                Ok(()) => self.step(host, runtime, step).await,
                Err(injected) => Err(injected),
            };
            match result {
                Ok(detail) => self.mark(host, step, StepState::Done, detail).await,
                Err(reason) => {
                    tracing::warn!(agent = %self.agent.slug, %step, %reason, "deploy step failed; rolling back");
                    self.mark(host, step, StepState::Failed, Some(reason.clone()))
                        .await;
                    self.roll_back(host, &format!("{step}: {reason}")).await;
                    return;
                }
            }
        }
        // The agent runs whatever these two say; a failure to record it leaves the status
        // behind (the next lifecycle action or restart sets it), so it is logged, not undone.
        if let Err(e) = agents::set_status(&host.db, self.agent.id, AgentStatus::Running).await {
            tracing::error!(agent = %self.agent.slug, error = %e, "could not mark the deployed agent running");
        }
        if let Err(e) = finish(host, &self.deploy_id, DeployOutcome::Succeeded, None).await {
            tracing::error!(deploy = %self.deploy_id, error = %e, "could not record the finished deploy");
        }
        tracing::info!(agent = %self.agent.slug, "deploy finished: running");
    }

    /// Records a step's progress. The deploy goes on if that fails: the record is for people
    /// watching, and the outcome is recorded (and logged) at the end either way.
    async fn mark(
        &self,
        host: &AgentHost,
        step: DeployStepName,
        state: StepState,
        detail: Option<String>,
    ) {
        if let Err(e) = mark(host, &self.deploy_id, step, state, detail).await {
            tracing::error!(deploy = %self.deploy_id, %step, error = %e, "recording a deploy step failed");
        }
    }

    async fn roll_back(&self, host: &AgentHost, reason: &str) {
        if let Err(e) = rollback(host, &self.deploy_id, reason).await {
            // What is left is rolled back at the next start (`recover`).
            tracing::error!(deploy = %self.deploy_id, error = %e, "rolling back a failed deploy failed");
        }
    }

    async fn step(
        &self,
        host: &AgentHost,
        rt: &ContainerRuntime,
        step: DeployStepName,
    ) -> Result<Option<String>, String> {
        let name = container_name(&self.agent.slug);
        let e = |e: RuntimeError| e.to_string();
        match step {
            Credentials => Err("credentials are made when the deploy is accepted".into()),
            Container => {
                let mut spec = CreateSpec {
                    name: name.clone(),
                    image: self.manifest.image.clone(),
                    // Without limits in the request, the framework's own needs are the limits:
                    // an agent never gets the whole machine by default.
                    limits: Limits {
                        memory_mib: Some(
                            self.request
                                .memory_limit_mib
                                .unwrap_or(self.manifest.requires.ram_mb),
                        ),
                        cpus: Some(
                            self.request
                                .cpu_limit
                                .unwrap_or(self.manifest.requires.cpus),
                        ),
                        processes: Some(1000),
                    },
                    root_disk_mib: Some(
                        self.request
                            .disk_quota_gib
                            .unwrap_or(DEFAULT_DISK_QUOTA_GIB)
                            * 1024,
                    ),
                    env: BTreeMap::new(),
                    devices: proxy_devices(host.agent_addr),
                    network: Some(self.request.network),
                };
                if !rt.has_proxy_devices() {
                    // Docker: agents dial their network's gateway, and the sidecar, being the
                    // main process, reads its credentials from the file `configure` pushes.
                    spec.devices = Vec::new();
                    spec.env
                        .insert("TAOS_ENV_FILE".into(), CREDENTIALS_PATH.into());
                }
                rt.create(&spec).await.map_err(e)?;
                Ok(Some(format!(
                    "{name} from image {} on {}",
                    self.manifest.image,
                    rt.kind()
                )))
            }
            Start => {
                rt.start(&name).await.map_err(e)?;
                wait_for_boot(rt, &name).await?;
                Ok(None)
            }
            Configure => {
                let env = agent_env(
                    &host.agent_gateways,
                    &self.agent.slug,
                    &self.secrets.agent_token,
                    &self.secrets.llm_key,
                    &self.request.model,
                    self.request.fallback_models.as_deref().unwrap_or_default(),
                    self.request.network,
                );
                let env = with_mode(env, self.manifest.agent_mode());
                let env = with_acp(env, self.manifest.acp.as_ref());
                push_credentials(rt, &name, &env).await?;
                Ok(Some(format!("credentials in {CREDENTIALS_PATH} (0600)")))
            }
            Service => {
                restart_service(rt, &name, &self.manifest.service).await?;
                Ok(None)
            }
            Bridge => {
                let waited = wait_for_bridge(host, self.agent.id).await?;
                Ok(Some(format!("connected after {} ms", waited.as_millis())))
            }
        }
    }
}

fn proxy_devices(agent_addr: SocketAddr) -> Vec<Device> {
    vec![
        Device::Proxy {
            name: "taos-bridge".into(),
            listen: format!("tcp:127.0.0.1:{BRIDGE_PORT_INSIDE}"),
            connect: format!("tcp:{agent_addr}"),
        },
        Device::Proxy {
            name: "taos-llm".into(),
            listen: format!("tcp:127.0.0.1:{LLM_PORT_INSIDE}"),
            connect: format!("tcp:{agent_addr}"),
        },
    ]
}

/// The agent's folder in the host-only trace store (written by the host alone).
fn trace_dir(host: &AgentHost, slug: &str) -> PathBuf {
    host.traces.root().join(slug)
}

/// Puts the agent's own credentials where its service reads them (0600).
pub async fn push_credentials(rt: &ContainerRuntime, name: &str, env: &str) -> Result<(), String> {
    let e = |e: RuntimeError| e.to_string();
    // Under Docker the container has not started yet (the agent image has /etc/taos).
    if rt.has_proxy_devices() {
        rt.exec(
            name,
            &["mkdir", "-p", "/etc/taos"],
            &BTreeMap::new(),
            Duration::from_secs(20),
        )
        .await
        .map_err(e)?;
    }
    rt.push_file(name, CREDENTIALS_PATH, env.as_bytes(), 0o600)
        .await
        .map_err(e)
}

/// (Re)starts the framework's service inside the container.
/// Under Docker the service is the container's main process, so the container restarts.
pub async fn restart_service(
    rt: &ContainerRuntime,
    name: &str,
    service: &str,
) -> Result<(), String> {
    if !rt.has_proxy_devices() {
        rt.stop(name, false).await.map_err(|e| e.to_string())?;
        return rt.start(name).await.map_err(|e| e.to_string());
    }
    let out = rt
        .exec(
            name,
            &["systemctl", "restart", service],
            &BTreeMap::new(),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "systemctl restart {service}: {}",
            out.stderr.trim()
        ));
    }
    Ok(())
}

/// Waits until the agent's sidecar has its bridge stream open; returns how long that took.
pub async fn wait_for_bridge(host: &AgentHost, agent: Uuid) -> Result<Duration, String> {
    let started = Instant::now();
    while !host.bridge.is_connected(agent) {
        if started.elapsed() > BRIDGE_TIMEOUT {
            return Err("the agent never connected to the bridge".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed())
}

/// The service an agent's framework runs in its container.
pub fn service_of(agent: &AgentRecord) -> String {
    agent
        .framework
        .as_deref()
        .and_then(frameworks::get)
        .map(|m| m.service)
        .unwrap_or_else(|| "taos-agent".into())
}

/// Where, from inside its container, an agent reaches the host's bridge and LLM gateway:
/// the proxy devices on its own loopback (incus), or its network's gateway (Docker).
pub(crate) fn agent_endpoints(
    gateways: &[(AgentNetwork, SocketAddr)],
    network: AgentNetwork,
) -> (String, String) {
    let gateway = gateways
        .iter()
        .find(|(mode, _)| *mode == network)
        .map(|(_, addr)| *addr);
    match gateway {
        Some(addr) => (format!("http://{addr}"), format!("http://{addr}/v1")),
        None => (
            format!("http://127.0.0.1:{BRIDGE_PORT_INSIDE}"),
            format!("http://127.0.0.1:{LLM_PORT_INSIDE}/v1"),
        ),
    }
}

/// The sidecar's environment file: the agent's own credentials and where to reach the host.
pub fn agent_env(
    gateways: &[(AgentNetwork, SocketAddr)],
    slug: &str,
    agent_token: &str,
    llm_key: &str,
    model: &str,
    fallback: &[String],
    network: AgentNetwork,
) -> String {
    let (bridge_url, llm_url) = agent_endpoints(gateways, network);
    let mut env = format!(
        "TAOS_BRIDGE_URL={bridge_url}\nTAOS_AGENT_NAME={slug}\n\
         TAOS_AGENT_TOKEN={agent_token}\nOPENAI_BASE_URL={llm_url}\n\
         OPENAI_API_KEY={llm_key}\nTAOS_MODEL={model}\n"
    );
    if !fallback.is_empty() {
        env.push_str(&format!("TAOS_FALLBACK_MODELS={}\n", fallback.join(",")));
    }
    env
}

/// Adds the sidecar's mode (from the framework's manifest) to its environment file. `direct`
/// is the sidecar's default, so it is left out and older files read the same.
pub fn with_mode(mut env: String, mode: &str) -> String {
    if mode != "direct" {
        env.push_str(&format!("TAOS_AGENT_MODE={mode}\n"));
    }
    env
}

/// Adds an `acp` framework's agent (argv and environment, from its manifest) to the sidecar's
/// environment file, as JSON in single quotes: systemd and the sidecar both read a
/// single-quoted value literally, and a `'` inside is written as JSON's `\u0027`.
pub fn with_acp(mut env: String, acp: Option<&taos_proto::agents::AcpAgent>) -> String {
    let Some(acp) = acp else {
        return env;
    };
    let quoted = |value: String| format!("'{}'", value.replace('\'', "\\u0027"));
    if let Ok(command) = serde_json::to_string(&acp.command) {
        env.push_str(&format!("TAOS_ACP_COMMAND={}\n", quoted(command)));
    }
    if !acp.env.is_empty() {
        if let Ok(vars) = serde_json::to_string(&acp.env) {
            env.push_str(&format!("TAOS_ACP_ENV={}\n", quoted(vars)));
        }
    }
    env
}

/// Waits until the container's systemd is up (or degraded, which still runs services).
/// Under Docker there is no systemd: the container's main process is the sidecar.
pub async fn wait_for_boot(rt: &ContainerRuntime, name: &str) -> Result<(), String> {
    let started = Instant::now();
    if !rt.has_proxy_devices() {
        return Ok(());
    }
    loop {
        let out = rt
            .exec(
                name,
                &["systemctl", "is-system-running"],
                &BTreeMap::new(),
                Duration::from_secs(10),
            )
            .await;
        if let Ok(out) = out {
            let state = out.stdout.trim();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
        }
        if started.elapsed() > BOOT_TIMEOUT {
            return Err("the container did not finish booting".into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn load_steps(db: &Db, deploy_id: &str) -> Result<Vec<DeployStep>, sqlx::Error> {
    let text: String = sqlx::query_scalar("SELECT steps FROM deploys WHERE id = ?")
        .bind(deploy_id)
        .fetch_one(db)
        .await?;
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

async fn mark(
    host: &AgentHost,
    deploy_id: &str,
    step: DeployStepName,
    step_state: StepState,
    detail: Option<String>,
) -> Result<(), sqlx::Error> {
    let mut steps = load_steps(&host.db, deploy_id).await?;
    let now = from_ms(now_ms());
    if let Some(s) = steps.iter_mut().find(|s| s.name == step) {
        s.state = step_state;
        if step_state == StepState::Running {
            s.started_at = Some(now);
        } else {
            s.finished_at = Some(now);
        }
        if detail.is_some() {
            s.detail = detail;
        }
    }
    sqlx::query("UPDATE deploys SET steps = ?, updated_at = ? WHERE id = ?")
        .bind(serde_json::to_string(&steps).unwrap_or_default())
        .bind(now_ms())
        .bind(deploy_id)
        .execute(&host.db)
        .await?;
    let slug: Option<String> = sqlx::query_scalar("SELECT slug FROM deploys WHERE id = ?")
        .bind(deploy_id)
        .fetch_optional(&host.db)
        .await?;
    host.hub.announce(
            "deploy.progress",
            serde_json::json!({"deploy_id": deploy_id, "slug": slug, "step": step, "state": step_state}),
        ).await;
    Ok(())
}

async fn finish(
    host: &AgentHost,
    deploy_id: &str,
    status: DeployOutcome,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deploys SET status = ?, error = ?, updated_at = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(deploy_id)
        .execute(&host.db)
        .await?;
    host.hub
        .announce(
            "deploy.finished",
            serde_json::json!({"deploy_id": deploy_id, "status": status, "error": error}),
        )
        .await;
    Ok(())
}

/// Undoes a deploy: container, trace folder, agent (credentials, channels). Each part is
/// attempted even if another fails; the deploy ends `rolled_back` with the reason.
pub async fn rollback(host: &AgentHost, deploy_id: &str, reason: &str) -> Result<(), DeployError> {
    let row = sqlx::query("SELECT agent_id, slug FROM deploys WHERE id = ?")
        .bind(deploy_id)
        .fetch_optional(&host.db)
        .await?
        .ok_or(DeployError::NotFound)?;
    let agent_id: Option<String> = row.try_get("agent_id")?;
    let slug: String = row.try_get("slug")?;
    // Only a container this deploy made is removed: if `container` never finished, a
    // container with that name belongs to someone else (a restore, a hand-made one).
    let created = load_steps(&host.db, deploy_id)
        .await
        .map(|steps| {
            steps
                .iter()
                .any(|s| s.name == Container && s.state == StepState::Done)
        })
        .unwrap_or(false);
    if let (Some(rt), true) = (host.runtime.as_ref(), created) {
        let name = container_name(&slug);
        if rt.exists(&name).await.unwrap_or(false) {
            // A stop that fails leaves the delete below to say why.
            let _ = rt.stop(&name, true).await;
            if let Err(e) = rt.delete(&name).await {
                tracing::error!(container = %name, error = %e, "rollback could not delete the container");
            }
        }
    }
    let dir = trace_dir(host, &slug);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(folder = %dir.display(), error = %e, "rollback could not remove the agent's trace folder");
        }
    }
    if let Some(id) = agent_id.and_then(|id| Uuid::parse_str(&id).ok()) {
        agents::remove(&host.db, id).await?;
        // Its credentials went with the row: whatever was open on them ends now.
        host.bridge.kick(id);
        host.live.revoke_agent_llm(id);
    }
    finish(host, deploy_id, DeployOutcome::RolledBack, Some(reason)).await?;
    tracing::warn!(agent = %slug, %reason, "deploy rolled back");
    Ok(())
}

/// At start-up: deploys a previous run left unfinished are rolled back (their credentials
/// lived only in that process's memory, so they can't be resumed).
pub async fn recover(host: &AgentHost) {
    let unfinished: Vec<String> =
        sqlx::query_scalar("SELECT id FROM deploys WHERE status = 'running'")
            .fetch_all(&host.db)
            .await
            .unwrap_or_default();
    for id in unfinished {
        if let Err(e) = rollback(host, &id, "the host stopped during the deploy").await {
            tracing::error!(deploy = %id, error = %e, "rolling back an interrupted deploy failed");
        }
    }
}

/// At start-up: points every container agent's proxy devices at the agent listener as it is
/// bound now (its address may have changed since the container was made). Under Docker,
/// where agents dial their network's gateway, their credentials file is re-pointed instead.
pub async fn reconcile_proxies(host: &AgentHost) {
    let Some(rt) = host.runtime.as_ref() else {
        return;
    };
    let Ok(list) = agents::list(&host.db).await else {
        return;
    };
    for agent in list {
        let Some(container) = agent.container.as_deref() else {
            continue;
        };
        if !rt.exists(container).await.unwrap_or(false) {
            continue;
        }
        if !rt.has_proxy_devices() {
            match repoint_credentials(host, rt, &agent, container).await {
                Ok(true) => {
                    tracing::info!(agent = %agent.slug, "the agent's listener address changed; its credentials file now names the current one")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(agent = %agent.slug, error = %e, "could not re-point a Docker agent at the agent listener")
                }
            }
            continue;
        }
        if let Err(e) = repoint_proxies(host, rt, container).await {
            tracing::warn!(agent = %agent.slug, error = %e, "could not re-point a proxy device");
        }
    }
}

/// The largest credentials file the host reads back: the ones it writes are a few hundred
/// bytes, and the agent can write this file (hostile input).
const MAX_CREDENTIALS_BYTES: usize = 64 * 1024;

/// Docker: an agent's credentials file names the host's listener at its network's gateway
/// (`agent_env`). A host restored from a backup onto another Docker (or with another
/// `agent_bind`) may listen elsewhere: the file's `TAOS_BRIDGE_URL` and `OPENAI_BASE_URL`
/// are set to where deploy would point them now (its other lines, the credentials, kept),
/// and a running container is restarted so its sidecar reads them. True if it changed.
pub async fn repoint_credentials(
    host: &AgentHost,
    rt: &ContainerRuntime,
    agent: &AgentRecord,
    container: &str,
) -> Result<bool, String> {
    let (bridge_url, llm_url) = agent_endpoints(&host.agent_gateways, agent.network);
    let text = read_credentials(rt, container).await?;
    let Some(rewritten) = with_endpoints(&text, &bridge_url, &llm_url) else {
        return Ok(false);
    };
    push_credentials(rt, container, &rewritten).await?;
    if rt
        .state(container)
        .await
        .map_err(|e| e.to_string())?
        .running
    {
        restart_service(rt, container, &service_of(agent)).await?;
    }
    Ok(true)
}

/// A container's credentials file as text (the agent can write it: size-capped, and read
/// through the runtime's API from the container, running or not).
pub(crate) async fn read_credentials(
    rt: &ContainerRuntime,
    container: &str,
) -> Result<String, String> {
    let bytes = rt
        .pull_file(container, CREDENTIALS_PATH)
        .await
        .map_err(|e| format!("cannot read {CREDENTIALS_PATH}: {e}"))?;
    if bytes.len() > MAX_CREDENTIALS_BYTES {
        return Err(format!(
            "{CREDENTIALS_PATH} is {} bytes, more than a credentials file can be",
            bytes.len()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{CREDENTIALS_PATH} is not UTF-8"))
}

/// The credentials file with its two addresses set (added if missing), or None if they are
/// already those.
fn with_endpoints(text: &str, bridge_url: &str, llm_url: &str) -> Option<String> {
    let wanted = [
        ("TAOS_BRIDGE_URL=", bridge_url),
        ("OPENAI_BASE_URL=", llm_url),
    ];
    let mut seen = [false; 2];
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        match wanted.iter().position(|(key, _)| line.starts_with(key)) {
            Some(i) => {
                let line_wanted = format!("{}{}", wanted[i].0, wanted[i].1);
                changed |= line != line_wanted || seen[i];
                if !seen[i] {
                    out.push_str(&line_wanted);
                    out.push('\n');
                }
                seen[i] = true;
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (key, value)) in wanted.iter().enumerate() {
        if !seen[i] {
            out.push_str(&format!("{key}{value}\n"));
            changed = true;
        }
    }
    changed.then_some(out)
}

/// Points a container's proxy devices at the agent listener as it is bound now (a restart may
/// have moved it). Runtimes without proxy devices have nothing to re-point.
pub async fn repoint_proxies(
    host: &AgentHost,
    rt: &ContainerRuntime,
    container: &str,
) -> Result<(), RuntimeError> {
    if !rt.has_proxy_devices() {
        return Ok(());
    }
    for device in proxy_devices(host.agent_addr) {
        rt.add_device(container, &device).await?;
    }
    Ok(())
}

/// The newest deploy of an agent slug.
pub async fn status(db: &Db, slug: &str) -> Result<DeployStatus, DeployError> {
    let row = sqlx::query(
        "SELECT id, slug, framework, status, steps, error, created_at, updated_at FROM deploys \
         WHERE slug = ? ORDER BY created_at DESC LIMIT 1",
    )
    .bind(slug)
    .fetch_optional(db)
    .await?
    .ok_or(DeployError::NotFound)?;
    let steps: String = row.try_get("steps")?;
    Ok(DeployStatus {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        framework: row.try_get("framework")?,
        status: row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e: taos_proto::text_enum::UnknownVariant| sqlx::Error::Decode(Box::new(e)))?,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        error: row.try_get("error")?,
        created_at: from_ms(row.try_get("created_at")?),
        updated_at: from_ms(row.try_get("updated_at")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(framework: &str) -> DeployRequest {
        DeployRequest {
            name: "Ada".into(),
            framework: framework.into(),
            model: "m".into(),
            fallback_models: None,
            emoji: None,
            color: None,
            memory_limit_mib: None,
            cpu_limit: None,
            disk_quota_gib: None,
            network: AgentNetwork::default(),
            tool_policy: None,
            tool_overrides: None,
        }
    }

    #[test]
    fn steps_start_with_credentials_and_end_with_the_bridge() {
        // `start` marks the first step done itself (the credentials are minted with the row),
        // and `execute` runs the rest: both rely on this order.
        for proxy_devices in [true, false] {
            let names = steps(proxy_devices);
            assert_eq!(names.first(), Some(&Credentials));
            assert_eq!(names.last(), Some(&Bridge));
            assert_eq!(names[1], Container);
        }
        assert_eq!(steps(true), STEPS);
        assert_eq!(steps(false), DOCKER_STEPS);
    }

    #[test]
    fn a_credentials_file_is_re_pointed_keeping_its_other_lines() {
        let file = "TAOS_BRIDGE_URL=http://172.30.0.1:6970\nTAOS_AGENT_NAME=ada\n\
                    TAOS_AGENT_TOKEN=taos_ag_x\nOPENAI_BASE_URL=http://172.30.0.1:6970/v1\n";
        assert_eq!(
            with_endpoints(file, "http://172.30.0.1:6970", "http://172.30.0.1:6970/v1"),
            None,
            "unchanged"
        );
        assert_eq!(
            with_endpoints(file, "http://10.9.0.1:6970", "http://10.9.0.1:6970/v1").as_deref(),
            Some(
                "TAOS_BRIDGE_URL=http://10.9.0.1:6970\nTAOS_AGENT_NAME=ada\n\
                 TAOS_AGENT_TOKEN=taos_ag_x\nOPENAI_BASE_URL=http://10.9.0.1:6970/v1\n"
            )
        );
        // A second line of one key (the agent can write this file) is dropped, and a
        // missing one added.
        assert_eq!(
            with_endpoints(
                "TAOS_BRIDGE_URL=http://a\nTAOS_BRIDGE_URL=http://evil\nX=1\n",
                "http://b",
                "http://b/v1"
            )
            .as_deref(),
            Some("TAOS_BRIDGE_URL=http://b\nX=1\nOPENAI_BASE_URL=http://b/v1\n")
        );
    }

    #[test]
    fn docker_gets_its_credentials_before_the_first_start_and_has_no_service_step() {
        let pos = |names: &[DeployStepName], step| names.iter().position(|s| *s == step);
        assert!(pos(DOCKER_STEPS, Configure) < pos(DOCKER_STEPS, Start));
        assert_eq!(pos(DOCKER_STEPS, Service), None);
        // incus boots systemd first, then writes the credentials and restarts the service.
        assert!(pos(STEPS, Start) < pos(STEPS, Configure));
        assert!(pos(STEPS, Configure) < pos(STEPS, Service));
    }

    #[test]
    fn fresh_steps_are_all_pending() {
        let fresh = fresh_steps(STEPS);
        assert_eq!(fresh.len(), STEPS.len());
        for (step, name) in fresh.iter().zip(STEPS) {
            assert_eq!(step.name, *name);
            assert_eq!(step.state, StepState::Pending);
            assert!(step.started_at.is_none() && step.finished_at.is_none());
            assert!(step.detail.is_none());
        }
    }

    #[test]
    fn requests_outside_the_limits_are_refused() {
        assert_eq!(
            validate(&request("direct")).map(|m| m.id).ok(),
            Some("direct".into())
        );
        let refused = |req: DeployRequest| matches!(validate(&req), Err(DeployError::BadInput(_)));
        assert!(refused(request("no-such-framework")));
        for (mib, ok) in [(31, false), (32, true), (262_144, true), (262_145, false)] {
            let mut req = request("direct");
            req.memory_limit_mib = Some(mib);
            assert_eq!(!refused(req), ok, "memory_limit_mib {mib}");
        }
        for (cpus, ok) in [(0, false), (1, true), (256, true), (257, false)] {
            let mut req = request("direct");
            req.cpu_limit = Some(cpus);
            assert_eq!(!refused(req), ok, "cpu_limit {cpus}");
        }
        for (gib, ok) in [(0, false), (1, true), (4096, true), (4097, false)] {
            let mut req = request("direct");
            req.disk_quota_gib = Some(gib);
            assert_eq!(!refused(req), ok, "disk_quota_gib {gib}");
        }
    }

    #[test]
    fn a_deploy_needs_its_memory_limit_free_and_says_what_to_do_when_it_is_not() {
        let openclaw = frameworks::get("openclaw").expect("the openclaw manifest");
        assert_eq!(openclaw.requires.ram_mb, 2048);
        // Without a limit in the request, the framework's need is the limit and the need.
        assert!(memory_fits(&openclaw, None, 2048).is_ok());
        match memory_fits(&openclaw, None, 921) {
            Err(DeployError::NotEnoughMemory(why)) => assert_eq!(
                why,
                "openclaw needs 2.0 GB of RAM; this host has 0.9 GB available — stop other \
                 agents or choose a smaller framework"
            ),
            other => panic!("not refused: {other:?}"),
        }
        // A limit in the request is what the agent may take, above or below the need.
        assert!(memory_fits(&openclaw, Some(1024), 1100).is_ok());
        match memory_fits(&openclaw, Some(4096), 2048) {
            Err(DeployError::NotEnoughMemory(why)) => assert_eq!(
                why,
                "this agent's memory limit is 4.0 GB; this host has 2.0 GB available — stop \
                 other agents or set a smaller memory limit"
            ),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn both_proxy_devices_lead_to_the_agent_listener() {
        let addr: SocketAddr = "127.0.0.1:6970".parse().expect("an address");
        let devices = proxy_devices(addr);
        let listens: Vec<&str> = devices
            .iter()
            .map(|d| match d {
                Device::Proxy {
                    listen, connect, ..
                } => {
                    assert_eq!(connect, "tcp:127.0.0.1:6970");
                    listen.as_str()
                }
                other => panic!("not a proxy device: {other:?}"),
            })
            .collect();
        assert_eq!(listens, ["tcp:127.0.0.1:6969", "tcp:127.0.0.1:4000"]);
    }

    #[test]
    fn agents_reach_the_host_through_their_networks_gateway_or_their_own_loopback() {
        let lan: SocketAddr = "172.30.1.1:6970".parse().expect("an address");
        let gateways = [(AgentNetwork::Lan, lan)];
        assert_eq!(
            agent_endpoints(&gateways, AgentNetwork::Lan),
            (
                "http://172.30.1.1:6970".to_string(),
                "http://172.30.1.1:6970/v1".to_string()
            )
        );
        // No gateway for that network (incus): the proxy devices inside the container.
        assert_eq!(
            agent_endpoints(&gateways, AgentNetwork::Internet),
            (
                "http://127.0.0.1:6969".to_string(),
                "http://127.0.0.1:4000/v1".to_string()
            )
        );
    }

    #[test]
    fn the_env_file_carries_the_agents_own_credentials_and_fallbacks() {
        let env = agent_env(
            &[],
            "ada",
            "taos_ag_x",
            "taos_llm_y",
            "m1",
            &[],
            AgentNetwork::Internet,
        );
        assert_eq!(
            env,
            "TAOS_BRIDGE_URL=http://127.0.0.1:6969\nTAOS_AGENT_NAME=ada\n\
             TAOS_AGENT_TOKEN=taos_ag_x\nOPENAI_BASE_URL=http://127.0.0.1:4000/v1\n\
             OPENAI_API_KEY=taos_llm_y\nTAOS_MODEL=m1\n"
        );
        let fallback = ["m2".to_string(), "m3".to_string()];
        let env = agent_env(
            &[],
            "ada",
            "t",
            "k",
            "m1",
            &fallback,
            AgentNetwork::Internet,
        );
        assert!(env.ends_with("TAOS_MODEL=m1\nTAOS_FALLBACK_MODELS=m2,m3\n"));
        assert_eq!(with_mode(env.clone(), "direct"), env);
        assert!(with_mode(env.clone(), "tools")
            .ends_with("TAOS_FALLBACK_MODELS=m2,m3\nTAOS_AGENT_MODE=tools\n"));
        assert_eq!(with_acp(env.clone(), None), env);
        let acp = taos_proto::agents::AcpAgent {
            command: vec!["agent".into(), "it's".into()],
            env: [("KEY".to_string(), "${OPENAI_API_KEY}".to_string())].into(),
        };
        let with = with_acp(String::new(), Some(&acp));
        assert_eq!(
            with,
            "TAOS_ACP_COMMAND='[\"agent\",\"it\\u0027s\"]'\nTAOS_ACP_ENV='{\"KEY\":\"${OPENAI_API_KEY}\"}'\n"
        );
        // Without its single quotes (which systemd and the sidecar take off), it is the JSON.
        let value = with
            .lines()
            .find_map(|l| l.strip_prefix("TAOS_ACP_COMMAND='"))
            .and_then(|v| v.strip_suffix('\''))
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<String>>(value).unwrap(),
            acp.command
        );
    }
}
