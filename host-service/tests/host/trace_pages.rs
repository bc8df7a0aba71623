//! Reading a long trace: pages with a cursor reach every event exactly once (also where many
//! events share one millisecond and a page ends among them), and per-day totals are counted on
//! the host over the whole range, not over one page of it.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host};

use crate::start;

struct Posted {
    id: String,
    at: DateTime<Utc>,
    kind: &'static str,
    tokens_in: i64,
    tokens_out: i64,
    cost: f64,
}

/// What one day's totals should be.
#[derive(Default)]
struct DayWant {
    events: u64,
    by_kind: BTreeMap<String, u64>,
    tokens_in: i64,
    tokens_out: i64,
    cost: f64,
}

/// 1200 events on one day, 1300 on the next (40 of them in one millisecond), a mix of kinds.
fn events(day_one: DateTime<Utc>) -> Vec<Posted> {
    let mut out = Vec::new();
    for i in 0..2500i64 {
        let day = if i < 1200 { 0 } else { 1 };
        // Spread over the day, a few seconds apart; the ties share one instant on day two.
        let at = if (2000..2040).contains(&i) {
            day_one + TimeDelta::days(1) + TimeDelta::hours(5) + TimeDelta::milliseconds(123)
        } else {
            day_one + TimeDelta::days(day) + TimeDelta::seconds(7 * (i % 1200) + 1)
        };
        let kind = ["message_in", "llm_call", "tool_call", "message_out"][(i % 4) as usize];
        let llm = kind == "llm_call";
        out.push(Posted {
            id: format!("ev-{i:05}"),
            at,
            kind,
            tokens_in: if llm { 10 + i % 7 } else { 0 },
            tokens_out: if llm { 3 + i % 5 } else { 0 },
            cost: if llm { 0.001 * (1 + i % 3) as f64 } else { 0.0 },
        });
    }
    out
}

