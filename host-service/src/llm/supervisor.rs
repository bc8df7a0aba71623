//! Runs LiteLLM as a child process: generated config, random master key, readiness polling,
//! restart with backoff when it dies, validated restarts when the catalog changes.
//!
//! LiteLLM serves on a 127.0.0.1 socket the host binds once and hands over (see `sandbox`),
//! confined as `sandbox` describes; or, when the host runs as root under systemd, as the
//! transient unit `taos-litellm.service` in systemd's own sandbox (see `unit`). Its config names provider keys as `os.environ/NAME`, and
//! the keys themselves reach it only through its environment, which starts empty: nothing of
//! the host's own environment leaks into it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taos_proto::llm::{LlmState, LlmStatus};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::gateway::ModelFacts;
use super::sandbox::{self, RunAs};
use super::unit::{self, UnitLaunch};
use crate::{fsutil, sys};

const READY_TIMEOUT: Duration = Duration::from_secs(240);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const LOG_LIMIT_BYTES: u64 = 1024 * 1024;
const LOG_TAIL_LINES: usize = 40;

/// What LiteLLM should be running: its config and the secrets for its environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub config: serde_json::Value,
    pub env: Vec<(String, String)>,
    pub models: Vec<String>,
    /// Why there is nothing to run when `models` is empty, in words for the Providers screen.
    pub idle_reason: String,
}

/// The reason shown before any catalog was applied, and when there is no provider at all.
pub const NO_PROVIDER: &str = "no models yet: add a provider";

#[derive(Debug)]
struct StatusData {
    state: LlmState,
    version: Option<String>,
    models: Vec<String>,
    last_error: Option<String>,
    log_tail: VecDeque<String>,
}

struct Inner {
    bin: Option<PathBuf>,
    dir: PathBuf,
    /// Who LiteLLM runs as, or why it can't run.
    run_as: Result<RunAs, String>,
    /// Set when the serving LiteLLM runs as a systemd unit rather than as the host's child.
    unit: Option<UnitLaunch>,
    port: u16,
    /// The socket LiteLLM serves on, bound by the host and kept for the host's whole life, so
    /// no other process can take the port between LiteLLM's restarts. `None` until binding
    /// succeeds (a configured port another process holds is retried at each start).
    listener: Mutex<Option<std::net::TcpListener>>,
    master_key: String,
    status: Mutex<StatusData>,
    desired: watch::Sender<Option<Desired>>,
    /// The state as it changes, for calls waiting while LiteLLM starts.
    state_changed: watch::Sender<LlmState>,
    /// What LiteLLM's cost map says about the models it serves (`/model/info`), by name.
    facts: Mutex<HashMap<String, ModelFacts>>,
}

/// A handle to the supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Finds LiteLLM: the configured path, else `litellm` on PATH, else the default venv.
pub fn find_litellm(configured: &str) -> Option<PathBuf> {
    if !configured.trim().is_empty() {
        let path = PathBuf::from(configured.trim());
        return path.is_file().then_some(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("litellm");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let default = PathBuf::from("/opt/taos/litellm/bin/litellm");
    default.is_file().then_some(default)
}

fn bind_loopback(port: u16) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(("127.0.0.1", port))
}

/// The master key for LiteLLM: random, made once, 0600.
fn load_or_create_master_key(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("master-key");
    let fresh = crate::auth::new_secret("sk-taos-");
    match fsutil::create_new_atomic(&path, fresh.as_bytes()) {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_string())
        }
        Err(e) => Err(e),
    }
}

