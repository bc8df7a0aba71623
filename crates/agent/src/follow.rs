//! Following the bridge stream: connect, parse, hand deliveries to the worker in order, and
//! reconnect with `Last-Event-ID` when the stream ends or fails.

use taos_proto::bridge::{CancelTurn, UserMessageDelivery, CANCEL_EVENT};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::bridge::{BridgeClient, BridgeError};
use crate::config::Timings;
use crate::http::with_causes;
use crate::shutdown::Shutdown;
use crate::sse::{SseError, SseParser};

/// The SSE event type of a delivery.
pub const USER_MESSAGE_EVENT: &str = "user_message";

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("the host closed the stream")]
    Closed,
    /// The worker is gone (shutting down): stop following.
    #[error("no one is taking deliveries any more")]
    QueueClosed,
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("the stream broke off: {}", with_causes(.0))]
    Read(reqwest::Error),
    #[error(transparent)]
    Parse(#[from] SseError),
}

/// How many cancels the sidecar keeps: more than the host resends at once is never needed,
/// since it answers one delivery at a time.
pub const REMEMBERED_CANCELS: usize = 64;

/// Follows the stream until shutdown, sending each delivery to `queue` and each `cancel` to
/// `cancels` (past the queue: the worker is busy with the answer to cancel). `cancels` keeps
/// the newest [`REMEMBERED_CANCELS`]: a new stream starts with every cancel still pending, so
/// several may come at once and none may overwrite another. Reconnects on its
/// own; it never gives up, because the sidecar has nothing else to do.
pub async fn follow(
    bridge: BridgeClient,
    timings: Timings,
    queue: mpsc::Sender<UserMessageDelivery>,
    cancels: watch::Sender<Vec<CancelTurn>>,
    mut shutdown: Shutdown,
) {
    // Survives reconnects, so the host resends only what came after it. Starts empty: on a
    // fresh start the host sends every delivery not yet answered, which is what we want.
    let mut last_event_id: Option<String> = None;
    let mut backoff = Backoff::new(timings.backoff_start, timings.backoff_max);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let end = tokio::select! {
            end = read_stream(&bridge, &mut last_event_id, &mut backoff, &queue, &cancels) => end,
            _ = shutdown.wait() => return,
        };
        let delay = match &end {
            StreamEnd::QueueClosed => return,
            StreamEnd::Bridge(BridgeError::Refused(status)) => {
                tracing::error!(
                    status,
                    retry_in = ?timings.refused_retry,
                    "the host refused the agent token; if it was rotated, restart the agent \
                     with the new TAOS_AGENT_TOKEN"
                );
                timings.refused_retry
            }
            StreamEnd::Bridge(e @ BridgeError::Status { status, .. }) if *status < 500 => {
                tracing::error!(error = %e, retry_in = ?timings.refused_retry, "the host refused the bridge stream");
                timings.refused_retry
            }
            other => {
                let delay = backoff.next_delay();
                tracing::warn!(reason = %other, retry_in = ?delay, "bridge stream lost; reconnecting");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// One connection: returns when it ends. `last_event_id` advances only after a delivery was
/// queued, so a connection that drops mid-event gets that event again.
async fn read_stream(
    bridge: &BridgeClient,
    last_event_id: &mut Option<String>,
    backoff: &mut Backoff,
    queue: &mpsc::Sender<UserMessageDelivery>,
    cancels: &watch::Sender<Vec<CancelTurn>>,
) -> StreamEnd {
    let mut response = match bridge.open_events(last_event_id.as_deref()).await {
        Ok(response) => response,
        Err(e) => return e.into(),
    };
    backoff.reset();
    tracing::info!(last_event_id = ?last_event_id, "bridge stream connected");
    let mut parser = SseParser::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return StreamEnd::Closed,
            Err(e) => return StreamEnd::Read(e),
        };
        let events = match parser.push(&chunk) {
            Ok(events) => events,
            Err(e) => return e.into(),
        };
        for event in events {
            if event.event == USER_MESSAGE_EVENT {
                match serde_json::from_str::<UserMessageDelivery>(&event.data) {
                    Ok(delivery) => {
                        tracing::debug!(trace_id = %delivery.trace_id, seq = delivery.delivery_seq, "delivery received");
                        if queue.send(delivery).await.is_err() {
                            return StreamEnd::QueueClosed;
                        }
                    }
                    // Skipped, not retried: the same bytes would fail the same way forever.
                    Err(e) => {
                        tracing::error!(id = ?event.id, error = %e, "skipping a delivery that does not parse")
                    }
                }
            } else if event.event == CANCEL_EVENT {
                match serde_json::from_str::<CancelTurn>(&event.data) {
                    Ok(cancel) => {
                        tracing::info!(trace_id = %cancel.trace_id, by = %cancel.by, "cancel received");
                        cancels.send_modify(|pending| {
                            if pending.len() >= REMEMBERED_CANCELS {
                                pending.remove(0);
                            }
                            pending.push(cancel);
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "skipping a cancel that does not parse"),
                }
            } else {
                tracing::debug!(event = %event.event, "ignoring an unknown bridge event");
            }
            if event.id.is_some() {
                *last_event_id = event.id;
            }
        }
    }
}
