//! An incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules), used by the
//! sidecar for the bridge stream and the model's streamed completion, and by the app for
//! `/api/events`. Bytes go in as they arrive;
//! complete events come out.

/// Lines or events larger than this are refused: a peer that never ends a line must not be
/// able to grow our memory without bound. Generous, since a delivery carries its context.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The stream's last event id when this event was dispatched (ids persist across events).
    pub id: Option<String>,
    /// `message` when the event had no `event:` line.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event stream line or event is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it belongs to the same line ending
    /// (it may arrive in the next chunk).
    after_cr: bool,
    /// The first line may start with a byte order mark, which is not part of the field name.
    started: bool,
    last_id: Option<String>,
    event_type: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds one chunk and returns the events it completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events)?;
                }
                b'\n' => self.end_line(&mut events)?,
                _ => {
                    if self.line.len() >= MAX_EVENT_BYTES {
                        return Err(SseError::TooLarge);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let raw = std::mem::take(&mut self.line);
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            self.dispatch(events);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // a comment: the host's keep-alives
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event_type = value.to_string(),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // The spec ignores ids containing NUL; an empty id resets the last id.
            "id" if !value.contains('\0') => {
                self.last_id = (!value.is_empty()).then(|| value.to_string());
            }
            // `retry:` is ignored on purpose: reconnect timing is our own backoff's job.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event_type = std::mem::take(&mut self.event_type);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return; // no data: nothing to dispatch, per the spec (the id still counts)
        }
        events.push(SseEvent {
            id: self.last_id.clone(),
            event: if event_type.is_empty() {
                "message".to_string()
            } else {
                event_type
            },
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.push(chunk).unwrap());
        }
        events
    }

    fn event(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.to_string(),
        }
    }

    #[test]
    fn delivery_shaped_event() {
        let events = parse_all(&[b"id: 7\nevent: user_message\ndata: {\"a\":1}\n\n"]);
        assert_eq!(events, vec![event(Some("7"), "user_message", "{\"a\":1}")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        let events = parse_all(&[b"data: first\ndata:second\ndata:  third\ndata\n\n"]);
        assert_eq!(
            events,
            vec![event(None, "message", "first\nsecond\n third\n")]
        );
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let events = parse_all(&[b": keep-alive\n\n:\nretry: 10\nfoo: bar\ndata: x\n\n"]);
        assert_eq!(events, vec![event(None, "message", "x")]);
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let events =
            parse_all(&[b"id: 1\r\nevent: a\r\ndata: one\r\n\r\nid: 2\revent: b\rdata: two\r\r"]);
        assert_eq!(
            events,
            vec![event(Some("1"), "a", "one"), event(Some("2"), "b", "two")]
        );
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let events = parse_all(&[b"data: one\r", b"\n", b"\r", b"\ndata: two\r\n\r\n"]);
        assert_eq!(
            events,
            vec![event(None, "message", "one"), event(None, "message", "two")]
        );
    }

    #[test]
    fn events_split_at_every_byte() {
        let text = "id: 42\nevent: user_message\ndata: {\"text\":\"héllo\"}\n\n";
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        let events = parse_all(&chunks);
        assert_eq!(
            events,
            vec![event(Some("42"), "user_message", "{\"text\":\"héllo\"}")]
        );
    }

    #[test]
    fn id_persists_and_empty_data_blocks_do_not_dispatch() {
        let events = parse_all(&[b"id: 3\n\ndata: a\n\nid\ndata: b\n\nevent: x\n\n"]);
        assert_eq!(
            events,
            vec![
                event(Some("3"), "message", "a"),
                event(None, "message", "b")
            ]
        );
    }

    #[test]
    fn incomplete_event_is_held_back() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"data: part").unwrap().is_empty());
        assert!(parser.push(b"ial\n").unwrap().is_empty());
        assert_eq!(
            parser.push(b"\n").unwrap(),
            vec![event(None, "message", "partial")]
        );
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let events = parse_all(&["\u{feff}data: x\n\n".as_bytes()]);
        assert_eq!(events, vec![event(None, "message", "x")]);
    }

    #[test]
    fn openai_done_marker_is_plain_data() {
        let events = parse_all(&[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"]);
        assert_eq!(events[1].data, "[DONE]");
    }
}
