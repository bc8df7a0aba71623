//! What the shell holds while it runs: the app's data dir, the keychain, the offline cache, the
//! paired hosts, and the sync engine for the active host, whose events go to the UI and to
//! native notifications.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What happened to the main window, as far as "is a chat on screen" goes.
#[cfg(desktop)]
#[derive(Debug, Clone, Copy)]
pub enum WindowChange {
    Hidden(bool),
    Focused(bool),
}

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
    /// The channel the UI has on screen. Replies there don't notify — unless the window is
    /// hidden (closed to the tray) or another window has the focus: then nobody is looking.
    ui_focus: StdMutex<Option<String>>,
    window_hidden: AtomicBool,
    window_unfocused: AtomicBool,
    /// Held from reading those to telling the engine, so updates from concurrent tasks (a
    /// focus event, the UI opening a chat) land in the order they were worked out.
    focus_update: Mutex<()>,
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
            ui_focus: StdMutex::new(None),
            window_hidden: AtomicBool::new(false),
            window_unfocused: AtomicBool::new(false),
            focus_update: Mutex::new(()),
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
        *self.ui_focus.lock().expect("ui focus") = channel;
        self.apply_focus().await;
    }

    /// The window was hidden (closed to the tray) or shown again, or lost or regained the
    /// keyboard focus.
    #[cfg(desktop)]
    pub async fn window_changed(&self, change: WindowChange) {
        match change {
            WindowChange::Hidden(hidden) => self.window_hidden.store(hidden, Ordering::SeqCst),
            WindowChange::Focused(focused) => {
                self.window_unfocused.store(!focused, Ordering::SeqCst)
            }
        }
        self.apply_focus().await;
    }

    /// Tells the engine which channel is on screen, if any.
    async fn apply_focus(&self) {
        let _in_order = self.focus_update.lock().await;
        let away = self.window_hidden.load(Ordering::SeqCst)
            || self.window_unfocused.load(Ordering::SeqCst);
        let focus = if away {
            None
        } else {
            self.ui_focus.lock().expect("ui focus").clone()
        };
        if let Ok(engine) = self.engine().await {
            engine.set_focus(focus).await;
        }
    }

    pub async fn session(&self) -> CommandResult<Arc<Session>> {
        Ok(self.engine().await?.session.clone())
    }

    /// The session for a paired host: the existing one, or a new one (or `fresh`, right after
    /// pairing, which carries the access token pairing returned).
    pub fn session_for(&self, host: &PairedHost, fresh: Option<Session>) -> Arc<Session> {
        let mut sessions = self.sessions.lock().expect("sessions");
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
        let device_id = session.host.device_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Engine::new(session, self.cache.clone(), tx);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(engine.clone().run(stop_rx));
        tokio::spawn(crate::commands::notify::forward(
            app.clone(),
            self.clone(),
            device_id,
            rx,
        ));
        *self.active.lock().await = Some(Active { engine, stop });
        // The new host's engine starts knowing what is on screen, and with nothing unread.
        self.apply_focus().await;
        self.reset_unread(app);
        Ok(())
    }

    /// The unread count belongs to the host it was counted for: back to none.
    fn reset_unread<R: Runtime>(&self, app: &AppHandle<R>) {
        self.broadcast(&AppEvent::Unread { total: 0 });
        #[cfg(desktop)]
        {
            use tauri::Manager;
            if let Some(desktop) = app.try_state::<crate::desktop::Desktop>() {
                desktop.set_unread(app, 0);
            }
        }
        #[cfg(mobile)]
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
        self.sessions.lock().expect("sessions").remove(device_id);
        self.secrets
            .delete(&taos_client::secrets::refresh_key(device_id))?;
        self.cache.forget_host(device_id).await?;
        if was_active {
            match next {
                Some(next) => {
                    let session = self.session_for(&next, None);
                    self.activate(app, session).await?;
                }
                None => self.reset_unread(app),
            }
        }
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
