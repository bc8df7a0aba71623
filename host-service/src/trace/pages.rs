//! Paging through an agent's trace, built only on [`TraceStore::list`] (newest first, ordered by
//! `created_at` then `id`, both descending), and per-day totals over a range, from the hour index
//! where it knows the answer and from pages of events where it doesn't.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use taos_proto::trace::{TraceDayTotal, TraceEvent, TraceHourTotal, TraceKind};

use super::bucket_name;

use super::{TraceError, TraceQuery, TraceStore, MAX_LIST_LIMIT};

/// The longest range totals are computed over, in days (a range by channel or trace reads every
/// event in it).
pub const MAX_TOTALS_DAYS: i64 = 92;

/// Where a page ended: the last event's time and id. The next page holds the events strictly
/// after it in newest-first order. Written `<epoch ms>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    at: DateTime<Utc>,
    id: String,
}

impl Cursor {
    fn after(event: &TraceEvent) -> Cursor {
        Cursor {
            at: event.created_at,
            id: event.id.clone(),
        }
    }

    pub fn parse(text: &str) -> Result<Cursor, TraceError> {
        let bad = || TraceError::BadInput("cursor is not one this host gave out".into());
        let (ms, id) = text.split_once(':').ok_or_else(bad)?;
        let ms: i64 = ms.parse().map_err(|_| bad())?;
        if id.is_empty() || id.len() > super::MAX_ID_CHARS {
            return Err(bad());
        }
        Ok(Cursor {
            at: DateTime::from_timestamp_millis(ms).ok_or_else(bad)?,
            id: id.to_string(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.at.timestamp_millis(), self.id)
    }
}

/// One page of up to `query.limit` events after `cursor` (or from the newest), and the cursor
/// for the next page when this one is full.
///
/// Times are stored to the millisecond, so the events after `(t, id)` are those at exactly `t`
/// with a smaller id, then everything up to `t - 1 ms`. The first read can see at most
/// [`MAX_LIST_LIMIT`] events of one millisecond: more than that in a single millisecond can't
/// be paged past (only a client posting its own `created_at` can make them).
pub async fn page(
    store: &TraceStore,
    slug: &str,
    query: &TraceQuery,
    cursor: Option<&Cursor>,
) -> Result<(Vec<TraceEvent>, Option<Cursor>), TraceError> {
    let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
    let mut events = Vec::with_capacity(limit);
    match cursor {
        None => {
            events = store
                .list(
                    slug,
                    &TraceQuery {
                        limit,
                        ..query.clone()
                    },
                )
                .await?
        }
        Some(cursor) => {
            let in_range = query.since.is_none_or(|s| cursor.at >= s)
                && query.until.is_none_or(|u| cursor.at <= u);
            if in_range {
                let same_ms = TraceQuery {
                    since: Some(cursor.at),
                    until: Some(cursor.at),
                    limit: MAX_LIST_LIMIT,
                    ..query.clone()
                };
                events.extend(
                    store
                        .list(slug, &same_ms)
                        .await?
                        .into_iter()
                        .filter(|e| e.id < cursor.id)
                        .take(limit),
                );
            }
            if events.len() < limit {
                let before = cursor.at - TimeDelta::milliseconds(1);
                let older = TraceQuery {
                    until: Some(query.until.map_or(before, |u| u.min(before))),
                    limit: limit - events.len(),
                    ..query.clone()
                };
                if older.since.is_none_or(|s| s <= before) {
                    events.extend(store.list(slug, &older).await?);
                }
            }
        }
    }
    let next = (events.len() >= limit)
        .then(|| events.last().map(Cursor::after))
        .flatten();
    Ok((events, next))
}

/// What totals are summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Hour,
}

impl Period {
    fn key(self, at: DateTime<Utc>) -> String {
        match self {
            Period::Day => at.format("%Y-%m-%d").to_string(),
            Period::Hour => bucket_name(at),
        }
    }
}

#[derive(Debug, Default)]
struct Sums {
    events: u64,
    by_kind: BTreeMap<String, u64>,
    tokens_in: i64,
    tokens_out: i64,
    cost_usd: f64,
}

/// Per-UTC-day totals of every event matching `query` (its `limit` is ignored), newest day
/// first. `query.since` and `query.until` must both be set, at most [`MAX_TOTALS_DAYS`] apart.
pub async fn totals_per_day(
    store: &TraceStore,
    slug: &str,
    query: &TraceQuery,
) -> Result<Vec<TraceDayTotal>, TraceError> {
    let sums = sums(store, slug, query, Period::Day).await?;
    Ok(sums
        .into_iter()
        .rev()
        .map(|(day, s)| TraceDayTotal {
            day,
            events: s.events,
            by_kind: s.by_kind,
            tokens_in: s.tokens_in,
            tokens_out: s.tokens_out,
            cost_usd: s.cost_usd,
        })
        .collect())
}

/// Per-UTC-hour totals, newest hour first, by the same rules as [`totals_per_day`].
pub async fn totals_per_hour(
    store: &TraceStore,
    slug: &str,
    query: &TraceQuery,
) -> Result<Vec<TraceHourTotal>, TraceError> {
    let sums = sums(store, slug, query, Period::Hour).await?;
    Ok(sums
        .into_iter()
        .rev()
        .map(|(hour, s)| TraceHourTotal {
            hour,
            events: s.events,
            by_kind: s.by_kind,
            tokens_in: s.tokens_in,
            tokens_out: s.tokens_out,
            cost_usd: s.cost_usd,
        })
        .collect())
}

/// Whole hours come from the index without reading an event; only the hours the range cuts,
/// hours whose counts are not exact, and queries by channel or trace (not indexed) read events.
async fn sums(
    store: &TraceStore,
    slug: &str,
    query: &TraceQuery,
    period: Period,
) -> Result<BTreeMap<String, Sums>, TraceError> {
    let (Some(since), Some(until)) = (query.since, query.until) else {
        return Err(TraceError::BadInput("totals need since and until".into()));
    };
    if until < since || until - since > TimeDelta::days(MAX_TOTALS_DAYS) {
        return Err(TraceError::BadInput(format!(
            "until must be after since, at most {MAX_TOTALS_DAYS} days later"
        )));
    }
    let query = TraceQuery {
        limit: MAX_LIST_LIMIT,
        ..query.clone()
    };
    let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
    if query.channel_id.is_some() || query.trace_id.is_some() {
        add_events(store, slug, &query, period, &mut sums).await?;
        return Ok(sums);
    }
    let covered = store.cover(slug, since, until).await?;
    for (start, hour) in &covered.hours {
        for (kind, count) in TraceKind::ALL.iter().zip(hour.kinds.iter()) {
            if count.events == 0 || query.kind.is_some_and(|k| k != *kind) {
                continue;
            }
            let t = sums.entry(period.key(*start)).or_default();
            t.events += count.events;
            *t.by_kind.entry(kind.as_str().to_string()).or_insert(0) += count.events;
            t.tokens_in = t.tokens_in.saturating_add(count.tokens_in);
            t.tokens_out = t.tokens_out.saturating_add(count.tokens_out);
            t.cost_usd += count.cost_usd;
        }
    }
    for (from, to) in covered.read {
        let part = TraceQuery {
            since: Some(from),
            until: Some(to),
            ..query.clone()
        };
        add_events(store, slug, &part, period, &mut sums).await?;
    }
    Ok(sums)
}

/// Adds every event matching `query` to `sums`, reading them page by page.
async fn add_events(
    store: &TraceStore,
    slug: &str,
    query: &TraceQuery,
    period: Period,
    sums: &mut BTreeMap<String, Sums>,
) -> Result<(), TraceError> {
    let mut cursor = None;
    loop {
        let (events, next) = page(store, slug, query, cursor.as_ref()).await?;
        for e in &events {
            let t = sums.entry(period.key(e.created_at)).or_default();
            t.events += 1;
            *t.by_kind.entry(e.kind.as_str().to_string()).or_insert(0) += 1;
            t.tokens_in = t.tokens_in.saturating_add(e.tokens_in.unwrap_or(0).max(0));
            t.tokens_out = t
                .tokens_out
                .saturating_add(e.tokens_out.unwrap_or(0).max(0));
            t.cost_usd += e
                .cost_usd
                .filter(|c| c.is_finite() && *c > 0.0)
                .unwrap_or(0.0);
        }
        match next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}
