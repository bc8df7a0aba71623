//! taos test kit: starts the real `taos-host` binary on ephemeral ports with a temp data dir and
//! talks to it the way the app does, over TLS pinned to the host's key.
//!
//! Tests get the binary path from cargo (`env!("CARGO_BIN_EXE_taos-host")`), so `cargo test`
//! always runs against a freshly built host.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "the test kit fails the test that called it by panicking"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use taos_pin::SpkiPin;
use taos_proto::error::{ErrorBody, ErrorDetail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod fake_llm;
pub mod fixtures;
pub mod procstat;

pub const OWNER: &str = "owner";
/// The browser session cookie's name (a `__Host-` cookie).
pub const SESSION_COOKIE: &str = "__Host-taos_session";
pub const OWNER_PASSWORD: &str = "correct horse battery";

/// A running host. Killed when dropped.
pub struct Host {
    child: Option<Child>,
    /// Kept so the data dir lives as long as the host.
    _temp: Option<tempfile::TempDir>,
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub public_url: String,
    pub agent_url: String,
    pub pin: SpkiPin,
    pub stderr_log: PathBuf,
}

/// How to start a host.
#[derive(Default, Clone)]
pub struct HostOptions {
    /// Use this data dir instead of a fresh temp dir (to restart a host on its old data).
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl HostOptions {
    /// A fresh data dir with these environment overrides.
    pub fn with_env(env: &[(&str, &str)]) -> HostOptions {
        HostOptions {
            data_dir: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl Host {
    /// Starts a host on a fresh temp data dir, listening on 127.0.0.1 ephemeral ports.
    pub async fn start(bin: &str) -> Host {
        Self::start_with(bin, HostOptions::default())
            .await
            .expect("host starts")
    }

    pub async fn start_with(bin: &str, options: HostOptions) -> anyhow::Result<Host> {
        Self::spawn(bin, options, false).await
    }

    /// Like [`Host::start_with`], for a host that one test binary's tests share from a static.
    /// Statics are never dropped, so `kill_on_drop` would leave it running after the tests;
    /// instead the host gets SIGTERM when the thread that started it ends (and LiteLLM goes
    /// with it). Call this from a thread that lives as long as the test process.
    pub async fn start_for_process(bin: &str, options: HostOptions) -> anyhow::Result<Host> {
        Self::spawn(bin, options, true).await
    }

    async fn spawn(bin: &str, options: HostOptions, die_with_thread: bool) -> anyhow::Result<Host> {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir()?;
                let dir = temp.path().join("data");
                (Some(temp), dir)
            }
        };
        let stderr_log = data_dir
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join(format!("host-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)?;
        let mut command = Command::new(bin);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("serve")
            .env("TAOS_SERVER__BIND", "127.0.0.1:0")
            .env("TAOS_SERVER__AGENT_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        for (k, v) in &options.env {
            command.env(k, v);
        }
        if die_with_thread {
            taos_host::sys::die_with_parent(&mut command);
        }
        let mut child = command.spawn().context("spawn taos-host")?;
        let stdout = child.stdout.take().context("host stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("taos-host ready ") {
                    return Ok::<_, anyhow::Error>(line);
                }
            }
            bail!("host exited before it was ready")
        })
        .await;
        let line = match ready {
            Ok(Ok(line)) => line,
            other => {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                bail!("host did not become ready ({other:?}); its log:\n{log}");
            }
        };
        // Keep draining stdout so the host never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let fields: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        Ok(Host {
            child: Some(child),
            _temp: temp,
            bin: PathBuf::from(bin),
            public_url: fields["public"].to_string(),
            agent_url: fields["agent"].to_string(),
            pin: SpkiPin::parse(fields["fingerprint"])?,
            data_dir,
            stderr_log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    pub fn agent_url(&self, path: &str) -> String {
        format!("{}{path}", self.agent_url)
    }

    /// A client that trusts exactly this host's key.
    pub fn client(&self) -> reqwest::Client {
        pinned_client(self.pin)
    }

    pub fn local_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("local-token"))
            .expect("local token")
            .trim()
            .to_string()
    }

    /// A request authenticated with the local admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.client()
            .request(method, self.url(path))
            .bearer_auth(self.local_token())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The workspace's `taos-host` on a fixed public port (so a restarted host is found at
    /// the same address), without LiteLLM; `data_dir` restarts one on its old data.
    pub async fn start_on(port: u16, data_dir: Option<PathBuf>) -> Host {
        Host::start_with(
            &workspace_binary("taos-host").display().to_string(),
            HostOptions {
                data_dir,
                env: vec![
                    ("TAOS_SERVER__BIND".into(), format!("127.0.0.1:{port}")),
                    (
                        "TAOS_LLM__LITELLM_BIN".into(),
                        "/nonexistent/litellm".into(),
                    ),
                ],
            },
        )
        .await
        .expect("host starts")
    }

    /// A fresh single-use pairing token, made by the local admin.
    pub async fn pairing_token(&self) -> String {
        let body: Value = self
            .admin(Method::POST, "/api/devices/pairing-tokens")
            .send()
            .await
            .expect("pairing token")
            .json()
            .await
            .expect("pairing token json");
        body["token"].as_str().expect("token string").to_string()
    }

    /// Hands over the temp dir holding the data dir, so the data outlives this host (to
    /// start another on it).
    pub fn take_temp(&mut self) -> Option<tempfile::TempDir> {
        self._temp.take()
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let pid = self.pid().context("host already gone")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let mut child = self.child.take().context("no child")?;
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
        Ok(status.code())
    }

    /// SIGKILL: a crash, as far as the host can tell.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The first-run setup code the host wrote to its data dir while it has no owner.
    pub fn setup_code(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("setup-code"))
            .ok()
            .map(|code| code.trim().to_string())
    }

    /// Creates the owner through first-run setup (with the setup code from the data dir, as
    /// someone at the host would) and returns a signed-in session.
    pub async fn setup_owner(&self) -> Session {
        let mut body = json!({"username": OWNER, "password": OWNER_PASSWORD});
        // A host without a code file refuses setup; sending none lets it say so.
        if let Some(code) = self.setup_code() {
            body["setup_code"] = json!(code);
        }
        let response = self
            .client()
            .post(self.url("/api/auth/setup"))
            .json(&body)
            .send()
            .await
            .expect("setup request");
        assert_eq!(response.status(), StatusCode::CREATED, "setup");
        Session::from_response(self, response).await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.client()
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// Pairs a new device; returns its tokens JSON.
    pub async fn pair_device(&self, name: &str) -> Value {
        let token = self.pairing_token().await;
        let response = self
            .client()
            .post(self.url("/api/devices/pair"))
            .json(&json!({"token": token, "device_name": name, "platform": "linux"}))
            .send()
            .await
            .expect("pair");
        assert_eq!(response.status(), StatusCode::CREATED, "pair");
        response.json().await.expect("pair json")
    }

    /// Creates another user (not the owner, once there is one) with `taos-host user create`,
    /// as the owner would on the host.
    pub fn create_user(&self, name: &str, password: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["user", "create", name, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run taos-host user create");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write the password");
        assert!(
            child.wait().expect("user create").success(),
            "user create {name}"
        );
    }

    /// Signs a user in and returns their session.
    pub async fn session(&self, username: &str, password: &str) -> Session {
        let response = self.login(username, password).await;
        assert_eq!(response.status(), StatusCode::OK, "login {username}");
        Session::from_response(self, response).await
    }

    /// Runs a `taos-host` CLI command against this host's data dir.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("run taos-host")
    }
}

