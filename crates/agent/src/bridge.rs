//! Calls to the host's agent listener: the bridge stream, replies and traces.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use taos_proto::approvals::{ApprovalAnswer, ApprovalRequest};
use taos_proto::bridge::Reply;
use taos_proto::trace::{NewTraceEvent, TraceKind, TRACE_SCHEMA_VERSION};

use crate::config::Secret;
use crate::http::{with_causes, ErrorInfo};

/// Replies are retried this many times in all when the host could not be reached or failed
/// with a 5xx: a restart of the host should not lose an answer.
const REPLY_ATTEMPTS: u32 = 3;
const REPLY_RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    // reqwest's message names the URL, which holds no secret (the token is a header).
    #[error("could not reach the host: {}", with_causes(.0))]
    Transport(#[from] reqwest::Error),
    #[error("the host refused the agent token (HTTP {0})")]
    Refused(u16),
    #[error("the host answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

impl BridgeError {
    /// Worth trying again soon: the host was unreachable or failed on its side.
    pub fn is_transient(&self) -> bool {
        match self {
            BridgeError::Transport(_) => true,
            BridgeError::Refused(_) => false,
            BridgeError::Status { status, .. } => *status >= 500,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BridgeClient {
    http: reqwest::Client,
    base_url: String,
    agent: String,
    token: Secret,
    request_timeout: Duration,
}

impl BridgeClient {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        agent: &str,
        token: Secret,
        request_timeout: Duration,
    ) -> Self {
        BridgeClient {
            http,
            base_url: base_url.to_string(),
            agent: agent.to_string(),
            token,
            request_timeout,
        }
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Opens the bridge stream. The response is returned once the host accepted it (2xx);
    /// the caller reads the body.
    pub async fn open_events(
        &self,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, BridgeError> {
        let url = format!(
            "{}/api/openclaw/sessions/{}/events",
            self.base_url, self.agent
        );
        let mut request = self
            .http
            .get(url)
            .header(AUTHORIZATION, self.bearer())
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await?;
        check_status(response).await
    }

    /// Posts one reply, retrying while the host is unreachable or failing on its side.
    pub async fn post_reply(&self, reply: &Reply) -> Result<(), BridgeError> {
        let url = format!(
            "{}/api/openclaw/sessions/{}/reply",
            self.base_url, self.agent
        );
        let mut attempt = 1;
        loop {
            let result = self.post_json(&url, reply).await;
            match result {
                Err(e) if e.is_transient() && attempt < REPLY_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "posting a reply failed; retrying");
                    tokio::time::sleep(REPLY_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Asks whether a tool call may run (`POST …/approvals`), waiting up to `wait` on the host
    /// for a person. Once: the caller decides what to do about a failure.
    pub async fn request_approval(
        &self,
        request: &ApprovalRequest,
        wait: Duration,
    ) -> Result<ApprovalAnswer, BridgeError> {
        let url = format!(
            "{}/api/openclaw/sessions/{}/approvals",
            self.base_url, self.agent
        );
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.bearer())
            // The host answers within `wait`; the rest is for the request itself.
            .timeout(wait + self.request_timeout)
            .json(request)
            .send()
            .await?;
        Ok(check_status(response).await?.json().await?)
    }

    /// Reads a page of this agent's own trace (`GET /api/agents/{agent}/trace` with `query`:
    /// the owner's filters). Once.
    pub async fn own_trace(
        &self,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, BridgeError> {
        let url = format!("{}/api/agents/{}/trace", self.base_url, self.agent);
        let response = self
            .http
            .get(url)
            .header(AUTHORIZATION, self.bearer())
            .timeout(self.request_timeout)
            .query(query)
            .send()
            .await?;
        Ok(check_status(response).await?.json().await?)
    }

    /// Posts one trace event (once; traces are best effort).
    pub async fn post_trace(&self, event: &NewTraceEvent) -> Result<(), BridgeError> {
        let url = format!("{}/api/trace", self.base_url);
        self.post_json(&url, event).await
    }

    async fn post_json<T: serde::Serialize>(&self, url: &str, body: &T) -> Result<(), BridgeError> {
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, self.bearer())
            .timeout(self.request_timeout)
            .json(body)
            .send()
            .await?;
        check_status(response).await.map(|_| ())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, BridgeError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(BridgeError::Refused(status.as_u16()));
    }
    let body = response.text().await.unwrap_or_default();
    Err(BridgeError::Status {
        status: status.as_u16(),
        message: ErrorInfo::from_body(&body).describe(),
    })
}

/// A trace event with only `kind` and an id set; callers fill in the rest. The id is ours so
/// a retried post cannot store the event twice (the host is idempotent by id).
pub fn new_trace(kind: TraceKind) -> NewTraceEvent {
    NewTraceEvent {
        v: Some(TRACE_SCHEMA_VERSION),
        id: Some(uuid::Uuid::now_v7().to_string()),
        trace_id: None,
        parent_id: None,
        created_at: None,
        agent_name: None,
        kind,
        channel_id: None,
        thread_id: None,
        backend_name: None,
        model: None,
        duration_ms: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        error: None,
        payload: serde_json::json!({}),
    }
}
