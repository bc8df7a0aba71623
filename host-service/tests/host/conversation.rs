//! Conversation core against the real binary: a test agent speaking HTTP + SSE on the agent
//! listener, WebSocket clients on the public listener, traces read back through the API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::step;
use taos_e2e::{wait_for_trace, AgentClient, SseNext, WsClient};

use crate::start;

const WAIT: Duration = Duration::from_secs(10);

async fn dm_of(agent: &Value) -> String {
    agent["dm_channel_id"]
        .as_str()
        .expect("dm channel")
        .to_string()
}

#[tokio::test]
async fn a_user_message_reaches_the_agent_and_its_streamed_reply_reaches_every_client() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Helper").await;
    assert_eq!(agent.slug, "helper");
    let dm = dm_of(&record).await;
    let mut stream = agent.events(None).await;

    let token = host.local_token();
    let mut writer = WsClient::connect(&host, &token).await.unwrap();
    let mut watcher = WsClient::connect(&host, &token).await.unwrap();
    writer.subscribe(&dm, Some(0)).await;
    watcher.subscribe(&dm, Some(0)).await;

    writer
        .send(json!({"type": "message", "channel_id": dm, "content": "hello there", "client_id": "c-1"}))
        .await;
    let ack = writer.next_of("ack", WAIT).await.expect("ack");
    assert_eq!(ack["client_id"], "c-1");

    let delivery = stream.next(WAIT).await.expect("delivery");
    assert_eq!(delivery.event.as_deref(), Some("user_message"));
    let data: Value = serde_json::from_str(&delivery.data).unwrap();
    assert_eq!(data["text"], "hello there");
    assert_eq!(data["from"], "user:owner");
    assert_eq!(data["channel_id"], dm);
    assert_eq!(data["force_respond"], true);
    assert_eq!(data["hops_since_user"], 1);
    assert_eq!(
        delivery.id.as_deref(),
        Some(data["delivery_seq"].to_string().as_str())
    );
    let trace_id = data["trace_id"].as_str().unwrap().to_string();

    for part in ["Hi", ", ", "owner"] {
        let r = agent
            .reply(json!({"kind": "delta", "trace_id": trace_id, "content": part}))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let done = agent
        .reply(json!({"kind": "final", "trace_id": trace_id}))
        .await;
    assert_eq!(done.status(), StatusCode::ACCEPTED);

    // The watcher saw the placeholder, every delta, then the complete message.
    let mut placeholder = watcher.next_of("message", WAIT).await.expect("a message");
    while placeholder["message"]["author_id"] != "helper" {
        placeholder = watcher
            .next_of("message", WAIT)
            .await
            .expect("agent placeholder");
    }
    assert_eq!(placeholder["message"]["state"], "streaming");
    let mut deltas = String::new();
    let final_message = loop {
        let event = watcher.next(WAIT).await.expect("stream event");
        match event["type"].as_str().unwrap() {
            "message_delta" => deltas.push_str(event["delta"].as_str().unwrap()),
            "message" => break event,
            _ => {}
        }
    };
    assert_eq!(deltas, "Hi, owner");
    assert_eq!(final_message["message"]["content"], "Hi, owner");
    assert_eq!(final_message["message"]["state"], "complete");
    assert_eq!(final_message["message"]["id"], placeholder["message"]["id"]);

    let traces = wait_for_trace(&host, "helper", &format!("?trace_id={trace_id}"), |e| {
        e.len() >= 2
    })
    .await;
    let kinds: Vec<&str> = traces.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"message_in") && kinds.contains(&"message_out"),
        "{kinds:?}"
    );
    assert!(traces.iter().all(|e| e["trace_id"] == trace_id.as_str()));
    let out = traces.iter().find(|e| e["kind"] == "message_out").unwrap();
    assert_eq!(out["payload"]["content"], "Hi, owner");
}