/// Typed calls as the local admin: bodies and answers are `taos-proto` types, and an answer
/// with another status than the call expects fails the test with the host's own words.
impl Host {
    /// `GET path`, expecting 200.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        expect_json(
            self.admin(Method::GET, path),
            "GET",
            path,
            &[StatusCode::OK],
        )
        .await
    }

    /// `POST path` with a JSON body, expecting 200 or 201.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> T {
        expect_json(
            self.admin(Method::POST, path).json(body),
            "POST",
            path,
            &[StatusCode::OK, StatusCode::CREATED],
        )
        .await
    }

    /// `PATCH path` with a JSON body, expecting 200.
    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> T {
        expect_json(
            self.admin(Method::PATCH, path).json(body),
            "PATCH",
            path,
            &[StatusCode::OK],
        )
        .await
    }

    /// `DELETE path`, expecting 204.
    pub async fn delete(&self, path: &str) {
        let response = self
            .admin(Method::DELETE, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::NO_CONTENT, "DELETE {path}: {text}");
    }

    /// `method path` (with `body` as JSON if given), expecting exactly `status`: for the calls
    /// the shorthands above don't fit (a DELETE that answers with a body, a POST without one).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        status: StatusCode,
    ) -> T {
        let mut request = self.admin(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        expect_json(request, method.as_str(), path, &[status]).await
    }

    /// Sends `method path` (with `body` as JSON if given) and checks the host refused it with
    /// `status` and the error `code`; returns the error for further checks of its message.
    pub async fn expect_error(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        status: StatusCode,
        code: &str,
    ) -> ErrorDetail {
        let mut request = self.admin(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let got = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(got, status, "{method} {path}: {text}");
        let error: ErrorBody = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not an error body ({e}): {text}"));
        assert_eq!(error.error.code, code, "{method} {path}: {text}");
        error.error
    }
}

/// Sends the request and parses its answer as `T`, if its status is one of `expected`.
async fn expect_json<T: DeserializeOwned>(
    request: RequestBuilder,
    method: &str,
    path: &str,
    expected: &[StatusCode],
) -> T {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(
        expected.contains(&status),
        "{method} {path}: {status} (expected {expected:?}): {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: the answer is not a {}: {e}: {text}",
            std::any::type_name::<T>()
        )
    })
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A reqwest client whose only trust is the pinned key.
pub fn pinned_client(pin: SpkiPin) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(taos_pin::pinned_client_config(pin))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A client that trusts no certificate at all, like a browser that has not been told about
/// the host: it must fail against the self-signed host.
pub fn unpinned_client() -> reqwest::Client {
    plain_client(Duration::from_secs(10))
}

