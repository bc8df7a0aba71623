//! The sidecar's life: announce the start, follow the stream, answer deliveries one at a time
//! in order, and on shutdown finish (or abandon) the answer in progress and announce the stop.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use taos_proto::bridge::{CancelTurn, UserMessageDelivery};
use taos_proto::trace::TraceKind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::acp::AcpMode;
use crate::bridge::{new_trace, BridgeClient};
use crate::config::{Config, Mode, Timings};
use crate::direct::DirectMode;
use crate::follow::follow;
use crate::framework::{Framework, ReplySink};
use crate::http::{plain_client, ClientBuildError};
use crate::llm::LlmClient;
use crate::openclaw::OpenclawMode;
use crate::shutdown::Shutdown;
use crate::tools::ToolsMode;

/// Deliveries read ahead of the one being answered. The stream waits when it is full.
const QUEUE_DEPTH: usize = 64;
/// How many answered trace ids are remembered to skip a delivery the host sends again.
const REMEMBERED_TRACES: usize = 1024;
/// Lifecycle traces must not hold up starting or stopping for long.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(3);
/// After abandoning an answer, how long telling the host about it may take.
const ABANDON_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("tools mode cannot start: {0}")]
    Tools(#[from] crate::tools::SetupError),
    #[error("openclaw mode cannot start: {0}")]
    Openclaw(#[from] crate::openclaw::SetupError),
    #[error("acp mode cannot start: {0}")]
    Acp(crate::tools::SetupError),
}

/// Runs until `shutdown` is triggered. Errors only when it cannot start at all.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    let timings = config.timings;
    let bridge_http = plain_client(timings.connect_timeout, timings.stream_idle_timeout)?;
    let llm_http = plain_client(timings.connect_timeout, timings.llm_idle_timeout)?;
    let bridge = BridgeClient::new(
        bridge_http,
        &config.bridge_url,
        &config.agent_name,
        config.agent_token.clone(),
        timings.request_timeout,
    );
    let llm = LlmClient::new(
        llm_http,
        &config.openai_base_url,
        config.openai_api_key.clone(),
    );
    tracing::info!(
        agent = %config.agent_name,
        mode = config.mode.as_str(),
        models = ?config.models,
        bridge = %config.bridge_url,
        "taos-agent starting"
    );
    match config.mode {
        Mode::Direct => {
            let framework = DirectMode::new(
                llm,
                &config.agent_name,
                config.system_prompt.clone(),
                config.models.clone(),
                timings.delta_flush,
            );
            run_framework(&framework, config.mode, bridge, timings, shutdown).await;
        }
        Mode::Tools => {
            let framework = ToolsMode::new(
                llm,
                &config.agent_name,
                config.system_prompt.clone(),
                config.models.clone(),
                &config.tools,
            )?;
            run_framework(&framework, config.mode, bridge, timings, shutdown).await;
        }
        Mode::Openclaw => {
            let framework = OpenclawMode::start(&config)?;
            run_framework(&framework, config.mode, bridge, timings, shutdown).await;
            framework.stop().await;
        }
        Mode::Acp => {
            let placeholders = crate::acp::process::Placeholders {
                openai_base_url: config.openai_base_url.clone(),
                openai_api_key: config.openai_api_key.expose().to_string(),
                model: config.models.first().cloned().unwrap_or_default(),
                agent_name: config.agent_name.clone(),
            };
            let framework = AcpMode::new(config.acp.clone(), &config.tools, placeholders)
                .map_err(RunError::Acp)?;
            run_framework(&framework, config.mode, bridge, timings, shutdown).await;
            framework.shutdown().await;
        }
    }
    Ok(())
}

async fn run_framework<F: Framework>(
    framework: &F,
    mode: Mode,
    bridge: BridgeClient,
    timings: Timings,
    shutdown: Shutdown,
) {
    lifecycle(&bridge, "start", mode).await;
    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_DEPTH);
    let (cancel_tx, cancels) = watch::channel(Vec::new());
    let follower = tokio::spawn(follow(
        bridge.clone(),
        timings,
        queue_tx,
        cancel_tx,
        shutdown.clone(),
    ));
    work(
        framework,
        &bridge,
        queue_rx,
        cancels,
        shutdown,
        timings.shutdown_grace,
    )
    .await;
    // The follower stops on the same shutdown; it holds nothing worth waiting long for.
    let abort = follower.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), follower)
        .await
        .is_err()
    {
        abort.abort();
    }
    lifecycle(&bridge, "stop", mode).await;
    tracing::info!("taos-agent stopped");
}

/// Answers deliveries one at a time, in the order they arrived, until shutdown.
async fn work<F: Framework>(
    framework: &F,
    bridge: &BridgeClient,
    mut queue: mpsc::Receiver<UserMessageDelivery>,
    cancels: watch::Receiver<Vec<CancelTurn>>,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let mut answered = RecentTraces::new(REMEMBERED_TRACES);
    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.wait() => return,
            next = queue.recv() => match next {
                Some(delivery) => delivery,
                None => return,
            },
        };
        // The host resends what was not answered when a stream starts without an id; an
        // answer we already gave (or gave up on) must not be given twice.
        if !answered.insert(&delivery.trace_id) {
            tracing::debug!(trace_id = %delivery.trace_id, "skipping a delivery already handled");
            continue;
        }
        answer(
            framework,
            bridge,
            &delivery,
            cancels.clone(),
            shutdown.clone(),
            grace,
        )
        .await;
    }
}

