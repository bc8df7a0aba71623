//! Per-agent spending: usage rows per day and model, budgets per day or month, and the
//! 50/80/100 % notifications (each once per period).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use taos_proto::events::{Level, NewNotification};
use taos_proto::llm::{AgentSpend, Budget, BudgetPeriod, SpendOverview, Usage, UsageRow};
use uuid::Uuid;

use crate::agents::AgentRecord;
use crate::db::{now_ms, Db};
use crate::notify::EventHub;

pub const THRESHOLDS: [i64; 3] = [50, 80, 100];

/// Amounts closer than this (USD) are equal when checking a budget.
const MONEY_EPSILON: f64 = 1e-9;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("{0}")]
    BadInput(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

fn day_key(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%d").to_string()
}

/// The period a spend counts toward: `2026-11-27` for daily budgets, `2026-11` for monthly.
pub fn period_key(period: BudgetPeriod, now: DateTime<Utc>) -> String {
    match period {
        BudgetPeriod::Day => now.format("%Y-%m-%d").to_string(),
        BudgetPeriod::Month => now.format("%Y-%m").to_string(),
    }
}

pub async fn get_budget(db: &Db, agent: Uuid) -> Result<Option<Budget>, BudgetError> {
    let row = sqlx::query("SELECT limit_usd, period FROM agent_budgets WHERE agent_id = ?")
        .bind(agent.to_string())
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| Budget {
        limit_usd: r.try_get("limit_usd").unwrap_or(0.0),
        period: if r.try_get::<String, _>("period").unwrap_or_default() == "day" {
            BudgetPeriod::Day
        } else {
            BudgetPeriod::Month
        },
    }))
}

/// Writes an agent's budget. Only through [`Ledger::set_budget`], which admission relies on.
async fn write_budget(db: &Db, agent: Uuid, budget: &Budget) -> Result<(), BudgetError> {
    if !budget.limit_usd.is_finite() || budget.limit_usd < 0.0 || budget.limit_usd > 1e9 {
        return Err(BudgetError::BadInput(
            "limit_usd must be a number >= 0".into(),
        ));
    }
    let period = match budget.period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    };
    sqlx::query(
        "INSERT INTO agent_budgets (agent_id, limit_usd, period) VALUES (?, ?, ?) \
         ON CONFLICT(agent_id) DO UPDATE SET limit_usd = excluded.limit_usd, period = excluded.period",
    )
    .bind(agent.to_string())
    .bind(budget.limit_usd)
    .bind(period)
    .execute(db)
    .await?;
    Ok(())
}

/// Spend in the period containing `now`.
pub async fn spend(
    db: &Db,
    agent: Uuid,
    period: BudgetPeriod,
    now: DateTime<Utc>,
) -> Result<f64, BudgetError> {
    let pattern = match period {
        BudgetPeriod::Day => day_key(now),
        BudgetPeriod::Month => format!("{}-%", now.format("%Y-%m")),
    };
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(SUM(cost_usd), 0.0) FROM llm_usage WHERE agent_id = ? AND day LIKE ?",
    )
    .bind(agent.to_string())
    .bind(pattern)
    .fetch_one(db)
    .await?)
}

/// What one gateway call used.
#[derive(Debug, Clone, Default)]
pub struct CallUsage {
    pub model: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub failed: bool,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Spend plus what calls in flight reserved plus this call's worst case would pass the limit.
    Budget {
        spent: f64,
        reserved: f64,
        amount: f64,
        budget: Budget,
    },
    /// The agent has a budget and the call's worst case can't be priced: admitting it would
    /// let the budget fail open.
    PriceUnknown,
    /// The agent already has `open` calls in flight, the most it may.
    Concurrency { open: i64, cap: u32 },
}

