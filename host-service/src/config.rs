//! `taos.toml`: the host's one config file, plus `TAOS_<SECTION>__<KEY>` environment overrides.
//!
//! The file is written with commented defaults on first run. Unknown keys, in the file or in the
//! environment, are an error that names the key: a typo must never silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

pub const CONFIG_FILE: &str = "taos.toml";
pub const ENV_PREFIX: &str = "TAOS_";

/// The file written on first run. A unit test checks it parses to `Config::default()`.
pub const DEFAULT_TEMPLATE: &str = r#"# taos host configuration. Written with the defaults on first run; edit freely.
# Every key can be overridden by an environment variable TAOS_<SECTION>__<KEY>,
# e.g. TAOS_SERVER__BIND=127.0.0.1:7443. Unknown keys are an error.
# `taos-host config check` validates this file; `taos-host config set server.bind 127.0.0.1:7443`
# changes one key safely.

[server]
# Public listener for people (browser and app). TLS with this host's self-signed key.
bind = "0.0.0.0:6969"
# Agent listener for agents in containers (reached through incus proxy devices).
# Plain HTTP, so it must stay on a loopback address.
agent_bind = "127.0.0.1:6970"
# Serve the public listener without TLS. Refused unless `bind` is a loopback address.
insecure_http = false
# Largest request body accepted, in bytes.
max_body_bytes = 1048576
# Name used in pairing tokens and the certificate; empty means this machine's host name.
host_name = ""
# Other names the public listener answers to (a browser's Host header). It always answers to
# IP addresses, localhost, the host name and <host name>.local; any other name gets 421, so a
# web page can't rebind its own DNS name to this host. Add a name you reach it by, e.g.
# allowed_hosts = ["taos.example.org"]. As an environment override: comma-separated.
allowed_hosts = []

# Most connections each listener holds at once (the public listener, and the agent listener,
# have a budget each). Past it, new connections are closed as soon as they are accepted.
max_connections = 1024
# Most connections one client holds at once on a listener (an IPv4 address, or an IPv6 /64).
# Loopback clients count only against max_connections: they are this machine itself (a browser
# on the host, scripts, and on the agent listener every incus agent through its proxy device).
max_connections_per_address = 64
# Seconds a new connection has to finish its TLS handshake and send a whole first request
# head; and seconds any later request head has from its first byte.
header_timeout_secs = 10
# Seconds a connection may stay open with no request in flight before it is closed.
# (Event streams and WebSockets are in flight for as long as they are open.)
idle_timeout_secs = 60
# Seconds a request has to send its whole body once its head has arrived; a slower (or
# stalled) body gets 408 and the connection's slot back.
body_timeout_secs = 30

[auth]
# Lifetime of a paired device's access token, in seconds (the app refreshes it before it
# ends). A chat WebSocket or event stream opened with it is closed when it expires.
access_token_secs = 900
# A browser session ends after this long without a request, in seconds (7 days)...
session_idle_secs = 604800
# ...and this long after sign-in however much it is used, in seconds (30 days).
session_lifetime_secs = 2592000
# How often open WebSockets, event streams and gateway calls re-check their credentials, in
# seconds: the backstop for expiry and for changes made outside this process (the CLI's
# `user reset-password`). Revocations through the API close them at once.
recheck_secs = 5

[llm]
# The LiteLLM executable. Empty: `litellm` on PATH, else /opt/taos/litellm/bin/litellm.
litellm_bin = ""
# Port LiteLLM listens on (on 127.0.0.1). 0 picks a free one at start. The host binds it
# itself and hands the socket to LiteLLM, so no other process can take it in between.
litellm_port = 0
# When the host runs as root, LiteLLM runs as this unprivileged system user (created by
# scripts/dev-litellm.sh), in its own mount namespace with a private /tmp. LiteLLM is not
# started if the user is missing: it never runs as root.
litellm_user = "taos-litellm"
# The most LLM calls one agent may have in flight at once; more are refused with 429.
max_concurrent_calls = 4
# max_tokens for a chat call that sets none (lowered to the model's own maximum when LiteLLM
# knows it). It is sent upstream, so the call's budget reservation is a real bound.
default_max_tokens = 4096
# How much of each prompt and answer the llm_call trace keeps, in bytes.
trace_content_bytes = 4096
# How long discovered provider model lists are cached, in seconds.
models_cache_seconds = 300

