//! Chat from the offline cache, and sending through the outbox.

use std::sync::Arc;

use taos_client::cache::{CachedChannel, OutboxItem};
use taos_proto::chat::Message;
use tauri::State;

use crate::error::{CommandError, CommandResult};
use crate::state::Shell;

async fn host_id(shell: &Shell) -> CommandResult<String> {
    shell
        .active_host()
        .await
        .map(|h| h.device_id)
        .ok_or_else(CommandError::not_paired)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn chat_channels(shell: State<'_, Arc<Shell>>) -> CommandResult<Vec<CachedChannel>> {
    Ok(shell.cache.channels(&host_id(&shell).await?).await?)
}

/// The newest `limit` cached messages of a channel (before `before_ms` to page back).
#[tauri::command(rename_all = "snake_case")]
pub async fn chat_messages(
    shell: State<'_, Arc<Shell>>,
    channel_id: String,
    limit: Option<i64>,
    before_ms: Option<i64>,
) -> CommandResult<Vec<Message>> {
    Ok(shell
        .cache
        .messages(
            &host_id(&shell).await?,
            &channel_id,
            limit.unwrap_or(200),
            before_ms,
        )
        .await?)
}

/// Queues a message; it is sent at once if the host is reachable, else when it is back.
#[tauri::command(rename_all = "snake_case")]
pub async fn chat_send(
    shell: State<'_, Arc<Shell>>,
    channel_id: String,
    content: String,
    thread_id: Option<String>,
    client_id: Option<String>,
) -> CommandResult<OutboxItem> {
    let engine = shell.engine().await?;
    Ok(engine
        .send(
            &channel_id,
            &content,
            thread_id.as_deref(),
            client_id.as_deref(),
        )
        .await?)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn chat_outbox(shell: State<'_, Arc<Shell>>) -> CommandResult<Vec<OutboxItem>> {
    Ok(shell.cache.outbox(&host_id(&shell).await?, None).await?)
}

/// Puts a failed message back in the queue.
#[tauri::command(rename_all = "snake_case")]
pub async fn chat_retry(shell: State<'_, Arc<Shell>>, client_id: String) -> CommandResult<()> {
    shell
        .cache
        .outbox_retry(&host_id(&shell).await?, &client_id)
        .await?;
    shell.engine().await?.reconnect_now();
    Ok(())
}

/// The channel on screen: its replies don't notify.
#[tauri::command(rename_all = "snake_case")]
pub async fn chat_focus(
    shell: State<'_, Arc<Shell>>,
    channel_id: Option<String>,
) -> CommandResult<()> {
    shell.set_ui_focus(channel_id).await;
    Ok(())
}

#[tauri::command(rename_all = "snake_case")]
pub async fn chat_mute(
    shell: State<'_, Arc<Shell>>,
    channel_id: String,
    muted: bool,
) -> CommandResult<()> {
    Ok(shell
        .cache
        .set_muted(&host_id(&shell).await?, &channel_id, muted)
        .await?)
}
