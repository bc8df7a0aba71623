//! Configuration, read only from the environment: the host starts the container with these
//! variables set, and there is no config file to drift out of date inside the container.

use std::fmt;
use std::time::Duration;

/// Exit code for a configuration error, so a supervisor can tell "fix the setup" from a crash.
pub const CONFIG_EXIT_CODE: u8 = 2;

pub const ENV_BRIDGE_URL: &str = "TAOS_BRIDGE_URL";
pub const ENV_AGENT_NAME: &str = "TAOS_AGENT_NAME";
pub const ENV_AGENT_TOKEN: &str = "TAOS_AGENT_TOKEN";
pub const ENV_OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
pub const ENV_OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const ENV_MODEL: &str = "TAOS_MODEL";
pub const ENV_FALLBACK_MODELS: &str = "TAOS_FALLBACK_MODELS";
pub const ENV_SYSTEM_PROMPT: &str = "TAOS_SYSTEM_PROMPT";
pub const ENV_AGENT_MODE: &str = "TAOS_AGENT_MODE";
pub const ENV_ENV_FILE: &str = "TAOS_ENV_FILE";
pub const ENV_TOOLS_USER: &str = "TAOS_TOOLS_USER";
pub const ENV_TOOLS_WORKDIR: &str = "TAOS_TOOLS_WORKDIR";
pub const ENV_TOOLS_MAX_STEPS: &str = "TAOS_TOOLS_MAX_STEPS";
pub const ENV_TOOLS_TURN_SECS: &str = "TAOS_TOOLS_TURN_SECS";
pub const ENV_TOOLS_TIMEOUT_SECS: &str = "TAOS_TOOLS_TIMEOUT_SECS";
pub const ENV_OPENCLAW_BIN: &str = "TAOS_OPENCLAW_BIN";
pub const ENV_OPENCLAW_NODE: &str = "TAOS_OPENCLAW_NODE";
pub const ENV_OPENCLAW_PORT: &str = "TAOS_OPENCLAW_PORT";
/// `acp` mode: the agent's argv as a JSON array of strings (from its manifest).
pub const ENV_ACP_COMMAND: &str = "TAOS_ACP_COMMAND";
/// `acp` mode: extra environment for the agent, a JSON object of strings (from its manifest).
pub const ENV_ACP_ENV: &str = "TAOS_ACP_ENV";
pub const ENV_ACP_TURN_SECS: &str = "TAOS_ACP_TURN_SECS";
/// Where the sidecar keeps its own state (the `acp` session map). Default `/root/.taos`.
pub const ENV_STATE_DIR: &str = "TAOS_STATE_DIR";

/// `KEY=VALUE` lines as systemd's `EnvironmentFile=` reads the simple cases: blank lines and
/// `#` comments skipped, one pair of surrounding quotes removed.
pub fn parse_env_file(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            (key.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

/// Same rule as the host's agent slugs; checked because the name goes into URL paths.
const MAX_SLUG_LEN: usize = 58;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    // The reason never repeats the value: it may be a token pasted into the wrong variable.
    #[error("{name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// A value that must never reach a log line. `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The raw value, for the one place that needs it: an Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the agent produces its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer each message with one chat completion from the LLM gateway.
    Direct,
    /// A tool-calling loop: the model may run commands and read, write and fetch things in
    /// the container (as the unprivileged tools user) before it answers.
    Tools,
    /// An openclaw gateway in the same container, started and driven by the sidecar (it
    /// runs as the tools account, with the tools settings' turn time limit).
    Openclaw,
    /// An Agent Client Protocol agent (its command from the manifest) runs as a child over
    /// stdio, as the tools user; the sidecar relays between it and the chat (see `acp`).
    Acp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Tools => "tools",
            Mode::Openclaw => "openclaw",
            Mode::Acp => "acp",
        }
    }

    /// Whether this mode starts processes as the tools account, and so keeps the
    /// capabilities to switch to it.
    pub fn runs_as_tools_account(self) -> bool {
        matches!(self, Mode::Tools | Mode::Openclaw | Mode::Acp)
    }
}

