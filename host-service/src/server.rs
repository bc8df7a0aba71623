//! Starting the host: open the data dir, the database and the TLS identity, bind both
//! listeners, serve until SIGTERM/SIGINT, then drain.

pub mod listener;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::agents::{AgentHost, AgentHostInner};
use crate::auth::ratelimit::LoginLimiter;
use crate::auth::{local_token, setup_code, users};
use crate::config::Config;
use crate::http::{self, AppInner, AppState};
use crate::metrics::Metrics;
use crate::notify::EventHub;
use crate::{db, fsutil, sys, tls};
use listener::ListenerOptions;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a phone on the LAN can reach the public listener: the bind address itself, or, for a
/// wildcard bind, every interface address (LAN first, loopback last).
pub fn pairing_addresses(bind: SocketAddr) -> Vec<String> {
    if !bind.ip().is_unspecified() {
        return vec![bind.to_string()];
    }
    sys::interface_addresses()
        .into_iter()
        .filter(|ip| bind.is_ipv6() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(ip, bind.port()).to_string())
        .collect()
}

pub fn host_name(config: &Config) -> String {
    if config.server.host_name.trim().is_empty() {
        sys::host_name()
    } else {
        config.server.host_name.trim().to_string()
    }
}

/// Everything `serve` and the CLI commands open: private data dir, config, DB, TLS identity.
pub struct Opened {
    pub data_dir: PathBuf,
    pub config: Config,
    pub db: db::Db,
    pub identity: tls::TlsIdentity,
}

pub async fn open(data_dir: &Path) -> anyhow::Result<Opened> {
    fsutil::ensure_private_dir(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    let config = crate::config::load_or_init(data_dir)?;
    snapshot_before_migration(data_dir, &config).await;
    let db = db::open(data_dir).await?;
    let identity = tls::load_or_create(data_dir, &host_name(&config), &sys::interface_addresses())?;
    Ok(Opened {
        data_dir: data_dir.to_path_buf(),
        config,
        db,
        identity,
    })
}

/// A read-only snapshot of the data dir before the database is migrated to a newer schema,
/// where the data dir is a btrfs subvolume. Not being able to is logged, not fatal: the
/// migration is transactional and backups exist; refusing to start would leave the board dead.
async fn snapshot_before_migration(data_dir: &Path, config: &Config) {
    use crate::snapshots;
    match db::needs_migration(data_dir).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the database needs migrating");
            return;
        }
    }
    if !matches!(snapshots::support(data_dir), Ok(snapshots::Support::Ready)) {
        return;
    }
    match snapshots::take(data_dir, snapshots::Reason::Migration).await {
        Ok(s) => {
            tracing::info!(snapshot = %s.name, "snapshot taken before migrating the database");
            if let Err(e) = snapshots::prune(data_dir, config.snapshots.retention()).await {
                tracing::warn!(error = %e, "could not delete old snapshots");
            }
        }
        Err(e) => tracing::error!(error = %e, "no snapshot before migrating the database"),
    }
}

/// While there is no owner, makes sure a setup code exists and returns it; once there is one,
/// removes a leftover code.
async fn prepare_setup_code(db: &db::Db, data_dir: &Path) -> anyhow::Result<Option<String>> {
    if users::count(db).await? > 0 {
        setup_code::remove(data_dir)?;
        return Ok(None);
    }
    let code = setup_code::load_or_create(data_dir)?;
    tracing::info!(
        file = %setup_code::path(data_dir).display(),
        "no owner yet: creating one in the browser needs the setup code printed on stdout and \
         kept in this file (`taos-host user create` on this machine needs none)"
    );
    Ok(Some(code))
}

