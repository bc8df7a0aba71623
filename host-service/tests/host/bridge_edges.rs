//! Bridge edge cases: token rotation, deletes during streaming, replies out of order, threads,
//! resume without or with a bogus Last-Event-ID, restarts mid-stream, racing creations.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host, HostOptions, SseNext};

use crate::{start, BIN};

const WAIT: Duration = Duration::from_secs(10);

async fn say(host: &Host, channel: &str, body: Value) -> Value {
    let mut body = body;
    body["channel_id"] = json!(channel);
    let r = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn delivery(stream: &mut taos_e2e::SseReader) -> Value {
    serde_json::from_str(&stream.next(WAIT).await.expect("a delivery").data).unwrap()
}

#[tokio::test]
async fn rotating_the_token_ends_the_stream_opened_with_the_old_one() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Leaky").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut old_stream = agent.events(None).await;
    let rotated = host
        .admin(Method::POST, "/api/agents/leaky/token/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    say(&host, &dm, json!({"content": "secret plans"})).await;
    // The old holder's stream is closed, and got nothing before it closed.
    match old_stream.next_or_end(WAIT).await {
        SseNext::Ended => {}
        SseNext::Event(e) => panic!("the old token's stream got {e:?}"),
        SseNext::Waiting => panic!("the old token's stream is still open"),
    }
}

#[tokio::test]
async fn a_message_deleted_while_streaming_stays_deleted() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Streamer").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    say(&host, &dm, json!({"content": "talk"})).await;
    let d = delivery(&mut stream).await;
    let r: Value = agent
        .reply(json!({"kind": "delta", "trace_id": d["trace_id"], "content": "blah"}))
        .await
        .json()
        .await
        .unwrap();
    let placeholder = r["message_id"].as_str().unwrap().to_string();
    let del = host
        .admin(Method::DELETE, &format!("/api/chat/messages/{placeholder}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let fin = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"], "content": "blah blah"}))
        .await;
    assert_eq!(fin.status(), StatusCode::NOT_FOUND);
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = messages
        .iter()
        .find(|m| m["id"] == placeholder.as_str())
        .unwrap();
    assert!(m["deleted_at"].is_string());
    assert_eq!(m["content"], "");
    // The delivery is settled: it is not resent to a fresh stream, and more answers are refused.
    let again = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"], "content": "x"}))
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    drop(stream);
    let mut fresh = agent.events(None).await;
    say(&host, &dm, json!({"content": "sentinel"})).await;
    assert_eq!(
        delivery(&mut fresh).await["text"],
        "sentinel",
        "the settled delivery is not resent"
    );
}

#[tokio::test]
async fn answers_after_the_answer_are_refused() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Done").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    say(&host, &dm, json!({"content": "q"})).await;
    let d = delivery(&mut stream).await;
    let fin: Value = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"], "content": "a"}))
        .await
        .json()
        .await
        .unwrap();
    for kind in ["error", "delta", "final"] {
        let r = agent.reply(json!({"kind": kind, "trace_id": d["trace_id"], "content": "late", "error": "late"})).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{kind}");
    }
    let m: Value = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m["id"] == fin["message_id"])
        .unwrap();
    assert_eq!(m["state"], "complete");
    // Tool events are traces only and always welcome; unknown kinds are not.
    let tool = agent.reply(json!({"kind": "tool_call", "trace_id": d["trace_id"], "tool": "search", "args": {"q": "x"}})).await;
    assert_eq!(tool.status(), StatusCode::ACCEPTED);
    let unknown = agent
        .reply(json!({"kind": "shout", "trace_id": d["trace_id"]}))
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let wrong_channel = agent
        .reply(json!({"kind": "tool_call", "trace_id": d["trace_id"], "channel_id": "elsewhere"}))
        .await;
    assert_eq!(wrong_channel.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn replies_stay_in_their_thread() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Threader").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    let root = say(&host, &dm, json!({"content": "root"})).await;
    let d0 = delivery(&mut stream).await;
    agent
        .reply(json!({"kind": "final", "trace_id": d0["trace_id"], "content": "top-level answer"}))
        .await;
    say(
        &host,
        &dm,
        json!({"content": "in thread", "thread_id": root["id"]}),
    )
    .await;
    let d = delivery(&mut stream).await;
    assert_eq!(d["thread_id"], root["id"]);
    let r: Value = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"], "content": "threaded answer"}))
        .await
        .json()
        .await
        .unwrap();
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = messages
        .iter()
        .find(|m| m["id"] == r["message_id"])
        .unwrap();
    assert_eq!(answer["thread_id"], root["id"]);
}

#[tokio::test]
async fn a_fresh_stream_gets_only_unanswered_deliveries_and_a_bogus_last_event_id_is_not_trusted() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Picky").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    for text in ["answered", "pending"] {
        say(&host, &dm, json!({"content": text})).await;
    }
    let first = delivery(&mut stream).await;
    delivery(&mut stream).await;
    agent
        .reply(json!({"kind": "final", "trace_id": first["trace_id"], "content": "ok"}))
        .await;
    drop(stream);

    let mut fresh = agent.events(None).await;
    assert_eq!(delivery(&mut fresh).await["text"], "pending");
    say(&host, &dm, json!({"content": "sentinel"})).await;
    assert_eq!(
        delivery(&mut fresh).await["text"],
        "sentinel",
        "the answered one is not resent"
    );
    drop(fresh);
    let mut bogus = agent.events(Some("999999")).await;
    assert_eq!(
        delivery(&mut bogus).await["text"],
        "pending",
        "an id from the future falls back"
    );
    drop(bogus);
    let garbage = agent.events_for("picky", Some("soon")).await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_restart_mid_stream_never_completes_a_reply_with_only_its_tail() {
    let mut host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Phoenix").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    say(&host, &dm, json!({"content": "tell me a story"})).await;
    let d = delivery(&mut stream).await;
    agent
        .reply(json!({"kind": "delta", "trace_id": d["trace_id"], "content": "Once upon "}))
        .await;
    drop(stream);
    assert_eq!(host.terminate().await.unwrap(), Some(0));
    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let agent = agent.with_base(&host.agent_url);
    let tail = agent
        .reply(json!({"kind": "delta", "trace_id": d["trace_id"], "content": "a time."}))
        .await;
    assert_eq!(tail.status(), StatusCode::ACCEPTED);
    let lazy = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"]}))
        .await;
    assert_eq!(
        lazy.status(),
        StatusCode::BAD_REQUEST,
        "the tail alone must not become the reply"
    );
    let full: Value = agent
        .reply(json!({"kind": "final", "trace_id": d["trace_id"], "content": "Once upon a time."}))
        .await
        .json()
        .await
        .unwrap();
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let story = messages
        .iter()
        .find(|m| m["id"] == full["message_id"])
        .unwrap();
    assert_eq!(story["content"], "Once upon a time.");
    assert_eq!(story["state"], "complete");
}

#[tokio::test]
async fn racing_creations_with_one_name_all_succeed_with_distinct_slugs() {
    let host = start().await;
    host.setup_owner().await;
    let creations = (0..6).map(|_| {
        let request = host
            .admin(Method::POST, "/api/agents")
            .json(&json!({"name": "Twin"}));
        async move { request.send().await.unwrap() }
    });
    let mut slugs = Vec::new();
    for r in futures_util::future::join_all(creations).await {
        assert_eq!(r.status(), StatusCode::CREATED);
        slugs.push(
            r.json::<Value>().await.unwrap()["agent"]["slug"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    slugs.sort();
    slugs.dedup();
    assert_eq!(slugs.len(), 6, "{slugs:?}");
}