/// A client that trusts no certificate at all (for plain-HTTP peers: the agent listener, a
/// WebDriver server), with a per-request timeout.
pub fn plain_client(timeout: Duration) -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()
        .expect("client")
}

/// A loopback port that was free a moment ago (for a host that must come back on the same
/// address after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A browser session: the cookies setup or login set, and the CSRF token.
#[derive(Clone, Debug)]
pub struct Session {
    pub session_cookie: String,
    pub csrf_token: String,
    pub client: reqwest::Client,
    pub base: String,
}

impl Session {
    pub async fn from_response(host: &Host, response: Response) -> Session {
        let cookies = set_cookies(response.headers());
        let body: Value = response.json().await.expect("login json");
        Session {
            session_cookie: cookies
                .get(SESSION_COOKIE)
                .expect("session cookie")
                .0
                .clone(),
            csrf_token: body["csrf_token"].as_str().expect("csrf_token").to_string(),
            client: host.client(),
            base: host.public_url.clone(),
        }
    }

    /// A request with the session cookie and the CSRF header.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_without_csrf(method, path)
            .header("x-csrf-token", &self.csrf_token)
    }

    /// A request with the session cookie but no CSRF header.
    pub fn request_without_csrf(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header(COOKIE, self.cookie())
    }

    /// The `Cookie` header value that carries this session.
    pub fn cookie(&self) -> String {
        format!("{SESSION_COOKIE}={}", self.session_cookie)
    }
}

/// `Set-Cookie` headers as name → (value, attributes lowercased).
pub fn set_cookies(headers: &HeaderMap) -> HashMap<String, (String, Vec<String>)> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let mut parts = v.split(';').map(str::trim);
            let (name, value) = parts.next()?.split_once('=')?;
            let attrs = parts.map(|a| a.to_ascii_lowercase()).collect();
            Some((name.to_string(), (value.to_string(), attrs)))
        })
        .collect()
}

pub fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
}

pub fn auth_header(token: &str) -> (reqwest::header::HeaderName, HeaderValue) {
    (AUTHORIZATION, bearer(token))
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads server-sent events from a streaming response.
pub struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    ended: bool,
}

