//! Direct mode: each delivery is answered by one streamed chat completion, trying the
//! fallback models in order when a model fails before saying anything.

use std::time::Duration;

use taos_proto::bridge::UserMessageDelivery;
use tokio::time::Instant;

use crate::bridge::BridgeError;
use crate::framework::{Framework, ReplySink, RespondError};
use crate::llm::{build_messages, ChatMessage, LlmClient, LlmError};

pub struct DirectMode {
    llm: LlmClient,
    agent: String,
    system_prompt: Option<String>,
    /// The primary model first; never empty (config guarantees a primary).
    models: Vec<String>,
    delta_flush: Duration,
}

/// How one model attempt went wrong.
enum AttemptError {
    Llm(LlmError),
    Bridge(BridgeError),
}

impl DirectMode {
    pub fn new(
        llm: LlmClient,
        agent: &str,
        system_prompt: Option<String>,
        models: Vec<String>,
        delta_flush: Duration,
    ) -> Self {
        DirectMode {
            llm,
            agent: agent.to_string(),
            system_prompt,
            models,
            delta_flush,
        }
    }

    /// Streams one model's answer into `replies`, batching pieces so a fast model does not
    /// cost one request per token. The first piece goes out at once, for a quick first sign
    /// of life; later ones at most every `delta_flush`.
    async fn attempt(
        &self,
        model: &str,
        messages: &[ChatMessage],
        trace_id: &str,
        replies: &ReplySink,
    ) -> Result<(), AttemptError> {
        let mut stream = self
            .llm
            .stream_chat(model, messages, trace_id)
            .await
            .map_err(AttemptError::Llm)?;
        let mut full = String::new();
        let mut pending = String::new();
        let mut last_flush: Option<Instant> = None;
        loop {
            let next = match last_flush {
                Some(flushed) if !pending.is_empty() => {
                    tokio::select! {
                        next = stream.next_piece() => next,
                        _ = tokio::time::sleep_until(flushed + self.delta_flush) => {
                            flush(replies, &mut pending, &mut last_flush).await?;
                            continue;
                        }
                    }
                }
                _ => stream.next_piece().await,
            };
            match next.map_err(AttemptError::Llm)? {
                Some(piece) => {
                    full.push_str(&piece);
                    pending.push_str(&piece);
                    let due = match last_flush {
                        None => true,
                        Some(flushed) => flushed.elapsed() >= self.delta_flush,
                    };
                    if due {
                        flush(replies, &mut pending, &mut last_flush).await?;
                    }
                }
                None => break,
            }
        }
        if full.trim().is_empty() {
            return Err(AttemptError::Llm(LlmError::Empty));
        }
        flush(replies, &mut pending, &mut last_flush).await?;
        replies.finish(&full).await.map_err(AttemptError::Bridge)
    }
}

async fn flush(
    replies: &ReplySink,
    pending: &mut String,
    last_flush: &mut Option<Instant>,
) -> Result<(), AttemptError> {
    if !pending.is_empty() {
        replies.delta(pending).await.map_err(AttemptError::Bridge)?;
        pending.clear();
    }
    *last_flush = Some(Instant::now());
    Ok(())
}

impl Framework for DirectMode {
    async fn respond(
        &self,
        delivery: &UserMessageDelivery,
        replies: &ReplySink,
    ) -> Result<(), RespondError> {
        let messages = build_messages(self.system_prompt.as_deref(), &self.agent, delivery);
        let mut failure: Option<(&str, LlmError)> = None;
        for model in &self.models {
            match self
                .attempt(model, &messages, &delivery.trace_id, replies)
                .await
            {
                Ok(()) => return Ok(()),
                Err(AttemptError::Bridge(e)) => return Err(e.into()),
                Err(AttemptError::Llm(error)) => {
                    // Once text is in the chat, another model's answer would be spliced onto
                    // it: report the failure instead.
                    let next = !replies.has_streamed() && error.may_try_next_model();
                    tracing::warn!(
                        trace_id = %delivery.trace_id,
                        model = %model,
                        error = %error,
                        trying_next = next,
                        "model call failed"
                    );
                    failure = Some((model, error));
                    if !next {
                        break;
                    }
                }
            }
        }
        let (model, code, reason, detail) = match &failure {
            Some((model, error)) => (
                Some(*model),
                error.code(),
                error.short_reason(),
                error.to_string(),
            ),
            // Config always has a primary model; kept for completeness, not expected.
            None => {
                let reason = "no model is configured".to_string();
                (None, "agent_error", reason.clone(), reason)
            }
        };
        let result = replies.fail(code, &reason).await;
        replies.trace_error("llm", &detail, model).await;
        result.map_err(RespondError::from)
    }
}