/// Seals trace buckets older than two hours, every ten minutes.
fn spawn_trace_sealer(state: AppState) {
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            match state.traces.seal_old_buckets(chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(buckets = n, "sealed old trace buckets"),
                Err(e) => tracing::warn!(error = %e, "sealing trace buckets failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// How often the host looks whether this machine's networks changed (for the firewall).
const NETWORK_CHECK: Duration = Duration::from_secs(10);

/// Keeps the public port open to this machine's LAN when its networks change (a new DHCP
/// range, another network): setup derived the LAN from them, so the running host follows
/// them and tells the owner. Only while `[firewall] lan` is unset and the saved rules are
/// setup's derived ones (`host_firewall::follow_networks`).
/// At start: saved firewall rules that name other ports than `taos.toml`'s (its `[server]
/// bind` or `agent_bind` changed) are loaded again with the new ports and the same LAN, and
/// the owner is told. Only root can load rules.
async fn follow_firewall_ports(state: &AppState) {
    use taos_proto::events::{Level, NewNotification};
    if !crate::sys::is_root() {
        return;
    }
    let public = state.config.server.bind.port();
    let agent = state.config.server.agent_bind.port();
    let dir = state.data_dir.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        crate::host_firewall::follow_ports(&dir, public, agent)
    })
    .await;
    let note = match outcome {
        Ok(Ok(None)) => return,
        Ok(Ok(Some(_))) => {
            tracing::info!(
                public,
                agent,
                "the ports changed: the firewall follows them"
            );
            NewNotification {
                level: Level::Info,
                title: "The firewall follows the new ports".into(),
                message: format!(
                    "taos.toml names other ports than the saved firewall rules did, so the \
                     rules were loaded again for port {public} (public, LAN only) and {agent} \
                     (agents only), with the same LAN."
                ),
                source: Some("firewall".into()),
                data: Some(serde_json::json!({"public_port": public, "agent_port": agent})),
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot move the firewall to the configured ports");
            NewNotification {
                level: Level::Error,
                title: "The firewall does not guard the configured ports".into(),
                message: format!(
                    "taos.toml names other ports than the saved firewall rules, and the rules \
                     could not be loaded again for port {public} and {agent}: {e}. Run `sudo \
                     taos-host firewall apply` on the machine."
                ),
                source: Some("firewall".into()),
                data: None,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "the firewall's port check panicked");
            return;
        }
    };
    if let Err(e) = state.hub.notify(note).await {
        tracing::error!(error = %e, "cannot store the firewall notification");
    }
}

fn spawn_firewall_follower(state: AppState) {
    use taos_proto::events::{Level, NewNotification};
    if !state.config.firewall.lan.is_empty() || !crate::sys::is_root() {
        return;
    }
    let public = state.config.server.bind.port();
    let agent = state.config.server.agent_bind.port();
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(NETWORK_CHECK) => {}
                _ = shutdown.changed() => return,
            }
            let dir = state.data_dir.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let networks: Vec<String> =
                    crate::setup::net::derive_lan(&crate::setup::net::gather_addresses())
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                crate::host_firewall::follow_networks(&dir, public, agent, &networks)
            })
            .await;
            let note = match outcome {
                Ok(Ok(None)) => {
                    last_error = None;
                    continue;
                }
                Ok(Ok(Some(lan))) => {
                    last_error = None;
                    let lan: Vec<String> = lan.iter().map(ToString::to_string).collect();
                    tracing::info!(lan = %lan.join(", "), "this machine's networks changed: the firewall follows them");
                    NewNotification {
                        level: Level::Info,
                        title: "The firewall follows the new network".into(),
                        message: format!(
                            "This machine's networks changed, so port {public} is now open to \
                             {} (and no longer to the networks it left). To fix the LAN \
                             instead, set [firewall] lan in taos.toml and run `sudo taos-host \
                             firewall apply --lan …`.",
                            lan.join(", ")
                        ),
                        source: Some("firewall".into()),
                        data: Some(serde_json::json!({"lan": lan})),
                    }
                }
                Ok(Err(e)) => {
                    let why = e.to_string();
                    tracing::warn!(error = %why, "cannot update the firewall for this machine's networks");
                    // Once per distinct failure, not at every check.
                    if last_error.as_deref() == Some(why.as_str()) {
                        continue;
                    }
                    last_error = Some(why.clone());
                    NewNotification {
                        level: Level::Error,
                        title: "The firewall could not follow the new network".into(),
                        message: format!(
                            "This machine's networks changed, but the rules for them could not \
                             be loaded: {why}. The LAN may not reach the host; run `sudo \
                             taos-host setup` on the machine."
                        ),
                        source: Some("firewall".into()),
                        data: None,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the firewall check panicked");
                    continue;
                }
            };
            if let Err(e) = state.hub.notify(note).await {
                tracing::error!(error = %e, "cannot store the firewall notification");
            }
        }
    });
}