/// The `acp` framework's settings: which agent to start, and the limits on what it may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpConfig {
    /// The agent's argv (never a shell string). Empty unless the mode is `acp`.
    pub command: Vec<String>,
    /// Extra environment for the agent. Values may name `${OPENAI_BASE_URL}`,
    /// `${OPENAI_API_KEY}`, `${TAOS_MODEL}`, `${TAOS_AGENT_NAME}` and `${HOME}` (or
    /// `${NAME:json}`, escaped for a JSON string), filled in when it starts: the agent's model
    /// access is its own gateway key, nothing more.
    pub env: std::collections::BTreeMap<String, String>,
    /// The sidecar's own state folder (the channel → session map lives there).
    pub state_dir: std::path::PathBuf,
    /// A whole turn, from the prompt to the agent's answer (time waiting for a person aside).
    pub turn_time: Duration,
    /// Bytes the agent may send during one turn, all messages together.
    pub max_turn_bytes: u64,
    /// The longest single message (one JSON line) the agent may send.
    pub max_line_bytes: usize,
    /// `session/update` notifications accepted during one turn.
    pub max_turn_updates: u32,
}

impl Default for AcpConfig {
    fn default() -> Self {
        AcpConfig {
            command: Vec::new(),
            env: Default::default(),
            state_dir: std::path::PathBuf::from("/root/.taos"),
            turn_time: Duration::from_secs(600),
            max_turn_bytes: 32 * 1024 * 1024,
            max_line_bytes: 4 * 1024 * 1024,
            max_turn_updates: 50_000,
        }
    }
}

/// The placeholders an `acp` agent's environment values may use.
pub const ACP_ENV_PLACEHOLDERS: &[&str] = &[
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "TAOS_MODEL",
    "TAOS_AGENT_NAME",
    "HOME",
];

/// Parses `TAOS_ACP_COMMAND`: a non-empty JSON array of non-empty strings.
pub fn parse_acp_command(text: &str) -> Result<Vec<String>, String> {
    let argv: Vec<String> = serde_json::from_str(text)
        .map_err(|_| "must be a JSON array of strings, e.g. [\"opencode\", \"acp\"]".to_string())?;
    if argv.is_empty() {
        return Err("the command is empty; it needs at least the program".to_string());
    }
    if argv
        .iter()
        .any(|a| a.is_empty() || a.contains('\0') || a.len() > 4096)
    {
        return Err("each part must be 1-4096 bytes, without NUL".to_string());
    }
    if argv.len() > 64 {
        return Err("at most 64 parts".to_string());
    }
    Ok(argv)
}

/// Parses `TAOS_ACP_ENV`: a JSON object of strings, names like `FOO_BAR`, only known
/// `${…}` placeholders in the values.
pub fn parse_acp_env(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let env: std::collections::BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|_| "must be a JSON object of strings".to_string())?;
    if env.len() > 64 {
        return Err("at most 64 variables".to_string());
    }
    for (name, value) in &env {
        let valid = name.len() <= 128
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "variable names are A-Z, 0-9 and _ (not starting with a digit): {name:?}"
            ));
        }
        if value.contains('\0') || value.len() > 8192 {
            return Err(format!(
                "{name}: values are at most 8192 bytes, without NUL"
            ));
        }
        let mut rest = value.as_str();
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{name}: an unclosed ${{"))?;
            let placeholder = &after[..end];
            let placeholder = placeholder.strip_suffix(":json").unwrap_or(placeholder);
            if !ACP_ENV_PLACEHOLDERS.contains(&placeholder) {
                return Err(format!(
                    "{name}: unknown placeholder ${{{placeholder}}}; the known ones are {}",
                    ACP_ENV_PLACEHOLDERS.join(", ")
                ));
            }
            rest = &after[end + 1..];
        }
    }
    Ok(env)
}

