//! HTTP plumbing shared by the bridge and LLM clients.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP client setup failed: {0}")]
    Build(#[from] reqwest::Error),
}

/// A client for plain-HTTP calls to the host. reqwest is built here without a TLS provider,
/// so it needs a rustls config even though every URL is http:// (config checks that); one
/// that trusts no certificate makes any accidental https call fail instead of trusting
/// something we never meant to.
///
/// `idle_timeout` bounds each read, not the whole request, so long streams stay open while
/// a silent, dead peer is still noticed.
pub fn plain_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<reqwest::Client, ClientBuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // The host is reached directly (loopback or an incus proxy device); a proxy set in
        // the container's environment for outbound traffic must not capture these calls.
        .no_proxy()
        .connect_timeout(connect_timeout)
        .read_timeout(idle_timeout)
        .user_agent(concat!("taos-agent/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok(client)
}

/// What an error response said. Understands the host's `{"error": {"code", "message"}}`, the
/// OpenAI shape the LLM gateway uses (`{"error": {"message", "type", "code"}}`, where the
/// gateway's `code` is just the HTTP status and `type` names the error), a bare
/// `{"error": "text"}`, and plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: Option<String>,
    /// OpenAI's `type`.
    pub kind: Option<String>,
    pub message: String,
}

/// Error text shown in replies and logs is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 300;

impl ErrorInfo {
    pub fn from_body(body: &str) -> ErrorInfo {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => ErrorInfo::from_json(error),
            None => ErrorInfo::new(None, None, body.trim()),
        }
    }

    /// From the value of an `error` field (also found inside stream chunks).
    pub fn from_json(error: &serde_json::Value) -> ErrorInfo {
        match error {
            serde_json::Value::Object(fields) => {
                let text = |key: &str| match fields.get(key) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let message = text("message").unwrap_or_default();
                ErrorInfo::new(text("code"), text("type"), &message)
            }
            serde_json::Value::String(message) => ErrorInfo::new(None, None, message),
            other => ErrorInfo::new(None, None, &other.to_string()),
        }
    }

    pub fn new(code: Option<String>, kind: Option<String>, message: &str) -> ErrorInfo {
        ErrorInfo {
            code: code.filter(|c| !c.is_empty()),
            kind: kind.filter(|k| !k.is_empty()),
            message: shorten(message),
        }
    }

    /// Whether the error is named `name`, as its code or its type.
    pub fn is(&self, name: &str) -> bool {
        self.code.as_deref() == Some(name) || self.kind.as_deref() == Some(name)
    }

    /// The most telling name: the type, else a code that is more than a status number.
    pub fn name(&self) -> Option<&str> {
        self.kind.as_deref().or_else(|| {
            self.code
                .as_deref()
                .filter(|c| !c.chars().all(|ch| ch.is_ascii_digit()))
        })
    }

    /// `name: message`, or whichever of them there is.
    pub fn describe(&self) -> String {
        match self.name() {
            Some(name) if self.message.is_empty() => name.to_string(),
            Some(name) => format!("{name}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// An error with its causes, `outer: inner: root`. reqwest's own message is only the outer
/// layer ("error sending request"), which hides the useful part ("connection refused").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their cause's message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_every_shape() {
        let host =
            ErrorInfo::from_body(r#"{"error":{"code":"not_found","message":"no such agent"}}"#);
        assert!(host.is("not_found"));
        assert_eq!(host.describe(), "not_found: no such agent");

        let gateway = ErrorInfo::from_body(
            r#"{"error":{"message":"spent it all","type":"budget_exceeded","code":"429"}}"#,
        );
        assert!(gateway.is("budget_exceeded"));
        assert_eq!(gateway.describe(), "budget_exceeded: spent it all");

        let numeric = ErrorInfo::from_body(r#"{"error":{"message":"busy","code":503}}"#);
        assert_eq!(numeric.code.as_deref(), Some("503"));
        assert_eq!(numeric.describe(), "busy");

        let bare = ErrorInfo::from_body(r#"{"error":"nope"}"#);
        assert_eq!(bare.describe(), "nope");

        let text = ErrorInfo::from_body(" Bad Gateway \n");
        assert_eq!(text.describe(), "Bad Gateway");

        let long = ErrorInfo::from_body(&"x".repeat(1000));
        assert_eq!(long.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn client_builds() {
        plain_client(Duration::from_secs(1), Duration::from_secs(1)).unwrap();
    }
}