impl SseReader {
    pub fn new(response: Response) -> SseReader {
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
            ended: false,
        }
    }

    /// The next event (comments such as keep-alives are skipped), or `None` when the stream
    /// ends or `wait` passes.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        match self.next_or_end(wait).await {
            SseNext::Event(event) => Some(event),
            SseNext::Ended | SseNext::Waiting => None,
        }
    }

    /// Like [`SseReader::next`], but says whether the stream ended or simply had nothing yet:
    /// "the stream was closed" is a behaviour a test can assert without guessing at timing.
    pub async fn next_or_end(&mut self, wait: Duration) -> SseNext {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.buffered_event() {
                return SseNext::Event(event);
            }
            if self.ended {
                return SseNext::Ended;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(bytes))) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                Ok(Some(Err(_)) | None) => self.ended = true,
                Err(_) => return SseNext::Waiting,
            }
        }
    }

    /// The first whole event in the buffer, skipping comment blocks.
    fn buffered_event(&mut self) -> Option<SseEvent> {
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            let mut data_lines = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data_lines.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if event.id.is_none() && event.event.is_none() && data_lines.is_empty() {
                continue; // a comment block
            }
            event.data = data_lines.join("\n");
            return Some(event);
        }
        None
    }
}

/// What reading a stream gave: an event, the end of the stream, or nothing within the wait.
#[derive(Debug)]
pub enum SseNext {
    Event(SseEvent),
    Ended,
    Waiting,
}

/// Whether a test must give up because something it needs is missing. A missing dependency
/// fails the test (CI provisions everything, so a green run means it ran); a developer can opt
/// out on purpose with `TAOS_TEST_ALLOW_SKIP=1`, which CI never sets. A skip is printed and
/// appended to `$TAOS_TEST_SKIP_LOG`, which scripts/test.sh counts in its closing line.
pub fn skip_for_missing(test: &str, why: &str) -> bool {
    if std::env::var("TAOS_TEST_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!(
            "{test} cannot run: {why}. Provision it (scripts/provision.sh), or set \
             TAOS_TEST_ALLOW_SKIP=1 to skip it on purpose"
        );
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(log) = std::env::var("TAOS_TEST_SKIP_LOG") {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| writeln!(file, "{test}: {why}"));
        if let Err(e) = appended {
            panic!("cannot record the skip of {test} in {log}: {e}");
        }
    }
    true
}

/// A client for plain-HTTP listeners (the agent listener, loopback `insecure_http`).
pub fn http_client() -> reqwest::Client {
    unpinned_client()
}

/// An agent as the tests play it: the bridge stream and replies on the agent listener.
#[derive(Clone)]
pub struct AgentClient {
    pub slug: String,
    pub token: String,
    pub base: String,
    client: reqwest::Client,
}

impl AgentClient {
    /// Creates an external agent through the public API and returns its client.
    pub async fn create(host: &Host, name: &str) -> (AgentClient, Value) {
        let response = host
            .admin(Method::POST, "/api/agents")
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("create agent");
        assert_eq!(response.status(), StatusCode::CREATED, "create agent");
        let body: Value = response.json().await.expect("agent json");
        let client = AgentClient {
            slug: body["agent"]["slug"].as_str().expect("slug").to_string(),
            token: body["agent_token"].as_str().expect("token").to_string(),
            base: host.agent_url.clone(),
            client: http_client(),
        };
        (client, body["agent"].clone())
    }

    /// The same agent talking to another agent listener (a restarted host).
    pub fn with_base(&self, base: &str) -> AgentClient {
        AgentClient {
            base: base.to_string(),
            ..self.clone()
        }
    }

