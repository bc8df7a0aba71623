//! What people can see, as the shell tracks it: which chat is on screen (the UI's, unless the
//! window is hidden or another window has the focus) and the unread count shown for the active
//! host. Plain state, no window and no engine, so the races it guards are tested here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;

use tokio::sync::Mutex;

/// What happened to the main window, as far as "is a chat on screen" goes.
#[cfg(desktop)]
#[derive(Debug, Clone, Copy)]
pub enum WindowChange {
    Hidden(bool),
    Focused(bool),
}

#[derive(Default)]
pub struct Focus {
    /// The channel the UI has on screen. Replies there don't notify, unless the window is
    /// hidden (closed to the tray) or another window has the focus: then nobody is looking.
    ui: StdMutex<Option<String>>,
    window_hidden: AtomicBool,
    window_unfocused: AtomicBool,
    /// Held from working out what is on screen to telling the engine, so updates from
    /// concurrent tasks (a focus event, the UI opening a chat) land in the order they were
    /// worked out.
    in_order: Mutex<()>,
}

impl Focus {
    /// The UI opened (or left) a channel.
    pub fn set_ui(&self, channel: Option<String>) {
        *self
            .ui
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = channel;
    }

    /// The window was hidden (closed to the tray) or shown again, or lost or regained the
    /// keyboard focus.
    #[cfg(desktop)]
    pub fn window_changed(&self, change: WindowChange) {
        match change {
            WindowChange::Hidden(hidden) => self.window_hidden.store(hidden, Ordering::SeqCst),
            WindowChange::Focused(focused) => {
                self.window_unfocused.store(!focused, Ordering::SeqCst)
            }
        }
    }

    /// Works out which channel is on screen, if any, and hands it to `tell` (the engine), in
    /// order with every other call: the last one told is the one worked out last.
    pub async fn apply(&self, tell: impl AsyncFnOnce(Option<String>)) {
        let _in_order = self.in_order.lock().await;
        let away = self.window_hidden.load(Ordering::SeqCst)
            || self.window_unfocused.load(Ordering::SeqCst);
        let on_screen = if away {
            None
        } else {
            self.ui
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        tell(on_screen).await;
    }
}

/// The unread count the shell shows (in the UI and on the tray), and whose count it is: only
/// the active host's engine may change it. A count still on its way from the previous host's
/// engine when the user switches hosts would otherwise replace the new host's.
#[derive(Default)]
pub struct UnreadBadge {
    /// The engine whose counts are shown (0: none yet), under one lock with showing them, so a
    /// switch and a count can't interleave.
    current: StdMutex<u64>,
}

/// An engine's right to change the badge, until the next switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadgeTicket(u64);

impl UnreadBadge {
    /// A new host's engine takes over: the count goes back to none (`show(0)`), and only
    /// the returned ticket's counts are shown from now on.
    pub fn switch(&self, show: impl FnOnce(u32)) -> BadgeTicket {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current += 1;
        show(0);
        BadgeTicket(*current)
    }

    /// No host is active any more (the last one was forgotten): back to none, and no engine's
    /// counts are shown.
    pub fn clear(&self, show: impl FnOnce(u32)) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current += 1;
        show(0);
    }

    /// An engine counted `total` unread replies: shown if it still holds the badge. Whether
    /// it was.
    pub fn update(&self, ticket: BadgeTicket, total: u32, show: impl FnOnce(u32)) -> bool {
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != ticket.0 {
            return false;
        }
        show(total);
        true
    }
}

#[cfg(all(test, desktop))]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    use super::*;

    /// Polls `future` once; whether it finished.
    async fn poll_once(mut future: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_hidden_or_unfocused_window_has_nothing_on_screen() {
        let focus = Focus::default();
        let told = StdMutex::new(Vec::new());
        let tell = async |on_screen| told.lock().unwrap().push(on_screen);
        focus.set_ui(Some("chat".into()));
        focus.apply(tell).await;
        focus.window_changed(WindowChange::Focused(false));
        focus.apply(tell).await;
        focus.window_changed(WindowChange::Focused(true));
        focus.window_changed(WindowChange::Hidden(true));
        focus.apply(tell).await;
        focus.window_changed(WindowChange::Hidden(false));
        focus.apply(tell).await;
        focus.set_ui(None);
        focus.apply(tell).await;
        let chat = Some("chat".to_string());
        assert_eq!(
            *told.lock().unwrap(),
            [chat.clone(), None, None, chat, None]
        );
    }

    /// The window is hidden while the engine is still taking the update from the UI opening a
    /// chat. The engine must end up told "nothing on screen", not the chat.
    #[tokio::test]
    async fn focus_updates_reach_the_engine_in_the_order_they_were_worked_out() {
        let focus = Focus::default();
        let told = StdMutex::new(Vec::new());
        let (inside, is_inside) = tokio::sync::oneshot::channel();
        let (go_on, may_go_on) = tokio::sync::oneshot::channel::<()>();
        focus.set_ui(Some("chat".into()));
        // The first update has worked out "chat" and is telling a slow engine.
        let first = focus.apply(async |on_screen| {
            // Test choreography: the other side outlives this call.
            let _ = inside.send(());
            let _ = may_go_on.await;
            told.lock().unwrap().push(on_screen);
        });
        let meanwhile = async {
            is_inside.await.expect("the first update is under way");
            focus.window_changed(WindowChange::Hidden(true));
            let mut second = pin!(focus.apply(async |on_screen| {
                told.lock().unwrap().push(on_screen);
            }));
            // Given every chance to run now, the second update must wait for the first.
            let overtook = poll_once(second.as_mut()).await;
            go_on.send(()).expect("the first update waits");
            if !overtook {
                second.await;
            }
        };
        tokio::join!(first, meanwhile);
        assert_eq!(*told.lock().unwrap(), [Some("chat".to_string()), None]);
    }

    /// The previous host's engine counted a reply just before the switch; its count arrives
    /// after. The new host's badge must not show it.
    #[test]
    fn a_host_switch_starts_from_none_and_ignores_the_old_hosts_late_counts() {
        let badge = UnreadBadge::default();
        let shown = StdMutex::new(Vec::new());
        let show = |total| shown.lock().unwrap().push(total);
        let old = badge.switch(show);
        assert!(badge.update(old, 2, show));
        let new = badge.switch(show);
        assert!(!badge.update(old, 3, show), "a late count of the old host");
        assert!(badge.update(new, 1, show));
        // Forgetting the last host: nothing is counted for anyone.
        badge.clear(show);
        assert!(!badge.update(new, 4, show));
        assert_eq!(*shown.lock().unwrap(), [0, 2, 0, 1, 0]);
    }
}
