//! Starting the host: open the data dir, the database and the TLS identity, bind both
//! listeners, serve until SIGTERM/SIGINT, then drain.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::ratelimit::LoginLimiter;
use crate::auth::{local_token, setup_code, users};
use crate::config::Config;
use crate::http::extract::ClientAddr;
use crate::http::{self, AppInner, AppState};
use crate::metrics::Metrics;
use crate::notify::EventHub;
use crate::runtime::ContainerRuntime;
use crate::{db, fsutil, sys, tls};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP, completes TLS handshakes off the accept path (a slow client can't block
/// others), and hands finished streams to axum.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Plain TCP with TCP_NODELAY (for the agent listener and loopback `insecure_http`).
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

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
    let db = db::open(data_dir).await?;
    let identity = tls::load_or_create(data_dir, &host_name(&config), &sys::interface_addresses())?;
    Ok(Opened {
        data_dir: data_dir.to_path_buf(),
        config,
        db,
        identity,
    })
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
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

/// Runs the host until a shutdown signal.
pub async fn serve(opened: Opened) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let Opened {
        data_dir,
        config,
        db,
        identity,
    } = opened;
    let local_token = local_token::load_or_create(&data_dir)?;
    let first_run_code = prepare_setup_code(&db, &data_dir).await?;
    let public_tcp = TcpListener::bind(config.server.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.server.bind))?;
    let agent_tcp = TcpListener::bind(config.server.agent_bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", config.server.agent_bind))?;
    let public_addr = public_tcp.local_addr()?;
    let agent_addr = agent_tcp.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tls_status = if config.server.insecure_http {
        "disabled"
    } else {
        "ok"
    };
    let traces = crate::trace::TraceStore::open(data_dir.join("trace"))?;
    let litellm_bin = crate::llm::supervisor::find_litellm(&config.llm.litellm_bin);
    let supervisor =
        crate::llm::supervisor::Supervisor::new(&data_dir, litellm_bin, config.llm.litellm_port)?;
    let llm = crate::llm::Llm::new(
        db.clone(),
        supervisor.clone(),
        crate::secrets::SecretBox::load_or_create(&data_dir)?,
        Duration::from_secs(config.llm.models_cache_seconds),
        usize::try_from(config.llm.trace_content_bytes).unwrap_or(4096),
    );
    let mut detected = crate::runtime::detect(&config.runtime).await;
    // Docker has no proxy devices: its containers reach the agent listener on the bridge
    // gateway, so the listener binds there too (same port; agent tokens still guard it). If
    // that fails the host runs without a runtime and says why, rather than not at all.
    let mut gateway_tcp = None;
    if let Some(ContainerRuntime::Docker(docker)) = &detected.runtime {
        let bound = match docker.bridge_gateway().await {
            Ok(gateway) => {
                let addr = std::net::SocketAddr::new(gateway, agent_addr.port());
                TcpListener::bind(addr).await.map_err(|e| {
                    format!("cannot bind the agent listener on Docker's bridge at {addr}: {e}")
                })
            }
            Err(e) => Err(format!("cannot find Docker's bridge gateway: {e}")),
        };
        match bound {
            Ok(tcp) => gateway_tcp = Some(tcp),
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
    let agent_container_addr = match &gateway_tcp {
        Some(tcp) => Some(tcp.local_addr()?),
        None => None,
    };
    let runtime_health = match (&detected.runtime, agent_container_addr) {
        (Some(_), Some(addr)) => format!("ok: {} (agents via {addr})", detected.description),
        (Some(_), None) => format!("ok: {}", detected.description),
        (None, _) => format!("disabled: {}", detected.description),
    };
    let hub = Arc::new(EventHub::new(db.clone()));
    let (bridge, presence) = crate::bridge::Bridge::new(db.clone(), traces.clone());
    tokio::spawn(crate::bridge::publish_presence(presence, hub.clone()));
    let state = AppState::new(AppInner {
        runtime: detected.runtime,
        agent_addr,
        agent_container_addr,
        hub,
        llm,
        chat: crate::chat::Chat::new(db.clone()),
        bridge,
        traces,
        db,
        pin: identity.pin,
        local_token,
        host_name: host_name(&config),
        pairing_addresses: pairing_addresses(public_addr),
        login_limiter: LoginLimiter::default(),
        live: crate::auth::live::Live::new(),
        metrics: Metrics::default(),
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
    http::spawn_health_checker(state.clone());
    crate::auth::live::spawn_recheck(
        state.live.clone(),
        state.db.clone(),
        state.session_policy(),
        Duration::from_secs(state.config.auth.recheck_secs),
        state.shutdown.clone(),
    );
    spawn_trace_sealer(state.clone());
    supervisor.spawn(state.shutdown.clone());
    crate::quota::spawn_monitor(
        state.clone(),
        Duration::from_secs(state.config.quota.interval_secs.max(5)),
    );
    {
        let state = state.clone();
        tokio::spawn(async move {
            crate::archive::recover(&state).await;
            crate::deploy::recover(&state).await;
            crate::deploy::reconcile_proxies(&state).await;
        });
    }
    state.llm.reload().await?;

    let scheme = if state.config.server.insecure_http {
        "http"
    } else {
        "https"
    };

    let drain = || {
        let mut rx = state.shutdown.clone();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    };
    let public_app =
        http::public_app(state.clone()).into_make_service_with_connect_info::<ClientAddr>();
    let public = if state.config.server.insecure_http {
        tracing::warn!("serving the public listener WITHOUT TLS (insecure_http, loopback only)");
        tokio::spawn(
            axum::serve(PlainListener(public_tcp), public_app)
                .with_graceful_shutdown(drain())
                .into_future(),
        )
    } else {
        let tls_config = tls::server_config(&identity)?;
        tokio::spawn(
            axum::serve(TlsListener::new(public_tcp, tls_config)?, public_app)
                .with_graceful_shutdown(drain())
                .into_future(),
        )
    };
    let agent = tokio::spawn(
        axum::serve(
            PlainListener(agent_tcp),
            http::agent_app(state.clone()).into_make_service_with_connect_info::<ClientAddr>(),
        )
        .with_graceful_shutdown(drain())
        .into_future(),
    );
    let agent_gateway = gateway_tcp.map(|tcp| {
        tokio::spawn(
            axum::serve(
                PlainListener(tcp),
                http::agent_app(state.clone()).into_make_service_with_connect_info::<ClientAddr>(),
            )
            .with_graceful_shutdown(drain())
            .into_future(),
        )
    });

    tracing::info!(
        public = %format!("{scheme}://{public_addr}"),
        agent = %format!("http://{agent_addr}"),
        fingerprint = %state.pin,
        data_dir = %state.data_dir.display(),
        startup_ms = started_at.elapsed().as_millis() as u64,
        "taos host ready"
    );
    // One machine-readable line on stdout for scripts and tests; logs go to stderr.
    println!(
        "taos-host ready public={scheme}://{public_addr} agent=http://{agent_addr} fingerprint={}",
        state.pin
    );
    // The setup code goes to the console on its own line, never into the log.
    if let Some(code) = first_run_code {
        println!(
            "taos-host setup-code={code} (no owner yet: enter it on the first-run page at \
             {scheme}://{public_addr}/ to create the owner; it is also in {})",
            setup_code::path(&state.data_dir).display()
        );
    }

    shutdown_signal().await;
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = public.await;
        let _ = agent.await;
        if let Some(gateway) = agent_gateway {
            let _ = gateway.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    state.traces.shutdown().await;
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}