[runtime]
# Container runtime for agents: "auto" (incus if its socket answers, else Docker if it does,
# else none), "incus", "docker", or "none".
kind = "auto"
# incus's API socket.
incus_socket = "/var/lib/incus/unix.socket"
# incus cluster member to place agents on; empty lets incus choose.
incus_target = ""
# Storage pool for agents' root disks (btrfs enforces disk quotas).
incus_pool = "default"
# The bridges agents' containers are attached to, created by the host if missing, with these
# fixed subnets (never chosen automatically). Agents deployed with `network = internet` get the
# first, `lan` the second; each bridge has a network ACL that lets nothing reach the host, other
# containers, link-local addresses or cloud metadata (nor the LAN, on the first).
incus_internet_subnet = "10.203.0.1/24"
incus_lan_subnet = "10.204.0.1/24"
# Docker Engine API socket (the fallback runtime).
docker_socket = "/var/run/docker.sock"

[quota]
# How often every running agent's disk is sampled, in seconds.
interval_secs = 300

[snapshots]
# When the data dir is a btrfs subvolume: read-only snapshots of it every hour (how many to
# keep; 0 turns hourly ones off), and before each database migration or update (how many of
# each to keep). Elsewhere these do nothing.
keep_hourly = 24
keep_other = 5
[overview]
# How often the home screen's figures are sampled (host CPU, memory and disks, each agent's
# memory), in seconds, 1-3600. Samples are kept 7 days. A sample reads /proc, two filesystems
# and one runtime state per running container, so 60 s costs a Pi next to nothing.
sample_secs = 60

[firewall]
# The networks allowed to reach the public port, as address/prefix (e.g. "192.168.1.0/24").
# Empty: `taos-host setup` uses the networks of this machine's own interfaces (not loopback,
# not container bridges); `taos-host firewall apply` without --lan uses the private ranges.
lan = []

[traces]
# Trace events one agent may send per second (POST /api/trace and /api/trace/batch; a batch
# counts its events), and how many it may send at once after a quiet spell. Beyond that: 429.
rate_per_sec = 200
burst = 5000
# Largest trace event accepted, in bytes (its payload, error and other text together): 413.
max_event_bytes = 65536
# Trace files one agent may keep, in MiB. Over it, its oldest hours are deleted (the owner is
# notified); if only the last few open hours are left, new events are refused (507).
quota_mib = 256

[bridge]
# Replies (POST .../reply: deltas, finals, tool and reasoning events) one agent may send per
# second, and at once after a quiet spell. Beyond that: 429.
reply_rate_per_sec = 100
reply_burst = 1000

[tools]
# An agent's tool call under `tool_policy = "ask"` waits this long for a person's answer, in
# seconds; unanswered, it is denied.
approval_timeout_secs = 600
# Tool calls one agent may have waiting for approval at once. Beyond that: 429.
max_pending_approvals = 20

