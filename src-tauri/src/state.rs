//! What the shell holds while it runs: the app's data dir, the keychain, the offline cache, the
//! paired hosts, and the sync engine for the active host, whose events go to the UI and to
//! native notifications.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};

use taos_client::cache::Cache;
use taos_client::engine::{AppEvent, Engine};
use taos_client::hosts::{Hosts, PairedHost};
use taos_client::secrets::SecretStore;
use taos_client::session::Session;
use tauri::ipc::Channel;
use tauri::{AppHandle, Runtime};
use tokio::sync::{mpsc, watch, Mutex};

use crate::error::{CommandError, CommandResult};

pub struct Active {
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
}

pub struct Shell {
    pub data_dir: PathBuf,
    pub secrets: Arc<dyn SecretStore>,
    pub cache: Cache,
    pub hosts: Mutex<Hosts>,
    pub active: Mutex<Option<Active>>,
    /// The UI's open event channels.
    pub listeners: StdMutex<Vec<Channel<AppEvent>>>,
}

impl Shell {
    pub async fn open(data_dir: PathBuf, secrets: Arc<dyn SecretStore>) -> CommandResult<Shell> {
        let cache = Cache::open(&data_dir.join("cache.db")).await?;
        let hosts = Hosts::load(&data_dir)?;
        Ok(Shell {
            data_dir,
            secrets,
            cache,
            hosts: Mutex::new(hosts),
            active: Mutex::new(None),
            listeners: StdMutex::new(Vec::new()),
        })
    }

    /// The engine of the active host.
    pub async fn engine(&self) -> CommandResult<Arc<Engine>> {
        self.active
            .lock()
            .await
            .as_ref()
            .map(|a| a.engine.clone())
            .ok_or_else(CommandError::not_paired)
    }

    pub async fn session(&self) -> CommandResult<Arc<Session>> {
        Ok(self.engine().await?.session.clone())
    }

    /// Stops the current engine (if any) and starts one for `host`.
    pub async fn activate<R: Runtime>(
        self: &Arc<Self>,
        app: &AppHandle<R>,
        session: Session,
    ) -> CommandResult<()> {
        self.deactivate().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(Arc::new(session), self.cache.clone(), tx);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(engine.clone().run(stop_rx));
        tokio::spawn(crate::commands::notify::forward(
            app.clone(),
            self.clone(),
            rx,
        ));
        *self.active.lock().await = Some(Active { engine, stop });
        Ok(())
    }

    pub async fn deactivate(&self) {
        if let Some(active) = self.active.lock().await.take() {
            let _ = active.stop.send(true);
        }
    }

    pub async fn save_hosts(&self) -> CommandResult<()> {
        self.hosts.lock().await.save(&self.data_dir)?;
        Ok(())
    }

    /// Sends an event to every open UI channel, forgetting the closed ones.
    pub fn broadcast(&self, event: &AppEvent) {
        let mut listeners = self.listeners.lock().expect("listeners");
        listeners.retain(|channel| channel.send(event.clone()).is_ok());
    }

    pub async fn active_host(&self) -> Option<PairedHost> {
        self.hosts.lock().await.active_host().cloned()
    }
}
