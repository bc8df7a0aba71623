//! The app's core against the real host over pinned TLS: pair with a fresh code, chat with an
//! agent (its reply streams in), lose the host (the chat stays readable, new messages queue),
//! get it back (each queued message delivered exactly once, in order), and the two ways
//! pairing and sessions end badly: a code for another host's key, and a revoked device.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use taos_client::cache::Cache;
use taos_client::engine::{AppEvent, Engine};
use taos_client::net::Trust;
use taos_client::pairing::{pair, PairError};
use taos_client::secrets::{MemoryStore, SecretError, SecretStore};
use taos_client::session::{Session, SessionError};
use taos_e2e::{free_port, AgentClient, Host};
use taos_proto::auth::PairingPayload;
use taos_proto::chat::{AuthorType, MessageState};
use tokio::sync::mpsc;

/// A store in memory that notes every use of it.
#[derive(Default)]
struct RecordingStore {
    inner: MemoryStore,
    used: std::sync::Mutex<Vec<String>>,
}

impl SecretStore for RecordingStore {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError> {
        self.used.lock().unwrap().push(format!("get {key}"));
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError> {
        self.used.lock().unwrap().push(format!("set {key}"));
        self.inner.set(key, value)
    }
    fn delete(&self, key: &str) -> Result<(), SecretError> {
        self.used.lock().unwrap().push(format!("delete {key}"));
        self.inner.delete(key)
    }
}

async fn next_matching(
    events: &mut mpsc::UnboundedReceiver<AppEvent>,
    what: &str,
    check: impl Fn(&AppEvent) -> bool,
) -> AppEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("engine events");
        if check(&event) {
            return event;
        }
        if std::env::var_os("DEBUG_EVENTS").is_some() {
            eprintln!("skipped {event:?}");
        }
    }
}

