//! Desktop extras: the tray icon with the unread count, and starting at login. Phones have
//! neither; there the commands say so.

use std::sync::Arc;

use serde::Serialize;
use tauri::{AppHandle, State};

use crate::error::CommandResult;
use crate::state::Shell;

/// What the settings screen shows; `available` is false on phones.
#[derive(Debug, Serialize)]
pub struct DesktopView {
    pub available: bool,
    pub tray: bool,
    pub start_at_login: bool,
}

#[cfg(desktop)]
#[tauri::command(rename_all = "snake_case")]
#[allow(
    clippy::needless_pass_by_value,
    reason = "Tauri commands take their arguments by value"
)]
pub fn desktop_settings(
    app: AppHandle,
    desktop: State<'_, crate::desktop::Desktop>,
) -> DesktopView {
    let settings = desktop.settings(&app);
    DesktopView {
        available: true,
        tray: settings.tray,
        start_at_login: settings.start_at_login,
    }
}

#[cfg(desktop)]
#[tauri::command(rename_all = "snake_case")]
#[allow(
    clippy::needless_pass_by_value,
    reason = "Tauri commands take their arguments by value"
)]
pub fn desktop_set_tray(
    app: AppHandle,
    shell: State<'_, Arc<Shell>>,
    desktop: State<'_, crate::desktop::Desktop>,
    on: bool,
) -> CommandResult<DesktopView> {
    desktop.set_tray(&app, &shell.data_dir, on)?;
    Ok(desktop_settings(app, desktop))
}

#[cfg(desktop)]
#[tauri::command(rename_all = "snake_case")]
pub fn desktop_set_start_at_login(
    app: AppHandle,
    desktop: State<'_, crate::desktop::Desktop>,
    on: bool,
) -> CommandResult<DesktopView> {
    desktop.set_start_at_login(&app, on)?;
    Ok(desktop_settings(app, desktop))
}

#[cfg(mobile)]
fn unavailable() -> crate::error::CommandError {
    crate::error::CommandError::new(
        "bad_input",
        "the tray and start at login are desktop features",
    )
}

#[cfg(mobile)]
#[tauri::command(rename_all = "snake_case")]
pub fn desktop_settings() -> DesktopView {
    DesktopView {
        available: false,
        tray: false,
        start_at_login: false,
    }
}

#[cfg(mobile)]
#[tauri::command(rename_all = "snake_case")]
pub fn desktop_set_tray(
    _app: AppHandle,
    _shell: State<'_, Arc<Shell>>,
    _on: bool,
) -> CommandResult<DesktopView> {
    Err(unavailable())
}

#[cfg(mobile)]
#[tauri::command(rename_all = "snake_case")]
pub fn desktop_set_start_at_login(_on: bool) -> CommandResult<DesktopView> {
    Err(unavailable())
}
