//! Per-agent spending: usage rows per day and model, budgets per day or month, and the
//! 50/80/100 % notifications (each once per period).

use chrono::{DateTime, Utc};
use sqlx::Row;
use taos_proto::events::{Level, NewNotification};
use taos_proto::llm::{Budget, BudgetPeriod, Usage, UsageRow};
use uuid::Uuid;

use crate::db::{now_ms, Db};
use crate::notify::EventHub;

pub const THRESHOLDS: [i64; 3] = [50, 80, 100];

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

pub async fn set_budget(db: &Db, agent: Uuid, budget: &Budget) -> Result<(), BudgetError> {
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

/// `Some((spent, budget))` when the agent has used up its budget for the current period.
pub async fn exceeded(db: &Db, agent: Uuid) -> Result<Option<(f64, Budget)>, BudgetError> {
    let Some(budget) = get_budget(db, agent).await? else {
        return Ok(None);
    };
    let spent = spend(db, agent, budget.period, Utc::now()).await?;
    Ok((spent >= budget.limit_usd).then_some((spent, budget)))
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

/// Adds a call to the agent's usage and announces budget thresholds it crossed.
pub async fn record(
    db: &Db,
    hub: &EventHub,
    agent: Uuid,
    slug: &str,
    usage: &CallUsage,
) -> Result<(), BudgetError> {
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO llm_usage (agent_id, day, model, requests, failures, tokens_in, tokens_out, cost_usd) \
         VALUES (?, ?, ?, 1, ?, ?, ?, ?) \
         ON CONFLICT(agent_id, day, model) DO UPDATE SET requests = requests + 1, \
         failures = failures + excluded.failures, tokens_in = tokens_in + excluded.tokens_in, \
         tokens_out = tokens_out + excluded.tokens_out, cost_usd = cost_usd + excluded.cost_usd",
    )
    .bind(agent.to_string())
    .bind(day_key(now))
    .bind(&usage.model)
    .bind(i64::from(usage.failed))
    .bind(usage.tokens_in.max(0))
    .bind(usage.tokens_out.max(0))
    .bind(if usage.cost_usd.is_finite() { usage.cost_usd.max(0.0) } else { 0.0 })
    .execute(db)
    .await?;
    let Some(budget) = get_budget(db, agent).await? else {
        return Ok(());
    };
    let spent = spend(db, agent, budget.period, now).await?;
    let period = period_key(budget.period, now);
    for threshold in THRESHOLDS {
        let reached = if budget.limit_usd <= 0.0 {
            threshold == 100
        } else {
            spent >= budget.limit_usd * threshold as f64 / 100.0
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
