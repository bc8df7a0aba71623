//! openclaw's gateway as a supervised child: started as the agent's unprivileged account
//! with an environment built from nothing, waited on until `/readyz` answers, started again
//! with a growing delay when it exits, except after exit 78 (its configuration is invalid,
//! which another start would not fix), and stopped with the sidecar.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Secret;

use super::gateway::GatewayAddr;
use super::setup::KEY_ENV;

/// openclaw's exit code for a configuration it refuses (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;
/// openclaw took 12–30 s to become ready on a test machine; a small board may be slower.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const READY_POLL: Duration = Duration::from_millis(500);
/// After SIGTERM (it stops in about 4 s), how long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A gateway that ran this long before exiting starts again without the grown delay.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Lines of openclaw's output kept to explain an exit, and the longest line kept or logged.
const TAIL_LINES: usize = 20;
const MAX_LINE: usize = 2000;
/// PATH for openclaw after its node's own directory; `/usr/local/bin` first, where the image
/// puts the recycle bin's `rm`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to start openclaw.
#[derive(Debug, Clone)]
pub struct Launch {
    pub node: PathBuf,
    /// openclaw's `openclaw.mjs` (the package's bin, links resolved).
    pub entry: PathBuf,
    /// `(uid, gid)` to switch to; `None`: the sidecar's own account (tests run by hand).
    pub account: Option<(u32, u32)>,
    pub home: PathBuf,
    pub user: String,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub llm_key: Secret,
}

/// What the gateway is doing, for the turns waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayState {
    Starting,
    Ready,
    /// It exited (or could not start) and starts again after a delay.
    Restarting {
        reason: String,
    },
    /// It refused its configuration (exit 78); not started again until the sidecar restarts.
    ConfigInvalid {
        detail: String,
    },
}

pub struct Supervisor {
    state: watch::Receiver<GatewayState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub fn start(launch: Launch, addr: GatewayAddr) -> Supervisor {
        let (state_tx, state) = watch::channel(GatewayState::Starting);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(launch, addr, state_tx, stop_rx));
        Supervisor {
            state,
            stop: Some(stop),
            task,
        }
    }

    pub fn state(&self) -> watch::Receiver<GatewayState> {
        self.state.clone()
    }

    /// Stops openclaw (SIGTERM, then SIGKILL after a grace) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropping the task drops the child's guard, which kills its process group.
        self.task.abort();
    }
}

/// Kills the child's process group when dropped: openclaw starts node workers of its own.
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

type Tail = Arc<Mutex<VecDeque<String>>>;

async fn supervise(
    launch: Launch,
    addr: GatewayAddr,
    state: watch::Sender<GatewayState>,
    mut stop: oneshot::Receiver<()>,
) {
    let http = match crate::http::plain_client(Duration::from_secs(5), Duration::from_secs(5)) {
        Ok(http) => http,
        Err(e) => {
            state.send_replace(GatewayState::ConfigInvalid {
                detail: format!("no HTTP client: {e}"),
            });
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        state.send_replace(GatewayState::Starting);
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let started = Instant::now();
        let mut child = match spawn(&launch, &tail) {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("could not start openclaw ({}): {e}", launch.node.display());
                tracing::error!("{reason}");
                state.send_replace(GatewayState::Restarting { reason });
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = &mut stop => return,
                }
            }
        };
        let group = Group(child.id());
        tracing::info!(pid = ?child.id(), user = %launch.user, "openclaw's gateway starting");
        // Until ready: poll /readyz, watching for an exit and for the sidecar stopping.
        let mut ready = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = &mut stop => {
                    terminate(&mut child, group).await;
                    return;
                }
                _ = tokio::time::sleep(READY_POLL), if !ready => {
                    if is_ready(&http, &addr).await {
                        ready = true;
                        tracing::info!(after = ?started.elapsed(), "openclaw's gateway is ready");
                        state.send_replace(GatewayState::Ready);
                    } else if started.elapsed() > READY_TIMEOUT {
                        tracing::error!(timeout = ?READY_TIMEOUT, "openclaw's gateway did not become ready; starting it again");
                        drop(group);
                        let _ = child.kill().await;
                        break child.wait().await;
                    }
                }
            }
        };
        let tail_text = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        let code = status.as_ref().ok().and_then(|s| s.code());
        if code == Some(EXIT_CONFIG) {
            tracing::error!(output = %tail_text, "openclaw refused its configuration (exit 78); not starting it again");
            state.send_replace(GatewayState::ConfigInvalid { detail: tail_text });
            let _ = stop.await;
            return;
        }
        let reason = match status {
            Ok(status) => format!("openclaw's gateway exited ({status})"),
            Err(e) => format!("openclaw's gateway could not be waited on: {e}"),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(reason = %reason, output = %tail_text, delay = ?delay, "starting openclaw's gateway again");
        state.send_replace(GatewayState::Restarting { reason });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
        }
    }
}

fn spawn(launch: &Launch, tail: &Tail) -> std::io::Result<tokio::process::Child> {
    let node_dir = launch
        .node
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let mut command = tokio::process::Command::new(&launch.node);
    command
        .arg(&launch.entry)
        .args(["gateway", "run"])
        .env_clear()
        .env("PATH", format!("{node_dir}:{PATH}"))
        .env("HOME", &launch.home)
        .env("USER", &launch.user)
        .env("LOGNAME", &launch.user)
        .env("SHELL", "/bin/sh")
        .env("LANG", "C.UTF-8")
        .env("OPENCLAW_STATE_DIR", &launch.state_dir)
        .env("OPENCLAW_CONFIG_PATH", &launch.config_path)
        // Embedding settings (openclaw's docs/gateway/embedding.md): no LAN advertising, no
        // detached restarts (we own the process), no chat channels of its own, no login-shell
        // snapshot for its commands.
        .env("OPENCLAW_DISABLE_BONJOUR", "1")
        .env("OPENCLAW_NO_RESPAWN", "1")
        .env("OPENCLAW_SKIP_CHANNELS", "1")
        .env("OPENCLAW_EXEC_SHELL_SNAPSHOT", "0")
        .env(KEY_ENV, launch.llm_key.expose())
        .current_dir(&launch.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = launch.account {
        command.uid(uid).gid(gid);
    }
    let mut child = command.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, tail.clone()));
    }
    Ok(child)
}

/// Logs openclaw's output line by line (cut to [`MAX_LINE`]) and keeps the last lines.
async fn forward(reader: impl AsyncRead + Unpin, tail: Tail) {
    let mut lines = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // A line longer than the cap is read in pieces: memory stays bounded.
        match (&mut lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        tracing::info!(target: "openclaw", "{line}");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() >= TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

async fn is_ready(http: &reqwest::Client, addr: &GatewayAddr) -> bool {
    let ask = http.get(addr.http_url("/readyz")).send();
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()))
}

/// SIGTERM to the gateway, SIGKILL to its group after [`STOP_GRACE`].
async fn terminate(child: &mut tokio::process::Child, group: Group) {
    if let Some(pid) = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => tracing::info!(?status, "openclaw's gateway stopped"),
        Err(_) => tracing::warn!("openclaw's gateway ignored SIGTERM; killing it"),
    }
    drop(group);
}