[log]
# "human" or "json".
format = "human"
# A tracing filter such as "info" or "taos_host=debug,info". RUST_LOG overrides it.
level = "info"
"#;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub llm: LlmConfig,
    pub runtime: RuntimeConfig,
    pub quota: QuotaConfig,
    pub snapshots: SnapshotsConfig,
    pub overview: OverviewConfig,
    pub firewall: FirewallConfig,
    pub traces: TracesConfig,
    pub bridge: BridgeConfig,
    pub tools: ToolsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub access_token_secs: u64,
    pub session_idle_secs: u64,
    pub session_lifetime_secs: u64,
    pub recheck_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_secs: 15 * 60,
            session_idle_secs: 7 * 24 * 3600,
            session_lifetime_secs: 30 * 24 * 3600,
            recheck_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    pub rate_per_sec: u64,
    pub burst: u64,
    pub max_event_bytes: u64,
    pub quota_mib: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            rate_per_sec: 200,
            burst: 5000,
            max_event_bytes: 64 * 1024,
            quota_mib: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub reply_rate_per_sec: u64,
    pub reply_burst: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            reply_rate_per_sec: 100,
            reply_burst: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    pub approval_timeout_secs: u64,
    pub max_pending_approvals: u32,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            approval_timeout_secs: 600,
            max_pending_approvals: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub interval_secs: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig { interval_secs: 300 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    pub keep_hourly: u32,
    pub keep_other: u32,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        SnapshotsConfig {
            keep_hourly: 24,
            keep_other: 5,
        }
    }
}

