//! The ACP agent's process: started as the tools account with an environment of its own, in
//! its workspace; spoken to over stdio as JSON lines through the SDK's client connection, with
//! limits on what it may send checked as the bytes are read, before anything is parsed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    ClientCapabilities, Implementation, InitializeRequest, RequestPermissionRequest,
    RequestPermissionResponse, SessionNotification,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, Lines};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{fill_placeholders, AcpConfig};
use crate::tools::exec::{kill_all, Sandbox};

/// How long the agent may take to start and answer `initialize` (a Node agent on a small
/// machine takes seconds).
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a start that failed waits to learn how the process ended, for the error.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// A line of the agent's stderr kept for the log, and how many lines a process may log.
const STDERR_LINE_BYTES: usize = 2048;
const STDERR_LINES: u32 = 10_000;

/// What the agent sends that a turn acts on, in the order it was sent.
pub enum Incoming {
    Update(Box<SessionNotification>),
    Permission(Box<Asked>),
}

/// A permission request and the handle that answers it.
pub struct Asked {
    pub request: RequestPermissionRequest,
    pub responder: Responder<RequestPermissionResponse>,
}

/// What the agent has sent, counted as it is read, and why it was cut off, if it was.
#[derive(Default)]
pub struct Traffic {
    bytes: AtomicU64,
    cut: Mutex<Option<String>>,
}

impl Traffic {
    /// Starts a turn's count.
    pub fn reset(&self) {
        self.bytes.store(0, Ordering::SeqCst);
    }

