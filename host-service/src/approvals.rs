//! Tool approvals: whether an agent's tool call may run, decided by the host from the agent's
//! `tool_policy` and, under `ask`, by a person.
//!
//! The host is the authority, not the sidecar: a sidecar is inside the agent's container and
//! runs what the model says, so a decision it kept itself would be only as good as the
//! container. Here it is a row in `tool_approvals` that outlives a restart of either side:
//! asking again for the same call (same agent, trace, step, tool and arguments) finds the same
//! row, pending or decided. Unanswered requests expire as denied after
//! `[tools] approval_timeout_secs`, by the wait that notices it or by a sweep that also runs at
//! start-up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use taos_proto::approvals::{
    Approval, ApprovalAnswer, ApprovalRequest, ApprovalState, Decision, ToolPolicy,
};
use taos_proto::events::{Level, NewNotification};
use tokio::sync::watch;
use uuid::Uuid;

use crate::agents::{self, AgentRecord};
use crate::bridge::{Bridge, BridgeError, MAX_CALL_ID_CHARS};
use crate::chat::{Chat, ChatError, ToolStep, Viewer};
use crate::db::{from_ms, now_ms, Db};
use crate::notify::EventHub;

/// A call that waits for approval has at most this many bytes of arguments (JSON): they are
/// stored and shown to people whole. Calls answered at once are bounded by the body limit.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;
/// The longest an agent's request waits for a decision before it is answered `pending`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a request waits when it names no time.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// A call's place in its turn is below this.
const MAX_STEP: u32 = 100_000;
const MAX_TRACE_ID_CHARS: usize = 200;
/// The short text of a call (notifications, lists) is at most this many characters.
const SUMMARY_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("{0}")]
    BadInput(String),
    #[error("the arguments are {bytes} bytes of JSON; a call waiting for approval may have {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("{agent} already has {max} tool calls waiting for approval; answer or let them expire first")]
    TooManyPending { agent: String, max: i64 },
    #[error("no such approval")]
    NotFound,
    #[error("only people who see the agent's channel may answer its approvals")]
    Forbidden,
    #[error("this approval is already {0}")]
    AlreadyDecided(ApprovalState),
    #[error("the answer this call belongs to is already settled")]
    Settled,
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error(transparent)]
    Agent(#[from] agents::AgentError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("bad stored data: {0}")]
    Decode(String),
}

/// The host's approvals: the table, who is waiting, and the events and notifications.
pub struct Approvals {
    db: Db,
    bridge: Arc<Bridge>,
    chat: Arc<Chat>,
    hub: Arc<EventHub>,
    timeout: Duration,
    max_pending: i64,
    /// Bumped after every decision, so waiting requests read their row again.
    changed: watch::Sender<u64>,
}

/// A stored approval, before the agent's slug is looked up.
struct Stored {
    id: String,
    agent_id: Uuid,
    trace_id: String,
    channel_id: String,
    message_id: Option<String>,
    call_id: String,
    tool: String,
    args: serde_json::Value,
    state: ApprovalState,
    reason: Option<String>,
    decided_by: Option<String>,
    created_at: i64,
    expires_at: i64,
    decided_at: Option<i64>,
}