/// Tells the owner when an agent's trace quota costs data (oldest hours deleted) or refuses new
/// events.
fn spawn_quota_notices(
    state: AppState,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<crate::trace::QuotaNotice>,
) {
    use crate::trace::QuotaNotice;
    use taos_proto::events::{Level, NewNotification};
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
            let new = match notice {
                QuotaNotice::Deleted {
                    slug,
                    buckets,
                    bytes_freed,
                    bytes_kept,
                    quota_bytes,
                } => NewNotification {
                    level: Level::Warning,
                    title: format!("{slug}'s oldest traces were deleted"),
                    message: format!(
                        "Its traces reached their quota of {}: {} hour(s) from {} to {} \
                         ({}) were deleted; {} kept. Raise [traces] quota_mib to keep more.",
                        mib(quota_bytes),
                        buckets.len(),
                        buckets.first().map(String::as_str).unwrap_or_default(),
                        buckets.last().map(String::as_str).unwrap_or_default(),
                        mib(bytes_freed),
                        mib(bytes_kept),
                    ),
                    source: Some("trace.retention".into()),
                    data: Some(serde_json::json!({
                        "agent": slug,
                        "deleted_hours": buckets,
                        "bytes_freed": bytes_freed,
                        "bytes_kept": bytes_kept,
                        "quota_bytes": quota_bytes,
                    })),
                },
                QuotaNotice::Full { slug, quota_bytes } => NewNotification {
                    level: Level::Error,
                    title: format!("{slug}'s trace quota is full"),
                    message: format!(
                        "Its traces of the last hours alone fill the quota of {}, so its new \
                         trace events are refused until the oldest of those hours closes. \
                         Raise [traces] quota_mib, or look at what it is logging.",
                        mib(quota_bytes)
                    ),
                    source: Some("trace.retention".into()),
                    data: Some(serde_json::json!({"agent": slug, "quota_bytes": quota_bytes})),
                },
            };
            if let Err(e) = state.hub.notify(new).await {
                tracing::warn!(error = %e, "cannot post the trace quota notification");
            }
        }
    });
}

