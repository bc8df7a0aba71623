//! The health gates a new version must pass after an update, and what they compare against
//! (observed the same way before the update).
//!
//! Each probe talks to the running service like a paired app does: HTTPS to the public
//! listener on loopback, pinned to the key the host had before the update, with the local
//! admin token (loopback only).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taos_pin::SpkiPin;
use taos_proto::agents::Agent;
use taos_proto::bridge::BridgeCheck;
use taos_proto::ops::Health;

use super::{open_plain, Paths, UpdateState};
use crate::config::Config;

/// Why the new version was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum GateFailure {
    #[error(
        "the TLS key changed (the host now presents {now}, paired apps trust {before}): every \
         paired app would refuse it"
    )]
    PinChanged { before: String, now: String },
    #[error("the new version exited (its last log lines: {0})")]
    Exited(String),
    #[error("a database migration failed: {0}")]
    Migration(String),
    #[error("not healthy within {seconds} s: {pending}")]
    Timeout { seconds: u64, pending: String },
    #[error("cannot run the checks: {0}")]
    Setup(String),
}

/// The TLS handshake with the public listener.
#[derive(Debug)]
enum Tls {
    Pinned,
    /// Handshake completed with another key.
    OtherKey(String),
    NoAnswer(String),
}

/// One look at the running host.
pub struct Observation {
    tls: Tls,
    health: Result<Health, String>,
    agents: Result<Vec<Agent>, String>,
    /// The pinned client and the listener's base URL, for the bridge round trips.
    client: Option<(reqwest::Client, String, String)>,
}

