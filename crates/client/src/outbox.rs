//! Sending what was written offline: queued messages go out one at a time, in the order they
//! were written, each with its `client_id`, so a resend after a lost answer returns the stored
//! message instead of a second copy. A network failure stops the flush (order is kept; it
//! resumes on the next connect); a message the host will never take (e.g. an archived channel)
//! is marked failed and does not block the ones behind it.

use std::future::Future;

use reqwest::Method;
use taos_proto::chat::{Message, NewMessage};

use crate::cache::{Cache, CacheError, OutboxItem};
use crate::net::NetError;
use crate::session::{Session, SessionError};

/// Why one send did not go through.
#[derive(Debug)]
pub enum SendFailure {
    /// Try again later, keeping the order: offline, or the host had a passing problem.
    Later(String),
    /// The host refused this message for good.
    Refused(String),
    /// Stop everything: the device was signed out.
    Revoked,
}

impl From<SessionError> for SendFailure {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Revoked => SendFailure::Revoked,
            SessionError::Net(NetError::Host {
                status, message, ..
            }) if (400..500).contains(&status) && status != 408 && status != 429 => {
                SendFailure::Refused(message)
            }
            other => SendFailure::Later(other.to_string()),
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Flushed {
    pub sent: usize,
    /// What the host stored for each message sent, in order.
    pub messages: Vec<Message>,
    pub failed: usize,
    /// Stopped early with items still queued (offline).
    pub stopped: Option<String>,
    pub revoked: bool,
}

/// Sends every queued item through `send`, in order.
pub async fn flush_with<F, Fut>(
    cache: &Cache,
    host: &str,
    mut send: F,
) -> Result<Flushed, CacheError>
where
    F: FnMut(OutboxItem) -> Fut,
    Fut: Future<Output = Result<Message, SendFailure>>,
{
    let mut result = Flushed::default();
    for item in cache.outbox(host, Some("queued")).await? {
        let client_id = item.client_id.clone();
        match send(item).await {
            Ok(message) => {
                cache.outbox_sent(host, &client_id, &message.id).await?;
                cache.store_sent(host, &message).await?;
                result.messages.push(message);
                result.sent += 1;
            }
            Err(SendFailure::Refused(why)) => {
                cache.outbox_attempted(host, &client_id, Some(&why)).await?;
                cache.outbox_failed(host, &client_id, &why).await?;
                result.failed += 1;
            }
            Err(SendFailure::Later(why)) => {
                cache.outbox_attempted(host, &client_id, Some(&why)).await?;
                result.stopped = Some(why);
                break;
            }
            Err(SendFailure::Revoked) => {
                result.revoked = true;
                break;
            }
        }
    }
    Ok(result)
}

/// Flushes the outbox to the session's host over REST.
pub async fn flush(session: &Session, cache: &Cache) -> Result<Flushed, CacheError> {
    let host = session.host.device_id.clone();
    flush_with(cache, &host, |item| async move {
        let body = NewMessage {
            channel_id: item.channel_id,
            content: item.content,
            client_id: Some(item.client_id),
            thread_id: item.thread_id,
        };
        session
            .call::<Message, _>(Method::POST, "/api/chat/messages", Some(&body))
            .await
            .map_err(SendFailure::from)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use taos_proto::chat::{AuthorType, MessageState};

    fn stored(item: &OutboxItem, n: usize) -> Message {
        Message {
            id: format!("msg-{}", item.client_id),
            channel_id: item.channel_id.clone(),
            seq: n as i64,
            author_id: "user:owner".into(),
            author_type: AuthorType::User,
            content: item.content.clone(),
            content_type: "text/markdown".into(),
            thread_id: None,
            state: MessageState::Complete,
            client_id: Some(item.client_id.clone()),
            metadata: serde_json::json!({}),
            created_at: chrono::Utc::now(),
            edited_at: None,
            deleted_at: None,
        }
    }

    #[tokio::test]
    async fn messages_the_host_would_refuse_are_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache.db")).await.unwrap();
        let too_long = "a".repeat(taos_proto::chat::MAX_CONTENT_CHARS + 1);
        for (content, client_id) in [
            ("", None),
            ("  \n ", None),
            (too_long.as_str(), None),
            ("hello", Some("../etc")),
            ("hello", Some("")),
            ("hello", Some("has space")),
        ] {
            let refused = cache.enqueue("h", "c1", content, None, client_id).await;
            assert!(
                matches!(refused, Err(CacheError::BadInput(_))),
                "{content:?} {client_id:?}"
            );
        }
        assert!(cache.outbox("h", None).await.unwrap().is_empty());
        cache
            .enqueue("h", "c1", "hello", None, Some("ok-1"))
            .await
            .unwrap();
        assert_eq!(cache.outbox("h", None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_outbox_sends_in_order_stops_when_offline_and_skips_refused_items() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache.db")).await.unwrap();
        for text in ["one", "two", "three", "four"] {
            cache.enqueue("h", "c1", text, None, None).await.unwrap();
        }
        // The host goes away after the first message.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let first = flush_with(&cache, "h", |item| {
            let log = log.clone();
            async move {
                let n = log.lock().unwrap().len();
                log.lock().unwrap().push(item.content.clone());
                if n == 0 {
                    Ok(stored(&item, 1))
                } else {
                    Err(SendFailure::Later("offline".into()))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(first.sent, 1);
        assert_eq!(first.stopped.as_deref(), Some("offline"));
        assert_eq!(
            *seen.lock().unwrap(),
            ["one", "two"],
            "stops at the first failure"
        );
        let queued: Vec<String> = cache
            .outbox("h", Some("queued"))
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.content)
            .collect();
        assert_eq!(queued, ["two", "three", "four"], "order kept");

        // Back online: "three" is refused for good, the rest go, in order.
        seen.lock().unwrap().clear();
        let log = seen.clone();
        let second = flush_with(&cache, "h", |item| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(item.content.clone());
                if item.content == "three" {
                    Err(SendFailure::Refused("channel archived".into()))
                } else {
                    Ok(stored(&item, 2))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((second.sent, second.failed, second.stopped), (2, 1, None));
        let sent: Vec<&str> = second.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(sent, ["two", "four"]);
        assert_eq!(*seen.lock().unwrap(), ["two", "three", "four"]);
        let all = cache.outbox("h", None).await.unwrap();
        let states: Vec<(&str, &str)> = all
            .iter()
            .map(|i| (i.content.as_str(), i.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("one", "sent"),
                ("two", "sent"),
                ("three", "failed"),
                ("four", "sent")
            ]
        );
        assert_eq!(all[1].attempts, 1, "one failed attempt recorded");
        assert_eq!(all[2].last_error.as_deref(), Some("channel archived"));
        // Sent messages are in the cache, readable offline.
        let cached = cache.messages("h", "c1", 10, None).await.unwrap();
        assert_eq!(cached.len(), 3);
        // Sends don't move the channel's sync point: changes before them may still be missing.
        assert_eq!(cache.synced_seq("h", "c1").await.unwrap(), 0);

        // Queuing a client_id again (a UI retry) doesn't add a second item.
        let again = cache
            .enqueue("h", "c1", "four", None, Some(&all[3].client_id))
            .await
            .unwrap();
        assert_eq!(again.state, "sent");
        assert_eq!(cache.outbox("h", None).await.unwrap().len(), 4);

        // Retry puts the failed one back in the queue, with the same client_id.
        cache.outbox_retry("h", &all[2].client_id).await.unwrap();
        let again = cache.outbox("h", Some("queued")).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].client_id, all[2].client_id);

        // Revoked stops at once and leaves the queue as it was.
        let revoked = flush_with(&cache, "h", |_| async { Err(SendFailure::Revoked) })
            .await
            .unwrap();
        assert!(revoked.revoked);
        assert_eq!(cache.outbox("h", Some("queued")).await.unwrap().len(), 1);
    }
}
