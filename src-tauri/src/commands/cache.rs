//! What the cache knows besides chat.

use std::sync::Arc;

use tauri::State;

use crate::error::{CommandError, CommandResult};
use crate::state::Shell;

/// The agents as last seen, for screens that should work offline.
#[tauri::command(rename_all = "snake_case")]
pub async fn cache_agents(shell: State<'_, Arc<Shell>>) -> CommandResult<Vec<serde_json::Value>> {
    let host = shell
        .active_host()
        .await
        .ok_or_else(CommandError::not_paired)?;
    Ok(shell.cache.agents(&host.device_id).await?)
}