    /// Why the connection was cut by a limit, if it was.
    pub fn cut_reason(&self) -> Option<String> {
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn cut(&self, reason: String) -> std::io::Error {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        cut.get_or_insert(reason.clone());
        std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
    }
}

/// A running agent: its connection, what it sends, and its process.
pub struct Process {
    pub conn: ConnectionTo<Agent>,
    pub events: mpsc::UnboundedReceiver<Incoming>,
    /// `Some(words)` once the process has ended (its exit status, or that it was killed).
    pub exited: watch::Receiver<Option<String>>,
    pub traffic: Arc<Traffic>,
    pub load_session: bool,
    pub agent_name: String,
    /// Dropping it (with the process) kills the agent and everything it started.
    _kill: oneshot::Sender<()>,
    /// Dropping it ends the connection.
    _close: oneshot::Sender<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not start `{program}`: {error}")]
    Spawn { program: String, error: String },
    #[error("the agent did not answer `initialize`: {0}")]
    Initialize(String),
    #[error("the agent did not answer `initialize` within {} s", INIT_TIMEOUT.as_secs())]
    InitializeTimeout,
}

/// The values an agent's environment may name (see `AcpConfig::env`).
pub struct Placeholders {
    pub openai_base_url: String,
    pub openai_api_key: String,
    pub model: String,
    pub agent_name: String,
}

/// Starts the agent and initializes the connection.
pub async fn start(
    config: &AcpConfig,
    sandbox: &Sandbox,
    values: &Placeholders,
) -> Result<Process, StartError> {
    let program = config.command.first().cloned().unwrap_or_default();
    let spawn_error = |error: std::io::Error| StartError::Spawn {
        program: program.clone(),
        error: error.to_string(),
    };
    let mut command = sandbox
        .command(&config.command, None)
        .map_err(spawn_error)?;
    let home = sandbox.home().to_string();
    for (name, value) in &config.env {
        command.env(
            name,
            fill_placeholders(value, |placeholder| match placeholder {
                "OPENAI_BASE_URL" => values.openai_base_url.clone(),
                "OPENAI_API_KEY" => values.openai_api_key.clone(),
                "TAOS_MODEL" => values.model.clone(),
                "TAOS_AGENT_NAME" => values.agent_name.clone(),
                "HOME" => home.clone(),
                _ => String::new(),
            }),
        );
    }
    command.stdin(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id();
    let uid = sandbox.account_uid();
    tracing::info!(?pid, command = ?config.command, "started the ACP agent");
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        kill_all(pid, uid);
        return Err(spawn_error(std::io::Error::other("no pipes to the agent")));
    };
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_stderr(stderr));
    }

    // The process is watched by a task of its own: it says when it ended, and kills it (with
    // everything it started) when the `Process` is dropped.
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let (exit_tx, exited) = watch::channel(None);
    tokio::spawn(async move {
        let words = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown status: {e}"),
            },
            _ = kill_rx => {
                kill_all(pid, uid);
                let _ = child.kill().await;
                "killed by the sidecar".to_string()
            }
        };
        // Whatever it left behind goes too.
        kill_all(pid, uid);
        let _ = exit_tx.send(Some(words));
    });

    let traffic = Arc::new(Traffic::default());
    let incoming = incoming_lines(stdout, traffic.clone(), config);
    let outgoing = futures::sink::unfold(stdin, |mut stdin, line: String| async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok::<_, std::io::Error>(stdin)
    });
    let (events_tx, events) = mpsc::unbounded_channel();
    let permissions_tx = events_tx.clone();
    let (conn_tx, conn_rx) = oneshot::channel();
    let (close_tx, close_rx) = oneshot::channel::<()>();
    // The SDK's handlers run in its dispatch loop, which must not wait on us: they hand what
    // came to the turn through an unbounded channel (bounded in effect by the byte limit).
    let connection = Client
        .v1()
        .name("taos-agent")
        .on_receive_notification(
            async move |update: SessionNotification, _cx| {
                let _ = events_tx.send(Incoming::Update(Box::new(update)));
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest, responder, _cx| {
                // Without a turn to take it, the responder is dropped and the SDK answers
                // with an error: nothing is allowed that nobody decided.
                let _ = permissions_tx
                    .send(Incoming::Permission(Box::new(Asked { request, responder })));
                Ok(())
            },
            agent_client_protocol::on_receive_request!(),
        )
        .connect_with(Lines::new(outgoing, incoming), async move |cx| {
            let _ = conn_tx.send(cx);
            let _ = close_rx.await;
            Ok(())
        });
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::info!(error = %e, "the ACP connection ended");
        }
    });
    let conn: ConnectionTo<Agent> = match conn_rx.await {
        Ok(conn) => conn,
        Err(_) => {
            kill_all(pid, uid);
            return Err(StartError::Initialize(
                "the connection closed at once".to_string(),
            ));
        }
    };
    // No client capabilities: no `fs/*` and no `terminal/*`. The agent runs in its own
    // container, as its own account, with its own tools; the sidecar doing file or terminal
    // work for it would only be a second, less confined way to do the same (and would run
    // with the sidecar's privileges unless re-confined). Approvals still cover what it does
    // through `session/request_permission`.
    let initialize = InitializeRequest::new(ProtocolVersion::V1)
        .client_capabilities(ClientCapabilities::new())
        .client_info(Implementation::new("taos-agent", env!("CARGO_PKG_VERSION")));
    let answer = tokio::time::timeout(INIT_TIMEOUT, conn.send_request(initialize).block_task())
        .await
        .map_err(|_| StartError::InitializeTimeout)
        .and_then(|r| r.map_err(|e| StartError::Initialize(e.to_string())));
    let answer = match answer {
        Ok(answer) => answer,
        Err(StartError::Initialize(reason)) => {
            // A closed pipe says little; how the process ended (its exit code, or the signal
            // that killed it) says why.
            let mut ended = exited.clone();
            let words = tokio::time::timeout(EXIT_GRACE, ended.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|seen| seen.ok().and_then(|words| words.clone()));
            kill_all(pid, uid);
            return Err(StartError::Initialize(match words {
                Some(words) => format!("{reason} (its process ended: {words})"),
                None => reason,
            }));
        }
        Err(e) => {
            kill_all(pid, uid);
            return Err(e);
        }
    };
    let agent_name = answer
        .agent_info
        .as_ref()
        .map(|i| format!("{} {}", i.name, i.version))
        .unwrap_or_else(|| program.clone());
    let load_session = answer.agent_capabilities.load_session;
    tracing::info!(agent = %agent_name, load_session, "the ACP agent is ready");
    Ok(Process {
        conn,
        events,
        exited,
        traffic,
        load_session,
        agent_name,
        _kill: kill_tx,
        _close: close_tx,
    })
}