#[tokio::test]
async fn a_final_without_deltas_creates_a_complete_message() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Quick").await;
    let dm = dm_of(&record).await;
    let mut stream = agent.events(None).await;
    let post = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::CREATED);
    let data: Value = serde_json::from_str(&stream.next(WAIT).await.unwrap().data).unwrap();
    let r = agent
        .reply(json!({"kind": "final", "trace_id": data["trace_id"], "content": "pong"}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reply = messages
        .iter()
        .find(|m| m["author_id"] == "quick")
        .expect("agent reply");
    assert_eq!(reply["content"], "pong");
    assert_eq!(reply["state"], "complete");
    // Answered twice is refused.
    let again = agent
        .reply(json!({"kind": "final", "trace_id": data["trace_id"], "content": "pong"}))
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_agent_that_drops_its_stream_gets_exactly_what_it_missed() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Resumer").await;
    let dm = dm_of(&record).await;
    let post = |text: &str| {
        let request = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": text}));
        async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED) }
    };
    let mut stream = agent.events(None).await;
    post("first").await;
    let first = stream.next(WAIT).await.expect("first delivery");
    let last_id = first.id.clone().unwrap();
    drop(stream);

    for text in ["two", "three", "four"] {
        post(text).await;
    }
    let mut resumed = agent.events(Some(&last_id)).await;
    let mut texts = Vec::new();
    for _ in 0..3 {
        let event = resumed.next(WAIT).await.expect("missed delivery");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        texts.push(data["text"].as_str().unwrap().to_string());
    }
    assert_eq!(texts, ["two", "three", "four"]);
    // No duplicates, nothing extra: the next delivery is the one sent after.
    post("sentinel").await;
    let next = resumed.next(WAIT).await.expect("the sentinel");
    assert_eq!(
        serde_json::from_str::<Value>(&next.data).unwrap()["text"],
        "sentinel"
    );

    // A new stream replaces the old one: the old stream ends.
    let mut newer = agent.events(Some(&last_id)).await;
    assert!(newer.next(WAIT).await.is_some());
    loop {
        match resumed.next_or_end(WAIT).await {
            SseNext::Ended => break,
            SseNext::Event(e) => assert!(e.data.is_empty(), "the replaced stream got {e:?}"),
            SseNext::Waiting => panic!("the replaced stream is still open"),
        }
    }
}