    pub fn with_token(&self, token: &str) -> AgentClient {
        AgentClient {
            token: token.to_string(),
            ..self.clone()
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Opens the bridge stream for `slug` (normally its own).
    pub async fn events_for(&self, slug: &str, last_event_id: Option<&str>) -> Response {
        self.try_events_for(slug, last_event_id)
            .await
            .expect("bridge stream")
    }

    async fn try_events_for(
        &self,
        slug: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Result<Response> {
        let mut request = self.request(
            Method::GET,
            &format!("/api/openclaw/sessions/{slug}/events"),
        );
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await
    }

    pub async fn events(&self, last_event_id: Option<&str>) -> SseReader {
        let response = self.events_for(&self.slug.clone(), last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK, "bridge stream");
        SseReader::new(response)
    }

    /// Answers every delivered message, until aborted: "Hello from the agent", streamed as two
    /// deltas (`pause` apart, so a UI can see them arrive) and then a final.
    pub fn answer_everything(self, pause: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // The stream ends when the test client's request timeout cuts it: pick it up again
            // where it stopped, as a real sidecar does.
            let mut last_id: Option<String> = None;
            loop {
                let response = match self.try_events_for(&self.slug, last_id.as_deref()).await {
                    Ok(response) if response.status() == StatusCode::OK => response,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let mut events = SseReader::new(response);
                while let Some(event) = events.next(Duration::from_secs(3600)).await {
                    if event.id.is_some() {
                        last_id = event.id.clone();
                    }
                    self.answer(&event, pause).await;
                }
            }
        })
    }

    /// Answers one delivery: two deltas `pause` apart, then the final.
    async fn answer(&self, event: &SseEvent, pause: Duration) {
        let Ok(delivery) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        let trace_id = delivery["trace_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for part in ["Hello ", "from the agent"] {
            self.reply(json!({"kind": "delta", "trace_id": trace_id, "content": part}))
                .await;
            tokio::time::sleep(pause).await;
        }
        self.reply(
            json!({"kind": "final", "trace_id": trace_id, "content": "Hello from the agent"}),
        )
        .await;
    }

    pub async fn reply(&self, body: Value) -> Response {
        self.request(
            Method::POST,
            &format!("/api/openclaw/sessions/{}/reply", self.slug),
        )
        .json(&body)
        .send()
        .await
        .expect("reply")
    }
}

type TlsWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The HTTP status a WebSocket handshake was refused with, if that is why it failed.
pub fn ws_refusal_status(error: &anyhow::Error) -> Option<StatusCode> {
    match error.downcast_ref::<tokio_tungstenite::tungstenite::Error>()? {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            StatusCode::from_u16(response.status().as_u16()).ok()
        }
        _ => None,
    }
}

/// The TLS error under a failed request, if the failure was TLS's (reqwest and hyper wrap it,
/// and `io::Error` hides it from `source()`, so each layer is looked into).
pub fn tls_error(error: &reqwest::Error) -> Option<rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        next = match e.downcast_ref::<std::io::Error>() {
            // An io::Error's source() skips the error it wraps: look at that error itself.
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// What reading the chat socket gave.
#[derive(Debug)]
pub enum WsNext {
    Event(Value),
    /// Closed, with the close code the host sent (none when the connection just dropped).
    Closed(Option<u16>),
    Waiting,
}

/// A WebSocket chat client over TLS pinned to the host's key.
pub struct WsClient {
    stream: TlsWs,
}

/// How a WebSocket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// The host sent a close frame with this code and reason.
    Closed { code: u16, reason: String },
    /// The connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects with `Authorization: Bearer <token>`.
    pub async fn connect(host: &Host, token: &str) -> anyhow::Result<WsClient> {
        Self::connect_with(
            host,
            vec![("authorization".into(), format!("Bearer {token}"))],
        )
        .await
    }

    /// Connects with extra handshake headers (cookies, subprotocols, origins).
    pub async fn connect_with(
        host: &Host,
        headers: Vec<(String, String)>,
    ) -> anyhow::Result<WsClient> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let authority = host.public_url.trim_start_matches("https://").to_string();
        let mut config = taos_pin::pinned_client_config(host.pin);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&authority).await?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
                tcp,
            )
            .await?;
        let mut request = format!("wss://{authority}/api/chat/ws").into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(&value)?,
            );
        }
        let (stream, _) = tokio_tungstenite::client_async(request, tls).await?;
        Ok(WsClient { stream })
    }

    /// Sends a frame; an error if the socket is closed.
    pub async fn try_send(&mut self, event: Value) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                event.to_string().into(),
            ))
            .await?;
        Ok(())
    }

    /// Reads until the socket ends (skipping any frames before), or `None` if `wait` passes
    /// first.
    pub async fn end(&mut self, wait: Duration) -> Option<WsEnd> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(WsEnd::Dropped),
                Ok(Some(Ok(frame))) => frame,
            };
            if let tokio_tungstenite::tungstenite::Message::Close(close) = frame {
                return Some(match close {
                    Some(f) => WsEnd::Closed {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    },
                    None => WsEnd::Dropped,
                });
            }
        }
    }

    pub async fn send(&mut self, event: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                event.to_string().into(),
            ))
            .await
            .expect("ws send");
    }

    /// The next JSON event, or `None` on close or timeout.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        match self.next_or_close(wait).await {
            WsNext::Event(event) => Some(event),
            WsNext::Closed(_) | WsNext::Waiting => None,
        }
    }

    /// The next JSON event, the close (with its code, if the host sent one), or nothing within
    /// the wait.
    pub async fn next_or_close(&mut self, wait: Duration) -> WsNext {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return WsNext::Waiting,
                Ok(None) | Ok(Some(Err(_))) => return WsNext::Closed(None),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                Message::Text(text) => match serde_json::from_str(text.as_str()) {
                    Ok(event) => return WsNext::Event(event),
                    Err(e) => panic!("the host sent a frame that is not JSON ({e}): {text}"),
                },
                Message::Close(frame) => return WsNext::Closed(frame.map(|f| u16::from(f.code))),
                _ => continue,
            }
        }
    }

    /// The next event of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left).await?;
            if event["type"] == kind {
                return Some(event);
            }
        }
    }

    /// Subscribes and returns the events replayed before `subscribed`.
    pub async fn subscribe(&mut self, channel_id: &str, after_seq: Option<i64>) -> Vec<Value> {
        let mut request = json!({"type": "subscribe", "channel_id": channel_id});
        if let Some(seq) = after_seq {
            request["after_seq"] = json!(seq);
        }
        self.send(request).await;
        let mut replayed = Vec::new();
        loop {
            let event = self
                .next(Duration::from_secs(10))
                .await
                .expect("subscribe answer");
            if event["type"] == "subscribed" {
                return replayed;
            }
            assert_ne!(event["type"], "error", "subscribe failed: {event}");
            replayed.push(event);
        }
    }
}

