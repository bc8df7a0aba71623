//! The tools a model may call, as OpenAI function definitions, and what each one does.
//!
//! `shell`, `read_file`, `write_file` and `list_dir` run as processes of the tools account
//! (through [`Sandbox::run`]), so they can touch only what that account may; `http_get` is
//! made by the sidecar itself, carries no credentials, and goes out through the container's
//! network, so the agent's network policy applies to it as to anything else in there.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::exec::{Captured, Ran, Sandbox};

/// The most a `write_file` may write in one call.
const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// `http_get` gives up after this long, whatever the tool budget.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;

/// What a tool call came to: shown in the chat and traces (`result`), and told to the model
/// (`for_model`, plain text).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub success: bool,
    pub result: Value,
    pub for_model: String,
}

/// A call's arguments as a JSON object, or (when the model sent something else) what it sent,
/// shortened, to show in the chat.
pub fn parse_arguments(arguments: &str) -> Result<Value, Value> {
    match serde_json::from_str(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(json!({ "unparsed": shorten(arguments, 2000) })),
    }
}

impl Outcome {
    /// A call that was not run because it was not approved (`state`: denied, expired, …).
    pub fn not_run(state: &str, reason: &str) -> Outcome {
        Outcome {
            success: false,
            result: json!({ "approval": state, "error": format!("not run: {reason}") }),
            for_model: format!(
                "not run: {reason}. Do not try to get around this; tell the user what you \
                 wanted to do instead."
            ),
        }
    }

    /// A call that ran; the model gets `result` as JSON text.
    pub fn ok(result: Value) -> Outcome {
        let for_model = result.to_string();
        Outcome {
            success: true,
            result,
            for_model,
        }
    }

    pub fn failed(reason: impl Into<String>) -> Outcome {
        let reason = reason.into();
        Outcome {
            success: false,
            result: json!({ "error": reason }),
            for_model: format!("error: {reason}"),
        }
    }
}

pub struct Toolkit {
    sandbox: Sandbox,
    http: reqwest::Client,
    call_timeout: Duration,
    call_timeout_max: Duration,
}

pub const TOOL_NAMES: &[&str] = &[
    "shell",
    "read_file",
    "write_file",
    "list_dir",
    "http_get",
    READ_TRACE,
];

/// The tool that reads the agent's own trace from the host. The sidecar runs it (with its own
/// token), not the tools account: see `ToolsMode::read_trace`.
pub const READ_TRACE: &str = "read_trace";

