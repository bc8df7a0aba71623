//! The host's LLM gateway, spoken to as an OpenAI-compatible chat completions API with
//! streaming.

use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use taos_proto::bridge::UserMessageDelivery;
use taos_proto::chat::AuthorType;

use crate::config::Secret;
use crate::http::{shorten, with_causes, ErrorInfo};
use crate::sse::SseParser;

/// The gateway's error code when the agent's spending limit is used up. Every model draws on
/// the same budget, so trying another one is pointless.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";

/// Tells the gateway which chat message a call answers.
pub const TRACE_ID_HEADER: &str = "X-Taos-Trace-Id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// The conversation for one delivery: the system prompt, the channel's recent messages, then
/// the message to answer. This agent's own earlier messages are `assistant` turns; everyone
/// else's are `user` turns prefixed with the author, since one `user` role stands for many
/// people and agents in a group.
pub fn build_messages(
    system_prompt: Option<&str>,
    agent: &str,
    delivery: &UserMessageDelivery,
) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(delivery.context.len() + 2);
    if let Some(prompt) = system_prompt {
        messages.push(ChatMessage {
            role: Role::System,
            content: prompt.to_string(),
        });
    }
    for line in &delivery.context {
        // Empty lines are placeholders of replies still streaming; they carry nothing.
        if line.content.trim().is_empty() {
            continue;
        }
        let own = line.author_type == AuthorType::Agent && line.author_id == agent;
        messages.push(if own {
            ChatMessage {
                role: Role::Assistant,
                content: line.content.clone(),
            }
        } else {
            ChatMessage {
                role: Role::User,
                content: format!("{}: {}", line.author_id, line.content),
            }
        });
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: delivery.text.clone(),
    });
    messages
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("could not reach the LLM gateway: {0}")]
    Transport(String),
    #[error("the LLM gateway answered HTTP {status}: {}", .info.describe())]
    Status { status: u16, info: ErrorInfo },
    #[error("the model stream failed: {}", .0.describe())]
    Stream(ErrorInfo),
    #[error("the model returned no text")]
    Empty,
}

impl LlmError {
    pub fn is_budget_exceeded(&self) -> bool {
        let info = match self {
            LlmError::Status { info, .. } | LlmError::Stream(info) => info,
            LlmError::Transport(_) | LlmError::Empty => return false,
        };
        info.is(BUDGET_EXCEEDED)
    }

    /// Whether another model might succeed where this one failed (assuming nothing was shown
    /// to anyone yet). A 403 may be "this model is not allowed for you", which another model
    /// can fix. An exhausted budget or a rejected key applies to every model.
    pub fn may_try_next_model(&self) -> bool {
        if self.is_budget_exceeded() {
            return false;
        }
        match self {
            LlmError::Status { status, .. } => *status != 401,
            LlmError::Transport(_) | LlmError::Stream(_) | LlmError::Empty => true,
        }
    }

