//! Live events to the UI, and native notifications for the ones that deserve them.

use std::sync::Arc;

use taos_client::engine::AppEvent;
use tauri::ipc::Channel;
use tauri::{AppHandle, Emitter, Runtime, State};
use tauri_plugin_notification::NotificationExt;
use tokio::sync::mpsc;

use crate::error::CommandResult;
use crate::state::Shell;

/// The UI opens a channel once; every engine event arrives on it.
#[tauri::command(rename_all = "snake_case")]
pub async fn notify_subscribe(
    shell: State<'_, Arc<Shell>>,
    on_event: Channel<AppEvent>,
) -> CommandResult<()> {
    shell.listeners.lock().expect("listeners").push(on_event);
    Ok(())
}

/// Moves engine events to the UI; shows native notifications; on revocation forgets the
/// device's credentials so the UI lands on pairing.
pub async fn forward<R: Runtime>(
    app: AppHandle<R>,
    shell: Arc<Shell>,
    mut events: mpsc::UnboundedReceiver<AppEvent>,
) {
    while let Some(event) = events.recv().await {
        match &event {
            AppEvent::Notify { notification } => {
                let shown = app
                    .notification()
                    .builder()
                    .title(&notification.title)
                    .body(&notification.body)
                    .show();
                if let Err(e) = shown {
                    tracing::warn!(error = %e, "could not show a notification");
                }
                // Where the click should lead; the UI also offers it in the app.
                let _ = app.emit("taos://notification-route", notification.route.clone());
            }
            AppEvent::Revoked => {
                // The host will never accept this device again: forget it entirely (its
                // credentials, its place in the list, its cache). Pairing again makes a new one.
                if let Some(host) = shell.active_host().await {
                    let _ = shell
                        .secrets
                        .delete(&taos_client::secrets::refresh_key(&host.device_id));
                    shell.hosts.lock().await.remove(&host.device_id);
                    let _ = shell.save_hosts().await;
                    let _ = shell.cache.forget_host(&host.device_id).await;
                }
            }
            _ => {}
        }
        shell.broadcast(&event);
    }
}
