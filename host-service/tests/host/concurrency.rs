//! Races the host must settle one way: the same single-use or idempotent thing presented
//! twice at the same moment.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Host};

use crate::start;

/// Sends `make()` twice at once (as close together as two requests on separate connections
/// can get), `rounds` times over, and hands back each pair of answers.
async fn twice<F, Fut>(rounds: usize, make: F) -> Vec<[(StatusCode, Value); 2]>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let (a, b) = tokio::join!(make(round), make(round));
        let read = |r: reqwest::Result<reqwest::Response>| async move {
            let r = r.expect("the host answers");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        };
        pairs.push([read(a).await, read(b).await]);
    }
    pairs
}

async fn devices(host: &Host) -> Vec<Value> {
    host.admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn one_pairing_token_used_twice_at_once_pairs_one_device() {
    let host = start().await;
    let mut tokens = Vec::new();
    for _ in 0..10 {
        tokens.push(host.pairing_token().await);
    }
    let pairs = twice(tokens.len(), |round| {
        host.client()
            .post(host.url("/api/devices/pair"))
            .json(&json!({"token": tokens[round], "device_name": format!("racer {round}"), "platform": "linux"}))
            .send()
    })
    .await;
    for (round, pair) in pairs.iter().enumerate() {
        let statuses = [pair[0].0, pair[1].0];
        let won = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(won, 1, "round {round}: exactly one pairs: {pair:?}");
        assert!(
            statuses.contains(&StatusCode::UNAUTHORIZED) || statuses.contains(&StatusCode::GONE),
            "round {round}: the other is refused: {pair:?}"
        );
    }
    assert_eq!(
        devices(&host).await.len(),
        tokens.len(),
        "one device per token"
    );
}

/// Two refreshes with one token at once look, to the host, like a lost answer and its retry:
/// both may be answered, but only one set of credentials stays live, and the device is not
/// revoked for it.
#[tokio::test]
async fn one_refresh_token_used_twice_at_once_leaves_one_live_set_of_credentials() {
    let host = start().await;
    for round in 0..10 {
        let device = host.pair_device(&format!("twin {round}")).await;
        let token = device["refresh_token"].as_str().unwrap().to_string();
        let pair = &twice(1, |_| {
            host.client()
                .post(host.url("/api/auth/refresh"))
                .json(&json!({"refresh_token": token}))
                .send()
        })
        .await[0];
        let answered: Vec<&Value> = pair
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        assert!(!answered.is_empty(), "round {round}: {pair:?}");
        // Exactly one of the access tokens handed out works.
        let mut live = Vec::new();
        for body in &answered {
            let r = host
                .client()
                .get(host.url("/api/auth/status"))
                .bearer_auth(body["access_token"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            let status: Value = r.json().await.unwrap();
            if status["authenticated"] == true {
                live.push(*body);
            }
        }
        assert_eq!(live.len(), 1, "round {round}: one live set: {pair:?}");
        // The live set carries on: its refresh token works and the device is still paired.
        let next = host
            .client()
            .post(host.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": live[0]["refresh_token"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(next.status(), StatusCode::OK, "round {round}");
        assert!(
            devices(&host)
                .await
                .iter()
                .any(|d| d["id"] == device["device_id"]),
            "round {round}: the device is still paired"
        );
    }
}

#[tokio::test]
async fn two_sends_with_one_client_id_at_once_store_one_message_and_one_delivery() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Listener").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    let pairs = twice(10, |round| {
        host.admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": format!("once {round}"), "client_id": format!("dup-{round}")}))
            .send()
    })
    .await;
    for (round, pair) in pairs.iter().enumerate() {
        assert!(
            pair.iter().all(|(s, _)| s.is_success()),
            "round {round}: both are answered: {pair:?}"
        );
        assert_eq!(
            pair[0].1["id"], pair[1].1["id"],
            "round {round}: the same message"
        );
    }
    let messages: Vec<Value> = host
        .admin(
            Method::GET,
            &format!("/api/chat/channels/{dm}/messages?limit=500"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(messages.len(), 10, "{messages:?}");
    // One delivery each, in order, then the sentinel.
    host.admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "sentinel"}))
        .send()
        .await
        .unwrap();
    for expected in (0..10)
        .map(|r| format!("once {r}"))
        .chain(["sentinel".to_string()])
    {
        let event = stream
            .next(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["text"], expected.as_str());
    }
}

#[tokio::test]
async fn two_final_answers_for_one_turn_at_once_make_one_reply() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Doubler").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    let mut turns = Vec::new();
    for round in 0..10 {
        host.admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": format!("question {round}")}))
            .send()
            .await
            .unwrap();
        let event = stream
            .next(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let data: Value = serde_json::from_str(&event.data).unwrap();
        turns.push(data["trace_id"].as_str().unwrap().to_string());
    }
    let pairs = twice(turns.len(), |round| {
        agent
            .request(Method::POST, &format!("/api/openclaw/sessions/{}/reply", "doubler"))
            .json(&json!({"kind": "final", "trace_id": turns[round], "content": format!("answer {round}")}))
            .send()
    })
    .await;
    for (round, pair) in pairs.iter().enumerate() {
        let statuses = [pair[0].0, pair[1].0];
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::ACCEPTED)
                .count(),
            1,
            "round {round}: one answer is taken: {pair:?}"
        );
        assert!(
            statuses.contains(&StatusCode::BAD_REQUEST),
            "round {round}: the other is refused: {pair:?}"
        );
    }
    let messages: Vec<Value> = host
        .admin(
            Method::GET,
            &format!("/api/chat/channels/{dm}/messages?limit=500"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answers: Vec<&Value> = messages
        .iter()
        .filter(|m| m["author_id"] == "doubler")
        .collect();
    assert_eq!(answers.len(), 10, "one reply per turn: {answers:?}");
    assert!(answers.iter().all(|m| m["state"] == "complete"));
}
