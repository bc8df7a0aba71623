//! Chat over HTTP: channels, members, messages, catch-up, and bad input.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::{AgentClient, WsClient};

use crate::start;

async fn group(host: &taos_e2e::Host, members: Value) -> String {
    let r = host
        .admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "room", "members": members}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn post(host: &taos_e2e::Host, body: Value) -> reqwest::Response {
    host.admin(Method::POST, "/api/chat/messages")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn after(host: &taos_e2e::Host, channel: &str, seq: i64) -> Vec<Value> {
    host.admin(
        Method::GET,
        &format!("/api/chat/channels/{channel}/messages?after_seq={seq}"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

#[tokio::test]
async fn messages_are_idempotent_by_client_id_and_numbered_per_channel() {
    let host = start().await;
    host.setup_owner().await;
    let a = group(&host, json!([])).await;
    let b = group(&host, json!([])).await;
    let first = post(
        &host,
        json!({"channel_id": a, "content": "hi", "client_id": "abc-1"}),
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["author_id"], "user:owner");
    assert_eq!(first["author_type"], "user");
    let again = post(
        &host,
        json!({"channel_id": a, "content": "hi", "client_id": "abc-1"}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(after(&host, &a, 0).await.len(), 1, "no duplicate");

    let other = post(&host, json!({"channel_id": b, "content": "elsewhere"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(other["seq"], 1, "sequence numbers are per channel");
    let second = post(&host, json!({"channel_id": a, "content": "again"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(second["seq"], first["seq"].as_i64().unwrap() + 1);
}

#[tokio::test]
async fn edits_and_deletes_take_new_seqs_and_show_up_in_catch_up() {
    let host = start().await;
    let session = host.setup_owner().await;
    let ch = group(&host, json!([])).await;
    let m: Value = post(&host, json!({"channel_id": ch, "content": "draft"}))
        .await
        .json()
        .await
        .unwrap();
    let id = m["id"].as_str().unwrap();
    let seq0 = m["seq"].as_i64().unwrap();
    let edited: Value = session
        .request(Method::PATCH, &format!("/api/chat/messages/{id}"))
        .json(&json!({"content": "final"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edited["content"], "final");
    assert!(edited["edited_at"].is_string());
    let changes = after(&host, &ch, seq0).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["content"], "final");

    let delete = session
        .request(Method::DELETE, &format!("/api/chat/messages/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    let tombstones = after(&host, &ch, seq0 + 1).await;
    assert_eq!(tombstones.len(), 1);
    assert!(tombstones[0]["deleted_at"].is_string());
    assert_eq!(tombstones[0]["content"], "", "deleted content is gone");
    let twice = session
        .request(Method::DELETE, &format!("/api/chat/messages/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_authors_edit_and_agents_messages_are_theirs() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Writer").await;
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();
    let mut stream = agent.events(None).await;
    post(&host, json!({"channel_id": dm, "content": "say something"})).await;
    let data: Value =
        serde_json::from_str(&stream.next(Duration::from_secs(10)).await.unwrap().data).unwrap();
    let reply: Value = agent
        .reply(json!({"kind": "final", "trace_id": data["trace_id"], "content": "something"}))
        .await
        .json()
        .await
        .unwrap();
    let agent_message = reply["message_id"].as_str().unwrap();
    let edit = host
        .admin(
            Method::PATCH,
            &format!("/api/chat/messages/{agent_message}"),
        )
        .json(&json!({"content": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), StatusCode::FORBIDDEN);
    // The owner may delete any message in their host.
    let delete = host
        .admin(
            Method::DELETE,
            &format!("/api/chat/messages/{agent_message}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn bad_messages_are_refused_and_change_nothing() {
    let host = start().await;
    host.setup_owner().await;
    let ch = group(&host, json!([])).await;
    let cases = [
        (
            json!({"channel_id": ch, "content": ""}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": ch, "content": "   "}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": ch, "content": "x".repeat(40_000)}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": ch, "content": "x", "client_id": "../../etc"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": ch, "content": "x", "thread_id": "no-such-message"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": "no-such-channel", "content": "x"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"channel_id": ch, "content": "x", "author_id": "someone-else"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"channel_id": ch, "content": 5}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, status) in cases {
        assert_eq!(post(&host, body.clone()).await.status(), status, "{body}");
    }
    assert!(after(&host, &ch, 0).await.is_empty());

    // Not a member: remove the owner, then try.
    let removed = host
        .admin(Method::POST, &format!("/api/chat/channels/{ch}/members"))
        .json(&json!({"action": "remove", "member": "user:owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(
        post(&host, json!({"channel_id": ch, "content": "x"}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert!(after(&host, &ch, 0).await.is_empty());
}

#[tokio::test]
async fn channels_validate_settings_and_members_and_delete_their_messages() {
    let host = start().await;
    host.setup_owner().await;
    AgentClient::create(&host, "Member").await;
    for settings in [
        json!({"max_hops": 0}),
        json!({"max_hops": 11}),
        json!({"cooldown_seconds": 61}),
        json!({"response_mode": "chaotic"}),
    ] {
        let r = host
            .admin(Method::POST, "/api/chat/channels")
            .json(&json!({"name": "x", "settings": settings}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{settings}");
    }
    let unknown = host
        .admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "x", "members": ["ghost"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let none: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels?member=ghost")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none.is_empty());

    let ch = group(&host, json!(["member"])).await;
    let add_unknown = host
        .admin(Method::POST, &format!("/api/chat/channels/{ch}/members"))
        .json(&json!({"action": "add", "member": "ghost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(add_unknown.status(), StatusCode::BAD_REQUEST);
    let bad_patch = host
        .admin(Method::PATCH, &format!("/api/chat/channels/{ch}"))
        .json(&json!({"settings": {"max_hops": 99}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_patch.status(), StatusCode::BAD_REQUEST);
    let patched: Value = host.admin(Method::PATCH, &format!("/api/chat/channels/{ch}")).json(&json!({"settings": {"response_mode": "lively", "max_hops": 10, "cooldown_seconds": 0}})).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        patched["settings"],
        json!({"response_mode": "lively", "max_hops": 10, "cooldown_seconds": 0})
    );
    let with_member: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels?member=member")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(with_member.len(), 2, "the agent's DM and the group");

    post(&host, json!({"channel_id": ch, "content": "soon gone"})).await;
    let deleted = host
        .admin(Method::DELETE, &format!("/api/chat/channels/{ch}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        host.admin(Method::GET, &format!("/api/chat/channels/{ch}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        host.admin(Method::GET, &format!("/api/chat/channels/{ch}/messages"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let count = crate::messages_stored(&host, &ch).await;
    assert_eq!(
        count, 0,
        "the channel's messages are gone from the database"
    );

    let archived: Value = host
        .admin(
            Method::PATCH,
            &format!("/api/chat/channels/{}", group(&host, json!([])).await),
        )
        .json(&json!({"archived": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused = post(&host, json!({"channel_id": archived["id"], "content": "x"})).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let listed: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels?archived=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn agents_validate_names_and_make_unique_slugs() {
    let host = start().await;
    host.setup_owner().await;
    let mut slugs = Vec::new();
    for _ in 0..3 {
        let (agent, record) = AgentClient::create(&host, "Research Helper").await;
        assert!(record["dm_channel_id"].is_string());
        slugs.push(agent.slug);
    }
    assert_eq!(
        slugs,
        ["research-helper", "research-helper-2", "research-helper-3"]
    );
    for body in [
        json!({"name": "!!!"}),
        json!({"name": ""}),
        json!({"name": "x", "color": "red"}),
        json!({"name": "x", "model": "has space"}),
        json!({"name": "x", "token": "mine"}),
    ] {
        let r = host
            .admin(Method::POST, "/api/agents")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    for path in [
        "/api/agents/..",
        "/api/agents/%2e%2e",
        "/api/agents/a%2Fb",
        "/api/agents/a%00b",
        "/api/agents/nobody",
    ] {
        let r = host.admin(Method::GET, path).send().await.unwrap();
        assert!(
            r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::BAD_REQUEST,
            "{path}: {}",
            r.status()
        );
    }
    let patched: Value = host
        .admin(Method::PATCH, "/api/agents/research-helper")
        .json(&json!({"display_name": "Researcher", "emoji": "🔬", "color": "#112233"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["display_name"], "Researcher");
    assert_eq!(patched["slug"], "research-helper", "the slug never changes");
    let list: Vec<Value> = host
        .admin(Method::GET, "/api/agents")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
}

#[tokio::test]
async fn websocket_auth_takes_subprotocol_bearer_and_refuses_foreign_origins() {
    let host = start().await;
    let session = host.setup_owner().await;
    let token = host.local_token();
    let ok = WsClient::connect_with(
        &host,
        vec![(
            "sec-websocket-protocol".into(),
            format!("taos.v1, bearer.{token}"),
        )],
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let none = WsClient::connect_with(&host, vec![]).await;
    assert_eq!(
        none.as_ref().err().and_then(taos_e2e::ws_refusal_status),
        Some(StatusCode::UNAUTHORIZED),
        "no credentials, no socket"
    );
    let cookie = session.cookie();
    let authority = host.public_url.trim_start_matches("https://").to_string();
    let same = WsClient::connect_with(
        &host,
        vec![
            ("cookie".into(), cookie.clone()),
            ("origin".into(), format!("https://{authority}")),
        ],
    )
    .await;
    assert!(same.is_ok(), "{:?}", same.err());
    let foreign = WsClient::connect_with(
        &host,
        vec![
            ("cookie".into(), cookie),
            ("origin".into(), "https://evil.example".into()),
        ],
    )
    .await;
    assert_eq!(
        foreign.as_ref().err().and_then(taos_e2e::ws_refusal_status),
        Some(StatusCode::FORBIDDEN),
        "cross-site WebSocket hijacking is refused"
    );

    let mut ws = ok.unwrap();
    ws.send(json!({"type": "subscribe", "channel_id": "nope"}))
        .await;
    let err = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["type"], "error");
    ws.send(json!({"type": "dance"})).await;
    let err = ws.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(err["code"], "invalid_json");
}

async fn channel(host: &taos_e2e::Host, id: &str) -> Value {
    host.admin(Method::GET, &format!("/api/chat/channels/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The chat screen's channel settings (issue 19): rename, members, archive. Each bad request is
/// refused with a 400 and leaves the channel as it was; the good ones then take effect.
#[tokio::test]
async fn channel_settings_refuse_bad_input_and_change_nothing() {
    let host = start().await;
    host.setup_owner().await;
    AgentClient::create(&host, "Member").await;
    let ch = group(&host, json!(["member"])).await;
    let before = channel(&host, &ch).await;

    for patch in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "bell\u{7}"}),
        json!({"name": 5}),
        json!({"archived": "yes"}),
        json!({"colour": "red"}),
    ] {
        let r = host
            .admin(Method::PATCH, &format!("/api/chat/channels/{ch}"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{patch}");
    }
    for change in [
        json!({"action": "add", "member": "ghost"}),
        json!({"action": "add", "member": "user:nobody"}),
        json!({"action": "remove", "member": "user:nobody"}),
        json!({"action": "promote", "member": "member"}),
        json!({"action": "add"}),
    ] {
        let r = host
            .admin(Method::POST, &format!("/api/chat/channels/{ch}/members"))
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{change}");
    }
    // A DM's members are its agent and its person, for good.
    let dms: Vec<Value> = host
        .admin(Method::GET, "/api/chat/channels?member=member")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = dms
        .iter()
        .find(|c| c["type"] == "dm")
        .expect("the agent's DM");
    let dm_id = dm["id"].as_str().unwrap();
    for change in [
        json!({"action": "add", "member": "user:owner"}),
        json!({"action": "remove", "member": "member"}),
    ] {
        let r = host
            .admin(Method::POST, &format!("/api/chat/channels/{dm_id}/members"))
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "DM {change}");
    }
    assert_eq!(channel(&host, dm_id).await["members"], dm["members"]);
    let unchanged = channel(&host, &ch).await;
    assert_eq!(unchanged["name"], before["name"]);
    assert_eq!(unchanged["members"], before["members"]);
    assert_eq!(unchanged["archived"], false);

    // The good changes, as the settings panel makes them.
    let renamed: Value = host
        .admin(Method::PATCH, &format!("/api/chat/channels/{ch}"))
        .json(&json!({"name": "  Planning  "}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "Planning");
    let removed: Value = host
        .admin(Method::POST, &format!("/api/chat/channels/{ch}/members"))
        .json(&json!({"action": "remove", "member": "member"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(removed["members"], json!(["user:owner"]));
    let archived = host
        .admin(Method::PATCH, &format!("/api/chat/channels/{ch}"))
        .json(&json!({"archived": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status(), StatusCode::OK);
    assert_eq!(
        post(&host, json!({"channel_id": ch, "content": "x"}))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    let unarchived: Value = host
        .admin(Method::PATCH, &format!("/api/chat/channels/{ch}"))
        .json(&json!({"archived": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unarchived["archived"], false);
    assert_eq!(
        post(&host, json!({"channel_id": ch, "content": "back"}))
            .await
            .status(),
        StatusCode::CREATED
    );
}

/// A thread is named by its root: a reply to a reply joins the root's thread (so an agent's one
/// session per thread sees one conversation), and a thread in another channel is refused.
#[tokio::test]
async fn replies_to_replies_join_the_root_thread() {
    let host = start().await;
    host.setup_owner().await;
    let ch = group(&host, json!([])).await;
    let other = group(&host, json!([])).await;
    let root: Value = post(&host, json!({"channel_id": ch, "content": "root"}))
        .await
        .json()
        .await
        .unwrap();
    let first: Value = post(
        &host,
        json!({"channel_id": ch, "content": "first", "thread_id": root["id"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(first["thread_id"], root["id"]);
    let nested: Value = post(
        &host,
        json!({"channel_id": ch, "content": "nested", "thread_id": first["id"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(nested["thread_id"], root["id"], "stored under the root");
    let listed = after(&host, &ch, 0).await;
    assert_eq!(listed[2]["thread_id"], root["id"]);

    let foreign = post(
        &host,
        json!({"channel_id": other, "content": "x", "thread_id": root["id"]}),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::BAD_REQUEST);
    assert!(after(&host, &other, 0).await.is_empty());
}