/// The agent's stdout as JSON lines, refusing (and so ending the connection) a line over the
/// limit or a turn's worth of bytes over the limit, before either is parsed.
fn incoming_lines(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    traffic: Arc<Traffic>,
    config: &AcpConfig,
) -> impl futures::Stream<Item = std::io::Result<String>> + Send + 'static {
    let max_line = config.max_line_bytes;
    let max_turn = config.max_turn_bytes;
    let reader = BufReader::new(stdout);
    futures::stream::unfold(
        (reader, traffic, false),
        move |(mut reader, traffic, done)| async move {
            if done {
                return None;
            }
            loop {
                match read_line(&mut reader, &traffic, max_line, max_turn).await {
                    Ok(Some(line)) if line.trim().is_empty() => continue,
                    Ok(Some(line)) => return Some((Ok(line), (reader, traffic, false))),
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), (reader, traffic, true))),
                }
            }
        },
    )
}

async fn read_line(
    reader: &mut BufReader<impl AsyncRead + Unpin>,
    traffic: &Traffic,
    max_line: usize,
    max_turn: u64,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (take, complete) = match buf.iter().position(|b| *b == b'\n') {
            Some(end) => (end + 1, true),
            None => (buf.len(), false),
        };
        let seen = traffic.bytes.fetch_add(take as u64, Ordering::SeqCst) + take as u64;
        if seen > max_turn {
            return Err(traffic.cut(format!(
                "the agent sent more than {} MiB during one turn",
                max_turn / (1024 * 1024)
            )));
        }
        if line.len() + take > max_line + 1 {
            return Err(traffic.cut(format!(
                "the agent sent a message over {} KiB",
                max_line / 1024
            )));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            line.pop();
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// The agent's stderr goes to the sidecar's log (where people look when it misbehaves), a
/// bounded number of bounded lines.
async fn log_stderr(stderr: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stderr).split(b'\n');
    let mut logged = 0u32;
    while let Ok(Some(line)) = lines.next_segment().await {
        if logged == STDERR_LINES {
            tracing::warn!("the ACP agent writes a lot to stderr; the rest is not logged");
        }
        logged = logged.saturating_add(1);
        if logged <= STDERR_LINES {
            let text = String::from_utf8_lossy(&line[..line.len().min(STDERR_LINE_BYTES)]);
            tracing::info!(target: "acp_agent", "{}", text.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(
        input: &'static [u8],
        max_line: usize,
        max_turn: u64,
    ) -> Vec<Result<String, String>> {
        let traffic = Traffic::default();
        let mut reader = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &traffic, max_line, max_turn).await {
                Ok(Some(line)) => out.push(Ok(line)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    assert!(traffic.cut_reason().is_some());
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn an_agent_that_exits_before_initialize_is_refused_with_how_it_ended() {
        let tools = crate::config::ToolsConfig {
            run_as: crate::config::RunAs::Current,
            workdir: Some(std::env::temp_dir().display().to_string()),
            ..Default::default()
        };
        let sandbox = Sandbox::new(&tools).expect("the sidecar's own account");
        let config = AcpConfig {
            command: ["/bin/sh", "-c", "exit 7"].map(String::from).to_vec(),
            ..Default::default()
        };
        let values = Placeholders {
            openai_base_url: String::new(),
            openai_api_key: String::new(),
            model: String::new(),
            agent_name: "quitter".to_string(),
        };
        let error = start(&config, &sandbox, &values)
            .await
            .err()
            .expect("no agent to talk to");
        assert!(
            matches!(&error, StartError::Initialize(words) if words.contains("exit status: 7")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn lines_over_the_limits_end_the_stream_before_they_are_read_whole() {
        assert_eq!(
            lines(b"{\"a\":1}\n{}\nlast", 100, 1000).await,
            [
                Ok("{\"a\":1}".to_string()),
                Ok("{}".to_string()),
                Ok("last".to_string())
            ]
        );
        let long = lines(b"short\nthis line is far too long\nnever", 10, 1000).await;
        assert_eq!(long[0], Ok("short".to_string()));
        assert!(
            matches!(&long[1], Err(e) if e.contains("over 0 KiB")),
            "{long:?}"
        );
        assert_eq!(long.len(), 2);
        let many = lines(b"12345\n12345\n12345\n", 100, 14).await;
        assert_eq!(many.len(), 3);
        assert!(
            matches!(&many[2], Err(e) if e.contains("during one turn")),
            "{many:?}"
        );
    }
}