async fn answer<F: Framework>(
    framework: &F,
    bridge: &BridgeClient,
    delivery: &UserMessageDelivery,
    mut cancels: watch::Receiver<Vec<CancelTurn>>,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let started = Instant::now();
    tracing::info!(
        trace_id = %delivery.trace_id,
        channel_id = %delivery.channel_id,
        from = %delivery.from,
        seq = delivery.delivery_seq,
        "answering"
    );
    let replies = ReplySink::new(bridge.clone(), delivery);
    // Boxed, so a cancel can drop it (and with it the tools it runs) before settling.
    let mut respond = Box::pin(framework.respond(delivery, &replies));
    let trace_id = delivery.trace_id.as_str();
    // A cancel for this delivery that came while it waited in the queue counts too, and so
    // does one the host resent when the stream came back (it was made while we were away).
    // Who stopped it, taken out at once: the watch value stays locked while its guard lives.
    let cancelled = async {
        let cancels = cancels
            .wait_for(|c| c.iter().any(|c| c.trace_id == trace_id))
            .await
            .ok()?;
        cancels
            .iter()
            .find(|c| c.trace_id == trace_id)
            .map(|c| c.by.clone())
    };
    let outcome = tokio::select! {
        result = &mut respond => Some(result),
        Some(by) = cancelled => {
            // Dropping the answer ends its tools (see `tools::exec`).
            drop(respond);
            tracing::info!(trace_id, by = %by, "answer cancelled");
            let reason = format!("stopped by {by}");
            let result = replies.fail("cancelled", &reason).await;
            replies.trace_error("cancel", &reason, None).await;
            if let Err(e) = result {
                tracing::warn!(trace_id, error = %e, "could not settle the cancelled answer");
            }
            return;
        }
        _ = shutdown.wait() => {
            tracing::info!(trace_id = %delivery.trace_id, grace = ?grace, "stopping; letting the answer in progress finish");
            tokio::time::timeout(grace, &mut respond).await.ok()
        }
    };
    match outcome {
        Some(Ok(())) => {
            tracing::info!(trace_id = %delivery.trace_id, elapsed = ?started.elapsed(), "answered");
        }
        Some(Err(e)) => {
            tracing::error!(trace_id = %delivery.trace_id, error = %e, "answering failed");
            if !replies.is_settled() {
                // Best effort: the host may refuse this too, for the same reason.
                if let Err(e) = replies
                    .fail("agent_error", "the agent could not deliver its answer")
                    .await
                {
                    tracing::warn!(trace_id = %delivery.trace_id, error = %e, "could not report the failure");
                }
            }
        }
        None => {
            tracing::warn!(trace_id = %delivery.trace_id, "abandoned the answer in progress");
            // Half an answer is on screen: mark it failed rather than leave it streaming
            // forever. With nothing shown, leave the delivery unanswered so the host sends it
            // again when the agent is back.
            if replies.has_streamed() && !replies.is_settled() {
                let notice = replies.fail(
                    "interrupted",
                    "the agent stopped before finishing its answer",
                );
                match tokio::time::timeout(ABANDON_NOTICE_TIMEOUT, notice).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not mark the answer failed"),
                    Err(_) => tracing::warn!("timed out marking the answer failed"),
                }
            }
        }
    }
}

/// Posts a `lifecycle` trace. Best effort: the host may be down, and starting or stopping
/// must not depend on it.
async fn lifecycle(bridge: &BridgeClient, event: &str, mode: Mode) {
    let mut trace = new_trace(TraceKind::Lifecycle);
    trace.payload = serde_json::json!({
        "event": event,
        "mode": mode.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    match tokio::time::timeout(LIFECYCLE_TIMEOUT, bridge.post_trace(&trace)).await {
        Ok(Ok(())) => tracing::debug!(event, "lifecycle trace written"),
        Ok(Err(e)) => tracing::warn!(event, error = %e, "could not write the lifecycle trace"),
        Err(_) => tracing::warn!(event, "timed out writing the lifecycle trace"),
    }
}

/// A bounded set of trace ids, forgetting the oldest first.
struct RecentTraces {
    capacity: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentTraces {
    fn new(capacity: usize) -> Self {
        RecentTraces {
            capacity,
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
        }
    }

    /// False if the id is already remembered.
    fn insert(&mut self, trace_id: &str) -> bool {
        if self.set.contains(trace_id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(trace_id.to_string());
        self.set.insert(trace_id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_traces_remember_a_bounded_window() {
        let mut recent = RecentTraces::new(2);
        assert!(recent.insert("a"));
        assert!(!recent.insert("a"));
        assert!(recent.insert("b"));
        assert!(recent.insert("c")); // forgets "a"
        assert!(!recent.insert("b"));
        assert!(recent.insert("a"));
    }
}
