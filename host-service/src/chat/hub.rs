//! Live fan-out of chat events, one broadcast channel per chat channel.
//!
//! Broadcasting never waits for a receiver: a client too slow to keep up lags its receiver and
//! is dropped by its connection task (it reconnects and catches up with `after_seq`), so one
//! slow phone can't stall everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use taos_proto::chat::ServerEvent;
use tokio::sync::broadcast;

const CHANNEL_CAPACITY: usize = 1024;

/// An event as sent to clients: serialized once, whatever the number of subscribers.
#[derive(Debug)]
pub struct Published {
    /// The channel seq, for events that have one (replay de-duplication uses it).
    pub seq: Option<i64>,
    pub json: String,
}

/// When a person last posted to chat, for background work that gives way to people chatting
/// (a backup's container exports: see `backup::containers`). Agents' posts don't set it, so
/// an agent can't hold a backup back. Clones share it.
#[derive(Clone)]
pub struct ChatActivity {
    since: tokio::time::Instant,
    /// Milliseconds after `since` of the last event, plus one; 0 is "none yet".
    last: Arc<AtomicU64>,
}

impl Default for ChatActivity {
    fn default() -> Self {
        ChatActivity {
            since: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl ChatActivity {
    pub fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64 + 1;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// When a person last posted (to the millisecond), if ever.
    pub fn last(&self) -> Option<tokio::time::Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.since + std::time::Duration::from_millis(ms - 1)),
        }
    }
}

#[derive(Default)]
pub struct ChatHub {
    channels: Mutex<HashMap<String, broadcast::Sender<Arc<Published>>>>,
    /// Serializes writers per channel so events reach subscribers in seq order.
    write_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    activity: ChatActivity,
}

impl ChatHub {
    /// The clock people's posts set ([`ChatHub::person_posted`]).
    pub fn activity(&self) -> ChatActivity {
        self.activity.clone()
    }

    /// A person posts (through the API or a WebSocket): background work gives way for a while.
    pub fn person_posted(&self) {
        self.activity.touch();
    }

    pub fn subscribe(&self, channel_id: &str) -> broadcast::Receiver<Arc<Published>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if !channels.contains_key(channel_id) {
            // Drop channels nobody listens to any more before adding one.
            channels.retain(|_, sender| sender.receiver_count() > 0);
        }
        channels
            .entry(channel_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    pub fn publish(&self, channel_id: &str, event: &ServerEvent) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = channels.get(channel_id) {
            let published = Published {
                seq: event.seq(),
                json: serde_json::to_string(event).unwrap_or_default(),
            };
            if sender.send(Arc::new(published)).is_err() {
                // Nobody listens any more; forget the channel so the map doesn't grow forever.
                channels.remove(channel_id);
            }
        }
    }

    pub fn write_lock(&self, channel_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.write_locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(channel_id.to_string()).or_default().clone()
    }

    pub fn forget(&self, channel_id: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.remove(channel_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_persons_post_sets_the_activity_clock() {
        let hub = ChatHub::default();
        let activity = hub.activity();
        let _listening = hub.subscribe("c");
        // What agents' answers and everything else go through.
        hub.publish(
            "c",
            &ServerEvent::Typing {
                channel_id: "c".into(),
                member: "agent-x".into(),
            },
        );
        assert_eq!(activity.last(), None);
        hub.person_posted();
        let last = activity.last().expect("set by the person's post");
        assert!(last <= tokio::time::Instant::now());
    }
}