const COLUMNS: &str = "id, agent_id, trace_id, channel_id, message_id, call_id, tool, args, \
                       state, reason, decided_by, created_at, expires_at, decided_at";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Stored, ApprovalError> {
    let agent_id: String = row.try_get("agent_id")?;
    let args: String = row.try_get("args")?;
    Ok(Stored {
        id: row.try_get("id")?,
        agent_id: Uuid::parse_str(&agent_id).map_err(|e| ApprovalError::Decode(e.to_string()))?,
        trace_id: row.try_get("trace_id")?,
        channel_id: row.try_get("channel_id")?,
        message_id: row.try_get("message_id")?,
        call_id: row.try_get("call_id")?,
        tool: row.try_get("tool")?,
        args: serde_json::from_str(&args).map_err(|e| ApprovalError::Decode(e.to_string()))?,
        state: row.try_get::<String, _>("state")?.parse().map_err(
            |e: taos_proto::text_enum::UnknownVariant| ApprovalError::Decode(e.to_string()),
        )?,
        reason: row.try_get("reason")?,
        decided_by: row.try_get("decided_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        decided_at: row.try_get("decided_at")?,
    })
}

impl Stored {
    fn answer(&self) -> ApprovalAnswer {
        ApprovalAnswer {
            id: Some(self.id.clone()),
            state: self.state,
            reason: self.reason.clone(),
        }
    }

    fn to_api(&self, slug: &str) -> Approval {
        Approval {
            id: self.id.clone(),
            agent: slug.to_string(),
            channel_id: self.channel_id.clone(),
            message_id: self.message_id.clone(),
            trace_id: self.trace_id.clone(),
            call_id: self.call_id.clone(),
            tool: self.tool.clone(),
            args: self.args.clone(),
            summary: summary(&self.tool, &self.args),
            state: self.state,
            reason: self.reason.clone(),
            decided_by: self.decided_by.clone(),
            created_at: from_ms(self.created_at),
            expires_at: from_ms(self.expires_at),
            decided_at: self.decided_at.map(from_ms),
        }
    }
}

/// The same JSON with every object's keys sorted, so equal arguments compare equal as text.
pub fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for key in keys {
                out.insert(key.clone(), canonical(&map[key]));
            }
            serde_json::Value::Object(out)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

/// What a call would do, in one short line: a shell command as written, a file tool's path,
/// `http_get`'s URL, else the tool and its arguments.
pub fn summary(tool: &str, args: &serde_json::Value) -> String {
    let field = |name: &str| args.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let text = match tool {
        "shell" => match args.get("command") {
            Some(serde_json::Value::String(command)) => Some(command.clone()),
            Some(serde_json::Value::Array(argv)) => Some(
                argv.iter()
                    .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        },
        "read_file" | "write_file" | "list_dir" => Some(format!(
            "{tool} {}",
            field("path").unwrap_or_else(|| ".".into())
        )),
        "http_get" => field("url").map(|url| format!("GET {url}")),
        _ => None,
    }
    .unwrap_or_else(|| format!("{tool} {args}"));
    cut(&text, SUMMARY_CHARS)
}

/// `text`, or its first `max` characters and an ellipsis.
fn cut(text: &str, max: usize) -> String {
    let mut short: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        short.push('…');
    }
    short
}

/// The notification's title, "Helper wants to run `…`", within the notification limit.
fn title(agent: &str, summary: &str) -> String {
    const FRAME: usize = " wants to run ``".len();
    let max = crate::notify::MAX_TITLE_CHARS;
    // `cut` adds one character (the ellipsis) to what it keeps.
    let room = max
        .saturating_sub(agent.chars().count() + FRAME + 1)
        .max(16);
    cut(
        &format!("{agent} wants to run `{}`", cut(summary, room)),
        max - 1,
    )
}

impl Approvals {
    pub fn new(
        db: Db,
        bridge: Arc<Bridge>,
        chat: Arc<Chat>,
        hub: Arc<EventHub>,
        timeout: Duration,
        max_pending: u32,
    ) -> Self {
        Approvals {
            db,
            bridge,
            chat,
            hub,
            timeout,
            max_pending: i64::from(max_pending),
            changed: watch::channel(0).0,
        }
    }

    /// Decides whether `agent` may run this call now: `auto` approves and `off` denies at once;
    /// `ask` finds or makes the pending approval (telling people about a new one) and answers
    /// with its state. Limits are checked before anything is stored.
    pub async fn request(
        &self,
        agent: &AgentRecord,
        req: &ApprovalRequest,
    ) -> Result<ApprovalAnswer, ApprovalError> {
        if req.trace_id.is_empty() || req.trace_id.chars().count() > MAX_TRACE_ID_CHARS {
            return Err(ApprovalError::BadInput(format!(
                "trace_id must be 1-{MAX_TRACE_ID_CHARS} characters"
            )));
        }
        if req.call_id.is_empty() || req.call_id.chars().count() > MAX_CALL_ID_CHARS {
            return Err(ApprovalError::BadInput(format!(
                "call_id must be 1-{MAX_CALL_ID_CHARS} characters"
            )));
        }
        if !agents::is_valid_tool_name(&req.tool) {
            return Err(ApprovalError::BadInput(
                "tool must be 1-64 characters of a-z, 0-9, _ and -".into(),
            ));
        }
        if !req.args.is_object() {
            return Err(ApprovalError::BadInput("args must be a JSON object".into()));
        }
        if req.step >= MAX_STEP {
            return Err(ApprovalError::BadInput(format!(
                "step must be below {MAX_STEP}"
            )));
        }
        // Only about its own deliveries, whatever the policy.
        let place = self.bridge.delivery_place(agent.id, &req.trace_id).await?;
        match agent.policy_for(&req.tool) {
            ToolPolicy::Auto => {
                return Ok(ApprovalAnswer {
                    id: None,
                    state: ApprovalState::Approved,
                    reason: None,
                })
            }
            ToolPolicy::Off => {
                let overridden = agent.tool_overrides.contains_key(&req.tool);
                return Ok(ApprovalAnswer {
                    id: None,
                    state: ApprovalState::Denied,
                    reason: Some(if overridden {
                        format!(
                            "the owner has turned the `{}` tool off for {}",
                            req.tool, agent.display_name
                        )
                    } else {
                        format!("the owner has turned tools off for {}", agent.display_name)
                    }),
                });
            }
            ToolPolicy::Ask => {}
        }
        let args = serde_json::to_string(&canonical(&req.args))
            .map_err(|e| ApprovalError::BadInput(e.to_string()))?;
        if args.len() > MAX_ARGS_BYTES {
            return Err(ApprovalError::TooLarge {
                bytes: args.len(),
                max: MAX_ARGS_BYTES,
            });
        }
        let args_hash = crate::auth::hash_token(&args);
        if let Some(found) = self
            .find(agent.id, &req.trace_id, req.step, &req.tool, &args_hash)
            .await?
        {
            // Asked again (a sidecar that restarted runs the turn again, with the model's new
            // call id): the earlier answer stands; a pending one moves to the new step.
            if found.call_id != req.call_id || found.message_id != place.message_id {
                sqlx::query("UPDATE tool_approvals SET call_id = ?, message_id = ? WHERE id = ?")
                    .bind(&req.call_id)
                    .bind(&place.message_id)
                    .bind(&found.id)
                    .execute(&self.db)
                    .await?;
                let found = self.get(&found.id).await?;
                self.show_on_chat(&found).await;
                return Ok(found.answer());
            }
            return Ok(found.answer());
        }
        if place.answered {
            return Err(ApprovalError::Settled);
        }
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tool_approvals WHERE agent_id = ? AND state = 'pending'",
        )
        .bind(agent.id.to_string())
        .fetch_one(&self.db)
        .await?;
        if pending >= self.max_pending {
            return Err(ApprovalError::TooManyPending {
                agent: agent.display_name.clone(),
                max: self.max_pending,
            });
        }
        let now = now_ms();
        let expires_at = now + i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX / 2);
        let id = Uuid::now_v7().to_string();
        // Two requests for one call at once: the unique key keeps one row, both read it.
        let inserted = sqlx::query(
            "INSERT INTO tool_approvals (id, agent_id, trace_id, channel_id, message_id, call_id, \
             step, tool, args, args_hash, state, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(agent.id.to_string())
        .bind(&req.trace_id)
        .bind(&place.channel_id)
        .bind(&place.message_id)
        .bind(&req.call_id)
        .bind(i64::from(req.step))
        .bind(&req.tool)
        .bind(&args)
        .bind(&args_hash)
        .bind(now)
        .bind(expires_at)
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        let row = self
            .find(agent.id, &req.trace_id, req.step, &req.tool, &args_hash)
            .await?
            .ok_or(ApprovalError::NotFound)?;
        if inserted {
            tracing::info!(agent = %agent.slug, approval = %row.id, tool = %row.tool, "tool call waits for approval");
            self.show_on_chat(&row).await;
            self.announce("approval.requested", &row, &agent.slug).await;
            let summary = summary(&row.tool, &row.args);
            let notified = self
                .hub
                .notify(NewNotification {
                    level: Level::Warning,
                    title: title(&agent.display_name, &summary),
                    message: format!(
                        "Approve or deny it; unanswered, it is denied after {} s.",
                        self.timeout.as_secs()
                    ),
                    source: Some("tool.approval".into()),
                    data: Some(serde_json::json!({
                        "approval_id": row.id,
                        "agent": agent.slug,
                        "tool": row.tool,
                        "command": summary,
                        "channel_id": row.channel_id,
                        "message_id": row.message_id,
                    })),
                })
                .await;
            if let Err(e) = notified {
                // The approval stands and is listed; only the notification is missing.
                tracing::warn!(approval = %row.id, error = %e, "could not notify about an approval");
            }
        }
        Ok(row.answer())
    }

    /// Waits until the approval is decided or `wait` passes, expiring it when its time is up;
    /// returns its state then.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<ApprovalAnswer, ApprovalError> {
        let until = tokio::time::Instant::now() + wait;
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            let row = self.get(id).await?;
            if row.state.is_decided() {
                return Ok(row.answer());
            }
            let left_ms = row.expires_at - now_ms();
            if left_ms <= 0 {
                self.expire_due().await?;
                continue;
            }
            let expiry = tokio::time::Instant::now()
                + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(expiry.min(until)) => {
                    if tokio::time::Instant::now() >= until {
                        return Ok(self.get(id).await?.answer());
                    }
                }
            }
        }
    }

    /// Pending approvals the viewer may see (those in channels they see), oldest first.
    pub async fn list_pending(&self, viewer: Viewer<'_>) -> Result<Vec<Approval>, ApprovalError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tool_approvals WHERE state = 'pending' ORDER BY created_at"
        ))
        .fetch_all(&self.db)
        .await?;
        let mut out = Vec::new();
        for row in rows.iter().map(from_row) {
            let row = row?;
            if self.settle_if_orphaned(&row).await? {
                continue;
            }
            match self.chat.visible_channel(viewer, &row.channel_id).await {
                Ok(_) => {}
                Err(ChatError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            let Ok(agent) = agents::get_by_id(&self.db, row.agent_id).await else {
                continue;
            };
            out.push(row.to_api(&agent.slug));
        }
        Ok(out)
    }

    /// A person's answer. Only someone who sees the agent's channel may give it; an approval
    /// already decided or expired is a conflict and stays as it was.
    pub async fn decide(
        &self,
        viewer: Viewer<'_>,
        by: &str,
        id: &str,
        decision: Decision,
    ) -> Result<Approval, ApprovalError> {
        let row = self.get(id).await?;
        match self.chat.visible_channel(viewer, &row.channel_id).await {
            Ok(_) => {}
            Err(ChatError::NotFound(_)) => return Err(ApprovalError::Forbidden),
            Err(e) => return Err(e.into()),
        }
        if self.settle_if_orphaned(&row).await? {
            return Err(ApprovalError::AlreadyDecided(ApprovalState::Cancelled));
        }
        let (state, reason) = match decision {
            Decision::Approve => (ApprovalState::Approved, None),
            Decision::Deny => (ApprovalState::Denied, Some(format!("denied by {by}"))),
        };
        let updated = sqlx::query(
            "UPDATE tool_approvals SET state = ?, reason = ?, decided_by = ?, decided_at = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(&reason)
        .bind(by)
        .bind(now_ms())
        .bind(id)
        .execute(&self.db)
        .await?;
        let row = self.get(id).await?;
        if updated.rows_affected() == 0 {
            return Err(ApprovalError::AlreadyDecided(row.state));
        }
        tracing::info!(approval = %id, state = %state, by, "approval decided");
        self.settled(&row).await;
        let slug = agents::get_by_id(&self.db, row.agent_id)
            .await
            .map(|a| a.slug)
            .unwrap_or_default();
        Ok(row.to_api(&slug))
    }

    /// Settles every pending approval past its time as expired. Returns how many.
    pub async fn expire_due(&self) -> Result<usize, ApprovalError> {
        let reason = format!(
            "nobody approved it within {} s, so it was denied",
            self.timeout.as_secs()
        );
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE tool_approvals SET state = 'expired', reason = ?, decided_at = ? \
             WHERE state = 'pending' AND expires_at <= ? RETURNING id",
        )
        .bind(&reason)
        .bind(now_ms())
        .bind(now_ms())
        .fetch_all(&self.db)
        .await?;
        for id in &ids {
            let row = self.get(id).await?;
            tracing::info!(approval = %id, "approval expired");
            self.settled(&row).await;
        }
        Ok(ids.len())
    }

    /// The answer a pending approval belongs to was stopped from the chat: nothing waits for
    /// it any more.
    pub async fn cancel_for_trace(
        &self,
        agent: Uuid,
        trace_id: &str,
        by: &str,
    ) -> Result<(), ApprovalError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE tool_approvals SET state = 'cancelled', reason = ?, decided_by = ?, \
             decided_at = ? WHERE agent_id = ? AND trace_id = ? AND state = 'pending' RETURNING id",
        )
        .bind(format!("the answer was stopped by {by}"))
        .bind(by)
        .bind(now_ms())
        .bind(agent.to_string())
        .bind(trace_id)
        .fetch_all(&self.db)
        .await?;
        for id in &ids {
            let row = self.get(id).await?;
            self.settled(&row).await;
        }
        Ok(())
    }

    /// A pending approval whose answer already ended (the agent failed or gave up on the turn,
    /// or its delivery is gone) waits for nothing: it is cancelled. Returns whether it was.
    async fn settle_if_orphaned(&self, row: &Stored) -> Result<bool, ApprovalError> {
        if row.state != ApprovalState::Pending {
            return Ok(false);
        }
        let ended = match self
            .bridge
            .delivery_place(row.agent_id, &row.trace_id)
            .await
        {
            Ok(place) => place.answered,
            Err(BridgeError::UnknownTrace) => true,
            Err(e) => return Err(e.into()),
        };
        if !ended {
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE tool_approvals SET state = 'cancelled', reason = ?, decided_at = ? \
             WHERE id = ? AND state = 'pending'",
        )
        .bind("the answer it belonged to had already ended")
        .bind(now_ms())
        .bind(&row.id)
        .execute(&self.db)
        .await?;
        if updated.rows_affected() == 1 {
            let row = self.get(&row.id).await?;
            self.settled(&row).await;
        }
        Ok(true)
    }

    /// Expires what is due now (what a stopped host left) and then on a short period, until
    /// shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let approvals = self.clone();
        let period =
            (approvals.timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                match approvals.expire_due().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "approvals expired"),
                    Err(e) => tracing::error!(error = %e, "expiring approvals failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }

    /// After a decision: wake the waiting requests, show it on the chat step, tell clients.
    async fn settled(&self, row: &Stored) {
        self.changed.send_modify(|n| *n += 1);
        self.show_on_chat(row).await;
        let slug = agents::get_by_id(&self.db, row.agent_id)
            .await
            .map(|a| a.slug)
            .unwrap_or_default();
        self.announce("approval.decided", row, &slug).await;
    }

    async fn announce(&self, kind: &str, row: &Stored, slug: &str) {
        let data = serde_json::json!({
            "id": row.id,
            "agent": slug,
            "tool": row.tool,
            "summary": summary(&row.tool, &row.args),
            "state": row.state,
            "reason": row.reason,
            "channel_id": row.channel_id,
            "message_id": row.message_id,
        });
        self.hub.announce(kind, data).await;
    }

    /// Puts `approval: {id, state, reason}` on the call's step in the answer's message, while
    /// that answer is open. A message that is gone or settled has nowhere to show it.
    async fn show_on_chat(&self, row: &Stored) {
        let Some(message_id) = &row.message_id else {
            return;
        };
        let step = ToolStep::Approval {
            call_id: row.call_id.clone(),
            tool: row.tool.clone(),
            approval: serde_json::json!({"id": row.id, "state": row.state, "reason": row.reason}),
        };
        match self.chat.record_tool_step(message_id, step, None).await {
            Ok(_) | Err(ChatError::NotFound(_) | ChatError::Conflict(_)) => {}
            Err(e) => {
                tracing::warn!(approval = %row.id, error = %e, "could not show an approval in the chat")
            }
        }
    }

    async fn find(
        &self,
        agent: Uuid,
        trace_id: &str,
        step: u32,
        tool: &str,
        args_hash: &str,
    ) -> Result<Option<Stored>, ApprovalError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tool_approvals WHERE agent_id = ? AND trace_id = ? \
             AND step = ? AND tool = ? AND args_hash = ?"
        ))
        .bind(agent.to_string())
        .bind(trace_id)
        .bind(i64::from(step))
        .bind(tool)
        .bind(args_hash)
        .fetch_optional(&self.db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    async fn get(&self, id: &str) -> Result<Stored, ApprovalError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tool_approvals WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.db)
        .await?
        .ok_or(ApprovalError::NotFound)?;
        from_row(&row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_notification_title_fits_whatever_the_command() {
        let long = title(&"N".repeat(64), &"x".repeat(400));
        assert!(
            long.chars().count() <= crate::notify::MAX_TITLE_CHARS,
            "{long}"
        );
        assert!(long.starts_with(&format!("{} wants to run `x", "N".repeat(64))));
        assert_eq!(
            title("Helper", "rm -r ~/logs/2024"),
            "Helper wants to run `rm -r ~/logs/2024`"
        );
    }

    #[test]
    fn equal_arguments_are_equal_text_whatever_their_key_order() {
        let a = json!({"command": "ls", "cwd": "/tmp", "env": {"b": 1, "a": 2}});
        let b = json!({"env": {"a": 2, "b": 1}, "cwd": "/tmp", "command": "ls"});
        assert_eq!(
            serde_json::to_string(&canonical(&a)).unwrap(),
            serde_json::to_string(&canonical(&b)).unwrap()
        );
    }

    #[test]
    fn summaries_say_what_would_run() {
        assert_eq!(
            summary("shell", &json!({"command": "rm -r ~/logs/2024"})),
            "rm -r ~/logs/2024"
        );
        assert_eq!(
            summary("shell", &json!({"command": ["du", "-sh", "/root"]})),
            "du -sh /root"
        );
        assert_eq!(
            summary("read_file", &json!({"path": "notes.txt"})),
            "read_file notes.txt"
        );
        assert_eq!(
            summary("http_get", &json!({"url": "https://example.com"})),
            "GET https://example.com"
        );
        let long = summary("shell", &json!({"command": "x".repeat(500)}));
        assert_eq!(long.chars().count(), SUMMARY_CHARS + 1);
    }
}
