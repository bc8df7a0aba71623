//! Pairing with hosts, and choosing the active one.

use std::sync::Arc;

use serde::Serialize;
use taos_client::hosts::PairedHost;
use taos_client::net::Link;
use taos_client::pairing;
use taos_client::session::Session;
use tauri::{AppHandle, State};

use crate::error::{CommandError, CommandResult};
use crate::state::Shell;

#[derive(Debug, Serialize)]
pub struct HostsView {
    pub active: Option<String>,
    pub hosts: Vec<PairedHost>,
}

fn platform() -> &'static str {
    std::env::consts::OS
}

/// Whether this device can scan the host's QR code (phones, through the barcode scanner
/// plugin); desktops paste the code instead.
#[tauri::command(rename_all = "snake_case")]
pub fn pairing_can_scan() -> bool {
    cfg!(mobile)
}

/// Pairs with the host that made `token` and makes it the active host.
#[tauri::command(rename_all = "snake_case")]
pub async fn pairing_pair(
    app: AppHandle,
    shell: State<'_, Arc<Shell>>,
    token: String,
    device_name: String,
) -> CommandResult<PairedHost> {
    let paired = pairing::pair(&token, &device_name, platform(), shell.secrets.clone()).await?;
    let link = Link::new(&paired.address, paired.host.trust)?;
    let session = Session::after_pairing(
        paired.host.clone(),
        shell.secrets.clone(),
        &paired.tokens,
        link,
    );
    shell.hosts.lock().await.upsert_active(paired.host.clone());
    shell.save_hosts().await?;
    let session = shell.session_for(&paired.host, Some(session));
    shell.inner().activate(&app, session).await?;
    Ok(paired.host)
}

#[tauri::command(rename_all = "snake_case")]
pub async fn pairing_hosts(shell: State<'_, Arc<Shell>>) -> CommandResult<HostsView> {
    let hosts = shell.hosts.lock().await;
    Ok(HostsView {
        active: hosts.active.clone(),
        hosts: hosts.hosts.clone(),
    })
}

/// Switches to another paired host.
#[tauri::command(rename_all = "snake_case")]
pub async fn pairing_activate(
    app: AppHandle,
    shell: State<'_, Arc<Shell>>,
    device_id: String,
) -> CommandResult<()> {
    let host = {
        let mut hosts = shell.hosts.lock().await;
        let host = hosts
            .hosts
            .iter()
            .find(|h| h.device_id == device_id)
            .cloned()
            .ok_or_else(|| CommandError::new("bad_input", "no such paired host"))?;
        hosts.active = Some(device_id);
        host
    };
    shell.save_hosts().await?;
    let session = shell.session_for(&host, None);
    shell.inner().activate(&app, session).await
}

/// Forgets a host: its credentials, its cache, its place in the list. The next paired host,
/// if any, becomes active.
#[tauri::command(rename_all = "snake_case")]
pub async fn pairing_forget(
    app: AppHandle,
    shell: State<'_, Arc<Shell>>,
    device_id: String,
) -> CommandResult<()> {
    shell.inner().forget(&app, &device_id).await
}