    /// The error reply's `error_code` (see `taos_proto::bridge::ERROR_CODES`): the gateway's
    /// own error type when it named one, else what kind of thing broke.
    pub fn code(&self) -> &'static str {
        const GATEWAY: [&str; 3] = [BUDGET_EXCEEDED, "model_not_allowed", "llm_unavailable"];
        match self {
            LlmError::Status { status, info } => {
                if let Some(known) = GATEWAY.iter().find(|name| info.is(name)) {
                    return known;
                }
                // The gateway's own refusal of the key has this type; a provider's 401 passed
                // on by LiteLLM has another (`auth_error`), and is the provider's key problem.
                if *status == 401 && info.kind.as_deref() == Some("invalid_api_key") {
                    "llm_key_rejected"
                } else {
                    "provider_error"
                }
            }
            LlmError::Stream(info) => GATEWAY
                .iter()
                .find(|name| info.is(name))
                .copied()
                .unwrap_or("provider_error"),
            LlmError::Transport(_) => "gateway_unreachable",
            LlmError::Empty => "empty_reply",
        }
    }

    /// A one-line reason for the error reply people see in the chat.
    pub fn short_reason(&self) -> String {
        if self.is_budget_exceeded() {
            return "the agent's LLM budget is used up".to_string();
        }
        match self {
            LlmError::Transport(_) => "the LLM gateway could not be reached".to_string(),
            LlmError::Status { status, info } => shorten(&format!(
                "the model call failed (HTTP {status}: {})",
                info.describe()
            )),
            LlmError::Stream(info) => {
                shorten(&format!("the model stream failed: {}", info.describe()))
            }
            LlmError::Empty => "the model returned no text".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
}

impl LlmClient {
    pub fn new(http: reqwest::Client, base_url: &str, api_key: Secret) -> Self {
        LlmClient {
            http,
            base_url: base_url.to_string(),
            api_key,
        }
    }

    /// Starts a streamed completion. An error here means no text was produced.
    ///
    /// `trace_id` is the delivery's: the gateway files its `llm_call` trace under it, next
    /// to the host's `message_in` and `message_out` for the same message.
    pub async fn stream_chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        trace_id: &str,
    ) -> Result<ChatStream, LlmError> {
        let response = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.api_key.expose()))
            .header(ACCEPT, "text/event-stream")
            .header(TRACE_ID_HEADER, trace_id)
            .json(&ChatRequest {
                model,
                messages,
                stream: true,
            })
            .send()
            .await
            .map_err(|e| LlmError::Transport(with_causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LlmError::Status {
                status: status.as_u16(),
                info: ErrorInfo::from_body(&body),
            });
        }
        Ok(ChatStream {
            response,
            parser: SseParser::new(),
            ready: std::collections::VecDeque::new(),
            finished: false,
            saw_finish_reason: false,
        })
    }
}

/// One tool call the model asked for. `arguments` is the model's JSON text, unparsed: a model
/// may send something that is not JSON, and that is the tool's error to report, not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A non-streamed answer: text, tool calls, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
struct ToolsRequest<'a> {
    model: &'a str,
    messages: &'a [serde_json::Value],
    tools: &'a serde_json::Value,
    stream: bool,
}

impl LlmClient {
    /// One non-streamed completion offering `tools` (OpenAI's function-calling shape), under the
    /// delivery's `trace_id` like [`LlmClient::stream_chat`]. Messages are JSON because a
    /// tool conversation has shapes plain chat has not (`tool_calls`, `tool` results).
    pub async fn complete_with_tools(
        &self,
        model: &str,
        messages: &[serde_json::Value],
        tools: &serde_json::Value,
        trace_id: &str,
    ) -> Result<Completion, LlmError> {
        let response = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.api_key.expose()))
            .header(TRACE_ID_HEADER, trace_id)
            .json(&ToolsRequest {
                model,
                messages,
                tools,
                stream: false,
            })
            .send()
            .await
            .map_err(|e| LlmError::Transport(with_causes(&e)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| LlmError::Transport(with_causes(&e)))?;
        if !status.is_success() {
            return Err(LlmError::Status {
                status: status.as_u16(),
                info: ErrorInfo::from_body(&body),
            });
        }
        parse_completion(&body)
    }
}

/// Reads a non-streamed chat completion: the first choice's text and tool calls.
pub fn parse_completion(body: &str) -> Result<Completion, LlmError> {
    let bad = |why: &str| LlmError::Stream(ErrorInfo::new(None, None, why));
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(&format!("the answer is not JSON: {e}")))?;
    if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
        return Err(LlmError::Stream(ErrorInfo::from_json(error)));
    }
    let message = &json["choices"][0]["message"];
    if !message.is_object() {
        return Err(bad("the answer has no message"));
    }
    let content = message["content"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string);
    let mut tool_calls = Vec::new();
    for (i, call) in message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = call["function"]["name"]
            .as_str()
            .ok_or_else(|| bad("a tool call has no function name"))?;
        let arguments = match &call["function"]["arguments"] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => "{}".to_string(),
            other => other.to_string(),
        };
        tool_calls.push(ToolCall {
            // Some servers leave the id out; the conversation needs one to pair the result.
            id: call["id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("call_{i}"), str::to_string),
            name: name.to_string(),
            arguments,
        });
    }
    if content.is_none() && tool_calls.is_empty() {
        return Err(LlmError::Empty);
    }
    Ok(Completion {
        content,
        tool_calls,
    })
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

