//! The taos app shell: a Tauri window around the taos UI. The UI talks only to these
//! commands; every byte to the host goes through `taos-client`'s pinned transport.

mod commands;
#[cfg(desktop)]
mod desktop;
mod error;
mod screen;
mod state;

use std::sync::Arc;

use tauri::Manager;

use crate::state::Shell;

/// Where refresh tokens live: the platform's keychain (Secret Service, macOS and iOS Keychain,
/// Windows Credential Manager; on Android, a key in the Android Keystore encrypting
/// SharedPreferences). Where it can't be opened the store refuses and pairing says why.
fn secret_store() -> Arc<dyn taos_client::secrets::SecretStore> {
    #[cfg(target_os = "android")]
    if let Err(e) = android_keyring::set_android_keyring_credential_builder() {
        return Arc::new(taos_client::secrets::Unavailable(format!(
            "the Android keystore could not be opened: {e}"
        )));
    }
    Arc::new(taos_client::secrets::Keychain::new("org.taos.app"))
}

#[cfg_attr(mobile, tauri::mobile_entry_point)]
pub fn run() {
    // Refused only when a subscriber is already set (tests), which is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let builder = tauri::Builder::default();
    // Registered first, so a second launch hands over before it sets anything else up.
    #[cfg(desktop)]
    let builder = builder.plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
        desktop::raise(app)
    }));
    let builder = builder.plugin(tauri_plugin_notification::init());
    // Scanning the host's pairing QR code: phones only (desktops paste the code).
    #[cfg(mobile)]
    let builder = builder.plugin(tauri_plugin_barcode_scanner::init());
    #[cfg(desktop)]
    let builder = builder
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .on_window_event(|window, event| {
            match event {
                // With the tray on, closing the window keeps taos running there (alerts still
                // arrive).
                tauri::WindowEvent::CloseRequested { api, .. } => {
                    let tray = window
                        .try_state::<desktop::Desktop>()
                        .is_some_and(|d| d.tray_enabled());
                    if tray {
                        api.prevent_close();
                        desktop::hide(window);
                    }
                }
                tauri::WindowEvent::Focused(focused) => {
                    desktop::window_focused(window.app_handle(), *focused)
                }
                _ => {}
            }
        });
    let result = builder
        .setup(|app| {
            // TAOS_APP_DATA_DIR lets tests (and portable installs) keep the app's state apart.
            let data_dir = match std::env::var_os("TAOS_APP_DATA_DIR") {
                Some(dir) => dir.into(),
                None => app.path().app_data_dir()?,
            };
            #[cfg(desktop)]
            app.manage(desktop::Desktop::start(app.handle(), &data_dir));
            #[cfg(mobile)]
            commands::notify::register_action_types(app.handle());
            let handle = app.handle().clone();
            let shell = tauri::async_runtime::block_on(async move {
                let (shell, mut revocations) = Shell::open(data_dir, secret_store()).await?;
                let shell = Arc::new(shell);
                if let Some(host) = shell.active_host().await {
                    let session = shell.session_for(&host, None);
                    shell.activate(&handle, session).await?;
                }
                // Revoked hosts are forgotten here, and the next paired host (if any) started.
                let forgetter = shell.clone();
                tauri::async_runtime::spawn(async move {
                    while let Some(device_id) = revocations.recv().await {
                        if let Err(e) = forgetter.forget(&handle, &device_id).await {
                            tracing::warn!(error = %e.message, "could not forget a revoked host");
                        }
                        forgetter.broadcast(&taos_client::engine::AppEvent::Revoked);
                    }
                });
                Ok::<_, error::CommandError>(shell)
            })
            .map_err(|e| e.message)?;
            app.manage(shell);
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            commands::pairing::pairing_pair,
            commands::pairing::pairing_hosts,
            commands::pairing::pairing_activate,
            commands::pairing::pairing_forget,
            commands::pairing::pairing_can_scan,
            commands::host::host_request,
            commands::host::host_status,
            commands::host::host_reconnect,
            commands::chat::chat_channels,
            commands::chat::chat_messages,
            commands::chat::chat_send,
            commands::chat::chat_outbox,
            commands::chat::chat_retry,
            commands::chat::chat_focus,
            commands::chat::chat_mute,
            commands::cache::cache_agents,
            commands::notify::notify_subscribe,
            commands::notify::approval_answer,
            commands::desktop::desktop_settings,
            commands::desktop::desktop_set_tray,
            commands::desktop::desktop_set_start_at_login,
        ])
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("taos: {e}");
        std::process::exit(1);
    }
}
