//! Which host happenings become native notifications, where clicking one leads, and which
//! replies count as unread. The shell shows what this decides.

use std::collections::HashMap;

use serde::Serialize;
use taos_proto::chat::{AuthorType, Message, MessageState};
use taos_proto::events::{HostEvent, Level, Notification};

/// A notification to show, and the screen it opens (a UI route such as `/agents/helper`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeNotification {
    pub title: String,
    pub body: String,
    pub route: String,
    /// For an agent's tool call waiting for a person: the approval's id. The shell then offers
    /// Approve and Deny on the notification (see [`crate::approvals::decide`]).
    pub approval: Option<String>,
}

/// Quota and budget alerts (warnings and errors; the "back to normal" infos stay in the app),
/// failed deploys, and tool calls waiting for approval (with the approval's id, for the
/// notification's Approve / Deny; a tap opens the agent's chat, where the call shows).
pub fn for_host_event(event: &HostEvent) -> Option<NativeNotification> {
    match event.kind.as_str() {
        "notification.created" => {
            let n: Notification = serde_json::from_value(event.data.clone()).ok()?;
            if n.source == "tool.approval" {
                let id = n.data["approval_id"].as_str()?;
                let route = match n.data["channel_id"].as_str() {
                    Some(channel) => format!("/chat/{channel}"),
                    None => "/notifications".into(),
                };
                return Some(NativeNotification {
                    title: n.title,
                    body: n.message,
                    route,
                    approval: Some(id.to_string()),
                });
            }
            // A failed backup (or restore drill) is an alert too: the owner must learn that
            // the safety net is gone before the day it is needed.
            let backup = n.source == "backup" || n.source.starts_with("backup.");
            let alert =
                backup || matches!(n.source.as_str(), "disk_quota" | "llm.budget" | "deploy");
            if !alert || n.level == Level::Info {
                return None;
            }
            let route = match n.data["agent"].as_str() {
                _ if backup => "/settings/backups".into(),
                Some(slug) => format!("/agents/{slug}"),
                None => "/notifications".into(),
            };
            Some(NativeNotification {
                title: n.title,
                body: n.message,
                route,
                approval: None,
            })
        }
        "deploy.finished" if event.data["status"] == "rolled_back" => Some(NativeNotification {
            title: "Deploy failed".into(),
            body: event.data["error"]
                .as_str()
                .unwrap_or("the deploy was rolled back")
                .to_string(),
            route: "/agents".into(),
            approval: None,
        }),
        _ => None,
    }
}

/// An agent's finished reply — or its failed turn, with the reason — unless its channel is on
/// screen or muted. A failure notifies like an answer would have: nothing fails silently.
pub fn for_reply(
    message: &Message,
    channel_name: &str,
    on_screen: Option<&str>,
    muted: bool,
) -> Option<NativeNotification> {
    let failure = match message.state {
        MessageState::Error => Some(
            message.metadata["failure"]["reason"]
                .as_str()
                .unwrap_or("The answer failed."),
        ),
        _ => None,
    };
    let finished = message.author_type == AuthorType::Agent
        && (message.state == MessageState::Complete || failure.is_some())
        && message.deleted_at.is_none()
        && message.edited_at.is_none();
    if !finished || muted || on_screen == Some(message.channel_id.as_str()) {
        return None;
    }
    let text = failure.unwrap_or(&message.content);
    let mut body: String = text.chars().take(140).collect();
    if text.chars().count() > 140 {
        body.push('…');
    }
    Some(NativeNotification {
        title: format!("{} in {channel_name}", message.author_id),
        body,
        route: format!("/chat/{}", message.channel_id),
        approval: None,
    })
}

/// Agent replies not yet seen, per channel: the count a tray icon shows. A reply counts when it
/// notifies (finished, off screen, not muted); opening its channel clears that channel.
#[derive(Debug, Default)]
pub struct Unread(HashMap<String, u32>);

impl Unread {
    /// One more unseen reply in `channel_id`; the new total.
    pub fn reply(&mut self, channel_id: &str) -> u32 {
        *self.0.entry(channel_id.to_string()).or_default() += 1;
        self.total()
    }

    /// `channel_id` is on screen: its replies are seen. The new total.
    pub fn read(&mut self, channel_id: &str) -> u32 {
        self.0.remove(channel_id);
        self.total()
    }

    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }
}