impl Observation {
    pub fn ok_subsystems(&self) -> Vec<String> {
        match &self.health {
            Ok(health) => health
                .subsystems
                .iter()
                .flatten()
                .filter(|(_, v)| is_ok(v))
                .map(|(k, _)| k.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn connected_agents(&self) -> Vec<String> {
        match &self.agents {
            Ok(agents) => agents
                .iter()
                .filter(|a| a.connected)
                .map(|a| a.id.to_string())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn is_ok(value: &str) -> bool {
    value == "ok" || value.starts_with("ok: ")
}

/// Where the public listener answers on this machine: its bind address, or loopback when it
/// binds every address.
fn local_address(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// Looks at the host as it runs now. Never fails: what could not be seen is in the answer.
pub async fn observe(data_dir: &Path, config: &Config, pin: Option<&str>) -> Observation {
    let address = local_address(config.server.bind);
    let pin = pin.and_then(|p| SpkiPin::parse(p).ok());
    let Some(pin) = pin else {
        let missing = "the host has no TLS key yet".to_string();
        return Observation {
            tls: Tls::NoAnswer(missing.clone()),
            health: Err(missing.clone()),
            agents: Err(missing),
            client: None,
        };
    };
    let tls = probe_tls(address, pin).await;
    let token = std::fs::read_to_string(crate::auth::local_token::path(data_dir))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(taos_pin::pinned_client_config(pin))
        .timeout(Duration::from_secs(5))
        .build();
    let (health, agents, client) = match client {
        Ok(client) => {
            let base = format!("https://{address}");
            (
                get_json::<Health>(&client, &format!("{base}/api/health"), &token).await,
                get_json::<Vec<Agent>>(&client, &format!("{base}/api/agents"), &token).await,
                Some((client, base, token)),
            )
        }
        Err(e) => (Err(e.to_string()), Err(e.to_string()), None),
    };
    Observation {
        tls,
        health,
        agents,
        client,
    }
}

/// A round trip through the agent's bridge on the running host (`POST
/// /api/agents/{slug}/bridge-check`): `Ok` with how it answered, else why not in words.
async fn bridge_round_trip(seen: &Observation, slug: &str) -> Result<BridgeCheck, String> {
    let Some((client, base, token)) = &seen.client else {
        return Err("no connection to the host".into());
    };
    let url = format!("{base}/api/agents/{slug}/bridge-check");
    // The host waits up to 20 s for the agent's answer.
    let response = client
        .post(&url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(25))
        .send()
        .await
        .map_err(|e| format!("no answer at {url}: {}", error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(body);
        return Err(format!("{status}: {message}"));
    }
    response
        .json::<BridgeCheck>()
        .await
        .map_err(|e| format!("{url} answered something unreadable: {e}"))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<T, String> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("no answer at {url}: {}", error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    response
        .json::<T>()
        .await
        .map_err(|e| format!("{url} answered something unreadable: {e}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A TLS handshake that accepts any key and reports which one it saw, so a changed key is
/// told apart from a host that does not answer yet.
async fn probe_tls(address: SocketAddr, pin: SpkiPin) -> Tls {
    let stream = match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(address),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Tls::NoAnswer(format!("no answer at {address}: {e}")),
        Err(_) => return Tls::NoAnswer(format!("no answer at {address} within 3 s")),
    };
    let seen = Arc::new(std::sync::Mutex::new(None));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RecordingVerifier {
        inner: taos_pin::PinnedServerVerifier::new(pin, provider.clone()),
        seen: seen.clone(),
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
    {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
        Err(e) => return Tls::NoAnswer(format!("cannot set up TLS: {e}")),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("taos-host").unwrap_or(
        rustls::pki_types::ServerName::IpAddress(address.ip().into()),
    );
    let result =
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream)).await;
    let seen_pin = seen.lock().ok().and_then(|s| *s);
    match (result, seen_pin) {
        (_, Some(seen)) if seen == pin => Tls::Pinned,
        (_, Some(seen)) => Tls::OtherKey(seen.to_string()),
        (Ok(Err(e)), None) => Tls::NoAnswer(format!("TLS handshake with {address} failed: {e}")),
        (Err(_), None) => Tls::NoAnswer(format!("no TLS handshake with {address} within 5 s")),
        (Ok(Ok(_)), None) => Tls::NoAnswer("the host presented no certificate".into()),
    }
}

/// Runs the gates until they all pass or `window` ends. Returns the agents (ids) that answered
/// a round trip through their bridge.
pub async fn run(
    paths: &Paths,
    state: &UpdateState,
    window: Duration,
) -> Result<Vec<String>, GateFailure> {
    let config = crate::config::load_or_init(&paths.data_dir)
        .map_err(|e| GateFailure::Setup(format!("cannot read taos.toml: {e}")))?;
    let deadline = Instant::now() + window;
    let mut round_trips = Vec::new();
    loop {
        let pending = check_once(paths, &config, state, &mut round_trips).await?;
        if pending.is_empty() {
            return Ok(round_trips);
        }
        if Instant::now() >= deadline {
            return Err(GateFailure::Timeout {
                seconds: window.as_secs(),
                pending: pending.join("; "),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One round of the gates: `Err` for a definite failure, else what is still open (empty: all
/// passed). `round_trips` holds the agents that already answered a bridge round trip; each is
/// asked once.
async fn check_once(
    paths: &Paths,
    config: &Config,
    state: &UpdateState,
    round_trips: &mut Vec<String>,
) -> Result<Vec<String>, GateFailure> {
    let mut pending = Vec::new();
    if super::system::service_exited() {
        return Err(GateFailure::Exited(super::system::journal_tail(3)));
    }
    let seen = observe(&paths.data_dir, config, state.pin.as_deref()).await;
    match &seen.tls {
        Tls::Pinned => {}
        Tls::OtherKey(now) => {
            return Err(GateFailure::PinChanged {
                before: state.pin.clone().unwrap_or_default(),
                now: now.clone(),
            })
        }
        Tls::NoAnswer(why) => pending.push(why.clone()),
    }
    match &seen.health {
        Ok(health) => {
            let now = health.subsystems.clone().unwrap_or_default();
            for name in &state.ok_before {
                match now.get(name) {
                    // LiteLLM takes its time to start (up to minutes on a small board); it
                    // says `failed` if the new version broke it.
                    Some(value) if is_ok(value) || value == "starting" => {}
                    Some(value) => pending.push(format!("health: {name} is {value}")),
                    None => pending.push(format!("health: {name} is missing")),
                }
            }
        }
        Err(why) if matches!(seen.tls, Tls::Pinned) => pending.push(format!("health: {why}")),
        Err(_) => {}
    }
    if !state.connected_before.is_empty() {
        match &seen.agents {
            Ok(_) => {
                let now = seen.connected_agents();
                let missing: Vec<&str> = state
                    .connected_before
                    .iter()
                    .filter(|id| !now.contains(id))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    pending.push(format!(
                        "agents not connected to the bridge again: {}",
                        missing.join(", ")
                    ));
                }
                // Connected is not yet working: a round trip through each agent's bridge (a
                // delivery out on its stream, its reply back on the reply route). No model is
                // called for it, so it costs no budget.
                for agent in seen.agents.iter().flatten() {
                    let id = agent.id.to_string();
                    if !agent.connected
                        || !state.connected_before.contains(&id)
                        || round_trips.contains(&id)
                    {
                        continue;
                    }
                    match bridge_round_trip(&seen, &agent.slug).await {
                        Ok(check) => {
                            eprintln!(
                                "taos-host update: agent {} answered a bridge round trip in {} ms",
                                agent.slug, check.elapsed_ms
                            );
                            round_trips.push(id);
                        }
                        Err(why) => pending.push(format!(
                            "agent {} answered no bridge round trip: {why}",
                            agent.slug
                        )),
                    }
                }
            }
            Err(why) => pending.push(format!("agents: {why}")),
        }
    }
    // The database: every migration the new version ran succeeded, and none went missing.
    match open_plain(&crate::db::db_path(&paths.data_dir)).await {
        Ok(mut conn) => {
            let failed: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE NOT success")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
            if let Some(version) = failed.first() {
                return Err(GateFailure::Migration(format!(
                    "migration {version} is marked failed"
                )));
            }
            let schema = super::max_migration(&mut conn).await.unwrap_or(0);
            if schema < state.schema_before {
                pending.push(format!(
                    "database: schema {schema} is older than before the update ({})",
                    state.schema_before
                ));
            }
            drop(conn);
        }
        Err(e) => pending.push(format!("database: cannot open it: {e}")),
    }
    if !pending.is_empty() {
        if let Ok(active) = super::system::service_state() {
            pending.push(format!("the service is {active}"));
        }
    }
    Ok(pending)
}

/// The pinned verifier, noting which key the server presented (accepted or not).
#[derive(Debug)]
struct RecordingVerifier {
    inner: taos_pin::PinnedServerVerifier,
    seen: Arc<std::sync::Mutex<Option<SpkiPin>>>,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let (Ok(presented), Ok(mut seen)) = (
            SpkiPin::of_certificate(end_entity.as_ref()),
            self.seen.lock(),
        ) {
            *seen = Some(presented);
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