/// `value` with each `${NAME}` replaced by `lookup(NAME)` (names checked by [`parse_acp_env`]).
/// `${NAME:json}` is the same value escaped for the inside of a JSON string, for an agent
/// configured by a JSON document in its environment (a model name may hold `"` or `\`).
pub fn fill_placeholders(value: &str, lookup: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let placeholder = &after[..end];
                match placeholder.strip_suffix(":json") {
                    Some(name) => {
                        let quoted = serde_json::Value::String(lookup(name)).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    }
                    None => out.push_str(&lookup(placeholder)),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Who the tools run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// A named, unprivileged account (`TAOS_TOOLS_USER`, default `agent`). The sidecar must be
    /// root to switch to it; the account may not be root.
    User(String),
    /// The sidecar's own account. Only for tests and a sidecar run by hand as an ordinary user:
    /// the tools can then read whatever the sidecar can. Never chosen from the environment.
    Current,
    /// Bare ids with no passwd entry (home: the workdir). For tests run as root: an id no other
    /// process uses, so killing that account's leftovers touches nothing else. Never chosen
    /// from the environment.
    Ids { uid: u32, gid: u32 },
}

/// The tools framework's limits. Every one is enforced by the sidecar before or while a tool
/// runs; none relies on the model behaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsConfig {
    pub run_as: RunAs,
    /// Where commands start and relative paths point. `None`: the user's home.
    pub workdir: Option<String>,
    /// Model calls per turn (each may ask for tools); the turn fails past it.
    pub max_steps: u32,
    /// A whole turn, tools and model calls together.
    pub turn_time: Duration,
    /// A tool call's time when the model asks for none; also the most it may ask for.
    pub call_timeout: Duration,
    pub call_timeout_max: Duration,
    /// Bytes of each output stream (or file, or page) kept for the model and the chat.
    pub output_bytes: usize,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            run_as: RunAs::User("agent".to_string()),
            workdir: None,
            max_steps: 20,
            turn_time: Duration::from_secs(600),
            call_timeout: Duration::from_secs(60),
            call_timeout_max: Duration::from_secs(300),
            output_bytes: 16 * 1024,
        }
    }
}

/// Where openclaw is installed and where its gateway listens (openclaw mode only). The
/// defaults are the openclaw image's layout: node and openclaw copied in under /opt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenclawConfig {
    /// openclaw's launcher (`bin/openclaw`, a link to the package's `openclaw.mjs`).
    pub bin: std::path::PathBuf,
    /// The node that runs it (openclaw needs Node 24).
    pub node: std::path::PathBuf,
    /// The gateway's loopback port.
    pub port: u16,
}

impl Default for OpenclawConfig {
    fn default() -> Self {
        OpenclawConfig {
            bin: "/opt/openclaw/bin/openclaw".into(),
            node: "/opt/node/bin/node".into(),
            port: 18789,
        }
    }
}

/// Delays and limits. Not configurable from the environment; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// First reconnect delay after the bridge stream drops; doubles up to `backoff_max`.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// Delay before retrying after the host refuses the stream (401/403/other 4xx). Slow on
    /// purpose: a token rotation in progress fixes itself; a wrong token needs a restart.
    pub refused_retry: Duration,
    pub connect_timeout: Duration,
    /// Longest silence tolerated on the bridge stream. The host sends a keep-alive every 15 s,
    /// so three missed ones mean the connection is dead even if TCP has not noticed.
    pub stream_idle_timeout: Duration,
    /// Longest silence tolerated from the model; local models on small machines can be slow
    /// to produce their first token.
    pub llm_idle_timeout: Duration,
    /// Whole-request limit for replies and traces.
    pub request_timeout: Duration,
    /// Streamed text is sent to the host at most this often, to avoid one request per token.
    pub delta_flush: Duration,
    /// On SIGTERM, how long the reply in progress may take before it is abandoned.
    pub shutdown_grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            refused_retry: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(45),
            llm_idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            delta_flush: Duration::from_millis(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The host's agent listener, without a trailing slash.
    pub bridge_url: String,
    pub agent_name: String,
    pub agent_token: Secret,
    /// The LLM gateway's OpenAI-compatible base (ends in `/v1`), without a trailing slash.
    pub openai_base_url: String,
    pub openai_api_key: Secret,
    /// The primary model first, then the fallbacks in order, without duplicates.
    pub models: Vec<String>,
    pub system_prompt: Option<String>,
    pub mode: Mode,
    /// Used in `tools` mode, for the account and turn time limit in `openclaw` mode, and in
    /// `acp` mode for the account and workspace of the agent.
    pub tools: ToolsConfig,
    /// Used in `openclaw` mode only.
    pub openclaw: OpenclawConfig,
    /// Used in `acp` mode only.
    pub acp: AcpConfig,
    pub timings: Timings,
}