impl Toolkit {
    pub fn new(
        sandbox: Sandbox,
        http: reqwest::Client,
        call_timeout: Duration,
        call_timeout_max: Duration,
    ) -> Toolkit {
        Toolkit {
            sandbox,
            http,
            call_timeout,
            call_timeout_max,
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The `tools` field of a chat completion request.
    pub fn definitions(&self) -> Value {
        let workdir = self.sandbox.workdir().display().to_string();
        let function = |name: &str, description: String, parameters: Value| json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}});
        json!([
            function(
                "shell",
                format!(
                    "Run a command in your container, as your own unprivileged user, and get its \
                     exit code and output (capped at {} bytes per stream; the start and end are \
                     kept). `command` is a string run by `sh -c`, or an array of program and \
                     arguments run as is. Starts in {workdir} unless `cwd` says otherwise. \
                     Killed after `timeout_secs` (default {}, at most {}); nothing it starts \
                     keeps running after it returns. `rm` moves files to the recycle bin.",
                    self.sandbox.output_bytes(),
                    self.call_timeout.as_secs(),
                    self.call_timeout_max.as_secs()
                ),
                json!({"type": "object", "properties": {
                    "command": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "cwd": {"type": "string"},
                    "timeout_secs": {"type": "integer", "minimum": 1}
                }, "required": ["command"]}),
            ),
            function(
                "read_file",
                format!(
                    "Read a text file (at most {} bytes are returned). Relative paths are in {workdir}.",
                    self.sandbox.output_bytes()
                ),
                json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            ),
            function(
                "write_file",
                format!(
                    "Create or overwrite a file with `content` (at most {MAX_WRITE_BYTES} bytes). \
                     The folder must exist. Relative paths are in {workdir}."
                ),
                json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"]}),
            ),
            function(
                "list_dir",
                format!("List a directory with sizes, owners and dates (`ls -la`). Default: {workdir}."),
                json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            ),
            function(
                "http_get",
                format!(
                    "Fetch an http(s) URL from your container's network and get the status, \
                     content type and the start of the body (at most {} bytes). Redirects are \
                     followed up to {MAX_REDIRECTS} times.",
                    self.sandbox.output_bytes()
                ),
                json!({"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
            ),
            function(
                READ_TRACE,
                "Read your own trace from the host, newest first: your conversations \
                 (message_in, message_out), LLM calls with tokens and cost, tool calls and \
                 results, errors. `since`/`until` are RFC 3339 or epoch seconds; `kind` filters \
                 one kind; `limit` is 1-1000 (default 100); pass a page's `next_cursor` as \
                 `cursor` for the next, older one."
                    .to_string(),
                json!({"type": "object", "properties": {
                    "since": {"type": "string"}, "until": {"type": "string"},
                    "kind": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "cursor": {"type": "string"}
                }}),
            ),
        ])
    }

    /// Runs one call with its parsed arguments. `budget` is what is left of the turn's time;
    /// no tool runs past it.
    pub async fn call(&self, name: &str, args: &Value, budget: Duration) -> Outcome {
        match name {
            "shell" => self.shell(args, budget).await,
            "read_file" => self.read_file(args, budget).await,
            "write_file" => self.write_file(args, budget).await,
            "list_dir" => self.list_dir(args, budget).await,
            "http_get" => self.http_get(args, budget).await,
            READ_TRACE => Outcome::failed("read_trace is answered by the sidecar, not the toolkit"),
            other => Outcome::failed(format!(
                "there is no tool named {other:?}; the tools are {}",
                TOOL_NAMES.join(", ")
            )),
        }
    }

    async fn shell(&self, args: &Value, budget: Duration) -> Outcome {
        let argv: Vec<String> = match &args["command"] {
            Value::String(line) if !line.trim().is_empty() => {
                vec!["sh".into(), "-c".into(), line.clone()]
            }
            Value::Array(parts) if !parts.is_empty() => {
                let strings: Option<Vec<String>> =
                    parts.iter().map(|p| p.as_str().map(String::from)).collect();
                match strings {
                    Some(argv) => argv,
                    None => return Outcome::failed("`command` as an array holds only strings"),
                }
            }
            _ => return Outcome::failed(
                "`command` is required: a string for `sh -c`, or an array of program and arguments",
            ),
        };
        let cwd = args["cwd"].as_str().map(|c| self.sandbox.resolve(c));
        let asked = match &args["timeout_secs"] {
            Value::Null => self.call_timeout,
            value => match value.as_u64().filter(|s| *s >= 1) {
                Some(secs) => Duration::from_secs(secs).min(self.call_timeout_max),
                None => {
                    return Outcome::failed(
                        "`timeout_secs` is a whole number of seconds, at least 1",
                    )
                }
            },
        };
        let timeout = asked.min(budget);
        match self.sandbox.run(&argv, cwd.as_deref(), None, timeout).await {
            Ok(ran) => shell_outcome(&ran, timeout),
            Err(e) => Outcome::failed(format!("could not start {:?}: {e}", argv[0])),
        }
    }

    async fn read_file(&self, args: &Value, budget: Duration) -> Outcome {
        let Some(path) = args["path"].as_str().filter(|p| !p.is_empty()) else {
            return Outcome::failed("`path` is required");
        };
        let path = self.sandbox.resolve(path);
        let cap = self.sandbox.output_bytes();
        // One byte more than we keep tells us whether there was more.
        let argv = vec![
            "head".to_string(),
            "-c".to_string(),
            (cap + 1).to_string(),
            "--".to_string(),
            path.display().to_string(),
        ];
        // Kept whole: the capture's first half holds all `head` gives.
        let ran = match self.run_helper(&argv, None, budget, 2 * cap + 2).await {
            Ok(ran) => ran,
            Err(outcome) => return outcome,
        };
        let truncated = ran.stdout.total_bytes > cap as u64;
        let mut content = ran.stdout.text;
        if truncated {
            content = shorten(&content, cap);
            content.push_str(&format!(
                "\n[... the file is longer; only its first {cap} bytes are shown ...]"
            ));
        }
        Outcome {
            success: true,
            result: json!({"path": path, "content": content, "truncated": truncated}),
            for_model: content,
        }
    }

    async fn write_file(&self, args: &Value, budget: Duration) -> Outcome {
        let (Some(path), Some(content)) = (
            args["path"].as_str().filter(|p| !p.is_empty()),
            args["content"].as_str(),
        ) else {
            return Outcome::failed("`path` and `content` are required");
        };
        if content.len() > MAX_WRITE_BYTES {
            return Outcome::failed(format!(
                "`content` is {} bytes; at most {MAX_WRITE_BYTES} may be written at once",
                content.len()
            ));
        }
        let path = self.sandbox.resolve(path);
        let argv = vec![
            "tee".to_string(),
            "--".to_string(),
            path.display().to_string(),
        ];
        if let Err(outcome) = self
            .run_helper(
                &argv,
                Some(content.as_bytes()),
                budget,
                self.sandbox.output_bytes(),
            )
            .await
        {
            return outcome;
        }
        let said = format!("wrote {} bytes to {}", content.len(), path.display());
        Outcome {
            success: true,
            result: json!({"path": path, "bytes_written": content.len()}),
            for_model: said,
        }
    }

    async fn list_dir(&self, args: &Value, budget: Duration) -> Outcome {
        let path: PathBuf = match args["path"].as_str().filter(|p| !p.is_empty()) {
            Some(p) => self.sandbox.resolve(p),
            None => self.sandbox.workdir().to_path_buf(),
        };
        let argv = vec![
            "ls".to_string(),
            "-la".to_string(),
            "--".to_string(),
            path.display().to_string(),
        ];
        match self
            .run_helper(&argv, None, budget, self.sandbox.output_bytes())
            .await
        {
            Ok(ran) => Outcome {
                success: true,
                result: json!({"path": path, "listing": ran.stdout.text, "truncated": ran.stdout.truncated}),
                for_model: ran.stdout.text,
            },
            Err(outcome) => outcome,
        }
    }

    /// Runs a file tool's helper program; a non-zero exit is the tool's failure, in the
    /// program's own words (`Permission denied`, `No such file or directory`).
    async fn run_helper(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        budget: Duration,
        cap: usize,
    ) -> Result<Ran, Outcome> {
        let timeout = self.call_timeout.min(budget);
        let ran = self
            .sandbox
            .run_capped(argv, None, stdin, timeout, cap)
            .await
            .map_err(|e| Outcome::failed(format!("could not start {}: {e}", argv[0])))?;
        if ran.timed_out {
            return Err(Outcome::failed(format!(
                "timed out after {} s",
                timeout.as_secs_f32()
            )));
        }
        if ran.exit_code != Some(0) {
            let said = ran.stderr.text.trim();
            return Err(Outcome::failed(if said.is_empty() {
                format!("{} failed", argv[0])
            } else {
                said.to_string()
            }));
        }
        Ok(ran)
    }

    async fn http_get(&self, args: &Value, budget: Duration) -> Outcome {
        let Some(url) = args["url"].as_str() else {
            return Outcome::failed("`url` is required");
        };
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => return Outcome::failed("`url` must be an http:// or https:// URL"),
        };
        let timeout = HTTP_TIMEOUT.min(budget);
        let cap = self.sandbox.output_bytes();
        let fetch = async {
            let mut response = self.http.get(parsed.clone()).send().await?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let final_url = response.url().to_string();
            let mut body = Vec::new();
            let mut truncated = false;
            // Read only as much as is kept: a huge download costs nothing past the cap.
            while let Some(chunk) = response.chunk().await? {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, content_type, final_url, body, truncated))
        };
        match tokio::time::timeout(timeout, fetch).await {
            Err(_) => Outcome::failed(format!("timed out after {} s", timeout.as_secs())),
            Ok(Err(e)) => Outcome::failed(format!(
                "the request failed: {}",
                crate::http::with_causes(&e)
            )),
            Ok(Ok((status, content_type, final_url, body, truncated))) => {
                let mut text = String::from_utf8_lossy(&body).into_owned();
                if truncated {
                    text.push_str(&format!(
                        "\n[... the body is longer; only its first {cap} bytes are shown ...]"
                    ));
                }
                Outcome {
                    success: (200..400).contains(&status),
                    for_model: format!("HTTP {status} {content_type} from {final_url}\n\n{text}"),
                    result: json!({"status": status, "content_type": content_type, "url": final_url,
                        "body": text, "truncated": truncated}),
                }
            }
        }
    }
}

