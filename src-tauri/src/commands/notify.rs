//! Live events to the UI, and native notifications for the ones that deserve them.

use std::sync::Arc;

use taos_client::engine::AppEvent;
use taos_client::notify::NativeNotification;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};
use tokio::sync::mpsc;

use crate::error::CommandResult;
use crate::screen::BadgeTicket;
use crate::state::Shell;

/// The UI opens a channel once; every engine event arrives on it.
#[tauri::command(rename_all = "snake_case")]
pub async fn notify_subscribe(
    shell: State<'_, Arc<Shell>>,
    on_event: Channel<AppEvent>,
) -> CommandResult<()> {
    shell
        .listeners
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(on_event);
    Ok(())
}

/// Moves one engine's events to the UI and shows native notifications. `device_id` is the
/// host that engine serves: when it is revoked, that host (not whichever is active by then) is
/// forgotten. `ticket` lets its unread counts through while it is the active engine.
pub async fn forward<R: Runtime>(
    app: AppHandle<R>,
    shell: Arc<Shell>,
    device_id: String,
    ticket: BadgeTicket,
    mut events: mpsc::UnboundedReceiver<AppEvent>,
) {
    while let Some(event) = events.recv().await {
        match &event {
            AppEvent::Notify { notification } => show(&app, notification),
            AppEvent::Unread { total } => {
                // Shown (UI and tray) by the shell, if this engine is still the active one.
                shell.unread_counted(&app, ticket, *total);
                continue;
            }
            AppEvent::Revoked => {
                // The host will never accept this device again: forget it entirely (pairing
                // again makes a new one). The UI hears of it once that is done, so it sees the
                // paired hosts as they are after.
                let _ = shell.revoked.send(device_id.clone());
                continue;
            }
            _ => {}
        }
        shell.broadcast(&event);
    }
}

/// Raises the window and asks the UI to open `route` (a notification was clicked).
#[cfg(target_os = "linux")]
fn open_route<R: Runtime>(app: &AppHandle<R>, route: &str) {
    use tauri::Emitter;
    crate::desktop::raise(app);
    if let Err(e) = app.emit("taos://open", route.to_string()) {
        tracing::warn!("could not ask the UI to open {route}: {e}");
    }
}

/// A native notification whose click opens its screen. The notification plugin hears no clicks
/// on desktops, so on Linux the shell raises it with notify-rust and the freedesktop `default`
/// action (what a click on the body invokes), waiting for it on a thread of its own.
#[cfg(target_os = "linux")]
fn show<R: Runtime>(app: &AppHandle<R>, notification: &NativeNotification) {
    let app = app.clone();
    let notification = notification.clone();
    std::thread::spawn(move || {
        let shown = notify_rust::Notification::new()
            .appname("taos")
            .summary(&notification.title)
            .body(&notification.body)
            .action("default", "Open")
            .show();
        match shown {
            Ok(handle) => handle.wait_for_action(|action| {
                if action == "default" {
                    open_route(&app, &notification.route);
                }
            }),
            Err(e) => tracing::warn!(error = %e, "could not show a notification"),
        }
    });
}

/// Elsewhere the plugin shows it. On Android and iOS a tap reaches the UI as the plugin's
/// `actionPerformed` event carrying `route`, and the UI opens it. macOS and Windows report no
/// clicks through the plugin (they would need their own notification APIs); the notification
/// list in the app offers the same screens there.
#[cfg(not(target_os = "linux"))]
fn show<R: Runtime>(app: &AppHandle<R>, notification: &NativeNotification) {
    use tauri_plugin_notification::NotificationExt;
    let shown = app
        .notification()
        .builder()
        .title(&notification.title)
        .body(&notification.body)
        .extra("route", &notification.route)
        .show();
    if let Err(e) = shown {
        tracing::warn!(error = %e, "could not show a notification");
    }
}