impl SnapshotsConfig {
    pub fn retention(&self) -> crate::snapshots::Retention {
        crate::snapshots::Retention {
            hourly: self.keep_hourly as usize,
            other: self.keep_other as usize,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverviewConfig {
    pub sample_secs: u64,
}

impl Default for OverviewConfig {
    fn default() -> Self {
        OverviewConfig { sample_secs: 60 }
    }
}

/// `[firewall]`: who may reach the public port (see host_firewall and setup).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    pub lan: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Auto,
    Incus,
    Docker,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    pub incus_socket: String,
    pub incus_target: String,
    pub incus_pool: String,
    pub incus_internet_subnet: String,
    pub incus_lan_subnet: String,
    pub docker_socket: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: RuntimeKind::Auto,
            incus_socket: crate::runtime::incus::DEFAULT_SOCKET.to_string(),
            incus_target: String::new(),
            incus_pool: "default".to_string(),
            incus_internet_subnet: "10.203.0.1/24".to_string(),
            incus_lan_subnet: "10.204.0.1/24".to_string(),
            docker_socket: crate::runtime::docker::DEFAULT_SOCKET.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    pub litellm_bin: String,
    pub litellm_port: u16,
    pub litellm_user: String,
    pub max_concurrent_calls: u32,
    pub default_max_tokens: u64,
    pub trace_content_bytes: u64,
    pub models_cache_seconds: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            litellm_bin: String::new(),
            litellm_port: 0,
            litellm_user: "taos-litellm".to_string(),
            max_concurrent_calls: 4,
            default_max_tokens: 4096,
            trace_content_bytes: 4096,
            models_cache_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub agent_bind: SocketAddr,
    pub insecure_http: bool,
    pub max_body_bytes: u64,
    pub host_name: String,
    pub allowed_hosts: Vec<String>,
    pub max_connections: u64,
    pub max_connections_per_address: u64,
    pub header_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub body_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 6969)),
            agent_bind: SocketAddr::from(([127, 0, 0, 1], 6970)),
            insecure_http: false,
            max_body_bytes: 1024 * 1024,
            host_name: String::new(),
            allowed_hosts: Vec::new(),
            max_connections: 1024,
            max_connections_per_address: 64,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            body_timeout_secs: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("unknown config key `{0}` (known keys: {1})")]
    UnknownKey(String, String),
    #[error("invalid value for `{key}`: {message}")]
    BadValue { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Checks rules that cross keys or that serde can't express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.insecure_http && !s.bind.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "[server] insecure_http = true is only allowed when [server] bind is a loopback \
                 address, but bind is {}. Plain HTTP on a network address would send passwords \
                 and tokens in the clear. Use bind = \"127.0.0.1:{}\" or turn insecure_http off.",
                s.bind,
                s.bind.port()
            )));
        }
        if !s.agent_bind.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "[server] agent_bind must be a loopback address (it is plain HTTP and agents reach \
                 it through incus proxy devices), but it is {}",
                s.agent_bind
            )));
        }
        if !(1024..=64 * 1024 * 1024).contains(&s.max_body_bytes) {
            return Err(ConfigError::Invalid(
                "[server] max_body_bytes must be between 1024 and 67108864".to_string(),
            ));
        }
        for name in &s.allowed_hosts {
            if !is_host_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "[server] allowed_hosts: {name:?} is not a host name (letters, digits, '-' \
                     and '.'; no scheme, port or path)"
                )));
            }
        }
        let a = &self.auth;
        // Upper bounds keep the millisecond arithmetic far from overflow; a day-long access
        // token is already far past what a stolen phone should be worth.
        if !(1..=24 * 3600).contains(&a.access_token_secs) {
            return Err(ConfigError::Invalid(
                "[auth] access_token_secs must be between 1 and 86400".to_string(),
            ));
        }
        for (key, value) in [
            ("session_idle_secs", a.session_idle_secs),
            ("session_lifetime_secs", a.session_lifetime_secs),
        ] {
            if !(1..=365 * 24 * 3600).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "[auth] {key} must be between 1 and 31536000 (a year)"
                )));
            }
        }
        if !(1..=3600).contains(&a.recheck_secs) {
            return Err(ConfigError::Invalid(
                "[auth] recheck_secs must be between 1 and 3600".to_string(),
            ));
        }
        let llm = &self.llm;
        if !(1..=1024).contains(&llm.max_concurrent_calls) {
            return Err(ConfigError::Invalid(
                "[llm] max_concurrent_calls must be between 1 and 1024".to_string(),
            ));
        }
        if !(1..=crate::llm::validate::MAX_TOKENS_LIMIT).contains(&llm.default_max_tokens) {
            return Err(ConfigError::Invalid(format!(
                "[llm] default_max_tokens must be between 1 and {}",
                crate::llm::validate::MAX_TOKENS_LIMIT
            )));
        }
        if llm.litellm_user.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[llm] litellm_user must not be empty".to_string(),
            ));
        }
        if !(1..=1_000_000).contains(&s.max_connections) {
            return Err(ConfigError::Invalid(
                "[server] max_connections must be between 1 and 1000000".to_string(),
            ));
        }
        if s.max_connections_per_address < 1 || s.max_connections_per_address > s.max_connections {
            return Err(ConfigError::Invalid(
                "[server] max_connections_per_address must be between 1 and max_connections"
                    .to_string(),
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.tools.approval_timeout_secs) {
            return Err(ConfigError::Invalid(
                "[tools] approval_timeout_secs must be between 1 and 604800 (a week)".to_string(),
            ));
        }
        if !(1..=1000).contains(&self.tools.max_pending_approvals) {
            return Err(ConfigError::Invalid(
                "[tools] max_pending_approvals must be between 1 and 1000".to_string(),
            ));
        }
        if !(1..=300).contains(&s.header_timeout_secs) {
            return Err(ConfigError::Invalid(
                "[server] header_timeout_secs must be between 1 and 300".to_string(),
            ));
        }
        if !(1..=86_400).contains(&s.idle_timeout_secs) {
            return Err(ConfigError::Invalid(
                "[server] idle_timeout_secs must be between 1 and 86400".to_string(),
            ));
        }
        if !(1..=3600).contains(&s.body_timeout_secs) {
            return Err(ConfigError::Invalid(
                "[server] body_timeout_secs must be between 1 and 3600".to_string(),
            ));
        }
        for (key, value) in [
            ("incus_internet_subnet", &self.runtime.incus_internet_subnet),
            ("incus_lan_subnet", &self.runtime.incus_lan_subnet),
        ] {
            if !is_gateway_cidr(value) {
                return Err(ConfigError::Invalid(format!(
                    "[runtime] {key} must be the bridge's own address with its prefix, e.g. \
                     \"10.203.0.1/24\" (IPv4, prefix 8-30), but it is {value:?}"
                )));
            }
        }
        if self.runtime.incus_internet_subnet == self.runtime.incus_lan_subnet {
            return Err(ConfigError::Invalid(
                "[runtime] incus_internet_subnet and incus_lan_subnet must differ".to_string(),
            ));
        }
        let t = &self.traces;
        let b = &self.bridge;
        if t.rate_per_sec == 0 || t.burst == 0 || b.reply_rate_per_sec == 0 || b.reply_burst == 0 {
            return Err(ConfigError::Invalid(
                "[traces] rate_per_sec and burst, and [bridge] reply_rate_per_sec and reply_burst \
                 must be at least 1"
                    .to_string(),
            ));
        }
        // Above max_body_bytes it changes nothing (the body limit comes first); not an error.
        if !(1024..=64 * 1024 * 1024).contains(&t.max_event_bytes) {
            return Err(ConfigError::Invalid(
                "[traces] max_event_bytes must be between 1024 and 67108864".to_string(),
            ));
        }
        for network in &self.firewall.lan {
            crate::host_firewall::Network::parse(network)
                .map_err(|e| ConfigError::Invalid(format!("[firewall] lan: {e}")))?;
        }
        if !(1..=3600).contains(&self.overview.sample_secs) {
            return Err(ConfigError::Invalid(
                "[overview] sample_secs must be between 1 and 3600".to_string(),
            ));
        }
        if t.quota_mib == 0 {
            return Err(ConfigError::Invalid(
                "[traces] quota_mib must be at least 1".to_string(),
            ));
        }
        if self.log.level.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[log] level must not be empty".to_string(),
            ));
        }
        Ok(())
    }
}

