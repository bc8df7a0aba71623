//! Other users than the owner: they see only the channels they belong to and can't manage
//! agents.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, Session, WsClient};

use crate::start;

#[tokio::test]
async fn a_non_owner_user_sees_only_their_channels_and_cannot_manage_agents() {
    let host = start().await;
    host.setup_owner().await;
    let (_agent, record) = AgentClient::create(&host, "Private").await;
    let owner_dm = record["dm_channel_id"].as_str().unwrap().to_string();
    host.admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": owner_dm, "content": "my secret"}))
        .send()
        .await
        .unwrap();
    host.create_user("guest", "guest password 1");
    let guest = Session::from_response(&host, host.login("guest", "guest password 1").await).await;

    let channels: Vec<Value> = guest
        .request(Method::GET, "/api/chat/channels")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(channels.is_empty(), "{channels:?}");
    for path in [
        format!("/api/chat/channels/{owner_dm}"),
        format!("/api/chat/channels/{owner_dm}/messages?after_seq=0"),
    ] {
        assert_eq!(
            guest
                .request(Method::GET, &path)
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let join = guest
        .request(
            Method::POST,
            &format!("/api/chat/channels/{owner_dm}/members"),
        )
        .json(&json!({"action": "add", "member": "user:guest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(join.status(), StatusCode::NOT_FOUND);
    let delete = guest
        .request(Method::DELETE, &format!("/api/chat/channels/{owner_dm}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NOT_FOUND);
    let post = guest
        .request(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": owner_dm, "content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
    for (method, path, body) in [
        (Method::POST, "/api/agents", json!({"name": "Mine"})),
        (Method::POST, "/api/agents/private/token/rotate", json!({})),
        (
            Method::PATCH,
            "/api/agents/private",
            json!({"paused": true}),
        ),
    ] {
        let r = guest
            .request(method, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(
        guest
            .request(Method::GET, "/api/agents/private/trace")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // A socket can't peek either.
    let cookie = guest.cookie();
    let mut ws = WsClient::connect_with(&host, vec![("cookie".into(), cookie)])
        .await
        .unwrap();
    ws.send(json!({"type": "subscribe", "channel_id": owner_dm, "after_seq": 0}))
        .await;
    let answer = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "not_found");

    // Their own channel works.
    let own: Value = guest
        .request(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "guest room"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let said = guest
        .request(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": own["id"], "content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(said.status(), StatusCode::CREATED);
    let mine: Vec<Value> = guest
        .request(Method::GET, "/api/chat/channels")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
}