impl Config {
    /// Reads the process environment and, if `TAOS_ENV_FILE` names one, that file: where a
    /// runtime has no service manager to load it (Docker runs the sidecar as the container's
    /// main process), the host still keeps credentials in a 0600 file rather than in the
    /// container's inspectable environment. The file's values win over the environment's.
    pub fn from_env() -> Result<Config, ConfigError> {
        let file = match std::env::var(ENV_ENV_FILE).ok().filter(|p| !p.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    name: ENV_ENV_FILE,
                    reason: format!("cannot read {path}: {e}"),
                })?;
                parse_env_file(&text)
            }
            None => Default::default(),
        };
        Config::from_lookup(|name| file.get(name).cloned().or_else(|| std::env::var(name).ok()))
    }

    /// Reads configuration through `get`, so tests need not touch the process environment.
    /// Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let optional = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| optional(name).ok_or(ConfigError::Missing(name));

        let bridge_url = http_url(ENV_BRIDGE_URL, &required(ENV_BRIDGE_URL)?)?;
        let agent_name = required(ENV_AGENT_NAME)?;
        if !is_valid_slug(&agent_name) {
            return Err(ConfigError::Invalid {
                name: ENV_AGENT_NAME,
                reason: "an agent slug is lowercase letters, digits and '-'".to_string(),
            });
        }
        let agent_token = Secret::new(required(ENV_AGENT_TOKEN)?);
        let openai_base_url = http_url(ENV_OPENAI_BASE_URL, &required(ENV_OPENAI_BASE_URL)?)?;
        let openai_api_key = Secret::new(required(ENV_OPENAI_API_KEY)?);
        let primary = required(ENV_MODEL)?;
        let mut models = vec![primary];
        if let Some(list) = optional(ENV_FALLBACK_MODELS) {
            for model in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                if !models.iter().any(|m| m == model) {
                    models.push(model.to_string());
                }
            }
        }
        // The prompt is used verbatim: leading and trailing whitespace may be deliberate.
        let system_prompt = get(ENV_SYSTEM_PROMPT).filter(|p| !p.trim().is_empty());
        let mode = match optional(ENV_AGENT_MODE).as_deref() {
            None | Some("direct") => Mode::Direct,
            Some("tools") => Mode::Tools,
            Some("openclaw") => Mode::Openclaw,
            Some("acp") => Mode::Acp,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    name: ENV_AGENT_MODE,
                    reason: "unknown mode; the modes are `direct`, `tools`, `openclaw` and `acp`"
                        .to_string(),
                })
            }
        };
        let mut tools = ToolsConfig::default();
        if let Some(user) = optional(ENV_TOOLS_USER) {
            if user == "root" || !is_valid_user_name(&user) {
                return Err(ConfigError::Invalid {
                    name: ENV_TOOLS_USER,
                    reason: "must name an ordinary account (not root)".to_string(),
                });
            }
            tools.run_as = RunAs::User(user);
        }
        if let Some(dir) = optional(ENV_TOOLS_WORKDIR) {
            if !dir.starts_with('/') {
                return Err(ConfigError::Invalid {
                    name: ENV_TOOLS_WORKDIR,
                    reason: "must be an absolute path".to_string(),
                });
            }
            tools.workdir = Some(dir);
        }
        if let Some(steps) = optional(ENV_TOOLS_MAX_STEPS) {
            tools.max_steps = number(ENV_TOOLS_MAX_STEPS, &steps, 1, 200)?;
        }
        if let Some(secs) = optional(ENV_TOOLS_TURN_SECS) {
            tools.turn_time =
                Duration::from_secs(number(ENV_TOOLS_TURN_SECS, &secs, 5, 86_400)?.into());
        }
        if let Some(secs) = optional(ENV_TOOLS_TIMEOUT_SECS) {
            let secs = number(ENV_TOOLS_TIMEOUT_SECS, &secs, 1, 3_600)?;
            tools.call_timeout = Duration::from_secs(secs.into());
            tools.call_timeout_max = tools.call_timeout_max.max(tools.call_timeout);
        }
        let mut openclaw = OpenclawConfig::default();
        for (name, path) in [
            (ENV_OPENCLAW_BIN, &mut openclaw.bin),
            (ENV_OPENCLAW_NODE, &mut openclaw.node),
        ] {
            if let Some(value) = optional(name) {
                if !value.starts_with('/') {
                    return Err(ConfigError::Invalid {
                        name,
                        reason: "must be an absolute path".to_string(),
                    });
                }
                *path = value.into();
            }
        }
        if let Some(port) = optional(ENV_OPENCLAW_PORT) {
            let port = number(ENV_OPENCLAW_PORT, &port, 1024, 65_535)?;
            openclaw.port = u16::try_from(port).unwrap_or(openclaw.port);
        }
        let mut acp = AcpConfig::default();
        if mode == Mode::Acp {
            let command = required(ENV_ACP_COMMAND)?;
            acp.command = parse_acp_command(&command).map_err(|reason| ConfigError::Invalid {
                name: ENV_ACP_COMMAND,
                reason,
            })?;
            if let Some(env) = optional(ENV_ACP_ENV) {
                acp.env = parse_acp_env(&env).map_err(|reason| ConfigError::Invalid {
                    name: ENV_ACP_ENV,
                    reason,
                })?;
            }
            if let Some(secs) = optional(ENV_ACP_TURN_SECS) {
                acp.turn_time =
                    Duration::from_secs(number(ENV_ACP_TURN_SECS, &secs, 5, 86_400)?.into());
            }
        }
        if let Some(dir) = optional(ENV_STATE_DIR) {
            if !dir.starts_with('/') {
                return Err(ConfigError::Invalid {
                    name: ENV_STATE_DIR,
                    reason: "must be an absolute path".to_string(),
                });
            }
            acp.state_dir = dir.into();
        }
        Ok(Config {
            bridge_url,
            agent_name,
            agent_token,
            openai_base_url,
            openai_api_key,
            models,
            system_prompt,
            mode,
            tools,
            openclaw,
            acp,
            timings: Timings::default(),
        })
    }
}