async fn post_all(host: &Host, slug: &str, posted: &[Posted]) {
    for chunk in posted.chunks(1000) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|e| {
                let mut v = json!({
                    "id": e.id,
                    "agent_name": slug,
                    "kind": e.kind,
                    "created_at": e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "payload": {"text": e.id},
                });
                if e.kind == "llm_call" {
                    v["tokens_in"] = json!(e.tokens_in);
                    v["tokens_out"] = json!(e.tokens_out);
                    v["cost_usd"] = json!(e.cost);
                }
                v
            })
            .collect();
        let r = host
            .admin(Method::POST, "/api/trace/batch")
            .json(&json!({"events": batch}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
}

/// Every page of a listing, following `next_cursor`.
async fn all_pages(host: &Host, slug: &str, filter: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/api/agents/{slug}/trace?limit={limit}{filter}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page: Value = host
            .admin(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        out.extend(events.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("paging never ended");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[tokio::test]
async fn pages_reach_every_event_once_and_totals_count_the_whole_range() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Chatty").await;
    let slug = agent.slug.clone();
    let day_one = (Utc::now() - TimeDelta::days(3))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let posted = events(day_one);
    post_all(&host, &slug, &posted).await;

    // More events than one answer can hold (1000): the pages together hold each exactly once,
    // newest first.
    for limit in [1000, 333] {
        let seen = all_pages(&host, &slug, "", limit).await;
        let seen_ids = ids(&seen);
        let unique: HashSet<&String> = seen_ids.iter().collect();
        assert_eq!(
            unique.len(),
            seen_ids.len(),
            "an event came twice (limit {limit})"
        );
        assert_eq!(
            seen_ids.len(),
            posted.len(),
            "events missing (limit {limit})"
        );
        let order: Vec<(DateTime<Utc>, String)> = seen
            .iter()
            .map(|e| {
                let at = DateTime::parse_from_rfc3339(e["created_at"].as_str().unwrap()).unwrap();
                (
                    at.with_timezone(&Utc),
                    e["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(order, sorted, "not newest first (limit {limit})");
    }

    // 40 events in one millisecond, pages of 7 ending among them, inside a time window and
    // with a kind filter too.
    let tie = day_one + TimeDelta::days(1) + TimeDelta::hours(5) + TimeDelta::milliseconds(123);
    let window = format!(
        "&since={}&until={}",
        urlencode(&rfc(tie - TimeDelta::seconds(30))),
        urlencode(&rfc(tie + TimeDelta::seconds(30)))
    );
    let want: Vec<&Posted> = posted
        .iter()
        .filter(|e| (e.at - tie).num_milliseconds().abs() <= 30_000)
        .collect();
    assert!(want.len() >= 40);
    let seen = ids(&all_pages(&host, &slug, &window, 7).await);
    let mut want_ids: Vec<String> = want.iter().map(|e| e.id.clone()).collect();
    let mut got = seen.clone();
    want_ids.sort();
    got.sort();
    assert_eq!(got, want_ids, "the window, paged by 7");
    let llm_window = format!("{window}&kind=llm_call");
    let seen = ids(&all_pages(&host, &slug, &llm_window, 7).await);
    let want_llm = want.iter().filter(|e| e.kind == "llm_call").count();
    assert_eq!(seen.len(), want_llm);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), want_llm);

    // A cursor the host never gave out is refused.
    for bad in ["nonsense", "12:", "x:ev-1"] {
        let r = host
            .admin(
                Method::GET,
                &format!("/api/agents/{slug}/trace?cursor={}", urlencode(bad)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // Totals: every event of each day, by kind, with tokens and cost.
    let since = day_one - TimeDelta::hours(1);
    let until = Utc::now();
    let totals: Value = host
        .admin(
            Method::GET,
            &format!(
                "/api/agents/{slug}/trace/totals?since={}&until={}",
                urlencode(&rfc(since)),
                urlencode(&rfc(until))
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut want: BTreeMap<String, DayWant> = BTreeMap::new();
    for e in &posted {
        let day = want.entry(e.at.format("%Y-%m-%d").to_string()).or_default();
        day.events += 1;
        *day.by_kind.entry(e.kind.to_string()).or_default() += 1;
        day.tokens_in += e.tokens_in;
        day.tokens_out += e.tokens_out;
        day.cost += e.cost;
    }
    let days = totals["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{totals}");
    // Newest day first.
    let names: Vec<&str> = days.iter().map(|d| d["day"].as_str().unwrap()).collect();
    let mut expected: Vec<&String> = want.keys().collect();
    expected.reverse();
    assert_eq!(names, expected);
    for d in days {
        let w = &want[d["day"].as_str().unwrap()];
        assert_eq!(d["events"].as_u64().unwrap(), w.events, "{d}");
        let got: BTreeMap<String, u64> = serde_json::from_value(d["by_kind"].clone()).unwrap();
        assert_eq!(got, w.by_kind, "{d}");
        assert_eq!(d["tokens_in"].as_i64().unwrap(), w.tokens_in);
        assert_eq!(d["tokens_out"].as_i64().unwrap(), w.tokens_out);
        assert!(
            (d["cost_usd"].as_f64().unwrap() - w.cost).abs() < 1e-9,
            "{d}"
        );
    }
    // With a filter, the totals are of the filtered events.
    let llm: Value = host
        .admin(
            Method::GET,
            &format!(
                "/api/agents/{slug}/trace/totals?kind=llm_call&since={}&until={}",
                urlencode(&rfc(since)),
                urlencode(&rfc(until))
            ),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let llm_total: u64 = llm["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["events"].as_u64().unwrap())
        .sum();
    assert_eq!(
        llm_total as usize,
        posted.iter().filter(|e| e.kind == "llm_call").count()
    );

    // Ranges are bounded before any reading starts.
    for query in [
        format!(
            "since={}&until={}",
            urlencode(&rfc(until - TimeDelta::days(93))),
            urlencode(&rfc(until))
        ),
        format!(
            "since={}&until={}",
            urlencode(&rfc(until)),
            urlencode(&rfc(since))
        ),
        "since=yesterday".to_string(),
        "kind=telepathy".to_string(),
    ] {
        let r = host
            .admin(
                Method::GET,
                &format!("/api/agents/{slug}/trace/totals?{query}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}
