//! Tools mode: a tool-calling loop. Each step asks the model (non-streamed, with the tools on
//! offer); tool calls it makes are run in the container as the tools account, their results
//! go back to the model, and the loop ends when the model answers without calling a tool.
//!
//! Every call and result is also sent to the host as a `tool_call` / `tool_result` reply under
//! the delivery's trace id: the host shows them on the answer's chat message and writes them
//! to the agent's traces. Limits per turn (enforced here, not asked of the model): a number of
//! model steps and a wall time; per call: a time limit and an output cap (see `exec`).

pub mod exec;
pub mod kit;

use std::time::Duration;

use serde_json::{json, Value};
use taos_proto::bridge::UserMessageDelivery;
use tokio::time::Instant;

use crate::config::ToolsConfig;
use crate::framework::{Framework, ReplySink, RespondError};
use crate::llm::{build_messages, Completion, LlmClient, LlmError};

pub use exec::{Sandbox, SetupError};
pub use kit::Toolkit;

/// The error code of a turn stopped by its step or time limit.
pub const TURN_LIMIT: &str = "turn_limit";
/// A tool result sent to the host is kept under this many bytes of JSON (the host refuses a
/// trace event over `[traces] max_event_bytes`, 64 KiB by default). The model saw it whole.
const MAX_EVENT_JSON: usize = 48 * 1024;
/// What the model gets of one `read_trace` page, at most: a page of 1 000 events would fill
/// a small model's context on its own.
const MAX_TRACE_FOR_MODEL: usize = 64 * 1024;

pub struct ToolsMode {
    llm: LlmClient,
    agent: String,
    system_prompt: Option<String>,
    models: Vec<String>,
    kit: Toolkit,
    max_steps: u32,
    turn_time: Duration,
}

impl ToolsMode {
    pub fn new(
        llm: LlmClient,
        agent: &str,
        system_prompt: Option<String>,
        models: Vec<String>,
        config: &ToolsConfig,
    ) -> Result<ToolsMode, SetupError> {
        let sandbox = Sandbox::new(config)?;
        let http = kit::http_client().map_err(|e| SetupError::Read {
            path: "the HTTP client for http_get".into(),
            error: e.to_string(),
        })?;
        tracing::info!(
            account = %sandbox.describe(),
            workdir = %sandbox.workdir().display(),
            max_steps = config.max_steps,
            turn_secs = config.turn_time.as_secs(),
            "tools run as"
        );
        Ok(ToolsMode {
            llm,
            agent: agent.to_string(),
            system_prompt,
            models,
            kit: Toolkit::new(sandbox, http, config.call_timeout, config.call_timeout_max),
            max_steps: config.max_steps,
            turn_time: config.turn_time,
        })
    }

    /// What the model is told about its situation, before the owner's own prompt.
    fn preamble(&self) -> String {
        format!(
            "You are {agent}, an agent with a Linux container of your own. You can act in it \
             with the tools you are given (commands, files, HTTP); you run as an unprivileged \
             user and your workspace is {workdir}. Use the tools to find things out rather than \
             guessing, then answer in plain text. You have at most {steps} steps per message.",
            agent = self.agent,
            workdir = self.kit.sandbox().workdir().display(),
            steps = self.max_steps,
        )
    }