/// Waits for SIGTERM (listened for by `term`, made before the host says it is ready: a SIGTERM
/// that came between "ready" and listening would kill the host without a drain) or SIGINT.
async fn shutdown_signal(term: std::io::Result<tokio::signal::unix::Signal>) {
    let mut term = match term {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// Runs the host until a shutdown signal: the listeners are bound first (the state needs their
/// addresses), then the state is built, the background tasks start, the listeners serve, and
/// a signal drains them.
pub async fn serve(opened: Opened) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let local_token = local_token::load_or_create(&opened.data_dir)?;
    let first_run_code = prepare_setup_code(&opened.db, &opened.data_dir).await?;
    let bound = bind(&opened.config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let built = build(opened, local_token, &bound, started_at, shutdown_rx).await?;
    let Built {
        state,
        agents,
        identity,
        supervisor,
        isolation_tx,
        quota_notices,
        gateway_listeners,
    } = built;
    // Reservations of LLM calls that were in flight when the last host died; before the
    // gateway serves, so none of them is live.
    let stale = crate::llm::budget::settle_stale(&state.db).await?;
    if stale > 0 {
        tracing::warn!(
            calls = stale,
            "settled LLM calls left open by the last run at their reserved cost"
        );
    }
    state.llm.reload().await?;
    // Before the API serves, so a new run can't be taken for one the last host left behind.
    state.backups.recover().await?;
    state.backups.recover_drills().await?;
    state.backups.recover_agent_restore().await;
    state.backups.recover_archive_moves().await;
    state.backups.recover_passphrase_change().await;
    let serving = start_serving(&state, &identity, bound, gateway_listeners)?;
    // A scheduled backup whose time passed while the host was off runs once now (recorded as
    // `missed`), and the schedule loop takes the next ones.
    if let Err(e) = state.backups.run_missed().await {
        tracing::error!(error = %e, "cannot start the missed scheduled backup");
    }
    tokio::spawn(state.backups.clone().schedule_loop());
    if matches!(
        crate::snapshots::support(&state.data_dir),
        Ok(crate::snapshots::Support::Ready)
    ) {
        tokio::spawn(crate::snapshots::run_hourly(
            state.data_dir.clone(),
            state.config.snapshots.retention(),
        ));
    }
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    announce_ready(&state, &serving, started_at, first_run_code);
    // Background work starts once the listeners serve: it only ever raced with them, and on
    // two cores it (and the runtime daemon it calls) would otherwise delay the first answer.
    spawn_background(&state, &agents, &supervisor, isolation_tx, quota_notices);

    shutdown_signal(term).await;
    // Nobody may be listening any more (every task already ended): nothing to tell then.
    let _ = shutdown_tx.send(true);
    serving.drain().await;
    crate::isolation::release(&agents).await;
    state.traces.shutdown().await;
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Both listeners, bound before anything else is built (the state holds their addresses).
struct Bound {
    public: tokio::net::TcpListener,
    agent: tokio::net::TcpListener,
    public_addr: SocketAddr,
    agent_addr: SocketAddr,
}

fn bind(config: &Config) -> anyhow::Result<Bound> {
    let public = listener::bind(config.server.bind)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.server.bind))?;
    let agent = listener::bind(config.server.agent_bind)
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.server.agent_bind))?;
    Ok(Bound {
        public_addr: public.local_addr()?,
        agent_addr: agent.local_addr()?,
        public,
        agent,
    })
}

/// The state and what the later phases take from building it.
struct Built {
    state: AppState,
    agents: AgentHost,
    identity: tls::TlsIdentity,
    supervisor: crate::llm::supervisor::Supervisor,
    isolation_tx: watch::Sender<crate::isolation::Readiness>,
    quota_notices: tokio::sync::mpsc::UnboundedReceiver<crate::trace::QuotaNotice>,
    /// Docker: the agent listener on each agent network's gateway.
    gateway_listeners: Vec<(taos_proto::agents::AgentNetwork, tokio::net::TcpListener)>,
}

