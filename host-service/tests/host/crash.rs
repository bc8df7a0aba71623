//! Durable promises under SIGKILL: what the host acknowledged is there after a crash, once.
//! (Deploy, the trace store and atomic config writes have theirs in deploy.rs, traces.rs and
//! files.rs; archive, restore and purge in lifecycle_crash.rs.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, SseReader};

use crate::{start, BIN};

const WAIT: Duration = Duration::from_secs(10);

/// The same data dir, a new process: what a restart after a crash sees.
async fn restart(host: &Host) -> Host {
    Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("the host starts again on its data")
}

async fn post(host: &Host, channel: &str, text: &str) -> StatusCode {
    host.admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": channel, "content": text}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn next_text(stream: &mut SseReader) -> String {
    let event = stream.next(WAIT).await.expect("a delivery");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    data["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_acknowledged_delivery_survives_a_crash_and_arrives_once() {
    let mut host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Survivor").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    // One delivery seen before the crash, two more stored while the agent was away.
    let mut stream = agent.events(None).await;
    assert_eq!(post(&host, &dm, "one").await, StatusCode::CREATED);
    let first = stream.next(WAIT).await.expect("first delivery");
    let seen = first.id.clone().unwrap();
    drop(stream);
    for text in ["two", "three"] {
        assert_eq!(post(&host, &dm, text).await, StatusCode::CREATED);
    }
    host.kill9().await;

    let host = restart(&host).await;
    let agent = agent.with_base(&host.agent_url);
    // Resuming after what it saw: exactly the two it missed, then what comes next.
    let mut resumed = agent.events(Some(&seen)).await;
    assert_eq!(next_text(&mut resumed).await, "two");
    assert_eq!(next_text(&mut resumed).await, "three");
    assert_eq!(post(&host, &dm, "sentinel").await, StatusCode::CREATED);
    assert_eq!(next_text(&mut resumed).await, "sentinel", "no duplicates");
    drop(resumed);
    // A fresh stream (no Last-Event-ID) gets every unanswered delivery, each once.
    let mut fresh = agent.events(None).await;
    for expected in ["one", "two", "three", "sentinel"] {
        assert_eq!(next_text(&mut fresh).await, expected);
    }
}

#[tokio::test]
async fn an_answer_cut_by_a_crash_is_finished_once_after_restart() {
    let mut host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Storyteller").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    assert_eq!(post(&host, &dm, "tell me").await, StatusCode::CREATED);
    let delivery: Value = serde_json::from_str(&stream.next(WAIT).await.unwrap().data).unwrap();
    let trace_id = delivery["trace_id"].as_str().unwrap().to_string();
    let r = agent
        .reply(json!({"kind": "delta", "trace_id": trace_id, "content": "Once upon "}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    drop(stream);
    host.kill9().await;

    let host = restart(&host).await;
    let agent = agent.with_base(&host.agent_url);
    // The turn was never answered: a reconnecting agent gets it again, the same turn.
    let mut fresh = agent.events(None).await;
    let again: Value = serde_json::from_str(&fresh.next(WAIT).await.unwrap().data).unwrap();
    assert_eq!(again["trace_id"], trace_id.as_str());
    let fin = agent
        .reply(json!({"kind": "final", "trace_id": trace_id, "content": "Once upon a time."}))
        .await;
    assert_eq!(fin.status(), StatusCode::ACCEPTED);
    let twice = agent
        .reply(json!({"kind": "final", "trace_id": trace_id, "content": "Once upon a time."}))
        .await;
    assert_eq!(
        twice.status(),
        StatusCode::BAD_REQUEST,
        "one answer per turn"
    );
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answers: Vec<&Value> = messages
        .iter()
        .filter(|m| m["author_id"] == "storyteller")
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "one answer, not a duplicate: {messages:?}"
    );
    assert_eq!(answers[0]["content"], "Once upon a time.");
    assert_eq!(answers[0]["state"], "complete");
    // The turn is settled: a fresh stream starts with what comes next.
    drop(fresh);
    let mut after = agent.events(None).await;
    assert_eq!(post(&host, &dm, "next").await, StatusCode::CREATED);
    assert_eq!(next_text(&mut after).await, "next");
}

/// Eight writers post to two channels until the host is killed mid-burst. Every message the
/// host acknowledged is there after the restart, once, with per-channel seqs that have no gaps,
/// and each one stored in the agent's DM (acknowledged or not) is delivered to the agent once.
#[tokio::test]
async fn a_crash_during_a_burst_of_posts_keeps_every_acknowledged_message() {
    let mut host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Witness").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let group: Value = host
        .admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "burst", "members": []}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group = group["id"].as_str().unwrap().to_string();

    // client_id → (channel, text) of every post the host answered 201.
    let acked: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let channel = if writer % 2 == 0 {
            dm.clone()
        } else {
            group.clone()
        };
        let acked = acked.clone();
        let request = host.admin(Method::POST, "/api/chat/messages");
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let client_id = format!("w{writer}-{i}");
                let text = format!("burst {writer}-{i}");
                let Some(attempt) = request.try_clone() else {
                    return;
                };
                let sent = attempt
                    .json(&json!({"channel_id": channel, "content": text, "client_id": client_id}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(client_id, (channel.clone(), text));
                    }
                    // The host is gone: this writer is done.
                    _ => return,
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.kill9().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let host = restart(&host).await;
    let mut stored: HashMap<String, Vec<Value>> = HashMap::new();
    for channel in [&dm, &group] {
        let mut after = 0;
        loop {
            let page: Vec<Value> = host
                .admin(
                    Method::GET,
                    &format!("/api/chat/channels/{channel}/messages?after_seq={after}&limit=500"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last["seq"].as_i64().unwrap();
            stored.entry(channel.clone()).or_default().extend(page);
        }
    }
    for (channel, messages) in &stored {
        let seqs: Vec<i64> = messages
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (seqs[0]..seqs[0] + seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "gap-free seqs in {channel}");
    }
    let by_client: BTreeMap<&str, Vec<&Value>> =
        stored
            .values()
            .flatten()
            .fold(BTreeMap::new(), |mut map, m| {
                if let Some(id) = m["client_id"].as_str() {
                    map.entry(id).or_insert_with(Vec::new).push(m);
                }
                map
            });
    for (client_id, (channel, text)) in &acked {
        let copies = by_client.get(client_id.as_str()).map(Vec::len).unwrap_or(0);
        assert_eq!(copies, 1, "acknowledged {client_id} stored {copies} times");
        let m = by_client[client_id.as_str()][0];
        assert_eq!(m["channel_id"], channel.as_str());
        assert_eq!(m["content"], text.as_str());
    }

    // Every acknowledged DM message reaches the agent, once, before what comes after.
    let agent = agent.with_base(&host.agent_url);
    let mut stream = agent.events(None).await;
    assert_eq!(post(&host, &dm, "sentinel").await, StatusCode::CREATED);
    let mut delivered: HashMap<String, usize> = HashMap::new();
    loop {
        let text = next_text(&mut stream).await;
        if text == "sentinel" {
            break;
        }
        *delivered.entry(text).or_default() += 1;
    }
    for (client_id, (channel, text)) in &acked {
        if channel == &dm {
            assert_eq!(
                delivered.get(text).copied().unwrap_or(0),
                1,
                "acknowledged {client_id} delivered once"
            );
        }
    }
    assert!(delivered.values().all(|&n| n == 1), "no duplicates");
    // A message and its deliveries commit together: every burst message the crash left
    // stored, acknowledged or not, reached the agent (none stored without its delivery).
    for m in &stored[&dm] {
        if m["client_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('w'))
        {
            let text = m["content"].as_str().unwrap();
            assert_eq!(
                delivered.get(text).copied().unwrap_or(0),
                1,
                "stored {text:?} delivered once"
            );
        }
    }
}