    /// One model step, trying the fallbacks while a model fails in a way another may not.
    async fn step(
        &self,
        messages: &[Value],
        tools: &Value,
        trace_id: &str,
    ) -> Result<Completion, (String, LlmError)> {
        let mut failure = None;
        for model in &self.models {
            match self
                .llm
                .complete_with_tools(model, messages, tools, trace_id)
                .await
            {
                Ok(completion) => return Ok(completion),
                Err(error) => {
                    let next = error.may_try_next_model();
                    tracing::warn!(trace_id, model = %model, error = %error, trying_next = next, "model call failed");
                    failure = Some((model.clone(), error));
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(failure.unwrap_or_else(|| (String::new(), LlmError::Empty)))
    }

    /// Ends the turn as failed by a limit, with the reason in the chat and the traces.
    async fn limit(&self, replies: &ReplySink, reason: &str) -> Result<(), RespondError> {
        let result = replies.fail(TURN_LIMIT, reason).await;
        replies.trace_error("tools", reason, None).await;
        result.map_err(RespondError::from)
    }
}

impl Framework for ToolsMode {
    async fn respond(
        &self,
        delivery: &UserMessageDelivery,
        replies: &ReplySink,
    ) -> Result<(), RespondError> {
        let mut deadline = Instant::now() + self.turn_time;
        // Each tool call's place in the turn: the host knows a call asked again by it.
        let mut call_index: u32 = 0;
        let system = match &self.system_prompt {
            Some(prompt) => format!("{}\n\n{prompt}", self.preamble()),
            None => self.preamble(),
        };
        let mut messages: Vec<Value> = build_messages(Some(&system), &self.agent, delivery)
            .iter()
            .map(|m| json!(m))
            .collect();
        let tools = self.kit.definitions();
        let trace_id = delivery.trace_id.as_str();
        for step in 1..=self.max_steps {
            let left = deadline.saturating_duration_since(Instant::now());
            let completion =
                match tokio::time::timeout(left, self.step(&messages, &tools, trace_id)).await {
                    Err(_) => return self.limit(replies, &self.time_up()).await,
                    Ok(Ok(completion)) => completion,
                    Ok(Err((model, error))) => {
                        let result = replies.fail(error.code(), &error.short_reason()).await;
                        replies
                            .trace_error("llm", &error.to_string(), Some(&model))
                            .await;
                        return result.map_err(RespondError::from);
                    }
                };
            if completion.tool_calls.is_empty() {
                let text = completion.content.unwrap_or_default();
                replies.finish(&text).await?;
                return Ok(());
            }
            tracing::debug!(
                trace_id,
                step,
                calls = completion.tool_calls.len(),
                "tool step"
            );
            if let Some(text) = &completion.content {
                // Said along with tool calls: thinking aloud, kept in the traces.
                replies.reasoning(text).await?;
            }
            messages.push(json!({
                "role": "assistant",
                "content": completion.content,
                "tool_calls": completion.tool_calls.iter().map(|c| json!({
                    "id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<_>>(),
            }));
            for call in &completion.tool_calls {
                let args = kit::parse_arguments(&call.arguments);
                let shown_args = args.as_ref().map_or_else(|e| e.clone(), Value::clone);
                replies
                    .tool_call(&call.id, &call.name, fit(shown_args))
                    .await?;
                let index = call_index;
                call_index += 1;
                let outcome = match args {
                    Err(_) => kit::Outcome::failed("the arguments must be a JSON object"),
                    Ok(args) => {
                        // Time spent waiting for a person is not the turn's own.
                        let asked = Instant::now();
                        let verdict = self
                            .approval(replies, &call.id, &call.name, &args, index)
                            .await?;
                        deadline += asked.elapsed();
                        let left = deadline.saturating_duration_since(Instant::now());
                        match verdict {
                            Err(outcome) => outcome,
                            Ok(()) if left.is_zero() => {
                                kit::Outcome::failed("the turn's time is up")
                            }
                            Ok(()) if call.name == kit::READ_TRACE => {
                                read_trace(replies, &args).await
                            }
                            Ok(()) => self.kit.call(&call.name, &args, left).await,
                        }
                    }
                };
                replies
                    .tool_result(&call.id, &call.name, fit(outcome.result), outcome.success)
                    .await?;
                messages.push(json!({
                    "role": "tool", "tool_call_id": call.id, "content": outcome.for_model,
                }));
            }
            if Instant::now() >= deadline {
                return self.limit(replies, &self.time_up()).await;
            }
        }
        let reason = format!(
            "stopped after {} steps without a final answer (the step limit per message)",
            self.max_steps
        );
        self.limit(replies, &reason).await
    }
}

impl ToolsMode {
    /// Asks the host whether the call may run. `Ok(Err(outcome))`: it may not, and `outcome`
    /// tells the model (and the chat) why. `Err`: the host refused the agent itself.
    async fn approval(
        &self,
        replies: &ReplySink,
        call_id: &str,
        tool: &str,
        args: &Value,
        index: u32,
    ) -> Result<Result<(), kit::Outcome>, RespondError> {
        match replies.approval(call_id, tool, args, index).await {
            Ok(answer) if answer.state.allows() => Ok(Ok(())),
            Ok(answer) => {
                let reason = answer
                    .reason
                    .unwrap_or_else(|| format!("the call was {}", answer.state));
                tracing::info!(call_id, tool, state = %answer.state, reason = %reason, "tool call not approved");
                Ok(Err(kit::Outcome::not_run(answer.state.as_str(), &reason)))
            }
            // The host refused this request (too large, malformed): the call can't be asked
            // about, so it doesn't run.
            Err(crate::bridge::BridgeError::Status { status, message }) if status < 500 => {
                let reason = format!("the host refused to consider it: {message}");
                Ok(Err(kit::Outcome::not_run("refused", &reason)))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn time_up(&self) -> String {
        format!(
            "stopped after {} s without a final answer (the time limit per message)",
            self.turn_time.as_secs()
        )
    }
}

/// The `read_trace` tool: a page of the agent's own trace, read from the host with the
/// sidecar's token. Only the filters below are passed on, as strings the host validates.
async fn read_trace(replies: &ReplySink, args: &Value) -> kit::Outcome {
    let mut query: Vec<(&str, String)> = Vec::new();
    for name in ["since", "until", "kind", "cursor"] {
        match &args[name] {
            Value::Null => {}
            Value::String(value) => query.push((name, value.clone())),
            _ => return kit::Outcome::failed(format!("`{name}` is a string")),
        }
    }
    match &args["limit"] {
        Value::Null => {}
        value => match value.as_u64() {
            Some(limit) => query.push(("limit", limit.to_string())),
            None => return kit::Outcome::failed("`limit` is a whole number from 1 to 1000"),
        },
    }
    match replies.own_trace(&query).await {
        Ok(page) => {
            let mut outcome = kit::Outcome::ok(page);
            if outcome.for_model.len() > MAX_TRACE_FOR_MODEL {
                let mut end = MAX_TRACE_FOR_MODEL;
                while !outcome.for_model.is_char_boundary(end) {
                    end -= 1;
                }
                outcome.for_model.truncate(end);
                outcome.for_model.push_str(
                    "\n[... cut: ask for fewer events with `limit`, or a narrower `since`/`kind` ...]",
                );
            }
            outcome
        }
        Err(e) => kit::Outcome::failed(format!("the host did not give the trace: {e}")),
    }
}

/// Keeps a value sent to the host (also by openclaw mode) under [`MAX_EVENT_JSON`]: long strings in it are cut (more
/// each round) until it fits, saying so in the text.
pub fn fit(mut value: Value) -> Value {
    let mut max_chars = 16 * 1024;
    while serde_json::to_string(&value).map_or(0, |s| s.len()) > MAX_EVENT_JSON && max_chars > 64 {
        cut_strings(&mut value, max_chars);
        max_chars /= 2;
    }
    value
}

fn cut_strings(value: &mut Value, max_chars: usize) {
    match value {
        Value::String(text) if text.chars().count() > max_chars => {
            let kept: String = text.chars().take(max_chars).collect();
            *text = format!("{kept}\n[... cut to fit the chat; the model saw it whole ...]");
        }
        Value::Array(items) => items.iter_mut().for_each(|v| cut_strings(v, max_chars)),
        Value::Object(map) => map.values_mut().for_each(|v| cut_strings(v, max_chars)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_results_are_cut_to_fit_a_trace_event() {
        let small = json!({"stdout": "ok"});
        assert_eq!(fit(small.clone()), small);
        // Escaped control characters make JSON six times longer than the text.
        let big = json!({"stdout": "\u{1}".repeat(40_000), "exit_code": 0});
        let fitted = fit(big);
        assert!(serde_json::to_string(&fitted).unwrap().len() <= MAX_EVENT_JSON);
        assert!(fitted["stdout"]
            .as_str()
            .unwrap()
            .contains("cut to fit the chat"));
        assert_eq!(fitted["exit_code"], 0);
    }
}
