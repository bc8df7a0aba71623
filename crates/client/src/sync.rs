//! How one chat event changes a cached message. Pure, so the rules are tested on their own:
//! a message's full state wins over anything older (a final reply replaces its streaming
//! placeholder), edits and deletes apply only if newer than what is cached, deltas grow a
//! streaming message, and nothing ever goes backwards in `seq`.

use taos_proto::chat::{Message, MessageState, ServerEvent};

/// The message after `event`, or `None` if the event doesn't change this cache (unknown
/// message, older than what we have, or not a message event).
pub fn merge(existing: Option<&Message>, event: &ServerEvent) -> Option<Message> {
    match event {
        ServerEvent::Message { message, .. } => match existing {
            Some(old) if old.seq > message.seq => None,
            _ => Some(message.clone()),
        },
        ServerEvent::MessageEdit {
            seq,
            content,
            edited_at,
            ..
        } => {
            let old = existing.filter(|m| m.seq < *seq && m.deleted_at.is_none())?;
            Some(Message {
                content: content.clone(),
                edited_at: Some(*edited_at),
                seq: *seq,
                ..old.clone()
            })
        }
        ServerEvent::MessageState { seq, state, .. } => {
            let old = existing.filter(|m| m.seq < *seq)?;
            Some(Message {
                state: *state,
                seq: *seq,
                ..old.clone()
            })
        }
        ServerEvent::MessageDelete {
            seq, deleted_at, ..
        } => {
            let old = existing.filter(|m| m.seq < *seq)?;
            Some(Message {
                content: String::new(),
                deleted_at: Some(*deleted_at),
                seq: *seq,
                ..old.clone()
            })
        }
        ServerEvent::MessageDelta { delta, .. } => {
            let old = existing.filter(|m| m.state == MessageState::Streaming)?;
            Some(Message {
                content: format!("{}{delta}", old.content),
                ..old.clone()
            })
        }
        _ => None,
    }
}

/// The message id an event is about.
pub fn message_id(event: &ServerEvent) -> Option<&str> {
    match event {
        ServerEvent::Message { message, .. } => Some(&message.id),
        ServerEvent::MessageEdit { message_id, .. }
        | ServerEvent::MessageState { message_id, .. }
        | ServerEvent::MessageDelete { message_id, .. }
        | ServerEvent::MessageDelta { message_id, .. } => Some(message_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taos_proto::chat::AuthorType;

    fn message(seq: i64, content: &str, state: MessageState) -> Message {
        Message {
            id: "m1".into(),
            channel_id: "c1".into(),
            seq,
            author_id: "helper".into(),
            author_type: AuthorType::Agent,
            content: content.into(),
            content_type: "text/markdown".into(),
            thread_id: None,
            state,
            client_id: None,
            metadata: serde_json::json!({}),
            created_at: "2026-11-27T10:00:00Z".parse().unwrap(),
            edited_at: None,
            deleted_at: None,
        }
    }

    fn full(m: &Message) -> ServerEvent {
        ServerEvent::Message {
            channel_id: "c1".into(),
            seq: m.seq,
            message: m.clone(),
        }
    }

    #[test]
    fn a_final_reply_replaces_its_streaming_placeholder() {
        let placeholder = message(3, "", MessageState::Streaming);
        let grown = merge(
            Some(&placeholder),
            &ServerEvent::MessageDelta {
                channel_id: "c1".into(),
                message_id: "m1".into(),
                delta: "Hel".into(),
            },
        )
        .unwrap();
        assert_eq!(grown.content, "Hel");
        let last = message(5, "Hello!", MessageState::Complete);
        let merged = merge(Some(&grown), &full(&last)).unwrap();
        assert_eq!(merged, last);
        // A late delta after completion changes nothing.
        assert!(merge(
            Some(&merged),
            &ServerEvent::MessageDelta {
                channel_id: "c1".into(),
                message_id: "m1".into(),
                delta: "x".into()
            }
        )
        .is_none());
    }

    #[test]
    fn edits_and_deletes_apply_only_forwards() {
        let m = message(4, "first", MessageState::Complete);
        let edit = |seq| ServerEvent::MessageEdit {
            channel_id: "c1".into(),
            seq,
            message_id: "m1".into(),
            content: "second".into(),
            edited_at: "2026-11-27T10:01:00Z".parse().unwrap(),
        };
        assert!(merge(Some(&m), &edit(4)).is_none(), "not newer");
        let edited = merge(Some(&m), &edit(6)).unwrap();
        assert_eq!((edited.content.as_str(), edited.seq), ("second", 6));
        assert!(edited.edited_at.is_some());
        // An older full state (a replay) doesn't undo the edit.
        assert!(merge(Some(&edited), &full(&m)).is_none());
        let deleted = merge(
            Some(&edited),
            &ServerEvent::MessageDelete {
                channel_id: "c1".into(),
                seq: 7,
                message_id: "m1".into(),
                deleted_at: "2026-11-27T10:02:00Z".parse().unwrap(),
            },
        )
        .unwrap();
        assert_eq!(deleted.content, "");
        assert!(deleted.deleted_at.is_some());
        assert!(
            merge(Some(&deleted), &edit(8)).is_none(),
            "deleted stays deleted"
        );
        // Events about messages we never saw change nothing.
        assert!(merge(None, &edit(9)).is_none());
        assert_eq!(message_id(&edit(1)), Some("m1"));
    }

    #[test]
    fn state_changes_move_forward_only() {
        let m = message(2, "", MessageState::Pending);
        let to = |seq, state| ServerEvent::MessageState {
            channel_id: "c1".into(),
            seq,
            message_id: "m1".into(),
            state,
        };
        let errored = merge(Some(&m), &to(3, MessageState::Error)).unwrap();
        assert_eq!(errored.state, MessageState::Error);
        assert!(merge(Some(&errored), &to(3, MessageState::Complete)).is_none());
    }
}