#[tokio::test]
async fn a_stream_without_last_event_id_gets_unanswered_deliveries() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Offline").await;
    let dm = dm_of(&record).await;
    let r = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&json!({"channel_id": dm, "content": "while you were out"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let messages: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let notice = messages
        .iter()
        .find(|m| m["author_type"] == "system")
        .expect("queued notice");
    assert!(notice["content"]
        .as_str()
        .unwrap()
        .contains("not connected"));
    let mut stream = agent.events(None).await;
    let data: Value =
        serde_json::from_str(&stream.next(WAIT).await.expect("queued delivery").data).unwrap();
    assert_eq!(data["text"], "while you were out");
}

#[tokio::test]
async fn a_websocket_client_resumes_with_after_seq() {
    let host = start().await;
    host.setup_owner().await;
    let (_agent, record) = AgentClient::create(&host, "Quiet").await;
    let dm = dm_of(&record).await;
    let token = host.local_token();
    let mut ws = WsClient::connect(&host, &token).await.unwrap();
    ws.subscribe(&dm, None).await;
    let post = |text: &str| {
        let request = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": text}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = post("one").await;
    let seen = ws.next_of("message", WAIT).await.unwrap();
    assert_eq!(seen["message"]["id"], first["id"]);
    let last_seq = seen["seq"].as_i64().unwrap();
    drop(ws);

    let mut missed = Vec::new();
    for text in ["two", "three", "four"] {
        missed.push(post(text).await["id"].clone());
    }
    let edited = host
        .admin(
            Method::PATCH,
            &format!("/api/chat/messages/{}", first["id"].as_str().unwrap()),
        )
        .json(&json!({"content": "one (edited)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), StatusCode::OK);

    let mut back = WsClient::connect(&host, &token).await.unwrap();
    let replayed = back.subscribe(&dm, Some(last_seq)).await;
    let user_messages: Vec<&Value> = replayed
        .iter()
        .filter(|e| e["message"]["author_type"] == "user")
        .collect();
    let ids: Vec<&Value> = user_messages.iter().map(|e| &e["message"]["id"]).collect();
    // The three new ones (and the queued-notice system message), then the edited first one.
    assert_eq!(ids.len(), 4, "{replayed:?}");
    assert_eq!(ids[..3], missed.iter().collect::<Vec<_>>()[..]);
    assert_eq!(user_messages[3]["message"]["content"], "one (edited)");
    let seqs: Vec<i64> = replayed
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > last_seq,
        "{seqs:?}"
    );

    // Live again after the replay, with no duplicates.
    post("five").await;
    let live = back.next_of("message", WAIT).await.unwrap();
    assert_eq!(live["message"]["content"], "five");
}

#[tokio::test]
async fn agent_credentials_work_only_on_the_agent_listener_and_only_for_their_agent() {
    let host = start().await;
    let session = host.setup_owner().await;
    let (alice, _) = AgentClient::create(&host, "Alice").await;
    let (bob, bob_record) = AgentClient::create(&host, "Bob").await;
    let bob_dm = dm_of(&bob_record).await;

    // Alice's token on Bob's stream, reply and... 403.
    assert_eq!(
        alice.events_for("bob", None).await.status(),
        StatusCode::FORBIDDEN
    );
    let cross_reply = alice
        .request(Method::POST, "/api/openclaw/sessions/bob/reply")
        .json(&json!({"kind": "final", "trace_id": "x", "content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_reply.status(), StatusCode::FORBIDDEN);
    // Alice's traces land in Alice's trace even if she names Bob.
    let forced = alice
        .request(Method::POST, "/api/trace")
        .json(&json!({"kind": "lifecycle", "agent_name": "bob", "payload": {"event": "start"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);
    let ack: Value = forced.json().await.unwrap();
    assert_eq!(ack["agent_name"], "alice");
    let bob_trace: Value = host
        .admin(Method::GET, "/api/agents/bob/trace")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(bob_trace["events"].as_array().unwrap().is_empty());

    // A trace_id never delivered to this agent.
    let r = bob
        .reply(json!({"kind": "final", "trace_id": "never-delivered", "content": "x"}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // User, device and local credentials on the agent listener: 401.
    let device = host.pair_device("phone").await;
    for token in [
        host.local_token(),
        device["access_token"].as_str().unwrap().to_string(),
    ] {
        let as_agent = alice.with_token(&token);
        assert_eq!(
            as_agent.events_for("alice", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let cookie = taos_e2e::http_client()
        .get(format!(
            "{}/api/openclaw/sessions/alice/events",
            host.agent_url
        ))
        .header("cookie", session.cookie())
        .send()
        .await
        .unwrap();
    assert_eq!(cookie.status(), StatusCode::UNAUTHORIZED);

    // An agent token on the public listener: 401.
    let public = host
        .client()
        .get(host.url("/api/agents"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::UNAUTHORIZED);
    let post = host
        .client()
        .post(host.url("/api/chat/messages"))
        .bearer_auth(&alice.token)
        .json(&json!({"channel_id": bob_dm, "content": "spoof"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);

    // Rotation: the old token stops at once.
    let rotated: Value = host
        .admin(Method::POST, "/api/agents/alice/token/rotate")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        alice.events_for("alice", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh = alice.with_token(rotated["agent_token"].as_str().unwrap());
    assert_eq!(
        fresh.events_for("alice", None).await.status(),
        StatusCode::OK
    );
    let listed: Value = host
        .admin(Method::GET, "/api/agents")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains("taos_ag_"),
        "no secrets in listings"
    );
}

/// A wire-contract check: it reads the deliveries as raw JSON on purpose, since their field names
/// (`text`, `from`, `hops_since_user`, `force_respond`, `trace_id`) are the contract with every
/// sidecar, ours and others'.
#[tokio::test]
async fn group_routing_follows_mentions_lively_mode_hops_and_pause() {
    let host = start().await;
    host.setup_owner().await;
    let (a, _) = AgentClient::create(&host, "Ann").await;
    let (b, _) = AgentClient::create(&host, "Ben").await;
    let channel: Value = host.admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "team", "members": ["ann", "ben"], "settings": {"cooldown_seconds": 0, "max_hops": 2}}))
        .send().await.unwrap().json().await.unwrap();
    let id = channel["id"].as_str().unwrap().to_string();
    let mut sa = a.events(None).await;
    let mut sb = b.events(None).await;
    let say = |text: &str| {
        let request = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": id, "content": text}));
        async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED) }
    };
    let text_of = |e: taos_e2e::SseEvent| serde_json::from_str::<Value>(&e.data).unwrap();
    // "Nothing arrived" is checked with a sentinel: a later message that does arrive must be
    // the next event, so a late wrong delivery can't slip past a short wait.
    async fn next_text(stream: &mut taos_e2e::SseReader) -> Value {
        let event = stream.next(WAIT).await.expect("a delivery");
        serde_json::from_str::<Value>(&event.data).unwrap()["text"].clone()
    }

    step("quiet: only the named get it", async {
        say("nobody named, quiet channel").await;
        say("@ann @ben sentinel 1").await;
        assert_eq!(next_text(&mut sa).await, "@ann @ben sentinel 1");
        assert_eq!(next_text(&mut sb).await, "@ann @ben sentinel 1");

        say("@ben your turn").await;
        assert_eq!(next_text(&mut sb).await, "@ben your turn");
        say("@ann sentinel 2").await;
        assert_eq!(
            next_text(&mut sa).await,
            "@ann sentinel 2",
            "ann was not named"
        );
    })
    .await;

    let to_b = step("@all reaches everyone and forces an answer", async {
        say("@all hello").await;
        assert_eq!(text_of(sa.next(WAIT).await.unwrap())["force_respond"], true);
        text_of(sb.next(WAIT).await.unwrap())
    })
    .await;

    step("lively: replies hop until max_hops", async {
        // Ben answers in the group: with max_hops 2 his reply (hop 1) reaches Ann, whose reply
        // (hop 2) reaches nobody.
        host.admin(Method::PATCH, &format!("/api/chat/channels/{id}"))
            .json(&json!({"settings": {"response_mode": "lively"}}))
            .send()
            .await
            .unwrap();
        let r = b
            .reply(json!({"kind": "final", "trace_id": to_b["trace_id"], "content": "ben says hi"}))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let to_a = text_of(sa.next(WAIT).await.expect("ben's reply routed to ann"));
        assert_eq!(to_a["from"], "ben");
        assert_eq!(to_a["hops_since_user"], 2);
        assert_eq!(to_a["force_respond"], false);
        let r = a
            .reply(json!({"kind": "final", "trace_id": to_a["trace_id"], "content": "ann answers"}))
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        host.admin(Method::PATCH, &format!("/api/chat/channels/{id}"))
            .json(&json!({"settings": {"response_mode": "quiet"}}))
            .send()
            .await
            .unwrap();
        say("@ben sentinel 3").await;
        assert_eq!(
            next_text(&mut sb).await,
            "@ben sentinel 3",
            "hop cap stops the chain: ann's answer never reached ben"
        );
    })
    .await;

    step(
        "paused: queued with one notice, released on resume",
        async {
            let paused = host
                .admin(Method::PATCH, "/api/agents/ann")
                .json(&json!({"paused": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(paused.status(), StatusCode::OK);
            say("@ann one").await;
            say("@ann two").await;
            // Routed after ann's two (one channel's messages are routed in order), and delivered
            // to ben: by then anything sent to ann would be on her stream already.
            say("@ben sentinel 4").await;
            assert_eq!(next_text(&mut sb).await, "@ben sentinel 4");
            assert!(
                sa.next(Duration::from_millis(100)).await.is_none(),
                "paused: nothing sent"
            );
            let messages: Vec<Value> = host
                .admin(
                    Method::GET,
                    &format!("/api/chat/channels/{id}/messages?limit=500"),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let notices = messages
                .iter()
                .filter(|m| {
                    m["author_type"] == "system"
                        && m["content"].as_str().unwrap().contains("paused")
                })
                .count();
            assert_eq!(notices, 1, "one notice, not one per message");
            host.admin(Method::PATCH, "/api/agents/ann")
                .json(&json!({"paused": false}))
                .send()
                .await
                .unwrap();
            assert_eq!(next_text(&mut sa).await, "@ann one", "released on resume");
            assert_eq!(next_text(&mut sa).await, "@ann two");
            say("@ann sentinel 5").await;
            assert_eq!(next_text(&mut sa).await, "@ann sentinel 5", "each once");
        },
    )
    .await;
}

#[tokio::test]
async fn lively_cooldown_limits_unnamed_deliveries() {
    let host = start().await;
    host.setup_owner().await;
    let (a, _) = AgentClient::create(&host, "Cool").await;
    let channel: Value = host.admin(Method::POST, "/api/chat/channels")
        .json(&json!({"name": "busy", "members": ["cool"], "settings": {"response_mode": "lively", "cooldown_seconds": 60}}))
        .send().await.unwrap().json().await.unwrap();
    let id = channel["id"].as_str().unwrap().to_string();
    let mut stream = a.events(None).await;
    for text in ["first", "second", "@cool named"] {
        host.admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": id, "content": text}))
            .send()
            .await
            .unwrap();
    }
    let first: Value = serde_json::from_str(&stream.next(WAIT).await.unwrap().data).unwrap();
    assert_eq!(first["text"], "first");
    let next: Value = serde_json::from_str(&stream.next(WAIT).await.unwrap().data).unwrap();
    assert_eq!(
        next["text"], "@cool named",
        "the unnamed second message fell in the cooldown"
    );
}