/// Checks `value` is a plain-http URL and returns it without a trailing slash. https is refused
/// because the sidecar trusts no certificates: it only talks to the host over loopback or an
/// incus proxy device, where TLS adds nothing.
fn http_url(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let parsed = reqwest::Url::parse(value).map_err(|_| ConfigError::Invalid {
        name,
        reason: "not a URL".to_string(),
    })?;
    if parsed.scheme() != "http" || parsed.host_str().is_none() {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be an http:// URL to the host (the sidecar speaks plain HTTP)"
                .to_string(),
        });
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// A whole number in `min..=max`, named in the error.
fn number(name: &'static str, value: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfigError::Invalid {
            name,
            reason: format!("must be a whole number from {min} to {max}"),
        })
}

/// An account name as useradd takes it (it is looked up in /etc/passwd, never run).
fn is_valid_user_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

fn is_valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SLUG_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_files_read_like_systemds_simple_cases() {
        let parsed = parse_env_file(
            "# credentials\n\nTAOS_AGENT_NAME=helper\nTAOS_MODEL=\"m=1\"\n  OPENAI_API_KEY = 'k' \nnot a pair\n",
        );
        assert_eq!(
            parsed.get("TAOS_AGENT_NAME").map(String::as_str),
            Some("helper")
        );
        assert_eq!(parsed.get("TAOS_MODEL").map(String::as_str), Some("m=1"));
        assert_eq!(parsed.get("OPENAI_API_KEY").map(String::as_str), Some("k"));
        assert_eq!(parsed.len(), 3);
    }

    fn full_env() -> HashMap<&'static str, String> {
        HashMap::from([
            (ENV_BRIDGE_URL, "http://127.0.0.1:6970/".to_string()),
            (ENV_AGENT_NAME, "helper".to_string()),
            (ENV_AGENT_TOKEN, "taos_ag_secret".to_string()),
            (ENV_OPENAI_BASE_URL, "http://127.0.0.1:6970/v1".to_string()),
            (ENV_OPENAI_API_KEY, "sk-secret".to_string()),
            (ENV_MODEL, "small".to_string()),
        ])
    }

    fn parse(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| env.get(name).cloned())
    }

    #[test]
    fn full_environment_parses_with_defaults() {
        let config = parse(&full_env()).unwrap();
        assert_eq!(config.bridge_url, "http://127.0.0.1:6970");
        assert_eq!(config.openai_base_url, "http://127.0.0.1:6970/v1");
        assert_eq!(config.agent_name, "helper");
        assert_eq!(config.agent_token.expose(), "taos_ag_secret");
        assert_eq!(config.models, vec!["small".to_string()]);
        assert_eq!(config.system_prompt, None);
        assert_eq!(config.mode, Mode::Direct);
        assert_eq!(config.tools, ToolsConfig::default());
        assert_eq!(config.tools.max_steps, 20);
        assert_eq!(config.tools.run_as, RunAs::User("agent".to_string()));
    }

    #[test]
    fn tools_mode_and_its_limits_are_read() {
        let mut env = full_env();
        env.insert(ENV_AGENT_MODE, "tools".to_string());
        env.insert(ENV_TOOLS_USER, "worker".to_string());
        env.insert(ENV_TOOLS_WORKDIR, "/srv/work".to_string());
        env.insert(ENV_TOOLS_MAX_STEPS, "5".to_string());
        env.insert(ENV_TOOLS_TURN_SECS, "90".to_string());
        env.insert(ENV_TOOLS_TIMEOUT_SECS, "600".to_string());
        let config = parse(&env).unwrap();
        assert_eq!(config.mode, Mode::Tools);
        assert_eq!(config.tools.run_as, RunAs::User("worker".to_string()));
        assert_eq!(config.tools.workdir.as_deref(), Some("/srv/work"));
        assert_eq!(config.tools.max_steps, 5);
        assert_eq!(config.tools.turn_time, Duration::from_secs(90));
        assert_eq!(config.tools.call_timeout, Duration::from_secs(600));
        assert_eq!(config.tools.call_timeout_max, Duration::from_secs(600));
    }

    #[test]
    fn every_required_variable_is_named_when_missing() {
        for name in [
            ENV_BRIDGE_URL,
            ENV_AGENT_NAME,
            ENV_AGENT_TOKEN,
            ENV_OPENAI_BASE_URL,
            ENV_OPENAI_API_KEY,
            ENV_MODEL,
        ] {
            let mut env = full_env();
            env.remove(name);
            assert_eq!(parse(&env).unwrap_err(), ConfigError::Missing(name));
            env.insert(name, "  ".to_string());
            assert_eq!(parse(&env).unwrap_err(), ConfigError::Missing(name));
        }
    }

    #[test]
    fn fallbacks_are_trimmed_and_deduplicated() {
        let mut env = full_env();
        env.insert(ENV_FALLBACK_MODELS, " big , small,,other , big".to_string());
        let config = parse(&env).unwrap();
        assert_eq!(config.models, vec!["small", "big", "other"]);
    }

    #[test]
    fn bad_values_are_refused_without_echoing_them() {
        let mut env = full_env();
        env.insert(ENV_BRIDGE_URL, "taos_ag_leaked".to_string());
        let err = parse(&env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: ENV_BRIDGE_URL,
                ..
            }
        ));
        assert!(!err.to_string().contains("leaked"));

        let mut env = full_env();
        env.insert(
            ENV_OPENAI_BASE_URL,
            "https://api.example.com/v1".to_string(),
        );
        assert!(matches!(
            parse(&env).unwrap_err(),
            ConfigError::Invalid {
                name: ENV_OPENAI_BASE_URL,
                ..
            }
        ));

        let mut env = full_env();
        env.insert(ENV_AGENT_NAME, "../admin".to_string());
        assert!(matches!(
            parse(&env).unwrap_err(),
            ConfigError::Invalid {
                name: ENV_AGENT_NAME,
                ..
            }
        ));

        for (name, value) in [
            (ENV_TOOLS_USER, "root"),
            (ENV_TOOLS_USER, "../x"),
            (ENV_TOOLS_WORKDIR, "relative/dir"),
            (ENV_TOOLS_MAX_STEPS, "0"),
            (ENV_TOOLS_MAX_STEPS, "many"),
            (ENV_TOOLS_TURN_SECS, "1"),
            (ENV_TOOLS_TIMEOUT_SECS, "99999"),
        ] {
            let mut env = full_env();
            env.insert(name, value.to_string());
            let err = parse(&env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={value}: {err}"
            );
        }

        for (name, value) in [
            (ENV_AGENT_MODE, "claw"),
            (ENV_OPENCLAW_BIN, "openclaw"),
            (ENV_OPENCLAW_NODE, "bin/node"),
            (ENV_OPENCLAW_PORT, "80"),
            (ENV_OPENCLAW_PORT, "70000"),
        ] {
            let mut env = full_env();
            env.insert(name, value.to_string());
            let err = parse(&env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={value}: {err}"
            );
        }
    }

    #[test]
    fn openclaw_mode_and_its_paths_are_read() {
        let mut env = full_env();
        env.insert(ENV_AGENT_MODE, "openclaw".to_string());
        let config = parse(&env).unwrap();
        assert_eq!(config.mode, Mode::Openclaw);
        assert_eq!(config.openclaw, OpenclawConfig::default());
        assert_eq!(
            config.openclaw.bin,
            std::path::Path::new("/opt/openclaw/bin/openclaw")
        );
        assert_eq!(
            config.openclaw.node,
            std::path::Path::new("/opt/node/bin/node")
        );
        env.insert(ENV_OPENCLAW_BIN, "/srv/oc/bin/openclaw".to_string());
        env.insert(ENV_OPENCLAW_NODE, "/srv/node/bin/node".to_string());
        env.insert(ENV_OPENCLAW_PORT, "28789".to_string());
        let config = parse(&env).unwrap();
        assert_eq!(config.openclaw.port, 28789);
        assert_eq!(
            config.openclaw.bin,
            std::path::Path::new("/srv/oc/bin/openclaw")
        );
        assert_eq!(
            config.openclaw.node,
            std::path::Path::new("/srv/node/bin/node")
        );
    }

    #[test]
    fn acp_mode_reads_its_command_and_environment() {
        let mut env = full_env();
        env.insert(ENV_AGENT_MODE, "acp".to_string());
        assert_eq!(
            parse(&env).unwrap_err(),
            ConfigError::Missing(ENV_ACP_COMMAND)
        );
        env.insert(ENV_ACP_COMMAND, r#"["opencode", "acp"]"#.to_string());
        env.insert(
            ENV_ACP_ENV,
            r#"{"OPENAI_API_KEY": "${OPENAI_API_KEY}", "X_1": "a ${HOME} b"}"#.to_string(),
        );
        let config = parse(&env).unwrap();
        assert_eq!(config.mode, Mode::Acp);
        assert!(config.mode.runs_as_tools_account());
        assert_eq!(config.acp.command, ["opencode", "acp"]);
        assert_eq!(config.acp.env.len(), 2);
        let filled = fill_placeholders(&config.acp.env["X_1"], |name| format!("<{name}>"));
        assert_eq!(filled, "a <HOME> b");
        // Inside a JSON document, `:json` keeps the document whole whatever the value holds.
        env.insert(
            ENV_ACP_ENV,
            r#"{"CONFIG": "{\"model\": \"${TAOS_MODEL:json}\"}"}"#.to_string(),
        );
        let config = parse(&env).unwrap();
        let filled = fill_placeholders(&config.acp.env["CONFIG"], |_| "a\"b\\c\n".to_string());
        let parsed: serde_json::Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(parsed["model"], "a\"b\\c\n");
        for (name, bad) in [
            (ENV_ACP_COMMAND, "[]"),
            (ENV_ACP_COMMAND, "opencode acp"),
            (ENV_ACP_COMMAND, r#"["opencode", ""]"#),
            (ENV_ACP_ENV, r#"{"lower": "x"}"#),
            (ENV_ACP_ENV, r#"{"X": "${TAOS_AGENT_TOKEN}"}"#),
            (ENV_ACP_ENV, r#"{"X": "${HOME"}"#),
            (ENV_ACP_ENV, r#"{"X": "${HOME:yaml}"}"#),
            (ENV_ACP_ENV, r#"["X"]"#),
        ] {
            let mut env = env.clone();
            env.insert(name, bad.to_string());
            let err = parse(&env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}={bad}: {err}"
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(&full_env()).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("taos_ag_secret"));
        assert!(!shown.contains("sk-secret"));
    }
}