/// The text pieces of one streamed completion.
pub struct ChatStream {
    response: reqwest::Response,
    parser: SseParser,
    /// Pieces parsed but not yet returned (one network chunk may hold several).
    ready: std::collections::VecDeque<String>,
    finished: bool,
    saw_finish_reason: bool,
}

impl ChatStream {
    /// The next non-empty piece of text, or `None` once the model is done.
    ///
    /// Cancel-safe: all state lives in `self`, and reqwest's `chunk()` loses nothing when its
    /// future is dropped, so callers may race this against a timer.
    pub async fn next_piece(&mut self) -> Result<Option<String>, LlmError> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                return Ok(Some(piece));
            }
            if self.finished {
                return Ok(None);
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| LlmError::Transport(with_causes(&e)))?;
            let Some(chunk) = chunk else {
                // Some servers stop after the last chunk without `[DONE]`; a finish reason
                // says the answer is complete all the same. Without either it was cut off.
                if self.saw_finish_reason {
                    self.finished = true;
                    continue;
                }
                return Err(LlmError::Stream(ErrorInfo::new(
                    None,
                    None,
                    "the stream ended before the model finished",
                )));
            };
            let events = self
                .parser
                .push(&chunk)
                .map_err(|e| LlmError::Stream(ErrorInfo::new(None, None, &e.to_string())))?;
            for event in events {
                self.take_event(&event.data)?;
                if self.finished {
                    break;
                }
            }
        }
    }

    fn take_event(&mut self, data: &str) -> Result<(), LlmError> {
        if data.trim() == "[DONE]" {
            self.finished = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            LlmError::Stream(ErrorInfo::new(
                None,
                None,
                &format!("a stream chunk is not valid JSON: {e}"),
            ))
        })?;
        if let Some(error) = chunk.error {
            return Err(LlmError::Stream(ErrorInfo::from_json(&error)));
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if choice.finish_reason.is_some() {
                self.saw_finish_reason = true;
            }
            if let Some(text) = choice.delta.and_then(|d| d.content) {
                if !text.is_empty() {
                    self.ready.push_back(text);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taos_proto::bridge::ContextMessage;

    fn delivery(context: &[ContextMessage]) -> UserMessageDelivery {
        serde_json::from_value(serde_json::json!({
            "id": "m1", "trace_id": "m1", "delivery_seq": 1, "channel_id": "c1",
            "from": "user:ana", "text": "what now?", "created_at": "2026-01-01T00:00:00Z",
            "hops_since_user": 1, "force_respond": true, "context": context, "thread_id": null,
        }))
        .unwrap()
    }

    fn line(author_id: &str, author_type: AuthorType, content: &str) -> ContextMessage {
        ContextMessage {
            author_id: author_id.to_string(),
            author_type,
            content: content.to_string(),
        }
    }

    #[test]
    fn context_maps_to_roles() {
        let d = delivery(&[
            line("user:ana", AuthorType::User, "hi all"),
            line("helper", AuthorType::Agent, "hello Ana"),
            line("other-bot", AuthorType::Agent, "hi from me"),
            line("helper", AuthorType::Agent, ""),
            line("helper", AuthorType::User, "a user named like the agent"),
        ]);
        let messages = build_messages(Some("Be brief."), "helper", &d);
        let got: Vec<(Role, &str)> = messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Role::System, "Be brief."),
                (Role::User, "user:ana: hi all"),
                (Role::Assistant, "hello Ana"),
                (Role::User, "other-bot: hi from me"),
                (Role::User, "helper: a user named like the agent"),
                (Role::User, "what now?"),
            ]
        );
        let without_prompt = build_messages(None, "helper", &delivery(&[]));
        assert_eq!(
            without_prompt,
            vec![ChatMessage {
                role: Role::User,
                content: "what now?".to_string()
            }]
        );
    }

    #[test]
    fn completions_give_text_and_tool_calls() {
        let both = parse_completion(
            r#"{"choices":[{"message":{"role":"assistant","content":"Looking.","tool_calls":[
                {"id":"c1","type":"function","function":{"name":"shell","arguments":"{\"command\":\"ls\"}"}},
                {"type":"function","function":{"name":"list_dir","arguments":{"path":"/"}}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(both.content.as_deref(), Some("Looking."));
        assert_eq!(
            both.tool_calls,
            vec![
                ToolCall {
                    id: "c1".into(),
                    name: "shell".into(),
                    arguments: r#"{"command":"ls"}"#.into()
                },
                ToolCall {
                    id: "call_1".into(),
                    name: "list_dir".into(),
                    arguments: r#"{"path":"/"}"#.into()
                },
            ]
        );
        let empty = parse_completion(r#"{"choices":[{"message":{"content":"  "}}]}"#);
        assert!(matches!(empty, Err(LlmError::Empty)));
        let error = parse_completion(r#"{"error":{"message":"boom","type":"server_error"}}"#);
        assert!(matches!(error, Err(LlmError::Stream(_))));
        assert!(parse_completion("not json").is_err());
    }

    #[test]
    fn which_errors_move_on_to_the_next_model() {
        let status = |status: u16, code: Option<&str>| LlmError::Status {
            status,
            // The gateway's shape: the name is the `type`, `code` is the status.
            info: ErrorInfo::new(Some(status.to_string()), code.map(str::to_string), ""),
        };
        assert!(status(500, None).may_try_next_model());
        assert!(status(503, None).may_try_next_model());
        assert!(status(429, Some("rate_limited")).may_try_next_model());
        assert!(status(403, Some("forbidden")).may_try_next_model());
        assert!(!status(429, Some(BUDGET_EXCEEDED)).may_try_next_model());
        assert!(!status(401, None).may_try_next_model());
        assert!(LlmError::Transport("refused".into()).may_try_next_model());
        assert_eq!(
            status(429, Some(BUDGET_EXCEEDED)).short_reason(),
            "the agent's LLM budget is used up"
        );
    }

    #[test]
    fn error_codes_name_what_broke() {
        // The gateway's shape: the name is the `type`, `code` is the status.
        let gateway = |status: u16, kind: &str| LlmError::Status {
            status,
            info: ErrorInfo::new(Some(status.to_string()), Some(kind.to_string()), ""),
        };
        assert_eq!(gateway(429, BUDGET_EXCEEDED).code(), "budget_exceeded");
        assert_eq!(
            gateway(403, "model_not_allowed").code(),
            "model_not_allowed"
        );
        assert_eq!(gateway(503, "llm_unavailable").code(), "llm_unavailable");
        assert_eq!(gateway(401, "invalid_api_key").code(), "llm_key_rejected");
        assert_eq!(gateway(401, "auth_error").code(), "provider_error");
        assert_eq!(
            gateway(400, "invalid_request_error").code(),
            "provider_error"
        );
        assert_eq!(
            LlmError::Stream(ErrorInfo::new(None, None, "cut")).code(),
            "provider_error"
        );
        assert_eq!(
            LlmError::Transport("refused".into()).code(),
            "gateway_unreachable"
        );
        assert_eq!(LlmError::Empty.code(), "empty_reply");
        for e in [gateway(429, BUDGET_EXCEEDED), LlmError::Empty] {
            assert!(taos_proto::bridge::ERROR_CODES.contains(&e.code()));
        }
    }
}
