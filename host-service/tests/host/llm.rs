//! The LLM path against real LiteLLM (installed by scripts/dev-litellm.sh) in front of the fake
//! upstream. LiteLLM takes seconds to start and ~300 MB, so tests that run it take turns.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::{FakeLlm, Recorder, COMPLETION_TOKENS, PROMPT_TOKENS, REPLY};
use taos_e2e::fixtures::{
    add_fake_provider, create_agent, create_agent_with, new_agent, wait_ready, with_fake_provider,
    LITELLM, UPSTREAM_SECRET as SECRET,
};
use taos_e2e::{wait_for_trace, AgentClient, Host, HostOptions};
use taos_proto::agents::NewAgent;

use crate::{host_with, BIN};

pub fn gateway(host: &Host, key: &str, path: &str) -> reqwest::RequestBuilder {
    taos_e2e::http_client()
        .post(format!("{}{path}", host.agent_url))
        .bearer_auth(key)
}

fn data_dir_contains(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn the_gateway_enforces_models_and_budgets_and_records_every_call() {
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;

    let created = create_agent(&host, "Thinker").await;
    let key = created.llm_key.clone().unwrap();
    assert!(key.starts_with("taos_llm_"));
    let unknown_model = host
        .admin(Method::PATCH, "/api/agents/thinker")
        .json(&json!({"model": "gpt-99"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_model.status(), StatusCode::BAD_REQUEST);
    assert!(
        unknown_model.text().await.unwrap().contains("fake-gpt"),
        "the error lists what is available"
    );
    let set = host
        .admin(Method::PATCH, "/api/agents/thinker")
        .json(&json!({"model": "fake-gpt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let budget = host
        .admin(Method::PUT, "/api/agents/thinker/budget")
        .json(&json!({"limit_usd": 0.06, "period": "day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);

    // max_tokens 5 makes each call's reservation $0.02 too (see add_fake_provider).
    let ask = |model: &str, stream: bool| json!({"model": model, "stream": stream, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    // Unknown key, forbidden model.
    let r = gateway(&host, "taos_llm_nope", "/v1/chat/completions")
        .json(&ask("fake-gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.json::<Value>().await.unwrap()["error"]["message"].is_string(),
        "OpenAI-style error body"
    );
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask("fake-other", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "model_not_allowed"
    );
    let models: Value = taos_e2e::http_client()
        .get(format!("{}/v1/models", host.agent_url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "fake-gpt");

    // Call 1: non-streamed, $0.02 (33 %).
    let r = gateway(&host, &key, "/v1/chat/completions")
        .header("x-taos-trace-id", "trace-1")
        .json(&ask("fake-gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], REPLY);
    // Call 2: streamed, chunk by chunk, $0.04 (67 %: crosses 50).
    let r = gateway(&host, &key, "/v1/chat/completions")
        .header("x-taos-trace-id", "trace-2")
        .json(&ask("fake-gpt", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let pieces: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(pieces, REPLY);
    assert!(text.contains("[DONE]"));
    // Call 3: $0.06, all of it (crosses 80 and 100): its reservation fits exactly.
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask("fake-gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The three thresholds, each announced once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let list: Vec<Value> = host
            .admin(Method::GET, "/api/notifications")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alerts: Vec<i64> = list
            .iter()
            .filter(|n| n["source"] == "llm.budget")
            .map(|n| n["data"]["threshold"].as_i64().unwrap())
            .collect();
        if alerts.len() >= 3 || Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut sorted = alerts.clone();
    sorted.sort();
    assert_eq!(sorted, [50, 80, 100], "{alerts:?}");
    // Spent: refused until the owner raises the limit.
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask("fake-gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "budget_exceeded"
    );
    host.admin(Method::PUT, "/api/agents/thinker/budget")
        .json(&json!({"limit_usd": 10.0, "period": "day"}))
        .send()
        .await
        .unwrap();
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask("fake-gpt", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Usage is recorded just after each answer goes out: poll for the fourth.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage: Value = loop {
        let usage: Value = host
            .admin(Method::GET, "/api/agents/thinker/usage")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["rows"][0]["requests"] == 4 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = &usage["rows"].as_array().unwrap()[0];
    assert_eq!(row["model"], "fake-gpt");
    assert_eq!(row["requests"], 4);
    assert_eq!(row["tokens_in"], 4 * PROMPT_TOKENS);
    assert_eq!(row["tokens_out"], 4 * COMPLETION_TOKENS);
    assert!(
        (usage["period_spend_usd"].as_f64().unwrap() - 0.08).abs() < 1e-9,
        "{usage}"
    );

    // Every call is an llm_call trace; the streamed one too, with its usage.
    let traces = wait_for_trace(&host, "thinker", "?trace_id=trace-2", |e| !e.is_empty()).await;
    let call = &traces[0];
    assert_eq!(call["kind"], "llm_call");
    assert_eq!(call["model"], "fake-gpt");
    assert_eq!(call["backend_name"], "fake");
    assert_eq!(call["tokens_in"], PROMPT_TOKENS);
    assert_eq!(call["tokens_out"], COMPLETION_TOKENS);
    assert!(call["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(call["payload"]["status"], "success");
    assert_eq!(call["payload"]["response"], REPLY);

    // Embeddings go through the same checks, and are counted and traced like chat calls.
    let r = gateway(&host, &key, "/v1/embeddings")
        .header("x-taos-trace-id", "trace-embed")
        .json(&json!({"model": "fake-gpt", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["data"][0]["embedding"], json!([0.1, 0.2, 0.3]));
    let traces = wait_for_trace(&host, "thinker", "?trace_id=trace-embed", |e| !e.is_empty()).await;
    let call = traces
        .first()
        .expect("an llm_call trace for the embeddings call");
    assert_eq!(call["kind"], "llm_call");
    assert_eq!(call["model"], "fake-gpt");
    assert_eq!(call["tokens_in"], 3, "the upstream's usage: {call}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage: Value = loop {
        let usage: Value = host
            .admin(Method::GET, "/api/agents/thinker/usage")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["rows"][0]["requests"] == 5 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(usage["rows"][0]["requests"], 5, "{usage}");
    assert_eq!(
        usage["rows"][0]["tokens_in"],
        4 * PROMPT_TOKENS + 3,
        "{usage}"
    );

    // The provider key is in no response, no file of the data dir, no log.
    let listed = host
        .admin(Method::GET, "/api/providers")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(SECRET));
    assert_eq!(
        data_dir_contains(&host.data_dir, SECRET),
        Vec::<String>::new()
    );
    let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
    assert!(!log.contains(SECRET));
    assert!(
        fake.state
            .unauthorized
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0,
        "LiteLLM sent the real key upstream"
    );
}

#[tokio::test]
async fn a_killed_litellm_comes_back_and_a_call_made_meanwhile_waits_for_it() {
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let created = create_agent(&host, "Survivor").await;
    let key = created.llm_key.clone().unwrap();
    host.admin(Method::PATCH, "/api/agents/survivor")
        .json(&json!({"model": "fake-gpt"}))
        .send()
        .await
        .unwrap();
    let ask = json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        gateway(&host, &key, "/v1/chat/completions")
            .json(&ask)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let pid = litellm_pid(&host).expect("the LiteLLM process");
    std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    // The supervisor restarts it, no host restart needed, and a call made meanwhile waits
    // for it instead of failing the agent's turn for a crash the agent can't see.
    // (Once the supervisor saw it die: a call already on its way to the dying process fails
    // with it.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] != "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "the kill was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (LiteLLM's start can take longer than the kit's usual 30 s on a busy machine.)
    let r = gateway(&host, &key, "/v1/chat/completions")
        .timeout(Duration::from_secs(180))
        .json(&ask)
        .send()
        .await
        .unwrap();
    let code = r.status();
    assert_eq!(
        code,
        StatusCode::OK,
        "{}\nthe host's log:\n{}",
        r.text().await.unwrap_or_default(),
        std::fs::read_to_string(&host.stderr_log).unwrap_or_default()
    );
    let status: Value = host
        .admin(Method::GET, "/api/llm/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "ready", "{status}");
    assert_ne!(litellm_pid(&host), Some(pid), "a new LiteLLM serves");
}

#[tokio::test]
async fn without_litellm_the_host_runs_and_says_so() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let status: Value = host
        .admin(Method::GET, "/api/llm/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "unavailable");
    assert!(status["last_error"]
        .as_str()
        .unwrap()
        .contains("not installed"));
    let health: Value = host
        .admin(Method::GET, "/api/health")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health["subsystems"]["llm"]
        .as_str()
        .unwrap()
        .contains("not installed"));
    assert_eq!(health["status"], "ok", "the host itself is fine");
    let created: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Lonely", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = gateway(
        &host,
        created["llm_key"].as_str().unwrap(),
        "/v1/chat/completions",
    )
    .json(&json!({"model": "fake-gpt", "messages": []}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error = r.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["type"], "llm_unavailable", "{error}");
}

#[tokio::test]
async fn providers_are_validated_and_owner_only() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let fake = FakeLlm::start("", &["m1"]).await;
    let cases = [
        (
            json!({"name": "x", "type": "martian"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "Bad Name", "type": "openai-compatible", "url": fake.url()}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "openai-compatible"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "openai-compatible", "url": "ftp://127.0.0.1/"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "openai-compatible", "url": "http://127.0.0.1:1/v1"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "type": "openai-compatible", "url": fake.url(), "models": [{"id": "a b"}]}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, status) in cases {
        let r = host
            .admin(Method::POST, "/api/providers")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
    }
    let ok = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "local", "type": "openai-compatible", "url": fake.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let dup = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "local", "type": "openai-compatible", "url": fake.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    let cloud = host.admin(Method::POST, "/api/providers").json(&json!({"name": "cloud", "type": "openai", "api_key": "sk-x", "models": [{"id": "gpt-4o"}]})).send().await.unwrap();
    let cloud: Value = cloud.json().await.unwrap();
    assert_eq!(
        cloud["url"], "https://api.openai.com/v1",
        "known cloud URLs are filled in"
    );
    let models: Vec<Value> = host
        .admin(Method::GET, "/api/providers/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m1", "gpt-4o"]);

    let reachable: Value = host
        .admin(Method::POST, "/api/providers/test")
        .json(&json!({"type": "openai-compatible", "url": fake.url()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reachable["reachable"], true);
    assert_eq!(reachable["models"], json!(["m1"]));
    let unreachable: Value = host
        .admin(Method::POST, "/api/providers/test")
        .json(&json!({"type": "openai-compatible", "url": "http://127.0.0.1:1/v1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unreachable["reachable"], false);

    assert_eq!(
        host.admin(Method::PATCH, "/api/providers/nope")
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        host.admin(Method::DELETE, "/api/providers/cloud")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        host.admin(Method::DELETE, "/api/providers/cloud")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // Budgets: validated.
    AgentClient::create(&host, "Spender").await;
    for body in [
        json!({"limit_usd": -1, "period": "day"}),
        json!({"limit_usd": 1, "period": "week"}),
    ] {
        let r = host
            .admin(Method::PUT, "/api/agents/spender/budget")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let device = host.pair_device("phone").await;
    let by_device = host
        .client()
        .get(host.url("/api/providers"))
        .bearer_auth(device["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_device.status(),
        StatusCode::OK,
        "the owner's devices act for the owner"
    );
}

#[tokio::test]
async fn bootstrap_keeps_the_taos_shape_with_the_agents_own_token() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let (agent, _) = AgentClient::create(&host, "Claw").await;
    let (other, _) = AgentClient::create(&host, "Other").await;
    let r = agent
        .request(Method::GET, "/api/openclaw/bootstrap?agent=claw")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["agent_name"], "claw");
    let litellm = &doc["models"]["providers"]["litellm"];
    assert_eq!(litellm["api"], "openai-completions");
    assert_eq!(litellm["baseUrl"], "http://127.0.0.1:4000");
    assert_eq!(litellm["apiKey"], "${LITELLM_API_KEY}");
    assert!(doc["channel"]["events_url"]
        .as_str()
        .unwrap()
        .ends_with("/api/openclaw/sessions/claw/events"));
    assert!(doc["channel"]["reply_url"]
        .as_str()
        .unwrap()
        .ends_with("/api/openclaw/sessions/claw/reply"));
    assert_eq!(
        doc["channel"]["auth_bearer"],
        agent.token.as_str(),
        "its own token, never an admin one"
    );
    assert!(!doc.to_string().contains(&host.local_token()));
    assert_eq!(
        other
            .request(Method::GET, "/api/openclaw/bootstrap?agent=claw")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        agent
            .request(Method::GET, "/api/openclaw/bootstrap")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        agent
            .with_token(&host.local_token())
            .request(Method::GET, "/api/openclaw/bootstrap?agent=claw")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_sidecar_answers_a_websocket_message_through_the_gateway() {
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let created: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Sidecar", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = created["agent"]["dm_channel_id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut sidecar = tokio::process::Command::new(taos_e2e::workspace_binary("taos-agent"))
        .env_clear()
        .env("TAOS_BRIDGE_URL", &host.agent_url)
        .env("TAOS_AGENT_NAME", "sidecar")
        .env("TAOS_AGENT_TOKEN", created["agent_token"].as_str().unwrap())
        .env("OPENAI_BASE_URL", format!("{}/v1", host.agent_url))
        .env("OPENAI_API_KEY", created["llm_key"].as_str().unwrap())
        .env("TAOS_MODEL", "fake-gpt")
        .env("TAOS_SYSTEM_PROMPT", "You are a test agent.")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut ws = taos_e2e::WsClient::connect(&host, &host.local_token())
        .await
        .unwrap();
    ws.subscribe(&dm, Some(0)).await;
    ws.send(
        json!({"type": "message", "channel_id": dm, "content": "hello agent", "client_id": "m-1"}),
    )
    .await;
    let ack = ws.next_of("ack", Duration::from_secs(10)).await.unwrap();
    let trace_id = ack["message_id"].as_str().unwrap().to_string();

    let mut deltas = String::new();
    let final_message = loop {
        let event = ws
            .next(Duration::from_secs(60))
            .await
            .expect("the agent answers");
        match event["type"].as_str().unwrap() {
            "message_delta" => deltas.push_str(event["delta"].as_str().unwrap()),
            "message"
                if event["message"]["author_id"] == "sidecar"
                    && event["message"]["state"] == "complete" =>
            {
                break event
            }
            _ => {}
        }
    };
    assert_eq!(final_message["message"]["content"], REPLY);
    assert_eq!(deltas, REPLY, "the reply streamed as deltas first");

    let traces = wait_for_trace(&host, "sidecar", &format!("?trace_id={trace_id}"), |e| {
        let kinds: Vec<&str> = e.iter().filter_map(|x| x["kind"].as_str()).collect();
        ["message_in", "llm_call", "message_out"]
            .iter()
            .all(|k| kinds.contains(k))
    })
    .await;
    let kinds: Vec<&str> = traces.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["message_in", "llm_call", "message_out"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let call = traces.iter().find(|e| e["kind"] == "llm_call").unwrap();
    assert_eq!(call["tokens_in"], PROMPT_TOKENS);
    assert_eq!(call["tokens_out"], COMPLETION_TOKENS);
    assert!(call["duration_ms"].as_i64().is_some());

    let pid = sidecar.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), sidecar.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the sidecar stops cleanly on SIGTERM"
    );
}

/// Runs the real sidecar for an agent made by `POST /api/agents` (`created` is its answer).
fn spawn_sidecar(host: &Host, created: &Value, model: &str) -> tokio::process::Child {
    tokio::process::Command::new(taos_e2e::workspace_binary("taos-agent"))
        .env_clear()
        .env("TAOS_BRIDGE_URL", &host.agent_url)
        .env(
            "TAOS_AGENT_NAME",
            created["agent"]["slug"].as_str().unwrap(),
        )
        .env("TAOS_AGENT_TOKEN", created["agent_token"].as_str().unwrap())
        .env("OPENAI_BASE_URL", format!("{}/v1", host.agent_url))
        .env("OPENAI_API_KEY", created["llm_key"].as_str().unwrap())
        .env("TAOS_MODEL", model)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Sends a message over the WebSocket and returns the agent's settled answer to it: the
/// `message` event that completes or fails it.
async fn ask_over_ws(ws: &mut taos_e2e::WsClient, dm: &str, agent: &str, text: &str) -> Value {
    let client_id: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    ws.send(json!({"type": "message", "channel_id": dm, "content": text, "client_id": client_id}))
        .await;
    // The answer may come before the ack names the message it answers: keep what arrives.
    let mut asked: Option<String> = None;
    let mut answers: Vec<Value> = Vec::new();
    loop {
        if let Some(id) = &asked {
            if let Some(m) = answers
                .iter()
                .find(|m| m["metadata"]["trace_id"] == id.as_str())
            {
                return m.clone();
            }
        }
        let event = ws
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("no settled answer to {text:?}"));
        let m = &event["message"];
        if event["type"] == "ack" && event["client_id"] == client_id.as_str() {
            asked = Some(event["message_id"].as_str().unwrap().to_string());
        } else if event["type"] == "message"
            && m["author_id"] == agent
            && (m["state"] == "complete" || m["state"] == "error")
        {
            answers.push(m.clone());
        }
    }
}

/// Nothing fails silently: a turn that fails — an exhausted budget, a provider switched off —
/// is a message in the chat with the reason in words and what to do, through the real sidecar,
/// the gateway and real LiteLLM. The reason is stored, so it is still there after a reload.
/// Along the way, LiteLLM's status never tells someone who has a provider to add one.
#[tokio::test]
async fn a_failed_turn_shows_in_the_chat_with_its_reason() {
    let _turn = LITELLM.lock().await;
    let fake = FakeLlm::start(SECRET, &["fake-gpt", "fake-other"]).await;
    // Answers of at most 5 tokens: a call reserves $0.02 at the fake provider's prices.
    let host = crate::start_with_env(&[("TAOS_LLM__DEFAULT_MAX_TOKENS", "5")]).await;
    host.setup_owner().await;
    let llm_status = || {
        let request = host.admin(Method::GET, "/api/llm/status");
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let before = llm_status().await;
    assert_eq!(before["last_error"], "no models yet: add a provider");
    add_fake_provider(&host, &fake).await;
    // From the moment a provider is added, the status no longer says to add one.
    let starting = llm_status().await;
    assert_ne!(starting["state"], "unavailable", "{starting}");
    assert!(starting["last_error"].is_null(), "{starting}");
    wait_ready(&host, &["fake-gpt", "fake-other"]).await;
    let created: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Spender", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = created["agent"]["dm_channel_id"]
        .as_str()
        .unwrap()
        .to_string();
    // One call costs $0.02 at the fake provider's prices: the first fits in $0.03, the second
    // doesn't fit in what is left.
    let budget = host
        .admin(Method::PUT, "/api/agents/spender/budget")
        .json(&json!({"limit_usd": 0.03, "period": "month"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);
    let _sidecar = spawn_sidecar(&host, &created, "fake-gpt");
    let mut ws = taos_e2e::WsClient::connect(&host, &host.local_token())
        .await
        .unwrap();
    ws.subscribe(&dm, Some(0)).await;

    let first = ask_over_ws(&mut ws, &dm, "spender", "hello").await;
    assert_eq!(first["state"], "complete", "{first}");
    assert_eq!(first["content"], REPLY);

    // Usage is recorded just after the answer: wait until the budget shows as spent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage: Value = host
            .admin(Method::GET, "/api/agents/spender/usage")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["period_spend_usd"].as_f64().unwrap_or(0.0) >= 0.02 {
            break;
        }
        assert!(Instant::now() < deadline, "usage never recorded: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = ask_over_ws(&mut ws, &dm, "spender", "and again").await;
    assert_eq!(failed["state"], "error", "{failed}");
    let failure = &failed["metadata"]["failure"];
    assert_eq!(failure["code"], "budget_exceeded", "{failed}");
    assert_eq!(
        failure["reason"],
        "Spender's budget for this month can't cover another answer ($0.02 of $0.03 spent; an \
         answer may cost more than what is left)."
    );
    assert!(
        failure["hint"]
            .as_str()
            .unwrap()
            .starts_with("Raise it in the agent's settings"),
        "{failure}"
    );
    assert!(
        failure["detail"].as_str().unwrap().contains("budget"),
        "the agent's own words are kept: {failure}"
    );
    // A reload shows the same: the failure is stored with the message.
    let stored: Vec<Value> = host
        .admin(Method::GET, &format!("/api/chat/channels/{dm}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = stored
        .iter()
        .find(|m| m["id"] == failed["id"])
        .expect("the failed turn is in the history");
    assert_eq!(again["state"], "error");
    assert_eq!(again["metadata"]["failure"], *failure);

    // The provider switched off: no model left, LiteLLM stops. The chat says so, not "error".
    host.admin(Method::PUT, "/api/agents/spender/budget")
        .json(&json!({"limit_usd": 100.0, "period": "month"}))
        .send()
        .await
        .unwrap();
    let off = host
        .admin(Method::PATCH, "/api/providers/fake")
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] == "unavailable" {
            // A provider exists: the reason says what is wrong with it, not "add a provider".
            assert_eq!(
                status["last_error"],
                "no models: every provider is disabled; enable one"
            );
            break;
        }
        assert!(Instant::now() < deadline, "LiteLLM never stopped: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unserved = ask_over_ws(&mut ws, &dm, "spender", "anyone there?").await;
    assert_eq!(unserved["state"], "error", "{unserved}");
    let failure = &unserved["metadata"]["failure"];
    assert_eq!(failure["code"], "model_unavailable", "{unserved}");
    assert_eq!(
        failure["reason"],
        "No enabled provider offers fake-gpt any more."
    );
    assert!(failure["hint"].as_str().unwrap().contains("Providers"));
}

/// The serving LiteLLM: the host's child running LiteLLM's proxy on its config (not a
/// `--validate_config` run; `--version` has no `--config`).
pub fn litellm_pid(host: &Host) -> Option<String> {
    let host_pid = host.pid()?.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (ppid == host_pid && text.contains("--config") && !text.contains("--validate_config"))
            .then(|| e.file_name().to_string_lossy().to_string())
    })
}

#[tokio::test]
async fn litellm_restarts_only_when_the_model_list_changes() {
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let first = litellm_pid(&host).expect("LiteLLM runs");

    // Prices and a refresh that finds the same models don't touch LiteLLM.
    host.admin(Method::PATCH, "/api/providers/fake")
        .json(&json!({"models": [{"id": "fake-gpt", "input_usd_per_mtok": 1.0}, {"id": "fake-other"}]}))
        .send().await.unwrap();
    let refreshed: Vec<Value> = host
        .admin(Method::POST, "/api/providers/models/refresh")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refreshed.len(), 2);
    let kept = refreshed.iter().find(|m| m["name"] == "fake-gpt").unwrap();
    assert_eq!(
        kept["input_usd_per_mtok"], 1.0,
        "a refresh keeps the owner's prices"
    );
    // The refresh decided synchronously that nothing changed, so no restart was asked for
    // (the supervisor's unit test `the_same_config_applied_again_wakes_nothing` holds that
    // the loop is not woken); LiteLLM is the same process.
    assert_eq!(
        litellm_pid(&host).as_deref(),
        Some(first.as_str()),
        "no restart for an unchanged list"
    );

    // A new model is a new config: validated, then LiteLLM restarts with it.
    host.admin(Method::PATCH, "/api/providers/fake")
        .json(&json!({"models": [{"id": "fake-gpt"}, {"id": "fake-other"}, {"id": "fake-third"}]}))
        .send()
        .await
        .unwrap();
    wait_ready(&host, &["fake-gpt", "fake-other", "fake-third"]).await;
    let second = litellm_pid(&host).expect("LiteLLM runs again");
    assert_ne!(first, second, "restarted for the new list");
    let config = std::fs::read_to_string(host.data_dir.join("llm/litellm.json")).unwrap();
    assert!(config.contains("fake-third") && !config.contains(SECRET));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(host.data_dir.join("llm/master-key"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);

    // Removing the last provider stops LiteLLM (no models, nothing to serve).
    assert_eq!(
        host.admin(Method::DELETE, "/api/providers/fake")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while litellm_pid(&host).is_some() {
        assert!(
            Instant::now() < deadline,
            "LiteLLM still running without models"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The supervisor records the new state just after the process is gone.
    loop {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["state"] == "unavailable" {
            break;
        }
        assert!(Instant::now() < deadline, "state stays {}", status["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn litellm_only_body_fields_are_refused_before_anything_is_forwarded() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    host.admin(Method::POST, "/api/providers")
        .json(&json!({"name": "stub", "type": "openai-compatible", "url": "http://127.0.0.1:9/v1", "models": [{"id": "cheap"}, {"id": "dear"}]}))
        .send()
        .await
        .unwrap();
    let created = create_agent(&host, "Frugal").await;
    host.admin(Method::PATCH, "/api/agents/frugal")
        .json(&json!({"model": "cheap"}))
        .send()
        .await
        .unwrap();
    let key = created.llm_key.as_deref().unwrap();
    // Each of these would let LiteLLM answer with another model, endpoint or key.
    for extra in [
        json!({"fallbacks": ["dear"]}),
        json!({"context_window_fallbacks": [{"cheap": ["dear"]}]}),
        json!({"mock_testing_fallbacks": true}),
        json!({"api_base": "http://127.0.0.1:1"}),
        json!({"metadata": {"tags": ["x"]}}),
    ] {
        let mut body = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = gateway(&host, key, "/v1/chat/completions")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{extra}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["type"],
            "invalid_request_error"
        );
    }
    // A refresh of the catalog is the owner's call.
    let guest_refresh = taos_e2e::http_client()
        .post(format!("{}/api/providers/models/refresh", host.agent_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        guest_refresh.status(),
        StatusCode::NOT_FOUND,
        "not even on the agent listener"
    );
}

/// Starts a streamed completion (the fake model holds after its first chunk) and returns the
/// response once that first chunk has arrived.
async fn open_stream(host: &Host, key: &str) -> (reqwest::Response, String) {
    // No short client timeout: a stream that is never cut must show as one (the wait in
    // `rest_of`), not as a client timeout that looks like a cut.
    let client = taos_e2e::plain_client(Duration::from_secs(3600));
    let mut response = client
        .post(format!("{}/v1/chat/completions", host.agent_url))
        .bearer_auth(key)
        .json(&json!({"model": "fake-gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(60), response.chunk())
        .await
        .expect("the first chunk")
        .unwrap()
        .expect("a first chunk");
    (response, String::from_utf8_lossy(&first).into_owned())
}

/// Reads the rest of a streamed answer: `Err` when the host broke it off.
async fn rest_of(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await? {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream was never cut: it outlived its key")
        .map(|()| text)
}

/// An agent's key is its only right to spend: rotating it (a leaked key) or archiving the agent
/// must stop the calls already running on it, not only new ones.
#[tokio::test]
async fn rotating_the_llm_key_or_archiving_the_agent_cuts_calls_in_flight() {
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let created = create_agent_with(
        &host,
        NewAgent {
            model: Some("fake-gpt".into()),
            ..new_agent("Spender")
        },
    )
    .await;
    let key = created.llm_key.clone().unwrap();

    fake.set_holding(true);
    let (response, first) = open_stream(&host, &key).await;
    assert!(first.contains("data:"), "{first}");
    let rotated: Value = host
        .admin(Method::POST, "/api/agents/spender/llm-key/rotate")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cut = rest_of(response).await;
    assert!(cut.is_err(), "the stream ended normally: {cut:?}");
    let new_key = rotated["llm_key"].as_str().unwrap().to_string();
    // The very next call with the old key is refused.
    let plain = json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "old key"}]});
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A call on the new key is cut when the agent is archived.
    let (response, _) = open_stream(&host, &new_key).await;
    let archived = host
        .admin(Method::DELETE, "/api/agents/spender")
        .send()
        .await
        .unwrap();
    assert!(archived.status().is_success(), "{}", archived.status());
    let cut = rest_of(response).await;
    assert!(cut.is_err(), "the stream ended normally: {cut:?}");
    let r = gateway(&host, &new_key, "/v1/chat/completions")
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "archived: the key is dead"
    );
    assert_eq!(
        fake.chat_requests(|body| body["messages"].to_string().contains("old key")),
        Vec::<Value>::new(),
        "nothing went upstream"
    );

    // Nothing was cut by accident: an unheld stream on a live key completes.
    fake.set_holding(false);
    let other: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Other", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (response, first) = open_stream(&host, other["llm_key"].as_str().unwrap()).await;
    let rest = rest_of(response).await.expect("a complete stream");
    assert!(format!("{first}{rest}").contains("[DONE]"));
}

// ---- Attacks on the LLM path (issue 12: budgets, provider keys, LiteLLM's confinement) ----

/// A new agent using `model` (and any `fallback`s); returns its LLM key.
async fn agent_with_model(host: &Host, name: &str, model: &str, fallback: &[&str]) -> String {
    let created = create_agent(host, name).await;
    let slug = &created.agent.slug;
    let set = host
        .admin(Method::PATCH, &format!("/api/agents/{slug}"))
        .json(&json!({"model": model, "fallback_models": fallback}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        set.status(),
        StatusCode::OK,
        "{}",
        set.text().await.unwrap()
    );
    created.llm_key.expect("a new agent's LLM key")
}

/// Sends `call` on `key` `calls` times at once; returns how many were answered. Every other
/// one must have been refused for the budget.
async fn burst(host: &Host, key: &str, call: &Value, calls: usize) -> i64 {
    let calls: Vec<_> = (0..calls)
        .map(|_| {
            let request = gateway(host, key, "/v1/chat/completions")
                .timeout(Duration::from_secs(300))
                .json(call);
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                let status = r.status();
                (status, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"]["type"], "budget_exceeded", "{body}");
        }
    }
    ok
}

/// Polls the agent's usage until `done` holds; returns it.
async fn usage_when(host: &Host, slug: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let usage: Value = host
            .admin(Method::GET, &format!("/api/agents/{slug}/usage"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&usage) {
            return usage;
        }
        assert!(Instant::now() < deadline, "usage never settled: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn requests(usage: &Value) -> i64 {
    usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_i64().unwrap())
        .sum()
}

async fn error_type(r: reqwest::Response) -> String {
    let body: Value = r.json().await.unwrap();
    body["error"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn two_hundred_concurrent_calls_at_99_percent_of_a_budget_overspend_at_most_one_call() {
    let _turn = LITELLM.lock().await;
    let fake = FakeLlm::start(SECRET, &["fake-gpt", "fake-other"]).await;
    // A concurrency cap above the burst, so every refusal below is the budget's.
    let host = crate::start_with_env(&[("TAOS_LLM__MAX_CONCURRENT_CALLS", "1024")]).await;
    host.setup_owner().await;
    add_fake_provider(&host, &fake).await;
    // fake-gpt at $10 in / $100 out per million tokens: a call (10 tokens in, 5 out) costs
    // $0.0006 and reserves about $0.0013 (its body's bytes at the input price, 5 tokens out).
    // fake-other: 5 tokens out cost $0.99.
    let priced = host
        .admin(Method::PATCH, "/api/providers/fake")
        .json(&json!({"models": [
            {"id": "fake-gpt", "input_usd_per_mtok": 10.0, "output_usd_per_mtok": 100.0},
            {"id": "fake-other", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 198000.0}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(priced.status(), StatusCode::OK);
    wait_ready(&host, &["fake-gpt", "fake-other"]).await;
    let key = agent_with_model(&host, "Burst", "fake-gpt", &["fake-other"]).await;
    let budget = host
        .admin(Method::PUT, "/api/agents/burst/budget")
        .json(&json!({"limit_usd": 1.0, "period": "day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);

    // 99 % spent.
    let seed = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-other", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), StatusCode::OK);
    let usage = usage_when(&host, "burst", |u| requests(u) == 1).await;
    assert!(
        (usage["period_spend_usd"].as_f64().unwrap() - 0.99).abs() < 1e-9,
        "{usage}"
    );

    // 200 calls at once.
    let call = json!({"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let ok = burst(&host, &key, &call, 200).await;
    assert!(ok >= 1, "the 1 % left pays for some calls");
    let usage = usage_when(&host, "burst", |u| requests(u) == 1 + ok).await;
    let spent = usage["period_spend_usd"].as_f64().unwrap();
    let one_call = 0.0006;
    assert!(
        (spent - (0.99 + ok as f64 * one_call)).abs() < 1e-9,
        "every admitted call was charged: {ok} calls, {usage}"
    );
    assert!(
        spent <= 1.0 + one_call + 1e-9,
        "{ok} calls got through: ${spent} spent of a $1 budget"
    );
    // What the burst left (room that calls in flight held) is spent one call at a time, and
    // the budget still ends within one call of its limit.
    let mut more = 0;
    loop {
        let r = gateway(&host, &key, "/v1/chat/completions")
            .json(&call)
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::OK {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(error_type(r).await, "budget_exceeded");
            break;
        }
        more += 1;
        assert!(more < 100, "the budget never ran out");
    }
    let usage = usage_when(&host, "burst", |u| requests(u) == 1 + ok + more).await;
    let spent = usage["period_spend_usd"].as_f64().unwrap();
    assert!(
        spent <= 1.0 + one_call + 1e-9,
        "${spent} spent of a $1 budget"
    );
}

#[tokio::test]
async fn a_fifth_call_in_flight_is_refused_until_one_finishes() {
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let key = agent_with_model(&host, "Busy", "fake-gpt", &[]).await;
    let ask = |stream: bool| json!({"model": "fake-gpt", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});

    fake.hold();
    let held: Vec<_> = (0..4)
        .map(|i| {
            let request = gateway(&host, &key, "/v1/chat/completions")
                .timeout(Duration::from_secs(300))
                .json(&ask(i % 2 == 0));
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                let status = r.status();
                let _ = r.bytes().await;
                status
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.in_flight() < 4 {
        assert!(
            Instant::now() < deadline,
            "the calls never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The default cap is 4 calls in flight. (The timeout only keeps a broken gateway, which
    // would forward the call to the held provider, from hanging the test.)
    let fifth = gateway(&host, &key, "/v1/chat/completions")
        .timeout(Duration::from_secs(30))
        .json(&ask(false))
        .send()
        .await
        .expect("an answer, not a call left waiting");
    assert_eq!(fifth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(fifth.headers().contains_key("retry-after"));
    let body: Value = fifth.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("in flight"));
    assert_eq!(fake.in_flight(), 4, "the fifth never reached the provider");

    fake.release();
    for call in held {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    // Settled calls free their slots (settling follows the answer by a moment).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = gateway(&host, &key, "/v1/chat/completions")
            .json(&ask(false))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots never freed: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_call_in_flight_when_the_host_is_killed_is_settled_at_the_next_start() {
    let _turn = LITELLM.lock().await;
    let fake = FakeLlm::start(SECRET, &["fake-gpt", "fake-other"]).await;
    let env = [("TAOS_LLM__MAX_CONCURRENT_CALLS", "1")];
    let mut host = crate::start_with_env(&env).await;
    host.setup_owner().await;
    add_fake_provider(&host, &fake).await;
    wait_ready(&host, &["fake-gpt", "fake-other"]).await;
    let key = agent_with_model(&host, "Crash", "fake-gpt", &[]).await;
    host.admin(Method::PUT, "/api/agents/crash/budget")
        .json(&json!({"limit_usd": 1.0, "period": "day"}))
        .send()
        .await
        .unwrap();
    // $0.02 reserved and $0.02 spent per call (see add_fake_provider).
    let ask = json!({"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    fake.hold();
    let in_flight = tokio::spawn(
        gateway(&host, &key, "/v1/chat/completions")
            .json(&ask)
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.in_flight() < 1 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = gateway(&host, &key, "/v1/chat/completions")
        .timeout(Duration::from_secs(30))
        .json(&ask)
        .send()
        .await
        .expect("an answer, not a call left waiting");
    assert_eq!(
        second.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the cap is 1"
    );

    // The host dies with the call's reservation open.
    host.kill9().await;
    let _ = in_flight.await;
    fake.release();
    let temp = host.take_temp();
    let host = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            ..HostOptions::with_env(&env)
        },
    )
    .await
    .unwrap();
    wait_ready(&host, &["fake-gpt", "fake-other"]).await;
    // The stale reservation no longer holds the agent's only slot...
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // ...and was charged at its reserved amount, as a failed request.
    let usage = usage_when(&host, "crash", |u| requests(u) == 2).await;
    assert_eq!(usage["rows"][0]["failures"], 1, "{usage}");
    assert!(
        (usage["period_spend_usd"].as_f64().unwrap() - 0.04).abs() < 1e-9,
        "{usage}"
    );
    drop(temp);
}

#[tokio::test]
async fn paused_agents_are_refused_by_the_gateway() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    host.admin(Method::POST, "/api/providers")
        .json(&json!({"name": "stub", "type": "openai-compatible", "url": "http://127.0.0.1:9/v1", "models": [{"id": "cheap"}]}))
        .send()
        .await
        .unwrap();
    let key = agent_with_model(&host, "Sleeper", "cheap", &[]).await;
    let ask = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]});
    let paused = host
        .admin(Method::POST, "/api/agents/sleeper/pause")
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), StatusCode::OK);
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "agent_paused", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("paused"));
    let r = gateway(&host, &key, "/v1/embeddings")
        .json(&json!({"model": "cheap", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    host.admin(Method::POST, "/api/agents/sleeper/resume")
        .send()
        .await
        .unwrap();
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "resumed: on to LiteLLM (absent here)"
    );
}

#[tokio::test]
async fn malformed_fields_and_local_content_urls_never_leave_the_gateway() {
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let key = agent_with_model(&host, "Prober", "fake-gpt", &[]).await;
    // A service on the host's loopback the agent should never reach through a model.
    let internal = Recorder::start(None).await;
    let port = internal.addr.port();
    let hi = json!([{"role": "user", "content": "hi"}]);

    let mut bodies = Vec::new();
    for (field, value) in [
        ("stream", json!("yes")),
        ("stream", json!(1)),
        ("n", json!(0)),
        ("n", json!(-1)),
        ("n", json!(1.5)),
        ("n", json!("2")),
        ("n", json!(100000)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(2.5)),
        ("max_tokens", json!("100")),
        ("max_tokens", json!(1_000_000_000_000u64)),
        ("max_completion_tokens", json!(-5)),
        ("max_completion_tokens", json!(1e12)),
    ] {
        let mut body = json!({"model": "fake-gpt", "messages": hi});
        body[field] = value;
        bodies.push(body);
    }
    let local = format!("http://127.0.0.1:{port}/secret");
    for part in [
        json!({"type": "image_url", "image_url": {"url": local}}),
        json!({"type": "image_url", "image_url": {"url": format!("https://127.0.0.1:{port}/")}}),
        json!({"type": "image_url", "image_url": {"url": format!("https://localhost:{port}/")}}),
        json!({"type": "image_url", "image_url": {"url": "https://169.254.169.254/latest/meta-data/"}}),
        json!({"type": "image_url", "image_url": {"url": format!("https://[::1]:{port}/")}}),
        json!({"type": "image_url", "image_url": local}),
        json!({"type": "input_audio", "input_audio": {"data": local, "format": "wav"}}),
        json!({"type": "file", "file": {"file_data": local}}),
        json!({"type": "file", "file": {"file_id": local}}),
    ] {
        bodies.push(json!({"model": "fake-gpt", "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]}));
    }
    for body in bodies {
        let r = gateway(&host, &key, "/v1/chat/completions")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer["error"]["type"], "invalid_request_error",
            "OpenAI's error shape: {answer}"
        );
        assert!(answer["error"]["message"].is_string());
    }
    assert_eq!(fake.calls(), 0, "nothing was forwarded");
    assert!(internal.seen().is_empty(), "{:?}", internal.seen());

    // What is allowed still goes through: an inline image.
    let inline = json!({"model": "fake-gpt", "n": 1, "max_tokens": 5, "stream": false, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&inline)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn litellm_runs_as_its_own_user_and_cannot_read_the_host_secrets() {
    assert!(
        taos_host::sys::is_root(),
        "this attack needs a root host (the host drops LiteLLM's privileges only as root)"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let ids: Vec<String> = passwd
        .lines()
        .find(|l| l.starts_with("taos-litellm:"))
        .expect("the taos-litellm user: run scripts/dev-litellm.sh")
        .split(':')
        .skip(2)
        .take(2)
        .map(String::from)
        .collect();
    let (uid, gid) = (ids[0].clone(), ids[1].clone());
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let pid = litellm_pid(&host).expect("LiteLLM runs");

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(field("Uid:"), vec![uid.clone(); 4], "{status}");
    assert_eq!(field("Gid:"), vec![gid.clone(); 4], "{status}");
    assert!(field("Groups:").is_empty(), "no supplementary groups");
    assert_eq!(field("NoNewPrivs:"), ["1"]);
    let master_key = std::fs::read_to_string(host.data_dir.join("llm/master-key")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(master_key.trim()));
    // Its own mount namespace, with a private tmpfs on /tmp.
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/tmp") && l.contains(" - tmpfs ")),
        "{mounts}"
    );

    // As that user, from its own namespace and from the host's, the host's secrets stay shut.
    for file in ["secret.key", "taos.db", "llm/master-key", "local-token"] {
        let path = host.data_dir.join(file);
        assert!(path.exists(), "{file}");
        let inside = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "-S", &uid, "-G", &gid, "--", "cat"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            !inside.status.success(),
            "{file} readable in LiteLLM's namespace"
        );
        let outside = std::process::Command::new("runuser")
            .args(["-u", "taos-litellm", "--", "cat"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!outside.status.success(), "{file} readable by taos-litellm");
        assert!(outside.stdout.is_empty());
    }
    let listing = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "--", "ls", "-A"])
        .arg(&host.data_dir)
        .output()
        .unwrap();
    assert!(
        listing.stdout.is_empty(),
        "the data dir is covered in LiteLLM's namespace: {}",
        String::from_utf8_lossy(&listing.stdout)
    );

    // And it still serves.
    let key = agent_with_model(&host, "Confined", "fake-gpt", &[]).await;
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_process_holding_litellms_port_never_gets_the_master_key() {
    let _turn = LITELLM.lock().await;
    // Another local process got LiteLLM's port first.
    let squatter = Recorder::start(None).await;
    let port = squatter.addr.port().to_string();
    let fake = FakeLlm::start(SECRET, &["fake-gpt", "fake-other"]).await;
    let host = crate::start_with_env(&[("TAOS_LLM__LITELLM_PORT", &port)]).await;
    host.setup_owner().await;
    add_fake_provider(&host, &fake).await;
    let key = agent_with_model(&host, "Victim", "fake-gpt", &[]).await;
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_type(r).await, "llm_unavailable");
    // LiteLLM is not started on a port the host could not bind, and says why.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let error = status["last_error"].as_str().unwrap_or_default();
        if status["state"] == "failed" && error.contains(&format!("127.0.0.1:{port}")) {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let master_key = std::fs::read_to_string(host.data_dir.join("llm/master-key")).unwrap();
    let seen = squatter.seen();
    assert!(
        !seen
            .iter()
            .flat_map(|s| &s.headers)
            .any(|(_, v)| v.contains(master_key.trim())),
        "the squatter got the master key"
    );
    assert!(
        seen.is_empty(),
        "nothing at all went to the squatter: {seen:?}"
    );
    assert!(litellm_pid(&host).is_none());
}

#[tokio::test]
async fn moving_a_provider_to_another_origin_drops_its_key() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let home = FakeLlm::start(SECRET, &["m1"]).await;
    // A listener the attacker controls (it accepts any key, and lists models).
    let elsewhere = FakeLlm::start("", &["m1", "m2"]).await;
    let created = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "home", "type": "openai-compatible", "url": home.url(), "api_key": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);

    // Same origin, other path: the key stays.
    let same: Value = host
        .admin(Method::PATCH, "/api/providers/home")
        .json(&json!({"url": format!("http://{}/v1/", home.addr)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["has_api_key"], true, "{same}");

    // Another origin (another port): the key goes, and the answer says so.
    let moved = host
        .admin(Method::PATCH, "/api/providers/home")
        .json(&json!({"url": elsewhere.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::OK);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!(moved["has_api_key"], false, "the key was dropped: {moved}");
    // Discovery against the new origin sends no key.
    let refreshed = host
        .admin(Method::POST, "/api/providers/models/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);
    let names: Vec<String> = refreshed
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["m1", "m2"], "discovery reached the new URL");
    assert!(
        !elsewhere.keys_seen().iter().any(|k| k.contains(SECRET)),
        "the key reached the new origin: {:?}",
        elsewhere.keys_seen()
    );

    // A move that brings its own key keeps that one.
    let rekeyed: Value = host
        .admin(Method::PATCH, "/api/providers/home")
        .json(&json!({"url": home.url(), "api_key": SECRET}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rekeyed["has_api_key"], true);
    let back = host
        .admin(Method::POST, "/api/providers/models/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert!(home.keys_seen().iter().any(|k| k.contains(SECRET)));
    assert_eq!(
        home.state
            .unauthorized
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn discovery_never_follows_a_redirect() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let second = Recorder::start(None).await;
    let first = Recorder::start(Some(second.url())).await;
    const KEY: &str = "sk-provider-Vb2r9";
    // Testing an endpoint, both ways of sending a key.
    for kind in ["openai-compatible", "anthropic"] {
        let tested: Value = host
            .admin(Method::POST, "/api/providers/test")
            .json(&json!({"type": kind, "url": format!("{}/v1", first.url()), "api_key": KEY}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(tested["reachable"], false, "{tested}");
        assert!(
            tested["error"].as_str().unwrap().contains("302"),
            "{tested}"
        );
    }
    // Adding one (discovery), and refreshing a stored one.
    let added = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "bouncy", "type": "anthropic", "url": format!("{}/v1", first.url()), "api_key": KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::BAD_REQUEST);
    let stored = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "bouncy", "type": "anthropic", "url": format!("{}/v1", first.url()), "api_key": KEY, "models": [{"id": "m"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    let refreshed = host
        .admin(Method::POST, "/api/providers/models/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);

    assert!(first.seen().len() >= 4, "{:?}", first.seen());
    assert!(
        second.seen().is_empty(),
        "a redirect was followed: {:?}",
        second.seen()
    );
}

#[tokio::test]
async fn a_get_never_rediscovers_the_catalog() {
    let host = host_with(&[]).await;
    host.setup_owner().await;
    let fake = FakeLlm::start("", &["new-model"]).await;
    host.admin(Method::POST, "/api/providers")
        .json(&json!({"name": "local", "type": "openai-compatible", "url": fake.url(), "models": [{"id": "old-model"}]}))
        .send()
        .await
        .unwrap();
    let names = |models: Vec<Value>| -> Vec<String> {
        models
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let got: Vec<Value> = host
        .admin(Method::GET, "/api/providers/models?refresh=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(got), ["old-model"], "a GET changed the catalog");
    assert_eq!(fake.keys_seen().len() + fake.calls() as usize, 0);
    let listed: Vec<Value> = host
        .admin(Method::GET, "/api/providers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["models"][0]["id"], "old-model");
    // The POST does it.
    let refreshed: Vec<Value> = host
        .admin(Method::POST, "/api/providers/models/refresh")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(refreshed), ["new-model"]);
}

/// Many calls settling at once cross each budget threshold: each is announced once, every
/// admitted call is charged once, and no call beyond the budget is admitted. A model without a
/// price is refused to a budgeted agent before anything goes upstream.
#[tokio::test]
async fn concurrent_calls_crossing_budget_thresholds_announce_each_once() {
    // A concurrency cap above the burst, so every refusal below is the budget's.
    let (_turn, host, fake) =
        with_fake_provider(BIN, &[("TAOS_LLM__MAX_CONCURRENT_CALLS", "1024")]).await;
    let key = agent_with_model(&host, "Crowd", "fake-gpt", &["fake-other"]).await;
    // Without a budget an unpriced model is fine (and costs nothing here); the gateway keeps
    // "no budget" for the agent until the owner sets one.
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-other", "max_tokens": 5, "messages": [{"role": "user", "content": "before the budget"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let budget = host
        .admin(Method::PUT, "/api/agents/crowd/budget")
        .json(&json!({"limit_usd": 1.0, "period": "day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);

    // fake-other has no price (see add_fake_provider): with a budget, the call can't be bounded.
    // (So this also shows the budget set a moment ago counts for the very next call.)
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-other", "max_tokens": 5, "messages": [{"role": "user", "content": "unpriced"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_type(r).await, "price_unknown");
    assert_eq!(
        fake.chat_requests(|body| body["messages"].to_string().contains("unpriced")),
        Vec::<Value>::new(),
        "nothing went upstream"
    );
    // The owner prices it (free): the gateway's kept catalog is forgotten, so the very next
    // call is admitted.
    let priced = host
        .admin(Method::PATCH, "/api/providers/fake")
        .json(&json!({"models": [
            {"id": "fake-gpt", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 4000.0},
            {"id": "fake-other", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(priced.status(), StatusCode::OK);
    let r = gateway(&host, &key, "/v1/chat/completions")
        .json(&json!({"model": "fake-other", "max_tokens": 5, "messages": [{"role": "user", "content": "priced now"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // $0.02 a call, reserved exactly (see add_fake_provider): 50 calls fill the $1 budget.
    let call = json!({"model": "fake-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let ok = burst(&host, &key, &call, 80).await;
    assert_eq!(ok, 50, "the budget pays for exactly 50 calls");
    // And the two free calls before them.
    let usage = usage_when(&host, "crowd", |u| requests(u) == 52).await;
    assert!(
        (usage["period_spend_usd"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "each call charged once: {usage}"
    );

    // The calls crossed 50, 80 and 100 % while settling side by side: each is announced once.
    let alerts = budget_alerts_when(&host, |a| a.contains(&100)).await;
    let mut sorted = alerts.clone();
    sorted.sort();
    assert_eq!(sorted, [50, 80, 100], "{alerts:?}");
}

/// The thresholds of the `llm.budget` notifications, once `done` says they are complete.
async fn budget_alerts_when(host: &Host, done: impl Fn(&[i64]) -> bool) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Vec<Value> = host
            .admin(Method::GET, "/api/notifications")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alerts: Vec<i64> = list
            .iter()
            .filter(|n| n["source"] == "llm.budget")
            .map(|n| n["data"]["threshold"].as_i64().unwrap())
            .collect();
        if done(&alerts) {
            return alerts;
        }
        assert!(
            Instant::now() < deadline,
            "budget alerts so far: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- The spend screen's overview (issue 19) ----

#[tokio::test]
async fn the_usage_overview_matches_each_agents_usage_and_refuses_bad_ranges() {
    let (_turn, host, _fake) = with_fake_provider(BIN, &[]).await;
    let busy = agent_with_model(&host, "Busy", "fake-gpt", &[]).await;
    let quiet = agent_with_model(&host, "Quiet", "fake-gpt", &[]).await;
    let budget = host
        .admin(Method::PUT, "/api/agents/quiet/budget")
        .json(&json!({"limit_usd": 500.0, "period": "month"}))
        .send()
        .await
        .unwrap();
    assert_eq!(budget.status(), StatusCode::OK);
    let ask = json!({"model": "fake-gpt", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    for (key, calls) in [(&busy, 2), (&quiet, 1)] {
        for _ in 0..calls {
            let r = gateway(&host, key, "/v1/chat/completions")
                .json(&ask)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    let busy_usage = usage_when(&host, "busy", |u| requests(u) == 2).await;
    let quiet_usage = usage_when(&host, "quiet", |u| requests(u) == 1).await;

    let r = host
        .admin(Method::GET, "/api/usage?days=7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let overview: Value = r.json().await.unwrap();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(overview["to_day"], today.as_str(), "{overview}");
    let from = (chrono::Utc::now() - chrono::TimeDelta::days(6))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(overview["from_day"], from.as_str(), "{overview}");
    let agents = overview["agents"].as_array().unwrap();
    let names: Vec<&str> = agents
        .iter()
        .map(|a| a["agent_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["busy", "quiet"], "{overview}");
    // The same rows and period spend as each agent's own usage route.
    for (spend, usage) in agents.iter().zip([&busy_usage, &quiet_usage]) {
        assert_eq!(spend["rows"], usage["rows"], "{overview}");
        assert_eq!(spend["period_spend_usd"], usage["period_spend_usd"]);
        assert_eq!(spend["budget"], usage["budget"]);
        assert_eq!(requests(spend), requests(usage));
    }
    assert_eq!(agents[0]["display_name"], "Busy");
    assert_eq!(agents[1]["budget"]["limit_usd"], 500.0);
    assert_eq!(agents[0]["rows"][0]["model"], "fake-gpt");
    assert_eq!(agents[0]["rows"][0]["day"], today.as_str());
    assert_eq!(
        agents[0]["rows"][0]["tokens_out"],
        json!(2 * COMPLETION_TOKENS)
    );
    let default: Value = host
        .admin(Method::GET, "/api/usage")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        default["agents"], overview["agents"],
        "30 days hold today's"
    );

    for bad in ["days=0", "days=367", "days=abc", "days=-1"] {
        let r = host
            .admin(Method::GET, &format!("/api/usage?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("days")),
            "{bad}: {body}"
        );
    }
    // Refused calls change nothing: the same figures afterwards.
    let after: Value = host
        .admin(Method::GET, "/api/usage?days=7")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, overview);
}

/// An update's gate asks each agent connected before for a round trip through its bridge
/// (`POST /api/agents/{slug}/bridge-check`), through the real sidecar: the delivery goes out on
/// its stream and its settled reply comes back, without a model call (the gateway refuses the
/// check's trace, so the fake upstream is never called and no budget is spent) and without
/// anything in the chat. An agent not connected, or no such agent, is refused in words.
#[tokio::test]
async fn a_bridge_check_is_a_round_trip_through_the_sidecar_without_a_model_call() {
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let created: Value = host
        .admin(Method::POST, "/api/agents")
        .json(&json!({"name": "Checked", "model": "fake-gpt"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = created["agent"]["dm_channel_id"]
        .as_str()
        .unwrap()
        .to_string();
    let check = |slug: &str| {
        host.admin(Method::POST, &format!("/api/agents/{slug}/bridge-check"))
            .send()
    };
    let missing = check("no-such-agent").await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let away = check("checked").await.unwrap();
    assert_eq!(away.status(), StatusCode::CONFLICT);
    let body: Value = away.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "agent checked is not connected to the bridge",
        "{body}"
    );

    let _sidecar = spawn_sidecar(&host, &created, "fake-gpt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agent: Value = host.get("/api/agents/checked").await;
        if agent["connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never connected: {agent}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls_before = fake.calls();
    let answered = check("checked").await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let answered: Value = answered.json().await.unwrap();
    assert_eq!(answered["reply"], "error", "{answered}");
    assert!(
        answered["text"].as_str().unwrap().contains("bridge check"),
        "the sidecar passed on the gateway's refusal: {answered}"
    );
    assert!(answered["elapsed_ms"].as_u64().is_some(), "{answered}");
    assert_eq!(fake.calls(), calls_before, "no model call was made");
    let messages: Vec<Value> = host.get(&format!("/api/chat/channels/{dm}/messages")).await;
    assert!(
        messages.is_empty(),
        "nothing went to the chat: {messages:?}"
    );

    // The agent's chat is unaffected: a message after the check is answered by the model.
    let mut ws = taos_e2e::WsClient::connect(&host, &host.local_token())
        .await
        .unwrap();
    ws.subscribe(&dm, Some(0)).await;
    let after = ask_over_ws(&mut ws, &dm, "checked", "hello after the check").await;
    assert_eq!(after["state"], "complete", "{after}");
    assert_eq!(after["content"], REPLY);
    assert_eq!(fake.calls(), calls_before + 1);
    // And a second check runs (the first one closed).
    let again = check("checked").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