/// The channel on screen and the replies not yet seen, changed under one lock: a reply counted
/// while its channel is being opened is either counted first (and cleared by the opening) or
/// sees the channel on screen (and is not counted). Never counted after its channel was
/// cleared, which would leave it unread while on screen.
#[derive(Debug, Default)]
pub struct Attention {
    focus: tokio::sync::Mutex<Option<String>>,
    unread: std::sync::Mutex<Unread>,
}

impl Attention {
    /// `channel` is on screen now (`None`: nothing is). Its replies count as seen: `seen` gets
    /// the new total, in order with the totals [`Attention::reply`] gives.
    pub async fn set_focus(&self, channel: Option<String>, seen: impl FnOnce(u32)) {
        let mut focus = self.focus.lock().await;
        if let Some(channel) = &channel {
            let total = self
                .unread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .read(channel);
            seen(total);
        }
        *focus = channel;
    }

    /// An agent's reply arrived (see [`for_reply`]). Unless its channel is on screen or muted,
    /// it counts as unread and `counted` gets its notification and the new total.
    pub async fn reply(
        &self,
        message: &Message,
        channel_name: &str,
        muted: bool,
        counted: impl FnOnce(NativeNotification, u32),
    ) {
        let focus = self.focus.lock().await;
        if let Some(notification) = for_reply(message, channel_name, focus.as_deref(), muted) {
            let total = self
                .unread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .reply(&message.channel_id);
            counted(notification, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host_event(kind: &str, data: serde_json::Value) -> HostEvent {
        HostEvent {
            id: 1,
            kind: kind.into(),
            created_at: chrono::Utc::now(),
            data,
        }
    }

    fn notification(source: &str, level: &str) -> serde_json::Value {
        json!({"id": 3, "created_at": "2026-11-27T10:00:00Z", "level": level, "source": source,
               "title": "Helper's disk is 90% full", "message": "1.8 of 2 GiB", "read": false,
               "data": {"agent": "helper"}})
    }

    #[test]
    fn quota_and_budget_alerts_notify_and_open_the_agent() {
        let n = for_host_event(&host_event(
            "notification.created",
            notification("disk_quota", "warning"),
        ))
        .unwrap();
        assert_eq!(n.route, "/agents/helper");
        assert_eq!(n.title, "Helper's disk is 90% full");
        assert!(for_host_event(&host_event(
            "notification.created",
            notification("llm.budget", "error")
        ))
        .is_some());
        assert!(
            for_host_event(&host_event(
                "notification.created",
                notification("disk_quota", "info")
            ))
            .is_none(),
            "back-to-normal stays in the app"
        );
        assert!(
            for_host_event(&host_event(
                "notification.created",
                notification("api", "error")
            ))
            .is_none(),
            "script notes stay in the app"
        );
        let failed = for_host_event(&host_event(
            "deploy.finished",
            json!({"status": "rolled_back", "error": "start: boom"}),
        ))
        .unwrap();
        assert_eq!(failed.body, "start: boom");
        assert!(for_host_event(&host_event(
            "deploy.finished",
            json!({"status": "succeeded"})
        ))
        .is_none());
    }

    #[test]
    fn a_failed_backup_or_drill_notifies_and_opens_the_backups_screen() {
        let mut data = notification("backup", "error");
        data["data"] = json!({"run_id": "r-1"});
        let n = for_host_event(&host_event("notification.created", data.clone())).unwrap();
        assert_eq!(n.route, "/settings/backups");
        data["source"] = json!("backup.drill");
        let n = for_host_event(&host_event("notification.created", data.clone())).unwrap();
        assert_eq!(n.route, "/settings/backups");
        data["level"] = json!("info");
        assert!(
            for_host_event(&host_event("notification.created", data)).is_none(),
            "a backup that went well stays in the app"
        );
    }

    #[test]
    fn an_approval_notifies_with_its_id_and_opens_the_chat() {
        let mut data = notification("tool.approval", "warning");
        data["title"] = json!("Helper wants to run shell: rm -r ~/logs/2024");
        data["data"] = json!({"approval_id": "ap-1", "agent": "helper", "tool": "shell",
            "command": "rm -r ~/logs/2024", "channel_id": "dm-1", "message_id": "m-1"});
        let n = for_host_event(&host_event("notification.created", data.clone())).unwrap();
        assert_eq!(n.approval.as_deref(), Some("ap-1"));
        assert_eq!(n.route, "/chat/dm-1");
        assert_eq!(n.title, "Helper wants to run shell: rm -r ~/logs/2024");
        // Without an id there is nothing to answer: no Approve / Deny to offer.
        data["data"] = json!({"agent": "helper"});
        assert!(for_host_event(&host_event("notification.created", data)).is_none());
    }

    /// A finished agent reply in `channel_id`.
    fn reply_in(channel_id: &str) -> Message {
        serde_json::from_value(json!({
            "id": "m", "channel_id": channel_id, "seq": 4, "author_id": "helper", "author_type": "agent",
            "content": "x".repeat(200), "content_type": "text/markdown", "thread_id": null,
            "state": "complete", "client_id": null, "metadata": {}, "created_at": "2026-11-27T10:00:00Z",
            "edited_at": null, "deleted_at": null
        }))
        .unwrap()
    }

    #[test]
    fn replies_and_failures_notify_only_off_screen_unmuted_and_finished() {
        let mut m = reply_in("c1");
        let n = for_reply(&m, "Helper", Some("c2"), false).unwrap();
        assert_eq!(n.route, "/chat/c1");
        assert_eq!(n.body.chars().count(), 141);
        assert!(
            for_reply(&m, "Helper", Some("c1"), false).is_none(),
            "on screen"
        );
        assert!(for_reply(&m, "Helper", None, true).is_none(), "muted");
        m.state = MessageState::Streaming;
        assert!(
            for_reply(&m, "Helper", None, false).is_none(),
            "not finished"
        );
        m.state = MessageState::Error;
        m.metadata = json!({"failure": {"code": "budget_exceeded", "reason": "Helper's budget for this month is used up ($5.02 of $5.00).", "hint": null, "detail": null}});
        let failed = for_reply(&m, "Helper", None, false).expect("a failed turn notifies");
        assert_eq!(
            failed.body,
            "Helper's budget for this month is used up ($5.02 of $5.00)."
        );
        m.state = MessageState::Complete;
        m.author_type = AuthorType::User;
        assert!(
            for_reply(&m, "Helper", None, false).is_none(),
            "not an agent"
        );
    }

    #[test]
    fn unread_counts_per_channel_and_clears_when_opened() {
        let mut unread = Unread::default();
        assert_eq!(unread.total(), 0);
        assert_eq!(unread.reply("a"), 1);
        assert_eq!(unread.reply("a"), 2);
        assert_eq!(unread.reply("b"), 3);
        assert_eq!(unread.read("a"), 1);
        assert_eq!(unread.read("a"), 1);
        assert_eq!(unread.read("b"), 0);
    }

    /// A reply comes in just as its channel opens: after the opening marked the channel read,
    /// before the channel is on screen. It must not stay unread while on screen.
    #[tokio::test]
    async fn a_reply_counted_while_its_channel_opens_is_not_left_unread() {
        use std::future::Future;
        let attention = Attention::default();
        let message = reply_in("chat");
        let notified = std::sync::Mutex::new(Vec::new());
        let mut counting = std::pin::pin!(attention.reply(&message, "Chat", false, |_, total| {
            notified.lock().unwrap().push(total)
        }));
        let mut overtook = false;
        attention
            .set_focus(Some("chat".into()), |_| {
                // Given every chance to be counted right now.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                overtook = counting.as_mut().poll(&mut cx).is_ready();
            })
            .await;
        if !overtook {
            counting.await;
        }
        assert_eq!(
            *notified.lock().unwrap(),
            Vec::<u32>::new(),
            "a reply in the chat on screen"
        );
        let mut left = None;
        attention
            .set_focus(Some("other".into()), |total| left = Some(total))
            .await;
        assert_eq!(left, Some(0), "nothing is left unread");
    }

    #[tokio::test]
    async fn replies_off_screen_count_until_their_channel_opens() {
        let attention = Attention::default();
        let totals = std::sync::Mutex::new(Vec::new());
        let count = |_, total| totals.lock().unwrap().push(total);
        attention.set_focus(Some("chat".into()), |_| {}).await;
        attention
            .reply(&reply_in("chat"), "Chat", false, count)
            .await;
        attention
            .reply(&reply_in("other"), "Other", false, count)
            .await;
        attention
            .reply(&reply_in("other"), "Other", true, count)
            .await;
        attention
            .set_focus(None, |_| panic!("nothing opened"))
            .await;
        attention
            .reply(&reply_in("chat"), "Chat", false, count)
            .await;
        assert_eq!(
            *totals.lock().unwrap(),
            [1, 2],
            "on screen and muted don't count"
        );
        let mut left = None;
        attention
            .set_focus(Some("other".into()), |total| left = Some(total))
            .await;
        assert_eq!(left, Some(1));
    }
}
