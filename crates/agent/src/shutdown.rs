//! A shutdown flag every task can wait on. SIGTERM/SIGINT set it in `main`; tests set it
//! directly.

use tokio::sync::watch;

/// Sets the flag. Dropping it counts as a shutdown too, so nothing waits forever.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Returns once shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: treat that as a shutdown as well.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