#[tokio::test]
async fn pair_chat_go_offline_queue_and_deliver_exactly_once() {
    let port = free_port();
    let mut host = Host::start_on(port, None).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Helper").await;
    let answering = agent.answer_everything(Duration::ZERO);

    // Pair with a fresh code, trusting only the key the code names.
    let secrets: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    let paired = pair(
        &host.pairing_token().await,
        "test phone",
        "linux",
        secrets.clone(),
    )
    .await
    .unwrap();
    assert_eq!(paired.host.trust, Trust::Pinned(host.pin));
    assert_eq!(paired.address, format!("127.0.0.1:{port}"));
    let link = taos_client::net::Link::new(&paired.address, paired.host.trust).unwrap();
    let session = Arc::new(Session::after_pairing(
        paired.host.clone(),
        secrets.clone(),
        &paired.tokens,
        link,
    ));
    let app_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&app_dir.path().join("cache.db")).await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = Engine::new(session.clone(), cache.clone(), tx);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine.clone().run(stop));
    next_matching(&mut events, "online", |e| {
        matches!(e, AppEvent::Connection { online: true, .. })
    })
    .await;
    let host_id = paired.host.device_id.clone();
    let dm = cache
        .channels(&host_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.channel.members.iter().any(|m| m == "helper"))
        .expect("the agent's DM is cached")
        .channel
        .id;

    // Chat: the reply streams in (deltas) and lands complete in the cache.
    engine.send(&dm, "hi there", None, None).await.unwrap();
    next_matching(&mut events, "a delta", |e| {
        matches!(e, AppEvent::Delta { .. })
    })
    .await;
    // The channel is not on screen: the finished reply notifies, and counts as unread until
    // the channel is opened; then it lands complete in the cache.
    next_matching(&mut events, "a reply notification", |e| {
        matches!(e, AppEvent::Notify { notification } if notification.route == format!("/chat/{dm}"))
    })
    .await;
    next_matching(&mut events, "one unread reply", |e| {
        matches!(e, AppEvent::Unread { total: 1 })
    })
    .await;
    next_matching(&mut events, "the final reply", |e| {
        matches!(e, AppEvent::Message { message } if message.author_type == AuthorType::Agent
            && message.state == MessageState::Complete)
    })
    .await;
    engine.set_focus(Some(dm.clone())).await;
    next_matching(&mut events, "nothing unread", |e| {
        matches!(e, AppEvent::Unread { total: 0 })
    })
    .await;

    // The host goes away: the chat stays readable from the cache, new messages queue.
    host.terminate().await.unwrap();
    answering.abort();
    engine.send(&dm, "offline one", None, None).await.unwrap();
    engine.send(&dm, "offline two", None, None).await.unwrap();
    next_matching(&mut events, "offline", |e| {
        matches!(e, AppEvent::Connection { online: false, .. })
    })
    .await;
    let cached = cache.messages(&host_id, &dm, 100, None).await.unwrap();
    let texts: Vec<&str> = cached.iter().map(|m| m.content.as_str()).collect();
    assert!(texts.contains(&"hi there"), "{texts:?}");
    assert!(texts.contains(&"Hello from the agent"), "{texts:?}");
    let queued = cache.outbox(&host_id, Some("queued")).await.unwrap();
    let queued: Vec<&str> = queued.iter().map(|i| i.content.as_str()).collect();
    assert_eq!(queued, ["offline one", "offline two"]);

    // The host is back (same key, same address): both are delivered, once each, in order.
    let data_dir = host.data_dir.clone();
    let _temp = host.take_temp();
    drop(host);
    let host = Host::start_on(port, Some(data_dir)).await;
    engine.reconnect_now();
    next_matching(
        &mut events,
        "the outbox sent",
        |e| matches!(e, AppEvent::Outbox { items } if items.iter().all(|i| i.state == "sent")),
    )
    .await;
    // A second flush has nothing to send, and even a forced resend of a sent item is harmless.
    assert_eq!(engine.flush().await.unwrap().sent, 0);
    let stored: Vec<Value> = host
        .admin(
            Method::GET,
            &format!("/api/chat/channels/{dm}/messages?after_seq=0"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours: Vec<&str> = stored
        .iter()
        .filter_map(|m| m["content"].as_str())
        .filter(|c| c.starts_with("offline"))
        .collect();
    assert_eq!(
        ours,
        ["offline one", "offline two"],
        "exactly once, in order"
    );

    // The owner revokes the device: the app is told to pair again.
    let devices: Vec<Value> = host
        .admin(Method::GET, "/api/devices")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = devices[0]["id"].as_str().unwrap();
    let revoked = host
        .admin(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    session.expire_access().await;
    assert!(matches!(
        session.access_token().await,
        Err(SessionError::Revoked)
    ));
    let _ = stop_tx.send(true);
    let _ = running.await;
}

#[tokio::test]
async fn a_code_naming_another_hosts_key_is_refused_clearly() {
    let host = Host::start_on(free_port(), None).await;
    host.setup_owner().await;
    let other = Host::start_on(free_port(), None).await;
    let token = host.pairing_token().await;
    let mut payload = PairingPayload::decode(&token).unwrap();
    payload.spki_sha256 = other.pin.to_base64();
    let secrets: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    let result = pair(&payload.encode(), "phone", "linux", secrets.clone()).await;
    match result {
        Err(PairError::WrongKey(at)) => {
            assert!(host.public_url.ends_with(&at), "{at}");
        }
        other => panic!("expected WrongKey, got {:?}", other.err()),
    }
    // Nothing was kept, and the genuine code still works (it was never sent).
    assert!(pair(&token, "phone", "linux", secrets).await.is_ok());

    // A device name the host would refuse is refused here, before the keychain is touched
    // (on a locked one, probing it would ask to unlock it first) and before the code is spent.
    let other_token = host.pairing_token().await;
    for bad in ["", "   ", "line\nbreak", &"x".repeat(101)] {
        let store = Arc::new(RecordingStore::default());
        assert!(
            matches!(
                pair(&other_token, bad, "linux", store.clone()).await,
                Err(PairError::BadInput(_))
            ),
            "{bad:?}"
        );
        assert_eq!(*store.used.lock().unwrap(), Vec::<String>::new(), "{bad:?}");
    }
    assert!(pair(
        &other_token,
        "  tablet  ",
        "linux",
        Arc::new(MemoryStore::default())
    )
    .await
    .is_ok());

    // Garbage and expired codes say so before any network traffic.
    let store: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    assert!(matches!(
        pair("not a code", "phone", "linux", store.clone()).await,
        Err(PairError::Token(_))
    ));
    let mut expired = PairingPayload::decode(&token).unwrap();
    expired.expires_at = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert!(matches!(
        pair(&expired.encode(), "phone", "linux", store).await,
        Err(PairError::Expired)
    ));
}

/// A socket never outlives its access token: the host closes it with 4001 when the token
/// expires, and the app refreshes and reconnects without ever showing itself offline. When the
/// device is revoked, the host closes it the same way and the app learns it must pair again.
#[tokio::test]
async fn expiring_tokens_reconnect_quietly_and_revocation_signs_the_app_out() {
    let host = Host::start_with(
        &taos_e2e::workspace_binary("taos-host")
            .display()
            .to_string(),
        taos_e2e::HostOptions {
            env: vec![
                ("TAOS_AUTH__ACCESS_TOKEN_SECS".into(), "3".into()),
                (
                    "TAOS_LLM__LITELLM_BIN".into(),
                    "/nonexistent/litellm".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Helper").await;
    let answering = agent.answer_everything(Duration::ZERO);
    let secrets: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    let paired = pair(
        &host.pairing_token().await,
        "phone",
        "linux",
        secrets.clone(),
    )
    .await
    .unwrap();
    assert_eq!(paired.tokens.expires_in, 3);
    let link = taos_client::net::Link::new(&paired.address, paired.host.trust).unwrap();
    let session = Arc::new(Session::after_pairing(
        paired.host.clone(),
        secrets.clone(),
        &paired.tokens,
        link,
    ));
    let app_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&app_dir.path().join("cache.db")).await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = Engine::new(session.clone(), cache.clone(), tx);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine.clone().run(stop));

    // Three connections in a row, each ended by the host when its token ran out: never
    // offline, never signed out.
    let mut connected = 0;
    while connected < 3 {
        match next_matching(&mut events, "a (re)connection", |e| {
            matches!(e, AppEvent::Connection { .. } | AppEvent::Revoked)
        })
        .await
        {
            AppEvent::Connection { online: true, .. } => connected += 1,
            other => panic!("the app went offline or was signed out: {other:?}"),
        }
    }
    let dm = cache
        .channels(&paired.host.device_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.channel.members.iter().any(|m| m == "helper"))
        .expect("the agent's DM is cached")
        .channel
        .id;
    engine.send(&dm, "still here?", None, None).await.unwrap();
    next_matching(&mut events, "the agent's reply", |e| {
        matches!(e, AppEvent::Message { message } if message.author_type == AuthorType::Agent
            && message.state == MessageState::Complete)
    })
    .await;

    let revoked = host
        .admin(
            Method::DELETE,
            &format!("/api/devices/{}", paired.host.device_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    next_matching(&mut events, "signed out", |e| {
        matches!(e, AppEvent::Revoked)
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = running.await;
    answering.abort();
}

/// An agent's tool call under `ask` reaches the app as a notification carrying the approval's
/// id; answering it the way the notification's Approve / Deny do (`approvals::decide` with the
/// paired device's session) is what the host records, and the agent is told. A second answer
/// to the same approval is "already answered", not an error; a made-up id never reaches a path.
#[tokio::test]
async fn an_approval_notifies_and_is_answered_with_the_devices_credentials() {
    use taos_client::approvals::{decide, Answered, ApprovalError};
    use taos_proto::approvals::{ApprovalState, Decision};

    let host = Host::start_with(
        &taos_e2e::workspace_binary("taos-host")
            .display()
            .to_string(),
        taos_e2e::HostOptions {
            env: vec![(
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            )],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Helper").await;
    let r = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&serde_json::json!({"tool_policy": "ask"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dm = record["dm_channel_id"].as_str().unwrap().to_string();

    let secrets: Arc<dyn SecretStore> = Arc::new(MemoryStore::default());
    let paired = pair(
        &host.pairing_token().await,
        "phone",
        "linux",
        secrets.clone(),
    )
    .await
    .unwrap();
    let link = taos_client::net::Link::new(&paired.address, paired.host.trust).unwrap();
    let session = Arc::new(Session::after_pairing(
        paired.host.clone(),
        secrets.clone(),
        &paired.tokens,
        link,
    ));
    let app_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&app_dir.path().join("cache.db")).await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let engine = Engine::new(session.clone(), cache.clone(), tx);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(engine.clone().run(stop));
    next_matching(&mut events, "online", |e| {
        matches!(e, AppEvent::Connection { online: true, .. })
    })
    .await;

    // The agent asks twice (two calls of one turn); each is a notification with its id.
    let turn: Value = host
        .admin(Method::POST, "/api/chat/messages")
        .json(&serde_json::json!({"channel_id": dm, "content": "clean up the old logs"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trace_id = turn["id"].as_str().unwrap().to_string();
    let ask = |step: u32, command: &str| {
        let body = serde_json::json!({"trace_id": trace_id, "call_id": format!("c{step}"),
            "tool": "shell", "args": {"command": command}, "step": step, "wait_secs": 0});
        let agent = agent.clone();
        async move {
            let r = agent
                .request(
                    Method::POST,
                    &format!("/api/openclaw/sessions/{}/approvals", agent.slug),
                )
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let mut ids = Vec::new();
    for (step, command) in [(0, "rm -r ~/logs/2024"), (1, "rm -r ~/logs/2025")] {
        assert_eq!(ask(step, command).await["state"], "pending");
        let AppEvent::Notify { notification } =
            next_matching(&mut events, "the approval's notification", |e| {
                matches!(e, AppEvent::Notify { notification } if notification.title.contains(command))
            })
            .await
        else {
            unreachable!()
        };
        assert_eq!(notification.route, format!("/chat/{dm}"));
        ids.push(notification.approval.expect("the approval's id"));
    }

    // Approve the first, deny the second: the host records each, and the agent asking again
    // is told.
    let approved = decide(&session, &ids[0], Decision::Approve).await.unwrap();
    let Answered::Decided(approved) = approved else {
        panic!("{approved:?}")
    };
    assert_eq!(approved.state, ApprovalState::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("user:owner"));
    assert_eq!(ask(0, "rm -r ~/logs/2024").await["state"], "approved");
    let denied = decide(&session, &ids[1], Decision::Deny).await.unwrap();
    assert!(
        matches!(&denied, Answered::Decided(a) if a.state == ApprovalState::Denied),
        "{denied:?}"
    );
    assert_eq!(ask(1, "rm -r ~/logs/2025").await["state"], "denied");
    let pending: Vec<Value> = host.get("/api/approvals").await;
    assert!(pending.is_empty(), "{pending:?}");

    // Answering again (a second tap, or someone was quicker) says so, changing nothing.
    let again = decide(&session, &ids[0], Decision::Deny).await.unwrap();
    assert_eq!(
        again,
        Answered::Already("this approval is already approved".into())
    );
    assert_eq!(ask(0, "rm -r ~/logs/2024").await["state"], "approved");
    // An id that isn't the host's never reaches a path; one that is shaped right but unknown
    // is the host's 404, in words.
    assert!(matches!(
        decide(&session, "../devices", Decision::Approve).await,
        Err(ApprovalError::BadId(_))
    ));
    let unknown = decide(
        &session,
        "00000000-0000-0000-0000-000000000000",
        Decision::Approve,
    )
    .await
    .unwrap_err();
    assert!(
        unknown.to_string().contains("no such approval"),
        "{unknown}"
    );

    stop_tx.send(true).unwrap();
    running.await.unwrap();
}
