//! Calls to the active host on the UI's behalf, through the pinned transport.

use std::sync::Arc;

use reqwest::Method;
use serde::Serialize;
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
    shell: State<'_, Arc<Shell>>,
    method: String,
    path: String,
    body: Option<serde_json::Value>,
) -> CommandResult<serde_json::Value> {
    if !path.starts_with("/api/") || path.contains("..") || path.contains('#') {
        return Err(CommandError::new(
            "bad_input",
            "only /api/ paths can be called",
        ));
    }
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| CommandError::new("bad_input", "unknown HTTP method"))?;
    let session = shell.session().await?;
    Ok(session.call_value(method, &path, body.as_ref()).await?)
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
