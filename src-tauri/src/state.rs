//! What the shell holds while it runs: the app's data dir, the keychain, the offline cache, the
//! paired hosts, and the sync engine for the active host, whose events go to the UI and to
//! native notifications.

use std::collections::HashMap;
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
#[cfg(desktop)]
pub use crate::screen::WindowChange;
use crate::screen::{BadgeTicket, Focus, UnreadBadge};

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
    /// One session per paired device, reused across switches: each holds the lock that keeps
    /// two refreshes of the same token from racing (a reused refresh token revokes the device).
    sessions: StdMutex<HashMap<String, Arc<Session>>>,
    /// Held across stopping one engine and starting the next, so two activations can't
    /// interleave and leave two engines running.
    activation: Mutex<()>,
    /// The UI's open event channels.
    pub listeners: StdMutex<Vec<Channel<AppEvent>>>,
    /// Which chat is on screen, told to the active engine so replies there don't notify.
    focus: Focus,
    /// The unread count shown, the active host's only.
    badge: UnreadBadge,
    /// Device ids the host revoked, for the task that forgets them (see `lib.rs`): handled
    /// apart from the engine's event loop, which forgetting would otherwise have to restart.
    pub revoked: mpsc::UnboundedSender<String>,
}

impl Shell {
    pub async fn open(
        data_dir: PathBuf,
        secrets: Arc<dyn SecretStore>,
    ) -> CommandResult<(Shell, mpsc::UnboundedReceiver<String>)> {
        let cache = Cache::open(&data_dir.join("cache.db")).await?;
        let hosts = Hosts::load(&data_dir)?;
        let (revoked, revocations) = mpsc::unbounded_channel();
        let shell = Shell {
            data_dir,
            secrets,
            cache,
            hosts: Mutex::new(hosts),
            active: Mutex::new(None),
            sessions: StdMutex::new(HashMap::new()),
            activation: Mutex::new(()),
            listeners: StdMutex::new(Vec::new()),
            focus: Focus::default(),
            badge: UnreadBadge::default(),
            revoked,
        };
        Ok((shell, revocations))
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

    /// The UI opened (or left) a channel.
    pub async fn set_ui_focus(&self, channel: Option<String>) {
        self.focus.set_ui(channel);
        self.apply_focus().await;
    }

    /// The window was hidden (closed to the tray) or shown again, or lost or regained the
    /// keyboard focus.
    #[cfg(desktop)]
    pub async fn window_changed(&self, change: WindowChange) {
        self.focus.window_changed(change);
        self.apply_focus().await;
    }

    /// Tells the engine which channel is on screen, if any.
    async fn apply_focus(&self) {
        self.focus
            .apply(async |on_screen| {
                if let Ok(engine) = self.engine().await {
                    engine.set_focus(on_screen).await;
                }
            })
            .await;
    }

    pub async fn session(&self) -> CommandResult<Arc<Session>> {
        Ok(self.engine().await?.session.clone())
    }

    /// The session for a paired host: the existing one, or a new one (or `fresh`, right after
    /// pairing, which carries the access token pairing returned).
    pub fn session_for(&self, host: &PairedHost, fresh: Option<Session>) -> Arc<Session> {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(fresh) = fresh {
            let session = Arc::new(fresh);
            sessions.insert(host.device_id.clone(), session.clone());
            return session;
        }
        sessions
            .entry(host.device_id.clone())
            .or_insert_with(|| Arc::new(Session::new(host.clone(), self.secrets.clone())))
            .clone()
    }

    /// Stops the current engine (if any) and starts one for `session`'s host.
    pub async fn activate<R: Runtime>(
        self: &Arc<Self>,
        app: &AppHandle<R>,
        session: Arc<Session>,
    ) -> CommandResult<()> {
        let _one_at_a_time = self.activation.lock().await;
        self.deactivate().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(session.clone(), self.cache.clone(), tx);
        let (stop, stop_rx) = watch::channel(false);
        // The unread count belongs to the host it was counted for: the new one starts with
        // none, and the previous engine's counts still on their way are not shown.
        let ticket = self.badge.switch(|total| self.show_unread(app, total));
        tokio::spawn(engine.clone().run(stop_rx));
        tokio::spawn(crate::commands::notify::forward(
            app.clone(),
            self.clone(),
            session,
            ticket,
            rx,
        ));
        *self.active.lock().await = Some(Active { engine, stop });
        // The new host's engine starts knowing what is on screen.
        self.apply_focus().await;
        Ok(())
    }

    /// An engine counted `total` unread replies: shown in the UI and on the tray if that
    /// engine is still the active one.
    pub fn unread_counted<R: Runtime>(&self, app: &AppHandle<R>, ticket: BadgeTicket, total: u32) {
        self.badge
            .update(ticket, total, |total| self.show_unread(app, total));
    }

    fn show_unread<R: Runtime>(&self, app: &AppHandle<R>, total: u32) {
        self.broadcast(&AppEvent::Unread { total });
        #[cfg(desktop)]
        {
            use tauri::Manager;
            if let Some(desktop) = app.try_state::<crate::desktop::Desktop>() {
                desktop.set_unread(app, total);
            }
        }
        #[cfg(mobile)]
        // Used on desktop only.
        let _ = app;
    }

    /// Forgets a host on this device (its token, its entry, its cache) and carries on with the
    /// host that becomes active, if any.
    pub async fn forget<R: Runtime>(
        self: &Arc<Self>,
        app: &AppHandle<R>,
        device_id: &str,
    ) -> CommandResult<()> {
        let was_active = self
            .active
            .lock()
            .await
            .as_ref()
            .is_some_and(|a| a.engine.session.host.device_id == device_id);
        if was_active {
            self.deactivate().await;
        }
        let next = {
            let mut hosts = self.hosts.lock().await;
            hosts.remove(device_id);
            hosts.active_host().cloned()
        };
        self.save_hosts().await?;
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(device_id);
        self.secrets
            .delete(&taos_client::secrets::refresh_key(device_id))?;
        self.cache.forget_host(device_id).await?;
        if was_active {
            match next {
                Some(next) => {
                    let session = self.session_for(&next, None);
                    self.activate(app, session).await?;
                }
                None => self.badge.clear(|total| self.show_unread(app, total)),
            }
        }
        Ok(())
    }

    pub async fn deactivate(&self) {
        if let Some(active) = self.active.lock().await.take() {
            // The engine may already have stopped on its own.
            let _ = active.stop.send(true);
        }
    }

    pub async fn save_hosts(&self) -> CommandResult<()> {
        self.hosts.lock().await.save(&self.data_dir)?;
        Ok(())
    }

    /// Sends an event to every open UI channel, forgetting the closed ones.
    pub fn broadcast(&self, event: &AppEvent) {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners.retain(|channel| channel.send(event.clone()).is_ok());
    }

    pub async fn active_host(&self) -> Option<PairedHost> {
        self.hosts.lock().await.active_host().cloned()
    }
}
