use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::SseReader;

use crate::start;

async fn notify(host: &taos_e2e::Host, title: &str) -> Value {
    let r = host
        .admin(Method::POST, "/api/notifications")
        .json(&json!({"level": "warning", "title": title, "message": "m", "source": "test", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn connect(host: &taos_e2e::Host, last_event_id: Option<&str>) -> SseReader {
    let mut request = host.admin(Method::GET, "/api/events");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    SseReader::new(response)
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn live_events_carry_ids_and_notifications() {
    let host = start().await;
    let mut events = connect(&host, None).await;
    let created = notify(&host, "disk almost full").await;
    let event = events.next(WAIT).await.expect("an event");
    assert_eq!(event.event.as_deref(), Some("notification.created"));
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["data"], created);
    assert_eq!(event.id.unwrap(), data["id"].to_string());
}

#[tokio::test]
async fn reconnecting_with_last_event_id_gets_exactly_the_missed_events() {
    let host = start().await;
    let mut events = connect(&host, None).await;
    notify(&host, "before").await;
    let seen = events.next(WAIT).await.expect("first event");
    let last_id = seen.id.clone().unwrap();
    drop(events);

    let missed: Vec<i64> = {
        let mut ids = Vec::new();
        for title in ["one", "two", "three"] {
            ids.push(notify(&host, title).await["id"].as_i64().unwrap());
        }
        ids
    };
    let mut resumed = connect(&host, Some(&last_id)).await;
    let mut titles = Vec::new();
    for _ in 0..3 {
        let event = resumed.next(WAIT).await.expect("a missed event");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        titles.push(data["data"]["title"].as_str().unwrap().to_string());
        assert!(missed.contains(&data["data"]["id"].as_i64().unwrap()));
    }
    assert_eq!(titles, ["one", "two", "three"]);
    // Nothing else was queued: the next event is a new one, not a duplicate.
    notify(&host, "after").await;
    let next = resumed
        .next(WAIT)
        .await
        .expect("live event after the backlog");
    let data: Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(data["data"]["title"], "after");
}

#[tokio::test]
async fn a_garbage_last_event_id_is_400() {
    let host = start().await;
    let r = host
        .admin(Method::GET, "/api/events")
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn notification_list_read_and_read_all() {
    let host = start().await;
    for t in ["a", "b", "c"] {
        notify(&host, t).await;
    }
    let list: Vec<Value> = host
        .admin(Method::GET, "/api/notifications")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = list.iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["c", "b", "a"], "newest first");
    let limited: Vec<Value> = host
        .admin(Method::GET, "/api/notifications?limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);

    let mut events = connect(&host, None).await;
    let id = list[2]["id"].as_i64().unwrap();
    let read: Value = host
        .admin(Method::POST, &format!("/api/notifications/{id}/read"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["read"], true);
    let event = events.next(WAIT).await.unwrap();
    assert_eq!(event.event.as_deref(), Some("notification.read"));

    let unread: Vec<Value> = host
        .admin(Method::GET, "/api/notifications?unread_only=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unread.len(), 2);
    let all: Value = host
        .admin(Method::POST, "/api/notifications/read-all")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["updated"], 2);
    let unread: Vec<Value> = host
        .admin(Method::GET, "/api/notifications?unread_only=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(unread.is_empty());
}

/// The next event of `kind`, skipping others (notifications raised along the way).
async fn next_of(events: &mut SseReader, kind: &str) -> Value {
    loop {
        let event = events
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {kind} event"));
        if event.event.as_deref() == Some(kind) {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(data["kind"], kind);
            return data["data"].clone();
        }
    }
}

/// Screens follow an agent's connection and the paired devices live: the host announces an
/// agent's bridge stream opening and closing, a device paired and a device revoked.
#[tokio::test]
async fn agent_presence_and_devices_are_announced_live() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _) = taos_e2e::AgentClient::create(&host, "Comes And Goes").await;
    let mut events = connect(&host, None).await;

    let stream = agent.events(None).await;
    let connected = next_of(&mut events, "agent.connected").await;
    assert_eq!(
        connected,
        json!({"slug": "comes-and-goes", "connected": true})
    );
    // A second stream takes over from the first: still connected, nothing announced; the
    // agent is gone only when the newest stream ends.
    let newer = agent.events(None).await;
    drop(stream);
    drop(newer);
    let gone = next_of(&mut events, "agent.disconnected").await;
    assert_eq!(gone, json!({"slug": "comes-and-goes", "connected": false}));
    let listed: Value = host
        .admin(Method::GET, "/api/agents/comes-and-goes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["connected"], false);

    let paired = host.pair_device("kitchen tablet").await;
    let id = paired["device_id"].as_str().unwrap().to_string();
    let announced = next_of(&mut events, "device.paired").await;
    assert_eq!(announced["id"], id.as_str());
    assert_eq!(announced["name"], "kitchen tablet");
    let r = host
        .admin(Method::DELETE, &format!("/api/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let revoked = next_of(&mut events, "device.revoked").await;
    assert_eq!(revoked, json!({"id": id, "reason": "revoked"}));
}