impl Supervisor {
    /// Prepares the supervisor (files, key, listening socket) without starting anything.
    pub fn new(
        data_dir: &Path,
        bin: Option<PathBuf>,
        port: u16,
        user: &str,
    ) -> std::io::Result<Supervisor> {
        let dir = data_dir.join("llm");
        fsutil::ensure_private_dir(&dir)?;
        let run_as = sandbox::run_as(data_dir, &dir, user);
        if let Ok(RunAs::HostUser { home, tmp }) = &run_as {
            fsutil::ensure_private_dir(home)?;
            fsutil::ensure_private_dir(tmp)?;
        }
        // Only a root host confines LiteLLM in another user; under systemd, systemd does it.
        let unit = match &run_as {
            Ok(RunAs::Dedicated { .. }) => UnitLaunch::detect(),
            _ => None,
        };
        if let Some(unit) = &unit {
            tracing::info!(unit = unit::UNIT, "LiteLLM will run as a systemd unit");
            remove_secrets(unit);
        }
        let master_key = load_or_create_master_key(&dir)?;
        let (listener, port) = match bind_loopback(port) {
            Ok(listener) => {
                let port = listener.local_addr()?.port();
                (Some(listener), port)
            }
            // A fixed port someone else holds: LiteLLM waits for it (see `start`).
            Err(e) if port != 0 => {
                tracing::warn!(port, error = %e, "cannot bind LiteLLM's port");
                (None, port)
            }
            Err(e) => return Err(e),
        };
        let state = LlmState::Unavailable;
        let last_error = match &bin {
            Some(_) => Some(NO_PROVIDER.to_string()),
            None => Some(
                "LiteLLM is not installed (run scripts/dev-litellm.sh or set [llm] litellm_bin)"
                    .to_string(),
            ),
        };
        Ok(Supervisor {
            inner: Arc::new(Inner {
                bin,
                dir,
                run_as,
                unit,
                port,
                listener: Mutex::new(listener),
                master_key,
                status: Mutex::new(StatusData {
                    state,
                    version: None,
                    models: Vec::new(),
                    last_error,
                    log_tail: VecDeque::new(),
                }),
                desired: watch::channel(None).0,
                state_changed: watch::channel(state).0,
                facts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// LiteLLM's cost map's prices and output limit for a model it serves, if it knows them.
    pub fn model_facts(&self, model: &str) -> Option<ModelFacts> {
        self.inner
            .facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    pub fn master_key(&self) -> &str {
        &self.inner.master_key
    }

    pub fn installed(&self) -> bool {
        self.inner.bin.is_some()
    }

    pub fn status(&self) -> LlmStatus {
        let s = self.inner.status.lock().unwrap_or_else(|p| p.into_inner());
        LlmStatus {
            state: s.state,
            version: s.version.clone(),
            models: s.models.clone(),
            last_error: s.last_error.clone(),
            log_tail: s.log_tail.iter().cloned().collect(),
        }
    }

    pub fn state(&self) -> LlmState {
        self.inner
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state
    }

    /// Waits while LiteLLM starts or restarts, at most `max`, and says the state then: a call
    /// made just after the host (or an update of it) started waits for LiteLLM instead of
    /// failing the agent's turn.
    pub async fn wait_while_starting(&self, max: Duration) -> LlmState {
        let mut changes = self.inner.state_changed.subscribe();
        let settled = async {
            changes
                .wait_for(|s| !matches!(s, LlmState::Starting | LlmState::Restarting))
                .await
                .map(|state| *state)
        };
        match tokio::time::timeout(max, settled).await {
            Ok(Ok(state)) => state,
            _ => self.state(),
        }
    }

    fn set_state(&self, state: LlmState, error: Option<String>) {
        self.inner.state_changed.send_replace(state);
        let mut s = self.inner.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.state != state {
            tracing::info!(from = ?s.state, to = ?state, "LiteLLM state");
        }
        s.state = state;
        if error.is_some() || state == LlmState::Ready {
            s.last_error = error;
        }
    }

    fn clear_error(&self) {
        let mut s = self.inner.status.lock().unwrap_or_else(|p| p.into_inner());
        s.last_error = None;
    }

    /// Asks for a new configuration. Nothing restarts unless it differs from what runs.
    pub fn apply(&self, desired: Desired) {
        let idle = desired
            .models
            .is_empty()
            .then(|| desired.idle_reason.clone());
        let changed = self.inner.desired.send_if_modified(|current| {
            if current.as_ref() == Some(&desired) {
                false
            } else {
                *current = Some(desired);
                true
            }
        });
        // While nothing runs, the status follows the new catalog at once, before the run loop
        // gets to it, so the Providers screen never says "add a provider" right after one was
        // added. (With LiteLLM running, the loop decides: it may keep the old config.)
        if changed && self.installed() && self.state() == LlmState::Unavailable {
            match idle {
                Some(why) => self.set_state(LlmState::Unavailable, Some(why)),
                None => {
                    self.set_state(LlmState::Starting, None);
                    self.clear_error();
                }
            }
        }
    }

    /// Runs until `shutdown` flips; then stops LiteLLM.
    pub fn spawn(&self, shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move { me.run(shutdown).await });
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut desired_rx = self.inner.desired.subscribe();
        let mut backoff = Duration::from_secs(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let desired = desired_rx.borrow_and_update().clone();
            let Some(bin) = self.inner.bin.clone() else {
                // Not installed: report it and wait for nothing but shutdown.
                let _ = shutdown.changed().await;
                return;
            };
            let Some(desired) = desired.filter(|d| !d.models.is_empty()) else {
                // Nothing to run: say why (no catalog applied yet counts as no provider).
                let why = match &*desired_rx.borrow() {
                    Some(idle) => idle.idle_reason.clone(),
                    None => NO_PROVIDER.to_string(),
                };
                self.set_state(LlmState::Unavailable, Some(why));
                self.set_models(Vec::new());
                tokio::select! {
                    _ = desired_rx.changed() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let starting = if self.state() == LlmState::Ready || self.state() == LlmState::Failed {
                LlmState::Restarting
            } else {
                LlmState::Starting
            };
            let was_idle = self.state() == LlmState::Unavailable;
            self.set_state(starting, None);
            if was_idle {
                // The idle reason ("add a provider") is not an error, and no longer true.
                self.clear_error();
            }
            let mut child = match self.start(&bin, &desired).await {
                Ok(child) => child,
                Err(e) => {
                    self.set_state(LlmState::Failed, Some(format!("cannot start LiteLLM: {e}")));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = desired_rx.changed() => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            // Wait for readiness, or for it to die, or for a newer config.
            let ready = tokio::select! {
                ready = self.wait_ready(&mut child) => ready,
                _ = desired_rx.changed() => { self.stop(&mut child).await; continue }
                _ = shutdown.changed() => { self.stop(&mut child).await; return }
            };
            // Serving (or failed), it has read its keys: their file goes.
            if let Some(unit) = &self.inner.unit {
                remove_secrets(unit);
            }
            if let Err(e) = ready {
                self.stop(&mut child).await;
                self.set_state(LlmState::Failed, Some(e));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            self.fetch_facts().await;
            self.set_models(desired.models.clone());
            self.set_state(LlmState::Ready, None);
            backoff = Duration::from_secs(1);
            self.fetch_version(&bin);
            // Serve until it dies, the catalog really changes, or the host stops.
            loop {
                tokio::select! {
                    exit = child.wait() => {
                        let why = match exit {
                            Ok(status) => format!("LiteLLM exited ({status})"),
                            Err(e) => format!("LiteLLM vanished: {e}"),
                        };
                        tracing::warn!("{why}; restarting");
                        self.set_state(LlmState::Restarting, Some(why));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                    changed = desired_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let next = desired_rx.borrow_and_update().clone();
                        let Some(next) = next else { continue };
                        if next == desired {
                            continue;
                        }
                        if !next.models.is_empty() {
                            if let Err(e) = self.validate(&bin, &next).await {
                                tracing::warn!(error = %e, "new LiteLLM config refused; keeping the running one");
                                self.set_state(LlmState::Ready, None);
                                self.set_error(format!("new config refused: {e}"));
                                continue;
                            }
                        }
                        tracing::info!("LLM catalog changed; restarting LiteLLM");
                        self.set_state(LlmState::Restarting, None);
                        self.stop(&mut child).await;
                        break;
                    }
                    _ = shutdown.changed() => {
                        self.stop(&mut child).await;
                        return;
                    }
                }
            }
        }
    }

    fn set_models(&self, models: Vec<String>) {
        self.inner
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .models = models;
    }

    fn set_error(&self, error: String) {
        self.inner
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(error);
    }

    fn config_path(&self) -> PathBuf {
        self.inner.dir.join("litellm.json")
    }

    /// A confined LiteLLM command: `python3 -c LAUNCHER <args>`, with an empty environment
    /// but for what it needs, the config (if any) at fd 3 and the listening socket (if any) at
    /// fd 4.
    fn command(
        &self,
        bin: &Path,
        args: &[&str],
        desired: Option<&Desired>,
        config: Option<&std::os::fd::OwnedFd>,
        listener: Option<&std::net::TcpListener>,
    ) -> std::io::Result<Command> {
        let run_as = self
            .inner
            .run_as
            .as_ref()
            .map_err(|e| std::io::Error::other(e.clone()))?;
        let python = sandbox::python_of(bin).map_err(std::io::Error::other)?;
        let mut command = Command::new(python);
        command
            .arg("-c")
            .arg(sandbox::LAUNCHER)
            .args(args)
            .env_clear()
            .envs(Self::ENV)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(desired) = desired {
            command
                .env("TAOS_LITELLM_MASTER_KEY", &self.inner.master_key)
                .envs(desired.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        if listener.is_some() {
            command.env(sandbox::LISTEN_FD_ENV, sandbox::LISTEN_FD.to_string());
        }
        sandbox::confine(
            &mut command,
            run_as,
            config.map(|f| f.as_fd()),
            listener.map(|l| l.as_fd()),
        )?;
        Ok(command)
    }

    /// The listening socket, bound now if it wasn't yet.
    fn listener(&self) -> std::io::Result<std::net::TcpListener> {
        let mut slot = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(bind_loopback(self.inner.port).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on 127.0.0.1:{} ({e}); another process holds the port",
                        self.inner.port
                    ),
                )
            })?);
        }
        match slot.as_ref() {
            Some(listener) => listener.try_clone(),
            None => Err(std::io::Error::other("no listener")),
        }
    }

    /// The environment the serving LiteLLM gets besides its keys.
    const ENV: [(&'static str, &'static str); 4] = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        // Without it LiteLLM tries to download its cost map at every start.
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
    ];

    /// Starts LiteLLM as the unit: the keys in the secrets file (deleted once it has started),
    /// the config as a credential from the host's copy, the listening socket as its stdin.
    async fn start_unit(
        &self,
        unit: &UnitLaunch,
        bin: &Path,
        desired: &Desired,
    ) -> std::io::Result<Child> {
        let Ok(RunAs::Dedicated { name, data_dir, .. }) = &self.inner.run_as else {
            return Err(std::io::Error::other("LiteLLM's unit needs its own user"));
        };
        // One a host that died hard left behind would hold the unit's name.
        unit.stop().await;
        let mut secrets = serde_json::Map::new();
        secrets.insert(
            "TAOS_LITELLM_MASTER_KEY".into(),
            self.inner.master_key.clone().into(),
        );
        for (k, v) in &desired.env {
            secrets.insert(k.clone(), v.clone().into());
        }
        fsutil::write_atomic(&unit.secrets_path(), &serde_json::to_vec(&secrets)?)?;
        let python = sandbox::python_of(bin).map_err(std::io::Error::other)?;
        let listener = std::os::fd::OwnedFd::from(self.listener()?);
        let port = self.inner.port.to_string();
        let config_arg = format!("{}/config", unit::CREDENTIALS_DIR);
        let listen_fd = "0";
        let mut env = Self::ENV.to_vec();
        env.push((sandbox::LISTEN_FD_ENV, listen_fd));
        let mut args = vec!["-c", sandbox::LAUNCHER];
        args.extend(serve_args(&config_arg, &port));
        let config = self.config_path();
        let start = unit::Start {
            user: name,
            data_dir,
            python: &python,
            args: &args,
            env: &env,
            config: &config,
        };
        let mut command = unit.command(&start, listener);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().inspect_err(|_| remove_secrets(unit))
    }

    async fn start(&self, bin: &Path, desired: &Desired) -> std::io::Result<Child> {
        let text = serde_json::to_vec_pretty(&desired.config)?;
        // The host's copy, for people to read; LiteLLM reads the memfd (or, as a unit, its
        // credential made from this copy).
        fsutil::write_atomic(&self.config_path(), &text)?;
        let mut child = match &self.inner.unit {
            Some(unit) => self.start_unit(unit, bin, desired).await?,
            None => self.start_child(bin, desired, &text)?,
        };
        tracing::info!(
            port = self.inner.port,
            models = desired.models.len(),
            unit = self.inner.unit.as_ref().map(|_| unit::UNIT),
            "starting LiteLLM"
        );
        if let Some(out) = child.stdout.take() {
            self.pump_log(out);
        }
        if let Some(err) = child.stderr.take() {
            self.pump_log(err);
        }
        Ok(child)
    }

    /// Starts LiteLLM as the host's confined child: the config as a memfd at fd 3, the
    /// listening socket at fd 4.
    fn start_child(&self, bin: &Path, desired: &Desired, text: &[u8]) -> std::io::Result<Child> {
        let config = sandbox::memfd("litellm.json", text)?;
        let listener = self.listener()?;
        let port = self.inner.port.to_string();
        let config_arg = format!("/proc/self/fd/{}", sandbox::CONFIG_FD);
        let mut command = self.command(
            bin,
            &serve_args(&config_arg, &port),
            Some(desired),
            Some(&config),
            Some(&listener),
        )?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn()
    }

    /// Copies LiteLLM's output to a size-capped log file and keeps its tail in memory.
    fn pump_log(&self, stream: impl AsyncRead + Unpin + Send + 'static) {
        let me = self.clone();
        tokio::spawn(async move {
            let path = me.inner.dir.join("litellm.log");
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut s = me.inner.status.lock().unwrap_or_else(|p| p.into_inner());
                    if s.log_tail.len() >= LOG_TAIL_LINES {
                        s.log_tail.pop_front();
                    }
                    s.log_tail.push_back(line.chars().take(500).collect());
                }
                append_capped(&path, &line);
            }
        });
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let client = plain_client();
        let url = format!("{}/health/readiness", self.base_url());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = self.status().log_tail.join("\n");
                return Err(format!("LiteLLM exited during start ({status}): {tail}"));
            }
            // The host's socket accepts connections before LiteLLM serves them; don't wait on
            // one forever.
            let probe = client.get(&url).timeout(Duration::from_secs(2)).send();
            if let Ok(r) = probe.await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err("LiteLLM did not become ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `litellm --config X --validate_config`, on the candidate config.
    async fn validate(&self, bin: &Path, desired: &Desired) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&desired.config).map_err(|e| e.to_string())?;
        let config = sandbox::memfd("litellm.candidate.json", &text).map_err(|e| e.to_string())?;
        let config_arg = format!("/proc/self/fd/{}", sandbox::CONFIG_FD);
        let mut command = self
            .command(
                bin,
                &["--config", &config_arg, "--validate_config"],
                Some(desired),
                Some(&config),
                None,
            )
            .map_err(|e| e.to_string())?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let output = tokio::time::timeout(Duration::from_secs(120), command.output()).await;
        match output {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                Err(text.lines().last().unwrap_or("invalid").to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("validation timed out".into()),
        }
    }

    async fn stop(&self, child: &mut Child) {
        if let Some(unit) = &self.inner.unit {
            // `child` is `systemd-run --wait`, which ends with the unit.
            unit.stop().await;
            remove_secrets(unit);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            return;
        }
        if let Some(pid) = child.id() {
            sys::terminate(pid);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_ok()
            {
                return;
            }
            tracing::warn!("LiteLLM ignored SIGTERM; killing it");
        }
        // Fails only when it already exited, which is what we want.
        let _ = child.kill().await;
    }

    fn fetch_version(&self, bin: &Path) {
        if self.status().version.is_some() {
            return;
        }
        let me = self.clone();
        let Ok(mut command) = self.command(bin, &["--version"], None, None, None) else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(out) = command.output().await {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let version = text
                    .split_whitespace()
                    .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                    .map(String::from);
                me.inner
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .version = version;
            }
        });
    }

    /// Reads LiteLLM's cost map for the models it serves (`/model/info`): prices and output
    /// limits, used to price calls whose model the owner gave no prices.
    async fn fetch_facts(&self) {
        let client = plain_client();
        let response = client
            .get(format!("{}/model/info", self.base_url()))
            .bearer_auth(&self.inner.master_key)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let body: serde_json::Value = match response {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            Ok(r) => {
                tracing::warn!(status = %r.status(), "LiteLLM's /model/info failed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "LiteLLM's /model/info failed");
                return;
            }
        };
        let facts = parse_model_info(&body);
        *self.inner.facts.lock().unwrap_or_else(|p| p.into_inner()) = facts;
    }
}

/// `{"data": [{"model_name", "model_info": {"input_cost_per_token", "output_cost_per_token",
/// "max_output_tokens"}}]}` → facts by model name. Costs per token become USD per million.
fn parse_model_info(body: &serde_json::Value) -> HashMap<String, ModelFacts> {
    let mut facts = HashMap::new();
    for entry in body["data"].as_array().into_iter().flatten() {
        let Some(name) = entry["model_name"].as_str() else {
            continue;
        };
        let info = &entry["model_info"];
        let price = |key: &str| {
            info[key]
                .as_f64()
                .filter(|p| p.is_finite() && *p >= 0.0)
                .map(|p| p * 1_000_000.0)
        };
        let prices = match (
            price("input_cost_per_token"),
            price("output_cost_per_token"),
        ) {
            (Some(input), Some(output)) => Some((input, output)),
            _ => None,
        };
        let max_output_tokens = info["max_output_tokens"].as_u64().filter(|m| *m > 0);
        facts.insert(
            name.to_string(),
            ModelFacts {
                provider: None,
                prices,
                max_output_tokens,
            },
        );
    }
    facts
}

/// LiteLLM's arguments to serve with `config` on 127.0.0.1:`port` (the launcher serves on the
/// host's socket instead of binding it).
fn serve_args<'a>(config: &'a str, port: &'a str) -> [&'a str; 6] {
    ["--config", config, "--host", "127.0.0.1", "--port", port]
}

/// Deletes the keys' file of LiteLLM's unit (systemd has copied it by the time LiteLLM runs).
fn remove_secrets(unit: &UnitLaunch) {
    match std::fs::remove_file(unit.secrets_path()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(error = %e, "cannot delete LiteLLM's keys file"),
    }
}

/// Appends a line to the log, moving it to `.1` once it passes the size cap.
fn append_capped(path: &Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_LIMIT_BYTES) {
        // Rotation is best effort: if it fails, the lines still go to the current file.
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(fsutil::PRIVATE_FILE_MODE)
        .open(path)
    {
        // LiteLLM's own log: a line lost on a full disk is not worth failing the supervisor for.
        let _ = writeln!(file, "{line}");
    }
}

/// An HTTP client for loopback services (no TLS involved, but reqwest wants a config).
pub fn plain_client() -> reqwest::Client {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// reqwest is built without a default TLS provider; install ring once for the process.
pub fn ensure_crypto_provider() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        // Refused only if a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run loop restarts LiteLLM only when woken; the same catalog applied again (a models
    /// refresh that found nothing new) must not wake it.
    #[test]
    fn the_same_config_applied_again_wakes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = Supervisor::new(dir.path(), None, 0, "nobody").unwrap();
        let mut woken = supervisor.inner.desired.subscribe();
        let desired = Desired {
            config: serde_json::json!({"model_list": [{"model_name": "m"}]}),
            env: vec![("KEY".into(), "value".into())],
            models: vec!["m".into()],
            idle_reason: String::new(),
        };
        supervisor.apply(desired.clone());
        assert!(woken.has_changed().unwrap(), "a new config wakes the loop");
        woken.borrow_and_update();
        supervisor.apply(desired.clone());
        assert!(!woken.has_changed().unwrap(), "the same config does not");
        let mut more = desired;
        more.models.push("n".into());
        supervisor.apply(more);
        assert!(woken.has_changed().unwrap(), "a changed model list does");
    }
}