/// The calls each agent has in flight and what they reserved: what admission checks, with
/// the database's settled spend, under one lock.
///
/// Admission takes the lock, reads the agent's budget and spend (committed `llm_usage`), adds
/// what its open calls reserved, and takes its reservation or refuses; so two admissions can
/// never both take the same room. A call commits its real cost and gives its room back under
/// the same lock ([`Ledger::settle`]): admission never sees it counted twice (which refused a
/// call made the moment a stream ended) or not at all. Each
/// reservation is also written to `llm_reservations`, off the request path (a commit costs an
/// fsync), so calls in flight when the host is killed are charged at its next start; see
/// [`settle_stale`].
///
/// Each agent's budget is kept as admission last read it (`budgets`), so a call costs no read of
/// it: budgets are only ever written by [`Ledger::set_budget`], which writes and forgets the
/// agent's entry under the admission lock, and admission reads and keeps it under the same lock,
/// so what it keeps is never older than the last write.
#[derive(Default)]
pub struct Ledger {
    open: tokio::sync::Mutex<HashMap<Uuid, Open>>,
    /// Only touched with `open` held (it is a plain mutex to be usable from `&self` in sync code).
    budgets: std::sync::Mutex<HashMap<Uuid, Option<Budget>>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Open {
    calls: i64,
    reserved: f64,
    /// An admission of one of these calls found a budget: their settling must hold the lock
    /// across its commit (see [`Ledger::settle`]).
    budgeted: bool,
}

impl Ledger {
    fn kept_budgets(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Option<Budget>>> {
        // Only inserts and removals under it: a panic can't leave it inconsistent.
        self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets an agent's budget; the next admission reads it back. Under the admission lock, so
    /// no admission reading the old one at the same time can keep it after this.
    pub async fn set_budget(
        &self,
        db: &Db,
        agent: Uuid,
        budget: &Budget,
    ) -> Result<(), BudgetError> {
        let _admission = self.open.lock().await;
        // Forgotten whatever the write's outcome: a failed commit may still have landed.
        let written = write_budget(db, agent, budget).await;
        self.kept_budgets().remove(&agent);
        written
    }

    /// The agent's budget, kept or read (and kept). Call with the admission lock held.
    async fn budget_of(&self, db: &Db, agent: Uuid) -> Result<Option<Budget>, BudgetError> {
        if let Some(kept) = self.kept_budgets().get(&agent) {
            return Ok(kept.clone());
        }
        let budget = get_budget(db, agent).await?;
        self.kept_budgets().insert(agent, budget.clone());
        Ok(budget)
    }
    /// Admits a call if the agent has fewer than `max_concurrent` calls in flight and, if it
    /// has a budget, spend + open reservations + `amount` stay within it. `amount` is the
    /// call's worst-case cost, `None` when the model has no known price: fine without a budget
    /// (reserved as 0), refused with one. Returns the amount reserved.
    pub async fn reserve(
        &self,
        db: &Db,
        agent: Uuid,
        amount: Option<f64>,
        max_concurrent: u32,
    ) -> Result<Result<f64, Refusal>, BudgetError> {
        let amount = amount.map(|a| if a.is_finite() { a.max(0.0) } else { f64::MAX });
        let mut open = self.open.lock().await;
        let Open {
            calls, reserved, ..
        } = open.get(&agent).copied().unwrap_or_default();
        if calls >= i64::from(max_concurrent) {
            return Ok(Err(Refusal::Concurrency {
                open: calls,
                cap: max_concurrent,
            }));
        }
        let budget = self.budget_of(db, agent).await?;
        let budgeted = budget.is_some();
        if let Some(budget) = budget {
            let Some(amount) = amount else {
                return Ok(Err(Refusal::PriceUnknown));
            };
            let spent = spend(db, agent, budget.period, Utc::now()).await?;
            // Exhausted refuses even a free call; otherwise the worst case must fit. Sums of
            // prices are inexact in binary, so a nano-dollar either way counts as equal.
            let committed = spent + reserved;
            if committed + MONEY_EPSILON >= budget.limit_usd
                || committed + amount > budget.limit_usd + MONEY_EPSILON
            {
                return Ok(Err(Refusal::Budget {
                    spent,
                    reserved,
                    amount,
                    budget,
                }));
            }
        }
        let amount = amount.unwrap_or(0.0);
        let entry = open.entry(agent).or_default();
        entry.calls += 1;
        entry.reserved += amount;
        entry.budgeted |= budgeted;
        Ok(Ok(amount))
    }

    /// Settles a finished call: commits its real usage in place of its reservation row and
    /// gives its room back, then announces budget thresholds the call crossed. The room is
    /// given back even if the commit fails (the reservation row then stays and is charged at the
    /// next start).
    ///
    /// For an agent with a budget, both happen under the admission lock, so admission (which
    /// reads the committed spend) never sees the call counted twice or not at all. Without one,
    /// admission reads no spend, so the commit (an fsync) runs outside the lock, and the next
    /// call's admission does not wait for it; the room is given back after the commit, so a
    /// budget set meanwhile can at worst count the call twice for that moment (refuse early),
    /// never not at all.
    pub async fn settle(
        &self,
        db: &Db,
        hub: &EventHub,
        (agent, slug): (Uuid, &str),
        reservation: (&str, f64),
        usage: &CallUsage,
    ) -> Result<(), BudgetError> {
        let (id, amount) = reservation;
        let budgeted = self
            .open
            .lock()
            .await
            .get(&agent)
            .is_some_and(|o| o.budgeted);
        let committed = if budgeted {
            let mut open = self.open.lock().await;
            let committed = commit_usage(db, agent, id, usage).await;
            Self::release_locked(&mut open, agent, amount);
            committed
        } else {
            let committed = commit_usage(db, agent, id, usage).await;
            Self::release_locked(&mut *self.open.lock().await, agent, amount);
            committed
        };
        committed?;
        announce(db, hub, agent, slug).await
    }

    fn release_locked(open: &mut HashMap<Uuid, Open>, agent: Uuid, amount: f64) {
        if let Some(entry) = open.get_mut(&agent) {
            entry.calls -= 1;
            entry.reserved -= amount;
            if entry.calls <= 0 {
                open.remove(&agent);
            }
        }
    }
}

/// Writes a reservation to `llm_reservations`, so that a host killed while the call runs
/// charges it at its next start.
pub async fn record_reservation(
    db: &Db,
    id: &str,
    agent: Uuid,
    model: &str,
    amount: f64,
) -> Result<(), BudgetError> {
    sqlx::query(
        "INSERT INTO llm_reservations (id, agent_id, model, amount_usd, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(agent.to_string())
    .bind(model)
    .bind(amount)
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// A call's reservation row goes and its real usage comes, in one transaction, so a crash
/// leaves either the reservation (settled at start) or the usage, never both or neither.
async fn commit_usage(
    db: &Db,
    agent: Uuid,
    reservation: &str,
    usage: &CallUsage,
) -> Result<(), BudgetError> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM llm_reservations WHERE id = ?")
        .bind(reservation)
        .execute(&mut *tx)
        .await?;
    add_usage(&mut tx, agent, usage).await?;
    tx.commit().await?;
    Ok(())
}

/// Settles every reservation left by a host that stopped without settling them (killed, power
/// cut) at its reserved amount: the provider may have billed the call, and nothing says what
/// it used. Runs at start, before the gateway serves, so no live call is among them. Returns
/// how many there were.
pub async fn settle_stale(db: &Db) -> Result<u64, BudgetError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(String, String, f64)> =
        sqlx::query_as("SELECT agent_id, model, amount_usd FROM llm_reservations")
            .fetch_all(&mut *tx)
            .await?;
    for (agent, model, amount) in &rows {
        let Ok(agent) = Uuid::parse_str(agent) else {
            continue;
        };
        let usage = CallUsage {
            model: model.clone(),
            cost_usd: *amount,
            failed: true,
            ..Default::default()
        };
        add_usage(&mut tx, agent, &usage).await?;
    }
    sqlx::query("DELETE FROM llm_reservations")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

async fn add_usage(
    tx: &mut sqlx::SqliteConnection,
    agent: Uuid,
    usage: &CallUsage,
) -> Result<(), BudgetError> {
    // An agent purged while its call ran has nowhere to put usage: nothing is recorded.
    sqlx::query(
        "INSERT INTO llm_usage (agent_id, day, model, requests, failures, tokens_in, tokens_out, cost_usd) \
         SELECT ?1, ?2, ?3, 1, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM agents WHERE id = ?1) \
         ON CONFLICT(agent_id, day, model) DO UPDATE SET requests = requests + 1, \
         failures = failures + excluded.failures, tokens_in = tokens_in + excluded.tokens_in, \
         tokens_out = tokens_out + excluded.tokens_out, cost_usd = cost_usd + excluded.cost_usd",
    )
    .bind(agent.to_string())
    .bind(day_key(Utc::now()))
    .bind(&usage.model)
    .bind(i64::from(usage.failed))
    .bind(usage.tokens_in.max(0))
    .bind(usage.tokens_out.max(0))
    .bind(if usage.cost_usd.is_finite() { usage.cost_usd.max(0.0) } else { 0.0 })
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Announces the budget thresholds the agent's spend has reached, each once per period.
async fn announce(db: &Db, hub: &EventHub, agent: Uuid, slug: &str) -> Result<(), BudgetError> {
    let now = Utc::now();
    let Some(budget) = get_budget(db, agent).await? else {
        return Ok(());
    };
    let spent = spend(db, agent, budget.period, now).await?;
    let period = period_key(budget.period, now);
    for threshold in THRESHOLDS {
        let reached = if budget.limit_usd <= 0.0 {
            threshold == 100
        } else {
            spent + MONEY_EPSILON >= budget.limit_usd * threshold as f64 / 100.0
        };
        if !reached {
            continue;
        }
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO budget_alerts (agent_id, period, threshold, sent_at) VALUES (?, ?, ?, ?)",
        )
        .bind(agent.to_string())
        .bind(&period)
        .bind(threshold)
        .bind(now_ms())
        .execute(db)
        .await?;
        if inserted.rows_affected() == 0 {
            continue;
        }
        let period_word = match budget.period {
            BudgetPeriod::Day => "daily",
            BudgetPeriod::Month => "monthly",
        };
        let (level, title) = if threshold >= 100 {
            (
                Level::Error,
                format!("{slug} reached its {period_word} LLM budget"),
            )
        } else {
            (
                Level::Warning,
                format!("{slug} used {threshold}% of its {period_word} LLM budget"),
            )
        };
        let result = hub
            .notify(NewNotification {
                level,
                title,
                message: format!(
                    "${spent:.4} of ${:.2} spent this period{}",
                    budget.limit_usd,
                    if threshold >= 100 {
                        "; LLM calls are refused until it rolls over or the limit is raised"
                    } else {
                        ""
                    }
                ),
                source: Some("llm.budget".into()),
                data: Some(serde_json::json!({
                    "agent": slug,
                    "threshold": threshold,
                    "spent_usd": spent,
                    "limit_usd": budget.limit_usd,
                    "period": period,
                })),
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "budget notification failed");
        }
    }
    Ok(())
}

pub async fn usage(db: &Db, agent: Uuid, slug: &str) -> Result<Usage, BudgetError> {
    let rows = sqlx::query(
        "SELECT day, model, requests, failures, tokens_in, tokens_out, cost_usd FROM llm_usage \
         WHERE agent_id = ? ORDER BY day DESC, model LIMIT 1000",
    )
    .bind(agent.to_string())
    .fetch_all(db)
    .await?;
    let rows = rows
        .iter()
        .map(|r| UsageRow {
            day: r.try_get("day").unwrap_or_default(),
            model: r.try_get("model").unwrap_or_default(),
            requests: r.try_get("requests").unwrap_or_default(),
            failures: r.try_get("failures").unwrap_or_default(),
            tokens_in: r.try_get("tokens_in").unwrap_or_default(),
            tokens_out: r.try_get("tokens_out").unwrap_or_default(),
            cost_usd: r.try_get("cost_usd").unwrap_or_default(),
        })
        .collect();
    let budget = get_budget(db, agent).await?;
    let period = budget
        .as_ref()
        .map(|b| b.period)
        .unwrap_or(BudgetPeriod::Month);
    Ok(Usage {
        agent_name: slug.to_string(),
        period_spend_usd: spend(db, agent, period, Utc::now()).await?,
        budget,
        rows,
    })
}

/// The longest range `overview` serves, in days.
pub const MAX_OVERVIEW_DAYS: u32 = 366;

/// The given agents' usage per day and model over the `days` UTC days ending with `now`'s day,
/// with budgets and current-period spend. Rows of agents not given are left out.
pub async fn overview(
    db: &Db,
    agents: Vec<AgentRecord>,
    days: u32,
    now: DateTime<Utc>,
) -> Result<SpendOverview, BudgetError> {
    if !(1..=MAX_OVERVIEW_DAYS).contains(&days) {
        return Err(BudgetError::BadInput(format!(
            "days must be between 1 and {MAX_OVERVIEW_DAYS}"
        )));
    }
    let from = now - chrono::TimeDelta::days(i64::from(days) - 1);
    let (from_day, to_day) = (day_key(from), day_key(now));
    let rows = sqlx::query(
        "SELECT agent_id, day, model, requests, failures, tokens_in, tokens_out, cost_usd \
         FROM llm_usage WHERE day >= ? AND day <= ? ORDER BY day, model",
    )
    .bind(&from_day)
    .bind(&to_day)
    .fetch_all(db)
    .await?;
    let mut by_agent: HashMap<String, Vec<UsageRow>> = HashMap::new();
    for r in &rows {
        by_agent
            .entry(r.try_get("agent_id")?)
            .or_default()
            .push(UsageRow {
                day: r.try_get("day")?,
                model: r.try_get("model")?,
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                tokens_in: r.try_get("tokens_in")?,
                tokens_out: r.try_get("tokens_out")?,
                cost_usd: r.try_get("cost_usd")?,
            });
    }
    let mut out = Vec::with_capacity(agents.len());
    for a in agents {
        let budget = get_budget(db, a.id).await?;
        let period = budget.as_ref().map_or(BudgetPeriod::Month, |b| b.period);
        out.push(AgentSpend {
            period_spend_usd: spend(db, a.id, period, now).await?,
            rows: by_agent.remove(&a.id.to_string()).unwrap_or_default(),
            agent_name: a.slug,
            display_name: a.display_name,
            budget,
        });
    }
    Ok(SpendOverview {
        from_day,
        to_day,
        agents: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_keys() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-27T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(period_key(BudgetPeriod::Day, t), "2026-11-27");
        assert_eq!(period_key(BudgetPeriod::Month, t), "2026-11");
    }
}
