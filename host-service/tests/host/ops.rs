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
async fn every_response_carries_a_request_id() {
    let host = start().await;
    let r = host
        .client()
        .get(host.url("/api/health"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    let r = host
        .client()
        .get(host.url("/api/devices"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
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
    let started = std::time::Instant::now();
    let code = host.terminate().await.unwrap();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an open SSE stream must not hold shutdown"
    );
    drop(stream);
}