/// Builds the shared state: the trace store (moved to its host-only folder first), the LLM
/// service, the container runtime and the agents' networks, chat, the bridge, the agent
/// lifecycle's `AgentHost` and the HTTP layer's `AppState` around it.
async fn build(
    opened: Opened,
    local_token: String,
    bound: &Bound,
    started_at: Instant,
    shutdown_rx: watch::Receiver<bool>,
) -> anyhow::Result<Built> {
    let Opened {
        data_dir,
        config,
        db,
        identity,
    } = opened;
    let tls_status = if config.server.insecure_http {
        "disabled"
    } else {
        "ok"
    };
    // The store is host-only; a store left in the old, container-mounted place is copied over
    // first (what can be checked, nothing followed). If that fails the host must not start: an
    // empty new store would mark the migration done and strand the old traces.
    let trace_quota = config.traces.quota_mib.saturating_mul(1024 * 1024);
    crate::trace::legacy::migrate(&data_dir, Some(trace_quota))
        .await
        .map_err(|e| anyhow::anyhow!("cannot move the trace store to its host-only folder: {e}"))?;
    let (quota_notices_tx, quota_notices) = tokio::sync::mpsc::unbounded_channel();
    let traces = crate::trace::TraceStore::open_with(
        data_dir.join(crate::trace::legacy::STORE_DIR),
        crate::trace::StoreLimits {
            quota_bytes: Some(trace_quota),
            notices: Some(quota_notices_tx),
        },
    )?;
    let litellm_bin = crate::llm::supervisor::find_litellm(&config.llm.litellm_bin);
    let supervisor = crate::llm::supervisor::Supervisor::new(
        &data_dir,
        litellm_bin,
        config.llm.litellm_port,
        &config.llm.litellm_user,
    )?;
    let llm = crate::llm::Llm::new(
        db.clone(),
        supervisor.clone(),
        crate::secrets::SecretBox::load_or_create(&data_dir)?,
        Duration::from_secs(config.llm.models_cache_seconds),
        usize::try_from(config.llm.trace_content_bytes).unwrap_or(4096),
    );
    let mut detected = crate::runtime::detect(&config.runtime).await;
    // Agents get networks of their own, set up at start rather than per deploy (incus: in the
    // background, see `isolation::spawn_prepare`). Under Docker (no proxy devices) the agent
    // listener also binds on each agent network's gateway (same port; agent tokens still guard
    // it), so that happens now; if it can't, the host runs without a runtime and says why,
    // rather than deploy agents with open networks.
    let mut prepared = crate::isolation::Prepared::default();
    let mut readiness = crate::isolation::Readiness::Ready;
    if let Some(runtime) = &detected.runtime {
        match crate::isolation::prepare(runtime, &config.runtime, bound.agent_addr.port()).await {
            Ok((done, ready)) => {
                prepared = done;
                readiness = ready;
            }
            Err(why) => {
                detected = crate::runtime::Detected {
                    runtime: None,
                    description: format!("no container runtime: {why}"),
                };
            }
        }
    }
    if detected.runtime.is_some() {
        tracing::info!(runtime = %detected.description, "container runtime");
    } else {
        tracing::warn!(runtime = %detected.description, "container runtime");
    }
    let mut agent_gateways = Vec::new();
    for (mode, tcp) in &prepared.listeners {
        agent_gateways.push((*mode, tcp.local_addr()?));
    }
    let (isolation_tx, isolation_rx) = watch::channel(readiness);
    let runtime_health = match (&detected.runtime, agent_gateways.first()) {
        (Some(_), Some((_, addr))) => format!("ok: {} (agents via {addr})", detected.description),
        (Some(_), None) => format!("ok: {}", detected.description),
        (None, _) => format!("disabled: {}", detected.description),
    };
    let hub = Arc::new(EventHub::new(db.clone()));
    let (bridge, presence) = crate::bridge::Bridge::new(db.clone(), traces.clone());
    let bridge = Arc::new(bridge);
    tokio::spawn(crate::bridge::publish_presence(presence, hub.clone()));
    let chat = Arc::new(crate::chat::Chat::new(db.clone()));
    let llm = Arc::new(llm);
    let live = crate::auth::live::Live::new();
    let agents = AgentHost::new(AgentHostInner {
        db: db.clone(),
        data_dir: data_dir.clone(),
        runtime: detected.runtime,
        runtime_config: config.runtime.clone(),
        chat: chat.clone(),
        bridge: bridge.clone(),
        traces: traces.clone(),
        hub: hub.clone(),
        llm: llm.clone(),
        live: live.clone(),
        agent_addr: bound.agent_addr,
        agent_gateways,
        agent_bridges: prepared.bridges,
        isolation: isolation_rx,
        shutdown: shutdown_rx.clone(),
    });
    let backups = crate::backup::Backups::new(
        db.clone(),
        data_dir.clone(),
        crate::secrets::SecretBox::load_or_create(&data_dir)?,
        hub.clone(),
        traces.clone(),
        agents.clone(),
        chat.hub.activity(),
    );
    let approvals = Arc::new(crate::approvals::Approvals::new(
        db.clone(),
        bridge.clone(),
        chat.clone(),
        hub.clone(),
        Duration::from_secs(config.tools.approval_timeout_secs),
        config.tools.max_pending_approvals,
    ));
    let state = AppState::new(AppInner {
        approvals,
        backups,
        hub,
        llm,
        chat,
        bridge,
        traces,
        trace_limiter: crate::ratelimit::RateLimiter::new(
            config.traces.rate_per_sec,
            config.traces.burst,
        ),
        reply_limiter: crate::ratelimit::RateLimiter::new(
            config.bridge.reply_rate_per_sec,
            config.bridge.reply_burst,
        ),
        db,
        pin: identity.pin,
        local_token,
        owner: crate::auth::users::OwnerCache::default(),
        host_name: host_name(&config),
        pairing_addresses: pairing_addresses(bound.public_addr),
        login_limiter: LoginLimiter::default(),
        live,
        metrics: Metrics::default(),
        agents: agents.clone(),
        health: RwLock::new(BTreeMap::from([
            ("database".to_string(), "ok".to_string()),
            ("tls".to_string(), tls_status.to_string()),
            ("runtime".to_string(), runtime_health),
        ])),
        started_at,
        shutdown: shutdown_rx,
        data_dir,
        config,
    });
    Ok(Built {
        state,
        agents,
        identity,
        supervisor,
        isolation_tx,
        quota_notices,
        gateway_listeners: prepared.listeners,
    })
}