/// What an HTTP/2 request to the public listener found out.
#[derive(Debug)]
pub struct H2Answer {
    /// Whether the host's SETTINGS offer extended CONNECT (RFC 8441), without which no client
    /// can open a WebSocket over HTTP/2.
    pub extended_connect: bool,
    pub status: u16,
    pub body: String,
}

/// Sends one request over HTTP/2 (TLS pinned to the host's key, ALPN `h2`).
pub async fn h2_request(
    host: &Host,
    method: Method,
    path: &str,
    headers: Vec<(String, String)>,
) -> anyhow::Result<H2Answer> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let authority = host.public_url.trim_start_matches("https://").to_string();
    let mut config = taos_pin::pinned_client_config(host.pin);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
            tcp,
        )
        .await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        "the host did not negotiate HTTP/2"
    );
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tls))
        .await?;
    let mut conn = Box::pin(conn);
    let mut request = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_str().as_bytes())?)
        .uri(format!("https://{authority}{path}"));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(http_body_util::Empty::new())?;
    let response = tokio::select! {
        response = send.send_request(request) => response?,
        ended = &mut conn => anyhow::bail!("the HTTP/2 connection ended: {ended:?}"),
    };
    // The host's SETTINGS precede any response on the connection, so they are known now.
    let extended_connect = conn.is_extended_connect_protocol_enabled();
    let status = response.status().as_u16();
    let body = tokio::select! {
        body = response.into_body().collect() => body?.to_bytes(),
        ended = &mut conn => anyhow::bail!("the HTTP/2 connection ended: {ended:?}"),
    };
    Ok(H2Answer {
        extended_connect,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Polls an agent's trace until `check` passes or 10 s go by.
pub async fn wait_for_trace(
    host: &Host,
    slug: &str,
    query: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = host
            .admin(Method::GET, &format!("/api/agents/{slug}/trace{query}"))
            .send()
            .await
            .expect("trace")
            .json()
            .await
            .expect("trace json");
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if check(&events) || tokio::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another binary of this workspace (e.g. `taos-agent`), from the target dir the tests run
/// from. `scripts/test.sh` builds every binary before testing.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}
