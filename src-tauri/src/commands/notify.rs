//! Live events to the UI, and native notifications for the ones that deserve them.

use std::sync::Arc;

use taos_client::approvals;
use taos_client::engine::AppEvent;
use taos_client::notify::NativeNotification;
use taos_client::session::Session;
use taos_proto::approvals::Decision;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime, State};
use tokio::sync::mpsc;

use crate::error::{CommandError, CommandResult};
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

/// Moves one engine's events to the UI and shows native notifications. `session` is the
/// device that engine serves: when it is revoked, that host (not whichever is active by then)
/// is forgotten, and an approval's Approve / Deny is answered with its credentials.
/// `ticket` lets its unread counts through while it is the active engine.
pub async fn forward<R: Runtime>(
    app: AppHandle<R>,
    shell: Arc<Shell>,
    session: Arc<Session>,
    ticket: BadgeTicket,
    mut events: mpsc::UnboundedReceiver<AppEvent>,
) {
    let device_id = session.host.device_id.clone();
    while let Some(event) = events.recv().await {
        match &event {
            AppEvent::Notify { notification } => show(&app, &session, notification),
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

/// The notification's buttons for an approval: their ids are the decisions they send.
pub const APPROVE: &str = "approve";
pub const DENY: &str = "deny";
/// The plugin's action type for approvals (registered at start on phones).
#[cfg(not(target_os = "linux"))]
pub const APPROVAL_ACTION_TYPE: &str = "tool.approval";

/// The decision an action id stands for, if it is one of ours.
pub fn decision_of(action: &str) -> Option<Decision> {
    match action {
        APPROVE => Some(Decision::Approve),
        DENY => Some(Decision::Deny),
        _ => None,
    }
}

/// Answers approval `id` as a tap on Approve or Deny asked, with `session`'s credentials
/// (`taos_client::approvals::decide`, the one path for every platform), and says how it came
/// out in a notification of its own: nothing fails silently.
pub async fn answer_approval<R: Runtime>(
    app: &AppHandle<R>,
    session: &Session,
    id: &str,
    decision: Decision,
) -> Result<approvals::Answered, approvals::ApprovalError> {
    let outcome = approvals::decide(session, id, decision).await;
    match &outcome {
        Ok(answered) => {
            tracing::info!(approval = %id, ?decision, ?answered, "approval answered from a notification")
        }
        Err(e) => {
            tracing::warn!(approval = %id, ?decision, error = %e, "could not answer an approval from a notification")
        }
    }
    let (title, body) = approvals::outcome_text(&outcome);
    show_plain(app, &title, &body);
    outcome
}

/// A phone's notification button (the plugin's `actionPerformed`, heard by the UI) answers the
/// approval through the same path as the desktop's: the UI passes the action's id and the
/// approval's, and the device that received it (`device_id`, else the active one).
#[tauri::command(rename_all = "snake_case")]
pub async fn approval_answer(
    app: AppHandle,
    shell: State<'_, Arc<Shell>>,
    id: String,
    action: String,
) -> CommandResult<()> {
    let decision = decision_of(&action).ok_or_else(|| {
        CommandError::new("bad_input", format!("{action:?} is not approve or deny"))
    })?;
    let session = shell.session().await?;
    answer_approval(&app, &session, &id, decision)
        .await
        .map(|_| ())
        .map_err(|e| CommandError::new("approval", e.to_string()))
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
/// action (what a click on the body invokes), waiting for it on a thread of its own. An
/// approval also gets Approve and Deny buttons (freedesktop actions, which the notification
/// server reports back as `ActionInvoked` with the button's id): they answer it through
/// [`answer_approval`].
#[cfg(target_os = "linux")]
fn show<R: Runtime>(app: &AppHandle<R>, session: &Arc<Session>, notification: &NativeNotification) {
    let app = app.clone();
    let session = session.clone();
    let notification = notification.clone();
    std::thread::spawn(move || {
        let mut native = notify_rust::Notification::new();
        native
            .appname("taos")
            .summary(&notification.title)
            .body(&notification.body)
            .action("default", "Open");
        if notification.approval.is_some() {
            native.action(APPROVE, "Approve").action(DENY, "Deny");
        }
        match native.show() {
            Ok(handle) => handle.wait_for_action(|action| {
                if action == "default" {
                    open_route(&app, &notification.route);
                } else if let (Some(decision), Some(id)) =
                    (decision_of(action), notification.approval.clone())
                {
                    tauri::async_runtime::spawn(async move {
                        let _ = answer_approval(&app, &session, &id, decision).await;
                    });
                }
            }),
            Err(e) => tracing::warn!(error = %e, "could not show a notification"),
        }
    });
}

/// Elsewhere the plugin shows it. On Android and iOS a tap reaches the UI as the plugin's
/// `actionPerformed` event carrying `route`, and the UI opens it; an approval carries the
/// `tool.approval` action type (Approve / Deny, registered at start) and its id, and the UI
/// answers a button through [`approval_answer`]. macOS and Windows report no clicks or
/// buttons through the plugin (they would need their own notification APIs); the chat and the
/// alert list in the app answer approvals there.
#[cfg(not(target_os = "linux"))]
fn show<R: Runtime>(
    app: &AppHandle<R>,
    _session: &Arc<Session>,
    notification: &NativeNotification,
) {
    use tauri_plugin_notification::NotificationExt;
    let mut builder = app
        .notification()
        .builder()
        .title(&notification.title)
        .body(&notification.body)
        .extra("route", &notification.route);
    if let Some(id) = &notification.approval {
        builder = builder
            .action_type_id(APPROVAL_ACTION_TYPE)
            .extra("approval_id", id);
    }
    if let Err(e) = builder.show() {
        tracing::warn!(error = %e, "could not show a notification");
    }
}

/// A notification without buttons (an approval's outcome). On Linux a click opens nothing.
#[cfg(target_os = "linux")]
fn show_plain<R: Runtime>(_app: &AppHandle<R>, title: &str, body: &str) {
    let shown = notify_rust::Notification::new()
        .appname("taos")
        .summary(title)
        .body(body)
        .show();
    if let Err(e) = shown {
        tracing::warn!(error = %e, "could not show a notification");
    }
}

#[cfg(not(target_os = "linux"))]
fn show_plain<R: Runtime>(app: &AppHandle<R>, title: &str, body: &str) {
    use tauri_plugin_notification::NotificationExt;
    if let Err(e) = app.notification().builder().title(title).body(body).show() {
        tracing::warn!(error = %e, "could not show a notification");
    }
}

/// Phones: the Approve / Deny buttons an approval's notification carries.
#[cfg(mobile)]
pub fn register_action_types<R: Runtime>(app: &AppHandle<R>) {
    use tauri_plugin_notification::{Action, ActionType, NotificationExt};
    let types = vec![ActionType::builder(APPROVAL_ACTION_TYPE)
        .actions(vec![
            Action::builder(APPROVE, "Approve")
                .requires_authentication(true)
                .build(),
            Action::builder(DENY, "Deny").destructive(true).build(),
        ])
        .build()];
    if let Err(e) = app.notification().register_action_types(types) {
        tracing::warn!(error = %e, "could not register the approval buttons");
    }
}