/// The tasks that run beside the listeners until shutdown: health checks, the live-credential
/// recheck, trace sealing and quota notices, the agents' networks, LiteLLM's supervisor, the
/// disk monitor, and the one-off recovery of what the last run left unfinished.
fn spawn_background(
    state: &AppState,
    agents: &AgentHost,
    supervisor: &crate::llm::supervisor::Supervisor,
    isolation_tx: watch::Sender<crate::isolation::Readiness>,
    quota_notices: tokio::sync::mpsc::UnboundedReceiver<crate::trace::QuotaNotice>,
) {
    http::spawn_health_checker(state.clone());
    crate::auth::live::spawn_recheck(
        state.live.clone(),
        state.db.clone(),
        state.session_policy(),
        Duration::from_secs(state.config.auth.recheck_secs),
        state.shutdown.clone(),
    );
    spawn_trace_sealer(state.clone());
    {
        // Before the network follower's first look (10 s in), so it sees the ports in force.
        let state = state.clone();
        tokio::spawn(async move { follow_firewall_ports(&state).await });
    }
    spawn_firewall_follower(state.clone());
    state.approvals.spawn_sweeper(state.shutdown.clone());
    {
        let state = state.clone();
        crate::isolation::spawn_prepare(agents.clone(), isolation_tx, move |why| {
            if let Ok(mut health) = state.health.write() {
                health.insert("runtime".into(), format!("error: {why}"));
            }
        });
    }
    crate::isolation::spawn_refresher(agents.clone());
    spawn_quota_notices(state.clone(), quota_notices);
    supervisor.spawn(state.shutdown.clone());
    crate::agents::quota::spawn_monitor(
        agents.clone(),
        Duration::from_secs(state.config.quota.interval_secs.max(5)),
    );
    {
        let state = state.clone();
        crate::overview::spawn_sampler(
            agents.clone(),
            Duration::from_secs(state.config.overview.sample_secs),
            state.host_name.clone(),
            move || http::overview::runtime_words(&state),
        );
    }
    let agents = agents.clone();
    tokio::spawn(async move {
        crate::agents::archive::recover(&agents).await;
        crate::agents::deploy::recover(&agents).await;
        crate::agents::deploy::reconcile_proxies(&agents).await;
        crate::isolation::reconcile(&agents).await;
        crate::legacy::retire_trace_mounts(&agents).await;
    });
}

