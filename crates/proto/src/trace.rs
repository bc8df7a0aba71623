//! Trace envelope v1: what agents report about their own work (messages, LLM calls, tool calls,
//! errors), stored per agent by the host and read back by the app.
//!
//! `NewTraceEvent` is what an agent posts; the host fills the missing `id`, `created_at` and
//! `agent_name` and stores a `TraceEvent`. Kinds are a closed set so a typo in an agent is an
//! error at the door instead of an event nobody can filter for.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The envelope version this crate reads and writes.
pub const TRACE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    MessageIn,
    MessageOut,
    LlmCall,
    ToolCall,
    ToolResult,
    Reasoning,
    Error,
    Lifecycle,
}

impl TraceKind {
    pub const ALL: [TraceKind; 8] = [
        TraceKind::MessageIn,
        TraceKind::MessageOut,
        TraceKind::LlmCall,
        TraceKind::ToolCall,
        TraceKind::ToolResult,
        TraceKind::Reasoning,
        TraceKind::Error,
        TraceKind::Lifecycle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::MessageIn => "message_in",
            TraceKind::MessageOut => "message_out",
            TraceKind::LlmCall => "llm_call",
            TraceKind::ToolCall => "tool_call",
            TraceKind::ToolResult => "tool_result",
            TraceKind::Reasoning => "reasoning",
            TraceKind::Error => "error",
            TraceKind::Lifecycle => "lifecycle",
        }
    }

    pub fn parse(text: &str) -> Option<TraceKind> {
        TraceKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn schema_version() -> u32 {
    TRACE_SCHEMA_VERSION
}

/// One stored trace event, as returned by `GET /api/agents/{name}/trace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceEvent {
    /// Envelope version, 1.
    #[serde(default = "schema_version")]
    pub v: u32,
    pub id: String,
    /// Groups the events of one piece of work (e.g. one incoming message and everything it caused).
    pub trace_id: Option<String>,
    pub parent_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub agent_name: String,
    pub kind: TraceKind,
    pub channel_id: Option<String>,
    pub thread_id: Option<String>,
    pub backend_name: Option<String>,
    pub model: Option<String>,
    pub duration_ms: Option<i64>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub cost_usd: Option<f64>,
    pub error: Option<String>,
    /// Kind-specific details; always a JSON object.
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    /// The time the agent gave, when it was more than a day from the host's clock: then
    /// `created_at` is that time clamped to the host's now ± 24 h (which also picks the hourly
    /// bucket), and this keeps what the agent said. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_created_at: Option<DateTime<Utc>>,
}

/// Body of `POST /api/trace` (one event). The host fills what is missing: `id` (a UUIDv7),
/// `created_at` (now), `agent_name` (the calling agent), `v` (1). A `created_at` more than 24 h
/// from the host's clock is clamped to that window; the given time is kept as `agent_created_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTraceEvent {
    #[serde(default)]
    pub v: Option<u32>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    /// RFC 3339, or epoch seconds as a number (`1764237600` or `1764237600.25`), which is
    /// what agents written for TinyAgentOS send.
    #[serde(default, deserialize_with = "rfc3339_or_epoch")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub agent_name: Option<String>,
    pub kind: TraceKind,
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub thread_id: Option<String>,
    #[serde(default)]
    pub backend_name: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub tokens_in: Option<i64>,
    #[serde(default)]
    pub tokens_out: Option<i64>,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
}

/// A time as RFC 3339 text or as epoch seconds (an integer or a float), like the `since` and
/// `until` query parameters. `null` is no time.
fn rfc3339_or_epoch<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let out_of_range = || D::Error::custom("created_at is out of range");
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(text) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| D::Error::custom(format!("created_at is not RFC 3339: {e}"))),
        serde_json::Value::Number(n) => {
            if let Some(secs) = n.as_i64() {
                return DateTime::from_timestamp(secs, 0)
                    .map(Some)
                    .ok_or_else(out_of_range);
            }
            let secs = n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(out_of_range)?;
            let whole = secs.floor();
            // Floats carry about a microsecond at today's epoch; round to that, not below.
            let micros = ((secs - whole) * 1e6).round().min(999_999.0) as u32;
            if whole < i64::MIN as f64 || whole > i64::MAX as f64 {
                return Err(out_of_range());
            }
            DateTime::from_timestamp(whole as i64, micros * 1000)
                .map(Some)
                .ok_or_else(out_of_range)
        }
        _ => Err(D::Error::custom(
            "created_at must be an RFC 3339 string or epoch seconds",
        )),
    }
}

