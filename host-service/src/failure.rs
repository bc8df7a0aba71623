//! Why an agent's turn failed, in words people can act on.
//!
//! An agent reports a failed turn with an `error` reply: a short text and, from `taos-agent`,
//! an `error_code`. The host turns that into a [`TurnFailure`] shown in the conversation,
//! because only the host knows the rest of the story: the agent's budget and period, whether
//! any enabled provider still offers its model, what it is called. The agent's own words stay
//! in `detail`.

use chrono::Utc;
use taos_proto::bridge::ERROR_CODES;
use taos_proto::chat::TurnFailure;
use taos_proto::llm::{Budget, BudgetPeriod};

use crate::agents::AgentRecord;
use crate::db::Db;
use crate::llm::{budget, gateway, providers};

/// The agent's own text is kept up to this many characters.
const MAX_DETAIL_CHARS: usize = 500;

/// What the host knows about the agent when its turn failed.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub name: String,
    /// The budget and what was spent in its current period, if it has one.
    pub budget: Option<(Budget, f64)>,
    /// The agent's models (model first, then fallbacks).
    pub models: Vec<String>,
    /// Models some enabled provider offers now.
    pub offered: Vec<String>,
    /// How many providers exist, enabled or not.
    pub providers: usize,
}

/// Gathers [`Facts`]. A fact that can't be read is left out rather than failing the reply:
/// the explanation gets vaguer, the failure still shows.
pub async fn facts(db: &Db, agent: &AgentRecord) -> Facts {
    let budget = match budget::get_budget(db, agent.id).await {
        Ok(Some(b)) => budget::spend(db, agent.id, b.period, Utc::now())
            .await
            .ok()
            .map(|spent| (b, spent)),
        _ => None,
    };
    let catalog = providers::list(db).await.unwrap_or_default();
    Facts {
        name: agent.display_name.clone(),
        budget,
        models: gateway::allowed_models(agent),
        offered: providers::catalog_models(&catalog)
            .into_iter()
            .map(|m| m.name)
            .collect(),
        providers: catalog.len(),
    }
}

/// The code an error reply stands for: the one it names if known, else a gateway error type
/// found in its text (OpenAI clients in other frameworks put the whole error body there).
pub fn code_of(error_code: Option<&str>, text: &str) -> &'static str {
    if let Some(code) = error_code {
        if let Some(known) = ERROR_CODES.iter().find(|c| **c == code) {
            return known;
        }
    }
    ["budget_exceeded", "model_not_allowed", "llm_unavailable"]
        .into_iter()
        .find(|name| text.contains(name))
        .unwrap_or("agent_error")
}

fn period_word(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "today",
        BudgetPeriod::Month => "this month",
    }
}

fn shorten(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.chars().count() <= MAX_DETAIL_CHARS {
        return Some(text.to_string());
    }
    let mut short: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    short.push('…');
    Some(short)
}

