//! Pure translations between ACP's messages and what the host shows: tool names the approval
//! rules can key on, a tool call's arguments and result in the `tools` framework's shape, the
//! permission option an answer picks, and text out of content blocks. Everything here reads
//! what the agent sent, so it is hostile input: lengths are bounded, nothing is trusted.

use agent_client_protocol::v1::schema::{
    ContentBlock, PermissionOption, PermissionOptionKind, ToolCallContent, ToolCallStatus, ToolKind,
};
use serde_json::{json, Value};

/// The host's limit on a tool call id (`MAX_CALL_ID_CHARS`).
const MAX_CALL_ID_CHARS: usize = 200;
/// The host's tool names: 1-64 of a-z, 0-9, `_` and `-`.
const MAX_TOOL_CHARS: usize = 64;
/// A tool call's title, as shown.
const MAX_TITLE_CHARS: usize = 500;

/// The name a tool call goes by on the host (its approval rules and overrides key on it): the
/// agent's own tool name when it gives one, else the ACP kind (`execute`, `edit`, `read`, …),
/// lowercased with anything else turned into `_`.
pub fn tool_name(name: Option<&str>, kind: ToolKind) -> String {
    let raw = name
        .filter(|n| !n.trim().is_empty())
        .map_or_else(|| kind_word(kind).to_string(), str::to_string);
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TOOL_CHARS)
        .collect();
    if cleaned.is_empty() {
        "tool".to_string()
    } else {
        cleaned
    }
}

/// ACP's word for a tool kind.
pub fn kind_word(kind: ToolKind) -> &'static str {
    match kind {
        ToolKind::Read => "read",
        ToolKind::Edit => "edit",
        ToolKind::Delete => "delete",
        ToolKind::Move => "move",
        ToolKind::Search => "search",
        ToolKind::Execute => "execute",
        ToolKind::Think => "think",
        ToolKind::Fetch => "fetch",
        ToolKind::SwitchMode => "switch_mode",
        _ => "other",
    }
}

/// The call id as the host takes it (at most 200 characters; never empty).
pub fn call_id(id: &str) -> String {
    let cut: String = id.chars().take(MAX_CALL_ID_CHARS).collect();
    if cut.is_empty() {
        "acp-call".to_string()
    } else {
        cut
    }
}

/// A tool call's arguments as shown and asked about: what the agent said it does (`title`),
/// its kind, and its raw input when it gave one. Always a JSON object.
pub fn tool_args(title: &str, kind: ToolKind, raw_input: Option<&Value>) -> Value {
    let title: String = title.chars().take(MAX_TITLE_CHARS).collect();
    let mut args = json!({ "title": title, "kind": kind_word(kind) });
    if let Some(input) = raw_input {
        args["input"] = input.clone();
    }
    args
}

/// Whether a status ends the call, and if so whether it went well.
pub fn settled(status: ToolCallStatus) -> Option<bool> {
    match status {
        ToolCallStatus::Completed => Some(true),
        ToolCallStatus::Failed => Some(false),
        _ => None,
    }
}

/// A finished call's result as shown: its raw output, and the text of its content.
pub fn tool_result(raw_output: Option<&Value>, content: &[ToolCallContent]) -> Value {
    let mut result = json!({});
    if let Some(output) = raw_output {
        result["output"] = output.clone();
    }
    let text = tool_content_text(content);
    if !text.is_empty() {
        result["content"] = Value::String(text);
    }
    result
}

/// The text of a tool call's content: text blocks as they are, diffs and terminals named.
pub fn tool_content_text(content: &[ToolCallContent]) -> String {
    let parts: Vec<String> = content
        .iter()
        .filter_map(|c| match c {
            ToolCallContent::Content(c) => block_text(&c.content),
            ToolCallContent::Diff(d) => Some(format!("[changed {}]", d.path.display())),
            ToolCallContent::Terminal(t) => Some(format!("[terminal {}]", t.terminal_id)),
            _ => None,
        })
        .collect();
    parts.join("\n")
}

/// The text a content block carries for the chat: text as is, a link as `[name](uri)`;
/// images, audio and embedded resources have no text to show.
pub fn block_text(block: &ContentBlock) -> Option<String> {
    match block {
        ContentBlock::Text(t) => Some(t.text.clone()),
        ContentBlock::ResourceLink(link) => Some(format!("[{}]({})", link.name, link.uri)),
        _ => None,
    }
}