/// The client `http_get` uses: the system's CA certificates, no proxy from anyone's
/// environment, a few redirects, no cookies and no credentials of any kind.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a default crypto provider; the ring one is what the rest of
    // the sidecar uses. Installing it twice is harmless (the second attempt is refused).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("taos-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn shell_outcome(ran: &Ran, timeout: Duration) -> Outcome {
    let mut said = if ran.timed_out {
        format!(
            "timed out after {} s: the command and everything it started were killed",
            timeout.as_secs_f32()
        )
    } else {
        match ran.exit_code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_string(),
        }
    };
    said.push_str(&format!(" ({:.1} s)", ran.duration.as_secs_f32()));
    let stream = |name: &str, captured: &Captured| {
        if captured.total_bytes == 0 && !captured.truncated {
            String::new()
        } else {
            format!("\n--- {name} ---\n{}", captured.text)
        }
    };
    let for_model = format!(
        "{said}{}{}",
        stream("stdout", &ran.stdout),
        stream("stderr", &ran.stderr)
    );
    Outcome {
        success: !ran.timed_out && ran.exit_code == Some(0),
        result: json!({
            "exit_code": ran.exit_code,
            "timed_out": ran.timed_out,
            "stdout": ran.stdout.text,
            "stderr": ran.stderr.text,
            "truncated": ran.stdout.truncated || ran.stderr.truncated,
            "duration_ms": ran.duration.as_millis() as u64,
        }),
        for_model,
    }
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
