//! Calls to the active host on the UI's behalf, through the pinned transport.

use std::sync::Arc;

use reqwest::Method;
use serde::Serialize;
use taos_client::session::SessionError;
use tauri::State;

use crate::error::{CommandError, CommandResult};
use crate::state::Shell;

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub paired: bool,
    pub host_name: Option<String>,
    pub device_id: Option<String>,
}

/// A REST call: `path` is an `/api/...` path with its query string. Answers JSON, a string
/// for text answers, or null for 204.
#[tauri::command(rename_all = "snake_case")]
pub async fn host_request(
    app: tauri::AppHandle,
    shell: State<'_, Arc<Shell>>,
    method: String,
    path: String,
    body: Option<serde_json::Value>,
) -> CommandResult<serde_json::Value> {
    if !is_api_path(&path) {
        return Err(CommandError::new(
            "bad_input",
            "only /api/ paths can be called",
        ));
    }
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CommandError::new("bad_input", "unknown HTTP method"))?;
    let session = shell.session().await?;
    match session.call_value(method, &path, body.as_ref()).await {
        Err(SessionError::Revoked) => {
            // Forget the host before the UI hears of it, so what it shows next (the pairing
            // screen, another paired host) is already true.
            let device_id = session.host.device_id.clone();
            if let Err(e) = shell.inner().forget(&app, &device_id).await {
                tracing::warn!(error = %e.message, "could not forget a revoked host");
            }
            Err(SessionError::Revoked.into())
        }
        answer => Ok(answer?),
    }
}

#[tauri::command(rename_all = "snake_case")]
pub async fn host_status(shell: State<'_, Arc<Shell>>) -> CommandResult<HostStatus> {
    let host = shell.active_host().await;
    Ok(HostStatus {
        paired: host.is_some(),
        host_name: host.as_ref().map(|h| h.host_name.clone()),
        device_id: host.map(|h| h.device_id),
    })
}

/// Try the host now instead of waiting out the backoff.
#[tauri::command(rename_all = "snake_case")]
pub async fn host_reconnect(shell: State<'_, Arc<Shell>>) -> CommandResult<()> {
    shell.engine().await?.reconnect_now();
    Ok(())
}

/// An `/api/...` path (with an optional query) that stays under `/api/` however it is spelled:
/// no dot segments (also percent-encoded ones, which a URL parser would resolve), no
/// backslashes, fragments or control characters.
fn is_api_path(path: &str) -> bool {
    let route = path.split('?').next().unwrap_or_default();
    let lowered = route.to_ascii_lowercase();
    route.starts_with("/api/")
        && !lowered.contains("%2e")
        && !lowered.contains("%2f")
        && !lowered.contains("%5c")
        && !route.contains('\\')
        && !path.contains('#')
        && !path.chars().any(char::is_control)
        && !route
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::is_api_path;

    #[test]
    fn only_api_paths_get_through() {
        for ok in [
            "/api/agents",
            "/api/chat/channels/c1/messages?limit=5&before_seq=9",
            "/api/x?q=a/../b",
        ] {
            assert!(is_api_path(ok), "{ok}");
        }
        for bad in [
            "/metrics",
            "/api/../metrics",
            "/api/%2e%2e/metrics",
            "/api/%2E%2E/metrics",
            "/api/.%2e/metrics",
            "/api/a%2f..%2fmetrics",
            "/api\\..\\metrics",
            "/api/./agents",
            "/api/agents#x",
            "/api/agents\n",
            "api/agents",
        ] {
            assert!(!is_api_path(bad), "{bad:?}");
        }
    }
}
