//! Desktop extras, both off until the user turns them on: a tray icon showing how many agent
//! replies are unread (closing the window then keeps taos running there, so alerts still
//! arrive), and starting at login. The choice of tray is kept in `desktop.json` in the app's
//! data dir; "start at login" is the OS's own entry (an XDG autostart file on Linux, a launch
//! agent on macOS, the Run key on Windows), so it is read back from there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tauri::menu::{Menu, MenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Runtime};
use tauri_plugin_autostart::ManagerExt;

use crate::commands::desktop::DesktopView;
use crate::error::{CommandError, CommandResult};
use crate::state::{Shell, WindowChange};

const TRAY_ID: &str = "taos";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
struct Stored {
    tray: bool,
}

/// The shell's view of the desktop extras.
#[derive(Default)]
pub struct Desktop {
    tray: AtomicBool,
    unread: AtomicU32,
}

fn settings_path(data_dir: &Path) -> PathBuf {
    data_dir.join("desktop.json")
}

impl Desktop {
    /// Reads the stored choice and puts the tray up if it was on.
    pub fn start<R: Runtime>(app: &AppHandle<R>, data_dir: &Path) -> Desktop {
        let stored: Stored = std::fs::read(settings_path(data_dir))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let desktop = Desktop::default();
        if stored.tray {
            match show_tray(app) {
                Ok(()) => desktop.tray.store(true, Ordering::SeqCst),
                Err(e) => tracing::warn!(error = %e, "could not show the tray icon"),
            }
        }
        desktop
    }

    pub fn tray_enabled(&self) -> bool {
        self.tray.load(Ordering::SeqCst)
    }

    pub fn settings<R: Runtime>(&self, app: &AppHandle<R>) -> DesktopView {
        DesktopView {
            available: true,
            tray: self.tray_enabled(),
            start_at_login: app.autolaunch().is_enabled().unwrap_or(false),
        }
    }

    pub fn set_tray<R: Runtime>(
        &self,
        app: &AppHandle<R>,
        data_dir: &Path,
        on: bool,
    ) -> CommandResult<()> {
        if on {
            show_tray(app).map_err(|e| {
                CommandError::new("desktop", format!("could not show the tray icon: {e}"))
            })?;
            self.set_unread(app, self.unread.load(Ordering::SeqCst));
        } else if let Some(tray) = app.tray_by_id(TRAY_ID) {
            // Hidden rather than removed: on Linux a removed indicator stays registered on the
            // session bus, and a new one under the same id could not take its place.
            tray.set_visible(false).map_err(|e| {
                CommandError::new("desktop", format!("could not hide the tray icon: {e}"))
            })?;
        }
        self.tray.store(on, Ordering::SeqCst);
        let json = serde_json::to_vec_pretty(&Stored { tray: on }).map_err(|e| {
            CommandError::new("desktop", format!("could not save the setting: {e}"))
        })?;
        taos_client::hosts::write_atomic(&settings_path(data_dir), &json)
            .map_err(|e| CommandError::new("desktop", format!("could not save the setting: {e}")))
    }

    pub fn set_start_at_login<R: Runtime>(
        &self,
        app: &AppHandle<R>,
        on: bool,
    ) -> CommandResult<()> {
        let launcher = app.autolaunch();
        // The Linux launcher makes `~/.config/autostart` but not `~/.config` itself, which a
        // fresh account may not have yet.
        #[cfg(target_os = "linux")]
        if on {
            if let Ok(home) = app.path().home_dir() {
                // If this fails, enabling below fails and says why.
                let _ = std::fs::create_dir_all(home.join(".config"));
            }
        }
        let result = if on {
            launcher.enable()
        } else {
            launcher.disable()
        };
        result.map_err(|e| CommandError::new("desktop", format!("start at login: {e}")))
    }

    /// The tray shows the count next to its icon (the indicator's label on Linux, the title on
    /// macOS) and in its tooltip where the platform has one.
    pub fn set_unread<R: Runtime>(&self, app: &AppHandle<R>, total: u32) {
        self.unread.store(total, Ordering::SeqCst);
        if let Some(tray) = app.tray_by_id(TRAY_ID) {
            let label = (total > 0).then(|| total.to_string());
            if let Err(e) = tray.set_title(label.as_deref()) {
                tracing::warn!("could not show the unread count on the tray: {e}");
            }
            let tooltip = match total {
                0 => "taos".to_string(),
                1 => "taos: 1 unread reply".to_string(),
                n => format!("taos: {n} unread replies"),
            };
            if let Err(e) = tray.set_tooltip(Some(tooltip)) {
                tracing::warn!("could not set the tray tooltip: {e}");
            }
        }
    }
}

/// Brings the main window back (tray click, "Open taos", a notification clicked).
pub fn raise<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window("main") {
        let shown = window
            .unminimize()
            .and_then(|()| window.show())
            .and_then(|()| window.set_focus());
        if let Err(e) = shown {
            tracing::warn!("could not raise the window: {e}");
        }
    }
    window_changed(app, WindowChange::Hidden(false));
}

/// Closing the window with the tray on hides it; while hidden no chat is on screen, so
/// replies in the one that was open notify too.
pub fn hide<R: Runtime>(window: &tauri::Window<R>) {
    if let Err(e) = window.hide() {
        tracing::warn!("could not hide the window: {e}");
    }
    window_changed(window.app_handle(), WindowChange::Hidden(true));
}

/// Another window took the focus (or it came back): a chat in a window nobody is looking at
/// is not "on screen", so its replies notify.
pub fn window_focused<R: Runtime>(app: &AppHandle<R>, focused: bool) {
    window_changed(app, WindowChange::Focused(focused));
}

fn window_changed<R: Runtime>(app: &AppHandle<R>, change: WindowChange) {
    if let Some(shell) = app.try_state::<Arc<Shell>>() {
        let shell = shell.inner().clone();
        tauri::async_runtime::spawn(async move { shell.window_changed(change).await });
    }
}

fn show_tray<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        return tray.set_visible(true);
    }
    let open = MenuItem::with_id(app, "open", "Open taos", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit taos", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&open, &quit])?;
    let mut builder = TrayIconBuilder::with_id(TRAY_ID)
        .tooltip("taos")
        .menu(&menu)
        .show_menu_on_left_click(false)
        .on_menu_event(|app, event| match event.id.as_ref() {
            "open" => raise(app),
            "quit" => app.exit(0),
            _ => {}
        })
        .on_tray_icon_event(|tray, event| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = event
            {
                raise(tray.app_handle());
            }
        });
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    builder.build(app)?;
    Ok(())
}