/// The listeners at work, until shutdown.
struct Serving {
    scheme: &'static str,
    public_addr: SocketAddr,
    agent_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Waits for the listeners to finish their connections, at most `DRAIN_TIMEOUT`.
    async fn drain(self) {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            for task in self.tasks {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "a listener task ended abnormally");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

/// Starts serving on the public listener (TLS unless `insecure_http`), the agent listener, and
/// under Docker the agent listener's copies on the agent networks' gateways.
fn start_serving(
    state: &AppState,
    identity: &tls::TlsIdentity,
    bound: Bound,
    gateway_listeners: Vec<(taos_proto::agents::AgentNetwork, tokio::net::TcpListener)>,
) -> anyhow::Result<Serving> {
    let options = ListenerOptions::from_config(&state.config.server);
    sys::raise_open_files_limit(
        // Every listener's budget, plus the host's own files (databases, traces, LiteLLM).
        (2 + gateway_listeners.len()) * options.max_connections + 256,
    );
    let (scheme, public_tls) = if state.config.server.insecure_http {
        tracing::warn!("serving the public listener WITHOUT TLS (insecure_http, loopback only)");
        ("http", None)
    } else {
        (
            "https",
            Some(TlsAcceptor::from(tls::server_config(identity)?)),
        )
    };
    let mut tasks = vec![
        tokio::spawn(listener::serve(
            bound.public,
            public_tls,
            http::public_app(state),
            options.clone(),
            state.shutdown.clone(),
        )),
        tokio::spawn(listener::serve(
            bound.agent,
            None,
            http::agent_app(state),
            options.clone(),
            state.shutdown.clone(),
        )),
    ];
    for (_, tcp) in gateway_listeners {
        tasks.push(tokio::spawn(listener::serve(
            tcp,
            None,
            http::agent_app(state),
            options.clone(),
            state.shutdown.clone(),
        )));
    }
    Ok(Serving {
        scheme,
        public_addr: bound.public_addr,
        agent_addr: bound.agent_addr,
        tasks,
    })
}

/// Says the host is ready: in the log, and as one machine-readable line on stdout for scripts
/// and tests (logs go to stderr), with the setup code on its own line while there is no owner.
fn announce_ready(
    state: &AppState,
    serving: &Serving,
    started_at: Instant,
    first_run_code: Option<String>,
) {
    let Serving {
        scheme,
        public_addr,
        agent_addr,
        ..
    } = serving;
    tracing::info!(
        public = %format!("{scheme}://{public_addr}"),
        agent = %format!("http://{agent_addr}"),
        fingerprint = %state.pin,
        data_dir = %state.data_dir.display(),
        startup_ms = started_at.elapsed().as_millis() as u64,
        "taos host ready"
    );
    println!(
        "taos-host ready public={scheme}://{public_addr} agent=http://{agent_addr} fingerprint={}",
        state.pin
    );
    // The setup code goes to the console on its own line, never into the log: under systemd
    // the console is the journal, so there only the file's path is printed.
    match first_run_code {
        Some(code) if !sys::stdout_is_journal() => println!(
            "taos-host setup-code={code} (no owner yet: enter it on the first-run page at \
             {scheme}://{public_addr}/ to create the owner; it is also in {})",
            setup_code::path(&state.data_dir).display()
        ),
        Some(_) => println!(
            "taos-host setup-code is in {} (no owner yet: enter it on the first-run page at \
             {scheme}://{public_addr}/ to create the owner)",
            setup_code::path(&state.data_dir).display()
        ),
        None => {}
    }
    sys::notify_ready();
}