/// The failure people see, from the reported code and text and what the host knows.
pub fn explain(error_code: Option<&str>, text: &str, facts: &Facts) -> TurnFailure {
    let mut code = code_of(error_code, text);
    let name = &facts.name;
    // A model that no enabled provider offers any more (provider disabled, removed, or its
    // model list changed) shows up as LiteLLM not knowing it, or not running at all for want of
    // models: say what really happened.
    let missing: Vec<&String> = facts
        .models
        .iter()
        .filter(|m| !facts.offered.contains(m))
        .collect();
    let all_missing = !facts.models.is_empty() && missing.len() == facts.models.len();
    if all_missing && matches!(code, "provider_error" | "llm_unavailable" | "agent_error") {
        code = "model_unavailable";
    }
    let (reason, hint) = match code {
        "budget_exceeded" => match &facts.budget {
            // A call is refused when its worst-case cost doesn't fit what is left, which can
            // happen before the budget is all spent: say which.
            Some((budget, spent)) => (
                if *spent + 0.005 >= budget.limit_usd {
                    format!(
                        "{name}'s budget for {} is used up (${spent:.2} of ${:.2}).",
                        period_word(budget.period),
                        budget.limit_usd
                    )
                } else {
                    format!(
                        "{name}'s budget for {} can't cover another answer (${spent:.2} of ${:.2} \
                         spent; an answer may cost more than what is left).",
                        period_word(budget.period),
                        budget.limit_usd
                    )
                },
                format!(
                    "Raise it in the agent's settings, or wait until {}.",
                    match budget.period {
                        BudgetPeriod::Day => "tomorrow",
                        BudgetPeriod::Month => "next month",
                    }
                ),
            ),
            None => (
                format!("{name}'s LLM budget is used up."),
                "Raise it in the agent's settings.".to_string(),
            ),
        },
        "model_not_allowed" => (
            format!("{name} asked for a model it is not allowed to use."),
            "Check its model and fallback models in the agent's settings.".to_string(),
        ),
        "model_unavailable" if facts.providers == 0 => (
            "No model provider is set up, so there is no model to answer with.".to_string(),
            "Add a provider on the Providers screen.".to_string(),
        ),
        "model_unavailable" => (
            format!(
                "No enabled provider offers {} any more.",
                missing
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            "Enable its provider on the Providers screen, or choose another model in the \
             agent's settings."
                .to_string(),
        ),
        "llm_unavailable" => (
            "The model service (LiteLLM) is not running right now.".to_string(),
            "See its status on the Providers screen; it restarts by itself after a crash, so \
             try again in a moment."
                .to_string(),
        ),
        "llm_key_rejected" => (
            format!("The host refused {name}'s LLM key."),
            "Rotate the agent's LLM key and give the agent the new one.".to_string(),
        ),
        "provider_error" => (
            "The model provider refused or failed the call.".to_string(),
            "Check the provider with Test on the Providers screen (its key, address and \
             models), then send the message again."
                .to_string(),
        ),
        "gateway_unreachable" => (
            format!("{name} could not reach the host's model gateway."),
            "Check that the agent's sidecar points at this host's agent listener, then restart \
             it."
            .to_string(),
        ),
        "empty_reply" => (
            "The model answered with no text.".to_string(),
            "Send the message again, or choose another model in the agent's settings.".to_string(),
        ),
        "interrupted" => (
            format!("{name} stopped before finishing its answer."),
            "Send the message again once it is back.".to_string(),
        ),
        "cancelled" => (
            format!("{name} stopped: the answer was cancelled from the chat."),
            "The steps it took before are on the message and in its traces.".to_string(),
        ),
        "turn_limit" => (
            format!("{name} used up its steps or time for this message before it answered."),
            "The tool steps it took are on the message and in its traces. Ask for something \
             smaller, or raise its limits (TAOS_TOOLS_MAX_STEPS, TAOS_TOOLS_TURN_SECS)."
                .to_string(),
        ),
        _ => (
            format!("{name} could not answer."),
            "Its traces have the details.".to_string(),
        ),
    };
    TurnFailure {
        code: code.to_string(),
        reason,
        hint: Some(hint),
        detail: shorten(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            name: "Helper".into(),
            budget: Some((
                Budget {
                    limit_usd: 5.0,
                    period: BudgetPeriod::Month,
                },
                5.25,
            )),
            models: vec!["fake-gpt".into()],
            offered: vec!["fake-gpt".into(), "other".into()],
            providers: 1,
        }
    }

    #[test]
    fn a_spent_budget_says_which_period_and_what_to_do() {
        let f = explain(
            Some("budget_exceeded"),
            "the agent's LLM budget is used up",
            &facts(),
        );
        assert_eq!(f.code, "budget_exceeded");
        assert_eq!(
            f.reason,
            "Helper's budget for this month is used up ($5.25 of $5.00)."
        );
        assert!(f
            .hint
            .unwrap()
            .starts_with("Raise it in the agent's settings"));
        assert_eq!(
            f.detail.as_deref(),
            Some("the agent's LLM budget is used up")
        );
    }

    #[test]
    fn codes_come_from_the_reply_or_from_gateway_names_in_its_text() {
        assert_eq!(code_of(Some("llm_unavailable"), ""), "llm_unavailable");
        assert_eq!(code_of(Some("made_up"), "boom"), "agent_error");
        assert_eq!(
            code_of(
                None,
                "Error code: 429 - {'error': {'type': 'budget_exceeded'}}"
            ),
            "budget_exceeded"
        );
        assert_eq!(
            code_of(None, "HTTP 403 model_not_allowed: nope"),
            "model_not_allowed"
        );
        assert_eq!(code_of(None, "kaput"), "agent_error");
    }

    #[test]
    fn a_model_no_provider_offers_is_named_as_the_cause() {
        let mut gone = facts();
        gone.offered = vec!["other".into()];
        for code in ["provider_error", "llm_unavailable", "agent_error"] {
            let f = explain(Some(code), "HTTP 400: Invalid model name", &gone);
            assert_eq!(f.code, "model_unavailable", "{code}");
            assert_eq!(f.reason, "No enabled provider offers fake-gpt any more.");
        }
        // A budget is still a budget.
        assert_eq!(
            explain(Some("budget_exceeded"), "", &gone).code,
            "budget_exceeded"
        );
        let mut none = gone;
        none.providers = 0;
        none.offered.clear();
        let f = explain(Some("llm_unavailable"), "", &none);
        assert!(f.hint.unwrap().contains("Add a provider"));
        // One fallback still offered: not the cause.
        let mut partly = facts();
        partly.models.push("gone-model".into());
        assert_eq!(
            explain(Some("provider_error"), "", &partly).code,
            "provider_error"
        );
    }

    #[test]
    fn long_details_are_cut_and_empty_ones_dropped() {
        let f = explain(None, &"x".repeat(2000), &facts());
        assert_eq!(f.detail.unwrap().chars().count(), MAX_DETAIL_CHARS + 1);
        assert_eq!(explain(None, "  ", &facts()).detail, None);
    }
}