/// Which option answers a permission request. `allowed`: whether the host let the call run;
/// `asked_a_person`: whether that came from a person's approval (policy `ask`) rather than the
/// `auto` policy. Allowing picks the agent's allow-once option; allow-always only under `auto`
/// (under `ask` it would stop the agent from asking next time, around the owner's rule).
/// Refusing picks reject-once, else reject-always. `None`: no option fits; the request is
/// answered as cancelled.
pub fn pick_option(
    options: &[PermissionOption],
    allowed: bool,
    asked_a_person: bool,
) -> Option<&PermissionOption> {
    let kinds: &[PermissionOptionKind] = match (allowed, asked_a_person) {
        (true, true) => &[PermissionOptionKind::AllowOnce],
        (true, false) => &[
            PermissionOptionKind::AllowOnce,
            PermissionOptionKind::AllowAlways,
        ],
        (false, _) => &[
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ],
    };
    kinds
        .iter()
        .find_map(|kind| options.iter().find(|o| o.kind == *kind))
}

/// `text` cut to at most `max` characters.
pub fn cut_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client_protocol::v1::schema::{Content, Diff, TextContent};

    #[test]
    fn tool_names_are_ones_the_host_accepts() {
        assert_eq!(tool_name(Some("bash"), ToolKind::Execute), "bash");
        assert_eq!(tool_name(Some("Read File!"), ToolKind::Read), "read_file_");
        assert_eq!(tool_name(None, ToolKind::Execute), "execute");
        assert_eq!(tool_name(Some("  "), ToolKind::SwitchMode), "switch_mode");
        assert_eq!(tool_name(Some("é"), ToolKind::Other), "_");
        assert_eq!(tool_name(Some(&"x".repeat(100)), ToolKind::Other).len(), 64);
        assert_eq!(call_id(""), "acp-call");
        assert_eq!(call_id(&"i".repeat(300)).chars().count(), 200);
    }

    #[test]
    fn calls_and_results_take_the_tools_frameworks_shape() {
        let args = tool_args(
            "List files",
            ToolKind::Execute,
            Some(&json!({"command": "ls"})),
        );
        assert_eq!(
            args,
            json!({"title": "List files", "kind": "execute", "input": {"command": "ls"}})
        );
        assert_eq!(
            tool_args("t", ToolKind::Other, None),
            json!({"title": "t", "kind": "other"})
        );
        let content = vec![
            ToolCallContent::Content(Content::new(ContentBlock::Text(TextContent::new("a\nb")))),
            ToolCallContent::Diff(Diff::new("/w/x.txt", "new")),
        ];
        assert_eq!(
            tool_result(Some(&json!({"exit": 0})), &content),
            json!({"output": {"exit": 0}, "content": "a\nb\n[changed /w/x.txt]"})
        );
        assert_eq!(tool_result(None, &[]), json!({}));
        assert_eq!(settled(ToolCallStatus::Completed), Some(true));
        assert_eq!(settled(ToolCallStatus::Failed), Some(false));
        assert_eq!(settled(ToolCallStatus::InProgress), None);
    }

    #[test]
    fn permission_answers_pick_the_narrowest_fitting_option() {
        let option = |id: &str, kind| PermissionOption::new(id.to_string(), id.to_string(), kind);
        let all = vec![
            option("always", PermissionOptionKind::AllowAlways),
            option("once", PermissionOptionKind::AllowOnce),
            option("no", PermissionOptionKind::RejectOnce),
            option("never", PermissionOptionKind::RejectAlways),
        ];
        let picked = |options: &[PermissionOption], allowed, person| {
            pick_option(options, allowed, person).map(|o| o.option_id.to_string())
        };
        assert_eq!(picked(&all, true, true).as_deref(), Some("once"));
        assert_eq!(picked(&all, true, false).as_deref(), Some("once"));
        assert_eq!(picked(&all, false, true).as_deref(), Some("no"));
        let no_once = vec![
            option("always", PermissionOptionKind::AllowAlways),
            option("never", PermissionOptionKind::RejectAlways),
        ];
        assert_eq!(picked(&no_once, true, false).as_deref(), Some("always"));
        // A person's one approval never becomes a standing one.
        assert_eq!(picked(&no_once, true, true), None);
        assert_eq!(picked(&no_once, false, false).as_deref(), Some("never"));
        assert_eq!(picked(&[], false, false), None);
    }

    #[test]
    fn text_is_cut_on_character_boundaries() {
        assert_eq!(cut_chars("héllo", 2), "hé");
        assert_eq!(cut_chars("hi", 5), "hi");
    }
}
