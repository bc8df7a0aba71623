//! The taos app shell: a Tauri window around the taos UI. The UI talks only to these
//! commands; every byte to the host goes through `taos-client`'s pinned transport.

mod commands;
mod error;
mod state;

use std::sync::Arc;

use tauri::Manager;

use crate::state::Shell;

fn secret_store() -> Arc<dyn taos_client::secrets::SecretStore> {
    #[cfg(not(any(target_os = "android", target_os = "ios")))]
    {
        Arc::new(taos_client::secrets::Keychain::new("org.taos.app"))
    }
    #[cfg(any(target_os = "android", target_os = "ios"))]
    {
        // No keystore binding yet: the store refuses, so pairing says why instead of keeping
        // a token in a plain file.
        Arc::new(NoKeychain)
    }
}

#[cfg(any(target_os = "android", target_os = "ios"))]
struct NoKeychain;

#[cfg(any(target_os = "android", target_os = "ios"))]
impl taos_client::secrets::SecretStore for NoKeychain {
    fn get(&self, _: &str) -> Result<Option<String>, taos_client::secrets::SecretError> {
        Err(taos_client::secrets::SecretError::Unavailable(
            "the mobile keystore is not wired up yet".into(),
        ))
    }
    fn set(&self, _: &str, _: &str) -> Result<(), taos_client::secrets::SecretError> {
        self.get("").map(|_| ())
    }
    fn delete(&self, _: &str) -> Result<(), taos_client::secrets::SecretError> {
        Ok(())
    }
}

#[cfg_attr(mobile, tauri::mobile_entry_point)]
pub fn run() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_notification::init())
        .setup(|app| {
            // TAOS_APP_DATA_DIR lets tests (and portable installs) keep the app's state apart.
            let data_dir = match std::env::var_os("TAOS_APP_DATA_DIR") {
                Some(dir) => dir.into(),
                None => app.path().app_data_dir()?,
            };
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
        ])
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("taos: {e}");
        std::process::exit(1);
    }
}