/// A DNS name as it appears in a Host header, without a port.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `a.b.c.d/n`: an IPv4 host address (not the network or broadcast address) with a prefix
/// that leaves room for containers.
fn is_gateway_cidr(value: &str) -> bool {
    let Some((ip, prefix)) = value.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(prefix)) = (ip.parse::<std::net::Ipv4Addr>(), prefix.parse::<u32>()) else {
        return false;
    };
    if !(8..=30).contains(&prefix) {
        return false;
    }
    let host_bits = u32::from(ip) & (u32::MAX >> prefix);
    host_bits != 0 && host_bits != (u32::MAX >> prefix)
}

/// `section.key` → the type of its default value, for typing env overrides and `config set`.
fn known_keys() -> Vec<(String, toml::Value)> {
    let mut keys = Vec::new();
    // Config is plain data with string keys: serializing it only fails on a programming
    // error, which `known_keys_come_from_the_defaults` catches.
    if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(Config::default()) {
        for (section, values) in sections {
            if let toml::Value::Table(values) = values {
                for (key, value) in values {
                    keys.push((format!("{section}.{key}"), value));
                }
            }
        }
    }
    keys
}

fn known_keys_list() -> String {
    known_keys()
        .into_iter()
        .map(|(k, _)| k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts a text value to the TOML type the key's default has.
fn typed_value(key: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let default = known_keys()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| ConfigError::UnknownKey(key.to_string(), known_keys_list()))?;
    let bad = |message: &str| ConfigError::BadValue {
        key: key.to_string(),
        message: message.to_string(),
    };
    match default {
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(bad("expected true or false")),
        },
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| bad("expected an integer")),
        // Lists of strings, comma-separated.
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_string()))
                .collect(),
        )),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

/// Parses config text and applies `TAOS_<SECTION>__<KEY>` overrides from `env`.
pub fn parse(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue; // TAOS_DATA_DIR and friends are not config keys.
        };
        let dotted = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
        let value = typed_value(&dotted, &raw).map_err(|e| ConfigError::Env {
            var: var.clone(),
            message: e.to_string(),
        })?;
        let section_table = table
            .entry(section.to_lowercase())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table {
            toml::Value::Table(t) => {
                t.insert(key.to_lowercase(), value);
            }
            _ => {
                return Err(parse_err(format!(
                    "`{}` must be a table",
                    section.to_lowercase()
                )))
            }
        }
    }
    let config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| parse_err(e.message().to_string()))?;
    config.validate()?;
    Ok(config)
}

pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONFIG_FILE)
}

/// Loads `taos.toml` from the data dir, writing the commented defaults first if it is missing.
pub fn load_or_init(data_dir: &Path) -> Result<Config, ConfigError> {
    let path = config_path(data_dir);
    let io = |source| ConfigError::Io {
        path: path.clone(),
        source,
    };
    fsutil::remove_stale_temps(&path);
    match fsutil::create_new_atomic(&path, DEFAULT_TEMPLATE.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let text = std::fs::read_to_string(&path).map_err(io)?;
    parse(&path, &text, std::env::vars())
}

/// Sets one `section.key` in the file, keeping its comments, and writes it atomically.
/// The result must be a valid config (without env overrides) or nothing is written.
pub fn set_key(data_dir: &Path, dotted_key: &str, raw_value: &str) -> Result<(), ConfigError> {
    let path = config_path(data_dir);
    let io = |source| ConfigError::Io {
        path: path.clone(),
        source,
    };
    let value = typed_value(dotted_key, raw_value)?;
    let (section, key) = dotted_key
        .split_once('.')
        .ok_or_else(|| ConfigError::UnknownKey(dotted_key.to_string(), known_keys_list()))?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
    let edit_value = match value {
        toml::Value::Boolean(b) => toml_edit::value(b),
        toml::Value::Integer(i) => toml_edit::value(i),
        toml::Value::String(s) => toml_edit::value(s),
        toml::Value::Array(items) => toml_edit::value(
            items
                .iter()
                .filter_map(|item| item.as_str())
                .collect::<toml_edit::Array>(),
        ),
        _ => return Err(ConfigError::Invalid("unsupported value type".to_string())),
    };
    if !doc.contains_table(section) {
        doc.insert(section, toml_edit::Item::Table(toml_edit::Table::new()));
    }
    doc[section][key] = edit_value;
    let new_text = doc.to_string();
    parse(&path, &new_text, std::iter::empty())?;
    fsutil::write_atomic(&path, new_text.as_bytes()).map_err(io)
}

/// The data dir: `--data-dir`/`TAOS_DATA_DIR`, else `/var/lib/taos` for root, else
/// `$XDG_DATA_HOME/taos` (or `~/.local/share/taos`).
pub fn default_data_dir() -> PathBuf {
    if crate::sys::is_root() {
        return PathBuf::from("/var/lib/taos");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("taos");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/taos")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("taos.toml")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn known_keys_come_from_the_defaults() {
        let keys: Vec<String> = known_keys().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"server.bind".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"server.body_timeout_secs".to_string()),
            "{keys:?}"
        );
    }

    #[test]
    fn template_is_the_defaults() {
        let config = parse(&p(), DEFAULT_TEMPLATE, env(&[])).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn env_overrides_apply_with_types() {
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[
                ("TAOS_SERVER__BIND", "127.0.0.1:7443"),
                ("TAOS_SERVER__INSECURE_HTTP", "true"),
                ("TAOS_SERVER__MAX_BODY_BYTES", "4096"),
                ("TAOS_DATA_DIR", "/ignored"),
                ("HOME", "/ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:7443");
        assert!(config.server.insecure_http);
        assert_eq!(config.server.max_body_bytes, 4096);
    }

    #[test]
    fn connection_limits_are_validated() {
        for (var, value) in [
            ("TAOS_SERVER__MAX_CONNECTIONS", "0"),
            ("TAOS_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "2000"),
            ("TAOS_SERVER__HEADER_TIMEOUT_SECS", "0"),
            ("TAOS_SERVER__IDLE_TIMEOUT_SECS", "0"),
        ] {
            let err = parse(&p(), DEFAULT_TEMPLATE, env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains("[server]"), "{var}: {err}");
        }
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[("TAOS_SERVER__HEADER_TIMEOUT_SECS", "2")]),
        )
        .unwrap();
        assert_eq!(config.server.header_timeout_secs, 2);
    }

    #[test]
    fn the_runtime_can_be_chosen_and_unknown_kinds_are_refused() {
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[
                ("TAOS_RUNTIME__KIND", "docker"),
                ("TAOS_RUNTIME__DOCKER_SOCKET", "/run/other.sock"),
            ]),
        )
        .unwrap();
        assert_eq!(config.runtime.kind, RuntimeKind::Docker);
        assert_eq!(config.runtime.docker_socket, "/run/other.sock");
        assert!(parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[("TAOS_RUNTIME__KIND", "podman")])
        )
        .is_err());
    }

    #[test]
    fn agent_subnets_must_be_fixed_gateway_addresses() {
        let with = |internet: &str, lan: &str| {
            let mut config = Config::default();
            config.runtime.incus_internet_subnet = internet.to_string();
            config.runtime.incus_lan_subnet = lan.to_string();
            config.validate()
        };
        assert!(with("10.203.0.1/24", "10.204.0.1/24").is_ok());
        for bad in [
            "auto",
            "10.203.0.0/24",
            "10.203.0.255/24",
            "10.203.0.1",
            "10.203.0.1/31",
            "fd00::1/64",
            "",
        ] {
            assert!(with(bad, "10.204.0.1/24").is_err(), "{bad}");
        }
        assert!(with("10.204.0.1/24", "10.204.0.1/24").is_err());
    }

    #[test]
    fn the_firewalls_lan_must_be_networks() {
        let with = |lan: &[&str]| {
            let mut config = Config::default();
            config.firewall.lan = lan.iter().map(ToString::to_string).collect();
            config.validate()
        };
        assert!(with(&[]).is_ok());
        assert!(with(&["192.168.1.0/24", "fd00::/8"]).is_ok());
        for bad in ["192.168.1.0", "10.0.0.0/33", "lan", "; flush ruleset"] {
            let err = with(&["192.168.1.0/24", bad]).unwrap_err().to_string();
            assert!(err.contains("[firewall] lan"), "{bad}: {err}");
        }
    }

    #[test]
    fn trace_and_reply_limits_are_configurable_and_checked() {
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[
                ("TAOS_TRACES__RATE_PER_SEC", "5"),
                ("TAOS_TRACES__QUOTA_MIB", "1"),
                ("TAOS_BRIDGE__REPLY_BURST", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(config.traces.rate_per_sec, 5);
        assert_eq!(config.traces.quota_mib, 1);
        assert_eq!(config.bridge.reply_burst, 7);
        for bad in [
            ("TAOS_TRACES__BURST", "0"),
            ("TAOS_TRACES__QUOTA_MIB", "0"),
            ("TAOS_TRACES__MAX_EVENT_BYTES", "100"),
            ("TAOS_TRACES__MAX_EVENT_BYTES", "100000000"),
            ("TAOS_BRIDGE__REPLY_RATE_PER_SEC", "0"),
        ] {
            assert!(
                parse(&p(), DEFAULT_TEMPLATE, env(&[bad])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_file_key_is_named() {
        let err = parse(&p(), "[server]\nbindd = \"1.2.3.4:1\"\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
        let err = parse(&p(), "[serverr]\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("serverr"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = parse(&p(), "", env(&[("TAOS_SERVER__BINDD", "x")])).unwrap_err();
        assert!(err.to_string().contains("TAOS_SERVER__BINDD"), "{err}");
        let err = parse(&p(), "", env(&[("TAOS_SERVER__INSECURE_HTTP", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(parse(&p(), "[server]\nbind = 12\n", env(&[])).is_err());
        assert!(parse(&p(), "[server]\nbind = \"not an address\"\n", env(&[])).is_err());
        assert!(parse(&p(), "[log]\nformat = \"xml\"\n", env(&[])).is_err());
    }

    #[test]
    fn insecure_http_needs_loopback() {
        let err = parse(&p(), "[server]\ninsecure_http = true\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let ok = parse(
            &p(),
            "[server]\ninsecure_http = true\nbind = \"127.0.0.1:8080\"\n",
            env(&[]),
        );
        assert!(ok.is_ok());
        let ok6 = parse(
            &p(),
            "[server]\ninsecure_http = true\nbind = \"[::1]:8080\"\n",
            env(&[]),
        );
        assert!(ok6.is_ok());
    }

    #[test]
    fn allowed_hosts_are_names_from_the_file_the_env_or_config_set() {
        let config = parse(
            &p(),
            "[server]\nallowed_hosts = [\"taos.example.org\"]\n",
            env(&[]),
        )
        .unwrap();
        assert_eq!(config.server.allowed_hosts, ["taos.example.org"]);
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[("TAOS_SERVER__ALLOWED_HOSTS", "a.example, b.example,")]),
        )
        .unwrap();
        assert_eq!(config.server.allowed_hosts, ["a.example", "b.example"]);
        for bad in [
            "https://a.example",
            "a.example:443",
            "a b",
            "",
            "-a.example",
        ] {
            let text = format!("[server]\nallowed_hosts = [{bad:?}]\n");
            let err = parse(&p(), &text, env(&[])).unwrap_err();
            assert!(err.to_string().contains("allowed_hosts"), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        load_or_init(dir.path()).unwrap();
        set_key(dir.path(), "server.allowed_hosts", "x.example,y.example").unwrap();
        let config = load_or_init(dir.path()).unwrap();
        assert_eq!(config.server.allowed_hosts, ["x.example", "y.example"]);
    }

    #[test]
    fn auth_lifetimes_are_bounded() {
        let config = parse(
            &p(),
            DEFAULT_TEMPLATE,
            env(&[
                ("TAOS_AUTH__ACCESS_TOKEN_SECS", "3"),
                ("TAOS_AUTH__RECHECK_SECS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.access_token_secs, 3);
        assert_eq!(config.auth.recheck_secs, 1);
        for bad in [
            "[auth]\naccess_token_secs = 0\n",
            "[auth]\naccess_token_secs = 100000\n",
            "[auth]\nsession_lifetime_secs = 0\n",
            "[auth]\nsession_idle_secs = 99999999999\n",
            "[auth]\nrecheck_secs = 0\n",
        ] {
            let err = parse(&p(), bad, env(&[])).unwrap_err();
            assert!(err.to_string().contains("[auth]"), "{bad}: {err}");
        }
    }

    #[test]
    fn agent_bind_must_be_loopback() {
        let err = parse(&p(), "[server]\nagent_bind = \"0.0.0.0:6970\"\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("agent_bind"), "{err}");
    }

    #[test]
    fn set_key_keeps_comments_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        load_or_init(dir.path()).unwrap();
        set_key(dir.path(), "server.bind", "127.0.0.1:7443").unwrap();
        let text = std::fs::read_to_string(config_path(dir.path())).unwrap();
        assert!(text.contains("# Public listener"));
        assert!(text.contains("bind = \"127.0.0.1:7443\""));
        assert!(set_key(dir.path(), "server.nope", "1").is_err());
        assert!(set_key(dir.path(), "server.insecure_http", "maybe").is_err());
        // Valid type but an invalid combination: nothing written.
        set_key(dir.path(), "server.bind", "0.0.0.0:7443").unwrap();
        assert!(set_key(dir.path(), "server.insecure_http", "true").is_err());
        let after = std::fs::read_to_string(config_path(dir.path())).unwrap();
        assert!(after.contains("insecure_http = false"));
        assert_eq!(fsutil::mode_of(&config_path(dir.path())).unwrap(), 0o600);
    }
}
