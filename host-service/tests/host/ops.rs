use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::start;

#[tokio::test]
async fn health_reports_version_and_subsystems_only_to_callers_with_credentials() {
    let host = start().await;
    // Anyone learns that the host is up, and nothing else.
    let anonymous: Value = host
        .client()
        .get(host.url("/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous, serde_json::json!({"status": "ok"}));
    // A wrong credential is not an error here either: still just the status.
    let garbage: Value = host
        .client()
        .get(host.url("/api/health"))
        .bearer_auth("taos_at_nonsense")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(garbage, serde_json::json!({"status": "ok"}));

    let health: Value = host
        .admin(Method::GET, "/api/health")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["subsystems"]["database"], "ok");
    // The container runtime is reported: which one and its version, else why there is none.
    let runtime = health["subsystems"]["runtime"].as_str().unwrap();
    assert!(
        runtime.starts_with("ok: incus ")
            || runtime.starts_with("ok: docker ")
            || runtime.starts_with("disabled: "),
        "{runtime}"
    );
    let agent: Value = taos_e2e::http_client()
        .get(host.agent_url("/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Agents (and whoever else reaches the agent listener) get only the status.
    assert_eq!(agent, serde_json::json!({"status": "ok"}));
    // The agent listener serves nothing for people.
    let other = taos_e2e::http_client()
        .get(host.agent_url("/api/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_clients() {
    let host = start().await;
    let mut seen = std::collections::HashSet::new();
    for path in ["/api/health", "/api/devices"] {
        let r = host.client().get(host.url(path)).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "a fresh UUID: {id}");
        assert!(seen.insert(id), "each request gets its own id");
    }
    // A client's own id is kept, so its logs and the host's can be matched.
    let r = host
        .client()
        .get(host.url("/api/devices"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
}

#[tokio::test]
async fn metrics_are_for_the_owner_and_local_admin() {
    let host = start().await;
    let r = host.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("taos_http_responses_total{class=\"2xx\"}"),
        "{text}"
    );
    assert!(text.contains("taos_process_resident_memory_bytes"));
    let device = host.pair_device("phone").await;
    let r = host
        .client()
        .get(host.url("/metrics"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = host
        .client()
        .get(host.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sigterm_drains_open_streams_and_exits_cleanly() {
    let mut host = start().await;
    let stream = host.admin(Method::GET, "/api/events").send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut events = taos_e2e::SseReader::new(stream);
    let code = host.terminate().await.unwrap();
    assert_eq!(code, Some(0));
    // The host ended the stream itself; it did not wait out its drain timeout for it.
    loop {
        match events.next_or_end(Duration::from_secs(5)).await {
            taos_e2e::SseNext::Ended => break,
            taos_e2e::SseNext::Event(_) => continue,
            taos_e2e::SseNext::Waiting => panic!("the event stream outlived the host"),
        }
    }
    let log = std::fs::read_to_string(&host.stderr_log).unwrap();
    assert!(
        !log.contains("connections still open"),
        "an open SSE stream must not hold shutdown: {log}"
    );
}
