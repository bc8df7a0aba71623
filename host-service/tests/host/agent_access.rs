//! The agent listener's own sweep (the public one's is routes.rs): every route refuses a
//! caller without credentials, with garbage, with a rotated-away credential, and with a
//! credential of the wrong kind — and a refused write stores nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::AgentClient;

use crate::start;

/// Every route the agent listener serves, with the credential each one takes.
const ROUTES: &[(&str, &str, Credential)] = &[
    (
        "GET",
        "/api/openclaw/sessions/{agent}/events",
        Credential::AgentToken,
    ),
    (
        "POST",
        "/api/openclaw/sessions/{agent}/reply",
        Credential::AgentToken,
    ),
    (
        "POST",
        "/api/openclaw/sessions/{agent}/approvals",
        Credential::AgentToken,
    ),
    ("POST", "/api/trace", Credential::AgentToken),
    ("POST", "/api/trace/batch", Credential::AgentToken),
    ("GET", "/api/agents/{agent}/trace", Credential::AgentToken),
    ("GET", "/api/openclaw/bootstrap", Credential::AgentToken),
    ("POST", "/v1/chat/completions", Credential::LlmKey),
    ("POST", "/v1/embeddings", Credential::LlmKey),
    ("GET", "/v1/models", Credential::LlmKey),
    ("POST", "/chat/completions", Credential::LlmKey),
    ("POST", "/embeddings", Credential::LlmKey),
    ("GET", "/models", Credential::LlmKey),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    AgentToken,
    LlmKey,
}

/// A body each route would accept from its rightful caller, so a refusal is about credentials.
fn body_for(path: &str) -> Option<Value> {
    match path {
        p if p.ends_with("/reply") => {
            Some(json!({"kind": "final", "trace_id": "t", "content": "x"}))
        }
        p if p.ends_with("/approvals") => {
            Some(json!({"trace_id": "t", "call_id": "c", "tool": "shell", "args": {}, "step": 0}))
        }
        "/api/trace" => Some(json!({"kind": "lifecycle", "payload": {"sweep": true}})),
        "/api/trace/batch" => {
            Some(json!({"events": [{"kind": "lifecycle", "payload": {"sweep": true}}]}))
        }
        p if p.ends_with("completions") => Some(json!({"model": "m", "messages": []})),
        p if p.ends_with("embeddings") => Some(json!({"model": "m", "input": "x"})),
        _ => None,
    }
}

#[tokio::test]
async fn every_agent_route_refuses_missing_bad_stale_and_wrong_kind_credentials() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, record) = AgentClient::create(&host, "Guarded").await;
    let created: Value = host
        .admin(Method::POST, "/api/agents/guarded/token/rotate")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stale_token = agent.token.clone();
    let live_token = created["agent_token"].as_str().unwrap().to_string();
    let rotated_key: Value = host
        .admin(Method::POST, "/api/agents/guarded/llm-key/rotate")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live_key = rotated_key["llm_key"].as_str().unwrap().to_string();
    let device = host.pair_device("phone").await;
    let device_token = device["access_token"].as_str().unwrap().to_string();
    let local = host.local_token();
    assert!(record["slug"] == "guarded");

    let client = taos_e2e::http_client();
    let mut checked = 0;
    for (method, path, takes) in ROUTES {
        let path = path.replace("{agent}", "guarded");
        // Each wrong credential, including the right kind's stale value and the other kind's
        // live one.
        let wrong_kind = match takes {
            Credential::AgentToken => live_key.clone(),
            Credential::LlmKey => live_token.clone(),
        };
        let mut attempts: Vec<(&str, Option<String>)> = vec![
            ("none", None),
            ("garbage", Some("taos_ag_not-a-real-token".into())),
            ("empty", Some(String::new())),
            ("the other kind", Some(wrong_kind)),
            ("a device token", Some(device_token.clone())),
            ("the local admin token", Some(local.clone())),
        ];
        if *takes == Credential::AgentToken {
            attempts.push(("a rotated-away token", Some(stale_token.clone())));
        }
        for (what, credential) in attempts {
            let mut request =
                client.request(method.parse::<Method>().unwrap(), host.agent_url(&path));
            if let Some(c) = &credential {
                request = request.header("authorization", format!("Bearer {c}"));
            }
            if let Some(body) = body_for(&path) {
                request = request.json(&body);
            }
            let r = request.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what}"
            );
            let body: Value = r.json().await.unwrap();
            if path.starts_with("/api/") {
                assert_eq!(
                    body["error"]["code"], "unauthorized",
                    "{method} {path} with {what}: {body}"
                );
            } else {
                // OpenAI clients read OpenAI's error shape.
                assert!(
                    body["error"]["message"].is_string() && body["error"]["type"].is_string(),
                    "{method} {path} with {what}: {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 70, "{checked}");

    // Nothing any of those wrote was stored.
    let traces: Value = host
        .admin(Method::GET, "/api/agents/guarded/trace")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let swept = traces["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["payload"]["sweep"] == true)
        .count();
    assert_eq!(swept, 0, "{traces}");
    // And the rightful credentials still work, so the refusals were about credentials.
    let ok = client
        .post(host.agent_url("/api/trace"))
        .bearer_auth(&live_token)
        .json(&body_for("/api/trace").unwrap())
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let models = client
        .get(host.agent_url("/v1/models"))
        .bearer_auth(&live_key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);
}

/// The restore drill's session routes (`/drill/{session}/…`) answer only the open drill
/// session's own credential: with no drill running, every caller, the live agent's token
/// included, gets 404 and nothing reaches the live agent's stream or chat. (The session's own
/// credential, a wrong one, another agent and another trace id are covered by
/// `backup::drill_bridge`'s unit test; the round trip itself by the whole-host backup test.)
#[tokio::test]
async fn drill_session_routes_refuse_everyone_when_no_drill_runs() {
    let host = start().await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Drilled").await;
    let client = taos_e2e::http_client();
    let mut checked = 0;
    for (method, path) in [
        (
            "GET",
            "/drill/0123456789abcdef0123456789abcdef/api/openclaw/sessions/drilled/events",
        ),
        (
            "POST",
            "/drill/0123456789abcdef0123456789abcdef/api/openclaw/sessions/drilled/reply",
        ),
    ] {
        for credential in [None, Some("taos_drill_garbage"), Some(agent.token.as_str())] {
            let mut request =
                client.request(method.parse::<Method>().unwrap(), host.agent_url(path));
            if let Some(c) = credential {
                request = request.bearer_auth(c);
            }
            if method == "POST" {
                request = request.json(&json!({"kind": "final", "trace_id": "t", "content": "x"}));
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
    // The live agent was not connected by any of it.
    let record: Value = host.get("/api/agents/drilled").await;
    assert_eq!(record["connected"], false, "{record}");
}