/// Several events in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TraceBatch {
    pub events: Vec<NewTraceEvent>,
}

/// Answer to a trace post, sent only once the events are durable. `ids` are in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceAck {
    pub ids: Vec<String>,
    pub agent_name: String,
    pub schema_version: u32,
}

/// Answer to a trace read: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceList {
    pub agent_name: String,
    pub schema_version: u32,
    pub events: Vec<TraceEvent>,
    /// Pass back as `cursor` for the next, older page. Present whenever this page is full (the
    /// next one may then be empty); absent when this page is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One UTC day of an agent's trace, summed on the host over every event of the day in range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceDayTotal {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub events: u64,
    /// Events per kind (`llm_call` → 12, …); kinds without events are left out.
    pub by_kind: std::collections::BTreeMap<String, u64>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

/// Answer to `GET /api/agents/{slug}/trace/totals`: per-day totals over `[since, until]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceTotals {
    pub agent_name: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Newest day first; days without events are left out.
    pub days: Vec<TraceDayTotal>,
}

/// One UTC hour of an agent's trace, summed like [`TraceDayTotal`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceHourTotal {
    /// `YYYY-MM-DDTHH` (UTC), the hour that starts then.
    pub hour: String,
    pub events: u64,
    /// Events per kind; kinds without events are left out.
    pub by_kind: std::collections::BTreeMap<String, u64>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

/// Answer to `GET /api/agents/{slug}/trace/histogram`: per-hour totals over `[since, until]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceHistogram {
    pub agent_name: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Newest hour first; hours without events are left out.
    pub hours: Vec<TraceHourTotal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_is_rejected() {
        for kind in TraceKind::ALL {
            assert_eq!(TraceKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(TraceKind::parse("llm-call"), None);
        let err = serde_json::from_str::<NewTraceEvent>(r#"{"kind":"telepathy"}"#);
        assert!(err.is_err());
    }

    #[test]
    fn events_without_agent_time_read_and_write_as_before() {
        let old = r#"{"v":1,"id":"a","trace_id":null,"parent_id":null,"created_at":"2026-01-01T00:00:00Z","agent_name":"x","kind":"error","channel_id":null,"thread_id":null,"backend_name":null,"model":null,"duration_ms":null,"tokens_in":null,"tokens_out":null,"cost_usd":null,"error":null,"payload":{}}"#;
        let event: TraceEvent = serde_json::from_str(old).unwrap();
        assert_eq!(event.agent_created_at, None);
        assert_eq!(serde_json::to_string(&event).unwrap(), old);
    }

    #[test]
    fn new_event_defaults_and_rejects_unknown_fields() {
        let new: NewTraceEvent = serde_json::from_str(r#"{"kind":"llm_call"}"#).unwrap();
        assert_eq!(new.kind, TraceKind::LlmCall);
        assert_eq!(new.id, None);
        assert_eq!(new.payload, serde_json::json!({}));
        let err = serde_json::from_str::<NewTraceEvent>(r#"{"kind":"error","colour":"red"}"#);
        assert!(err.is_err());
    }

    #[test]
    fn created_at_is_rfc3339_or_epoch_seconds() {
        let at = |json: &str| {
            serde_json::from_str::<NewTraceEvent>(&format!(
                r#"{{"kind":"error","created_at":{json}}}"#
            ))
            .map(|e| e.created_at)
        };
        let expected = DateTime::parse_from_rfc3339("2025-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(at(r#""2025-11-27T10:00:00Z""#).unwrap(), Some(expected));
        assert_eq!(
            at(r#""2025-11-27T12:00:00+02:00""#).unwrap(),
            Some(expected)
        );
        assert_eq!(at("1764237600").unwrap(), Some(expected));
        assert_eq!(at("1764237600.0").unwrap(), Some(expected));
        let quarter = at("1764237600.25").unwrap().unwrap();
        assert_eq!(quarter, expected + chrono::Duration::milliseconds(250));
        // TinyAgentOS agents send time.time(): microseconds survive.
        let precise = at("1764237600.123456").unwrap().unwrap();
        assert_eq!(precise, expected + chrono::Duration::microseconds(123_456));
        assert_eq!(at("null").unwrap(), None);
        for bad in [
            r#""yesterday""#,
            r#""1764237600""#,
            "true",
            "[1]",
            "1e300",
            "-1e300",
        ] {
            assert!(at(bad).is_err(), "{bad} was accepted");
        }
        let missing: NewTraceEvent = serde_json::from_str(r#"{"kind":"error"}"#).unwrap();
        assert_eq!(missing.created_at, None);
    }
}
