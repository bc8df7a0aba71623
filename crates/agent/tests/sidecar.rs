//! The sidecar against the real `taos-host`, with real LiteLLM in front of the fake LLM upstream
//! (`taos_e2e::fake_llm`): in-process for behaviour, and as a real process for exit codes and
//! signals. What the tests check is what the host recorded: chat messages, WebSocket events,
//! traces, and its log.
//!
//! One host with LiteLLM serves every test here (LiteLLM takes tens of seconds and ~300 MB to
//! start); each test has its own agent, and each fault its own model, so tests running at once
//! don't meet. A fake host (`fake/`) is left only for a fault the real host never produces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

mod acp;
mod fake;
mod openclaw;
mod opencode;
mod tools;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_agent::shutdown::{self, ShutdownTrigger};
use taos_agent::{Config, RunError};
use taos_e2e::fake_llm::{Behaviour, FakeLlm, REPLY};
use taos_e2e::{Host, HostOptions, SseReader, WsClient};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A test's own account: a uid no other process uses, and a home (its workspace) in /tmp that
/// only it can enter. Every test of this binary takes one from here: the sidecar sweeps every
/// process of its account when an agent ends, so two tests sharing a uid would kill each
/// other's agents (an openclaw test's kill once took opencode's agent down mid-`initialize`).
fn test_account(kind: &str) -> (u32, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 100, "more than 100 test accounts in one run");
    let uid = 3_800_000_000 + (std::process::id() % 100_000) * 100 + n;
    let dir = std::env::temp_dir().join(format!("taos-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("home");
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown home");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod home");
    (uid, dir)
}

/// How long a test waits for something before failing. It only keeps a broken run from hanging:
/// nothing here depends on how fast the host answers.
const WAIT: Duration = Duration::from_secs(90);

const UPSTREAM_KEY: &str = "upstream-key-for-the-sidecar-tests";
/// Answers [`REPLY`].
const GOOD: &str = "good";
/// Answers [`REPLY`] too: a fallback that would work if it were tried.
const OTHER: &str = "other";
/// HTTP 500 before any text.
const BROKEN: &str = "broken";
const BROKEN_TOO: &str = "broken-too";
/// Streams its first word, then the connection breaks.
const BREAKS_OFF: &str = "breaks-off";
/// Streams its first word, then nothing more, ever.
const STALLS: &str = "stalls";
const MODELS: [&str; 6 + tools::MODELS.len() + openclaw::MODELS.len() + opencode::MODELS.len()] = {
    let mut all = [""; 6 + tools::MODELS.len() + openclaw::MODELS.len() + opencode::MODELS.len()];
    let plain = [GOOD, OTHER, BROKEN, BROKEN_TOO, BREAKS_OFF, STALLS];
    let claw = 6 + tools::MODELS.len();
    let code = claw + openclaw::MODELS.len();
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < 6 {
            plain[i]
        } else if i < claw {
            tools::MODELS[i - 6]
        } else if i < code {
            openclaw::MODELS[i - claw]
        } else {
            opencode::MODELS[i - code]
        };
        i += 1;
    }
    all
};
/// The first piece of every answer the upstream streams.
const FIRST_WORD: &str = "Hello ";

/// The host and upstream every test shares.
struct Shared {
    host: Host,
    upstream: FakeLlm,
}

static SHARED: tokio::sync::OnceCell<Shared> = tokio::sync::OnceCell::const_new();

/// The shared host, started by the first test that asks. It lives on a thread and runtime of
/// its own, since each test's runtime ends with the test; it stops when the test process ends.
async fn shared() -> &'static Shared {
    SHARED
        .get_or_init(|| async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("shared-host".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let _ = tx.send(start_shared().await);
                        std::future::pending::<()>().await
                    })
                })
                .expect("thread");
            rx.await.expect("the shared host starts")
        })
        .await
}

async fn start_shared() -> Shared {
    let upstream = FakeLlm::start(UPSTREAM_KEY, &MODELS).await;
    upstream.set_behaviour(BROKEN, Behaviour::Fail);
    upstream.set_behaviour(BROKEN_TOO, Behaviour::Fail);
    upstream.set_behaviour(BREAKS_OFF, Behaviour::BreakAfterFirstWord);
    upstream.set_behaviour(STALLS, Behaviour::StallAfterFirstWord);
    let host = Host::start_for_process(
        &taos_e2e::workspace_binary("taos-host")
            .display()
            .to_string(),
        HostOptions {
            data_dir: Some(data_dir()),
            // JSON lines, so the reconnect test can read what the host did with a stream.
            env: vec![("TAOS_LOG__FORMAT".into(), "json".into())],
        },
    )
    .await
    .expect("host starts");
    host.setup_owner().await;
    let added = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "fake", "type": "openai-compatible", "url": upstream.url(), "api_key": UPSTREAM_KEY,
            // Priced, so that an agent with a budget may call them (the gateway refuses a
            // model without a known price to an agent with a budget).
            "models": MODELS.iter().map(|id| json!({"id": id, "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0})).collect::<Vec<_>>()}))
        .send()
        .await
        .expect("add provider");
    assert_eq!(added.status(), StatusCode::CREATED, "add provider");
    wait_for("LiteLLM to serve the fake models", async || {
        let status: Value = host
            .admin(Method::GET, "/api/llm/status")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_ne!(status["state"], "failed", "LiteLLM failed: {status}");
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(
            !error.contains("not installed"),
            "LiteLLM is missing: run scripts/dev-litellm.sh (scripts/test.sh does)"
        );
        let mut have: Vec<&str> = status["models"]
            .as_array()?
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        have.sort();
        let mut want = MODELS.to_vec();
        want.sort();
        (status["state"] == "ready" && have == want).then_some(())
    })
    .await;
    Shared { host, upstream }
}

/// `<target>/tmp/sidecar-host-<pid>/data`. A static is never dropped, so a temp dir would
/// never be removed: the dirs of earlier runs whose process is gone are removed here instead.
fn data_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("sidecar-host-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let ours = root.join(format!("sidecar-host-{}", std::process::id()));
    std::fs::create_dir_all(&ours).expect("the shared host's dir");
    ours.join("data")
}

/// Polls `check` until it gives a value; panics naming `what` after [`WAIT`].
async fn wait_for<T>(what: &str, check: impl AsyncFn() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's agent on the shared host.
struct Agent {
    slug: String,
    token: String,
    llm_key: String,
    dm: String,
    /// Its model, then its fallbacks.
    models: Vec<&'static str>,
}

impl Agent {
    async fn create(host: &Host, name: &str, models: &[&'static str]) -> Agent {
        let response = host
            .admin(Method::POST, "/api/agents")
            .json(&json!({"name": name, "model": models[0], "fallback_models": models[1..]}))
            .send()
            .await
            .expect("create agent");
        assert_eq!(response.status(), StatusCode::CREATED, "create agent");
        let created: Value = response.json().await.expect("agent json");
        let text = |v: &Value| v.as_str().expect("a string").to_string();
        Agent {
            slug: text(&created["agent"]["slug"]),
            token: text(&created["agent_token"]),
            llm_key: text(&created["llm_key"]),
            dm: text(&created["agent"]["dm_channel_id"]),
            models: models.to_vec(),
        }
    }

    /// The sidecar's environment, as the host would set it.
    fn env(&self, host: &Host) -> HashMap<&'static str, String> {
        HashMap::from([
            ("TAOS_BRIDGE_URL", host.agent_url.clone()),
            ("TAOS_AGENT_NAME", self.slug.clone()),
            ("TAOS_AGENT_TOKEN", self.token.clone()),
            ("OPENAI_BASE_URL", format!("{}/v1", host.agent_url)),
            ("OPENAI_API_KEY", self.llm_key.clone()),
            ("TAOS_MODEL", self.models[0].to_string()),
            ("TAOS_FALLBACK_MODELS", self.models[1..].join(",")),
        ])
    }

    /// A config for running the sidecar in-process, with short delays.
    fn config(&self, host: &Host) -> Config {
        let env = self.env(host);
        let mut config = Config::from_lookup(|name| env.get(name).cloned()).expect("config");
        config.timings.backoff_start = Duration::from_millis(50);
        config.timings.backoff_max = Duration::from_millis(200);
        config.timings.refused_retry = Duration::from_millis(100);
        config.timings.shutdown_grace = Duration::from_millis(300);
        config
    }

    async fn wait_connected(&self, host: &Host) {
        wait_for("the sidecar's bridge stream", async || {
            let agent: Value = host
                .admin(Method::GET, &format!("/api/agents/{}", self.slug))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (agent["connected"] == true).then_some(())
        })
        .await;
    }

    /// Posts a message as the owner into the agent's DM; returns its id, the delivery's trace id.
    async fn say(&self, host: &Host, text: &str) -> String {
        let response = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": self.dm, "content": text}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), StatusCode::CREATED, "post");
        let message: Value = response.json().await.expect("message json");
        message["id"].as_str().expect("id").to_string()
    }

    /// The agent's messages in its DM, in seq order.
    async fn replies(&self, host: &Host) -> Vec<Value> {
        let messages: Vec<Value> = host
            .admin(
                Method::GET,
                &format!(
                    "/api/chat/channels/{}/messages?after_seq=0&limit=500",
                    self.dm
                ),
            )
            .send()
            .await
            .expect("messages")
            .json()
            .await
            .expect("messages json");
        messages
            .into_iter()
            .filter(|m| m["author_id"] == self.slug.as_str())
            .collect()
    }

    /// The agent's answers to `trace_id` (there should never be more than one).
    async fn replies_to(&self, host: &Host, trace_id: &str) -> Vec<Value> {
        let mut replies = self.replies(host).await;
        replies.retain(|m| m["metadata"]["trace_id"] == trace_id);
        replies
    }

    /// Waits until the answer to `trace_id` is no longer streaming; returns it.
    async fn settled_reply(&self, host: &Host, trace_id: &str) -> Value {
        wait_for("the answer", async || {
            let replies = self.replies_to(host, trace_id).await;
            assert!(replies.len() <= 1, "one answer per message: {replies:?}");
            replies.into_iter().find(|m| m["state"] != "streaming")
        })
        .await
    }

    /// The agent's trace events matching `query`, oldest first.
    async fn traces(&self, host: &Host, query: &str) -> Vec<Value> {
        let body: Value = host
            .admin(
                Method::GET,
                &format!("/api/agents/{}/trace?{query}", self.slug),
            )
            .send()
            .await
            .expect("trace")
            .json()
            .await
            .expect("trace json");
        let mut events = body["events"].as_array().cloned().unwrap_or_default();
        events.reverse();
        events
    }

    /// The trace events of one delivery, oldest first, once `done` holds for them.
    async fn traces_of(
        &self,
        host: &Host,
        trace_id: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_for("the delivery's traces", async || {
            let events = self.traces(host, &format!("trace_id={trace_id}")).await;
            done(&events).then_some(events)
        })
        .await
    }

    /// The `event`s of the sidecar's lifecycle traces, oldest first.
    async fn lifecycle(&self, host: &Host) -> Vec<String> {
        self.traces(host, "kind=lifecycle")
            .await
            .iter()
            .map(|e| {
                e["payload"]["event"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    async fn wait_lifecycle(&self, host: &Host, expected: &[&str]) {
        wait_for("the lifecycle traces", async || {
            (self.lifecycle(host).await == expected).then_some(())
        })
        .await;
    }
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// `(model, status)` of each `llm_call` the gateway recorded, in order.
fn llm_calls(events: &[Value]) -> Vec<(String, String)> {
    of_kind(events, "llm_call")
        .into_iter()
        .map(|e| {
            (
                e["model"].as_str().unwrap_or_default().to_string(),
                e["payload"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn calls(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(m, s)| (m.to_string(), s.to_string()))
        .collect()
}

fn start_agent(config: Config) -> (ShutdownTrigger, JoinHandle<Result<(), RunError>>) {
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(taos_agent::run(config, shutdown));
    (trigger, task)
}

/// Stops the in-process sidecar. Its own bounded steps (the grace for the answer in progress,
/// the notice that it was abandoned, the stop trace) add up to a few seconds; `WAIT` only
/// catches a sidecar that never stops.
async fn stop_agent(trigger: ShutdownTrigger, task: JoinHandle<Result<(), RunError>>) {
    trigger.trigger();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the agent stops")
        .expect("the agent task does not panic")
        .expect("the agent ran");
}

/// The WebSocket events of the agent's messages in its DM, from `ws`, until `done` says so.
async fn agent_events(
    ws: &mut WsClient,
    agent: &Agent,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut events = Vec::new();
    while !done(&events) {
        let event = ws.next(WAIT).await.expect("a chat event");
        // Deltas and state changes in the DM can only be the agent's.
        let ours = match event["type"].as_str() {
            Some("message") => event["message"]["author_id"] == agent.slug.as_str(),
            Some("message_delta" | "message_state") => true,
            _ => false,
        };
        if ours {
            events.push(event);
        }
    }
    events
}

#[tokio::test]
async fn a_message_is_answered_with_deltas_then_one_final_in_context() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Answerer", &[GOOD]).await;
    let mut config = agent.config(host);
    config.system_prompt = Some("You are a test agent.".to_string());
    let (trigger, task) = start_agent(config);
    agent.wait_connected(host).await;
    let mut ws = WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;

    let first = agent.say(host, "first question").await;
    let events = agent_events(&mut ws, &agent, |events| {
        events
            .last()
            .is_some_and(|e| e["type"] == "message" && e["message"]["state"] != "streaming")
    })
    .await;
    // A streaming placeholder, the text as deltas, then the whole answer, all one message.
    let placeholder = &events[0]["message"];
    assert_eq!(placeholder["state"], "streaming", "{events:?}");
    assert_eq!(placeholder["metadata"]["trace_id"], first.as_str());
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "message_delta")
        .map(|e| {
            assert_eq!(e["message_id"], placeholder["id"]);
            e["delta"].as_str().expect("delta").to_string()
        })
        .collect();
    assert_eq!(deltas, REPLY);
    let last = &events.last().expect("events")["message"];
    assert_eq!(last["id"], placeholder["id"]);
    assert_eq!(last["state"], "complete");
    assert_eq!(last["content"], REPLY);

    // The gateway filed its call under the delivery's trace id, next to the host's own traces.
    let traces = agent
        .traces_of(host, &first, |e| {
            !of_kind(e, "message_out").is_empty() && !of_kind(e, "llm_call").is_empty()
        })
        .await;
    assert_eq!(llm_calls(&traces), calls(&[(GOOD, "success")]));
    assert_eq!(of_kind(&traces, "message_in").len(), 1);
    let out = of_kind(&traces, "message_out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["payload"]["content"], REPLY);

    // The second question goes up with the prompt and the conversation so far, as the real
    // host shapes it: people's lines named, the agent's own as its turns.
    let second = agent.say(host, "second question").await;
    assert_eq!(agent.settled_reply(host, &second).await["content"], REPLY);
    let sent = shared.upstream.chat_requests(|body| {
        body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["content"] == "second question")
    });
    assert_eq!(sent.len(), 1, "one call for the second question");
    assert_eq!(sent[0]["model"], GOOD);
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(
        sent[0]["messages"],
        json!([
            {"role": "system", "content": "You are a test agent."},
            {"role": "user", "content": "user:owner: first question"},
            {"role": "assistant", "content": REPLY},
            {"role": "user", "content": "second question"},
        ])
    );

    stop_agent(trigger, task).await;
    agent.wait_lifecycle(host, &["start", "stop"]).await;
}

#[tokio::test]
async fn deliveries_are_answered_one_at_a_time_in_order() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Orderly", &[GOOD]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;
    let mut ws = WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;

    let one = agent.say(host, "one").await;
    let two = agent.say(host, "two").await;
    let events = agent_events(&mut ws, &agent, |events| {
        events
            .iter()
            .filter(|e| e["type"] == "message" && e["message"]["state"] == "complete")
            .count()
            == 2
    })
    .await;
    // The second answer starts only once the first is complete.
    let states: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| {
            (
                e["message"]["metadata"]["trace_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["message"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let expected = [
        (&one, "streaming"),
        (&one, "complete"),
        (&two, "streaming"),
        (&two, "complete"),
    ]
    .map(|(t, s)| (t.to_string(), s.to_string()));
    assert_eq!(states, expected);
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn falls_back_when_the_first_model_fails_before_any_text() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Fallback", &[BROKEN, GOOD]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;

    let trace_id = agent.say(host, "hello?").await;
    let reply = agent.settled_reply(host, &trace_id).await;
    assert_eq!(reply["state"], "complete");
    assert_eq!(reply["content"], REPLY);
    let traces = agent
        .traces_of(host, &trace_id, |e| llm_calls(e).len() == 2)
        .await;
    assert_eq!(
        llm_calls(&traces),
        calls(&[(BROKEN, "failure"), (GOOD, "success")])
    );
    assert!(of_kind(&traces, "error").is_empty(), "{traces:?}");
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn all_models_failing_gives_one_error_reply_and_an_error_trace() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Unlucky", &[BROKEN, BROKEN_TOO]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;

    let trace_id = agent.say(host, "hello?").await;
    // The host's error trace is the error reply; the sidecar's own says what went wrong.
    let traces = agent
        .traces_of(host, &trace_id, |e| of_kind(e, "error").len() >= 2)
        .await;
    assert_eq!(
        llm_calls(&traces),
        calls(&[(BROKEN, "failure"), (BROKEN_TOO, "failure")])
    );
    let errors = of_kind(&traces, "error");
    let by_stage = |stage: &str| -> Vec<&Value> {
        errors
            .iter()
            .copied()
            .filter(|e| e["payload"]["stage"] == stage)
            .collect()
    };
    let replied = by_stage("agent");
    assert_eq!(replied.len(), 1, "one error reply: {errors:?}");
    let reason = replied[0]["payload"]["message"].as_str().expect("reason");
    assert!(reason.contains("HTTP 500"), "{reason}");
    let explained = by_stage("llm");
    assert_eq!(explained.len(), 1, "one error trace: {errors:?}");
    assert_eq!(explained[0]["model"], BROKEN_TOO);
    assert_eq!(explained[0]["channel_id"], agent.dm.as_str());
    // Nothing was shown: the chat gets one failed message with the reason, nothing streaming.
    let reply = agent.settled_reply(host, &trace_id).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(reply["content"], "", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["code"], "provider_error",
        "{reply}"
    );
    stop_agent(trigger, task).await;

    // The error settled the delivery: a new stream does not send it again. The next event is
    // the next message.
    let mut stream = open_stream(host, &agent, None).await;
    let sentinel = agent.say(host, "sentinel").await;
    assert_eq!(next_trace_id(&mut stream).await, sentinel);
}

#[tokio::test]
async fn exhausted_budget_is_reported_without_trying_fallbacks() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Broke", &[GOOD, OTHER]).await;
    let budget = host
        .admin(Method::PUT, &format!("/api/agents/{}/budget", agent.slug))
        .json(&json!({"limit_usd": 0.0, "period": "day"}))
        .send()
        .await
        .expect("budget");
    assert_eq!(budget.status(), StatusCode::OK);
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;

    let trace_id = agent.say(host, "budget question").await;
    let traces = agent
        .traces_of(host, &trace_id, |e| of_kind(e, "error").len() >= 2)
        .await;
    let errors = of_kind(&traces, "error");
    let replied: Vec<_> = errors
        .iter()
        .filter(|e| e["payload"]["stage"] == "agent")
        .collect();
    assert_eq!(replied.len(), 1, "{errors:?}");
    assert_eq!(
        replied[0]["payload"]["message"],
        "the agent's LLM budget is used up"
    );
    // The sidecar stopped at the first model: the budget is the agent's, not the model's.
    let explained: Vec<_> = errors
        .iter()
        .filter(|e| e["payload"]["stage"] == "llm")
        .collect();
    assert_eq!(explained.len(), 1, "{errors:?}");
    assert_eq!(explained[0]["model"], GOOD);
    // The gateway refused before LiteLLM: no call went anywhere.
    assert_eq!(llm_calls(&traces), calls(&[]));
    let upstream_calls = shared
        .upstream
        .chat_requests(|body| body["messages"].to_string().contains("budget question"));
    assert_eq!(upstream_calls, Vec::<Value>::new());
    // The chat shows the failed turn, with the code the host puts in words.
    let reply = agent.settled_reply(host, &trace_id).await;
    assert_eq!(reply["state"], "error", "{reply}");
    assert_eq!(
        reply["metadata"]["failure"]["code"], "budget_exceeded",
        "{reply}"
    );
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn failure_after_text_was_shown_is_an_error_not_a_fallback() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Cutoff", &[BREAKS_OFF, GOOD]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;
    let mut ws = WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;

    let trace_id = agent.say(host, "hello?").await;
    // The first words reach the chat; only then does the model's connection break.
    let mut events = agent_events(&mut ws, &agent, |events| {
        events.iter().any(|e| e["type"] == "message_delta")
    })
    .await;
    shared.upstream.break_off(BREAKS_OFF);
    events.extend(
        agent_events(&mut ws, &agent, |events| {
            events.last().is_some_and(|e| {
                e["type"] == "message_state"
                    || (e["type"] == "message" && e["message"]["state"] != "streaming")
            })
        })
        .await,
    );
    // The placeholder, the first words, and then the message marked failed: nothing more.
    let placeholder = &events[0]["message"];
    assert_eq!(placeholder["metadata"]["trace_id"], trace_id.as_str());
    let shown: String = events
        .iter()
        .filter(|e| e["type"] == "message_delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(shown, FIRST_WORD);
    // The failed turn is the same message, now in the error state with its reason.
    let last = events.last().expect("events");
    assert_eq!(last["type"], "message", "{events:?}");
    assert_eq!(last["message"]["id"], placeholder["id"]);
    assert_eq!(last["message"]["state"], "error");
    assert_eq!(
        last["message"]["content"], FIRST_WORD,
        "what was shown stays"
    );
    assert_eq!(
        last["message"]["metadata"]["failure"]["code"], "provider_error",
        "{last}"
    );

    let traces = agent
        .traces_of(host, &trace_id, |e| {
            of_kind(e, "error").len() >= 2 && !llm_calls(e).is_empty()
        })
        .await;
    // The fallback was not tried: its answer would have been spliced onto the first words.
    assert_eq!(llm_calls(&traces).len(), 1, "{traces:?}");
    assert_eq!(llm_calls(&traces)[0].0, BREAKS_OFF);
    let errors = of_kind(&traces, "error");
    let explained: Vec<_> = errors
        .iter()
        .filter(|e| e["payload"]["stage"] == "llm")
        .collect();
    assert_eq!(explained.len(), 1, "{errors:?}");
    assert_eq!(explained[0]["model"], BREAKS_OFF);
    stop_agent(trigger, task).await;
}

/// Opens the agent's bridge stream as the test (it takes over from the sidecar's).
async fn open_stream(host: &Host, agent: &Agent, last_event_id: Option<&str>) -> SseReader {
    let mut request = taos_e2e::plain_client(WAIT * 2)
        .get(format!(
            "{}/api/openclaw/sessions/{}/events",
            host.agent_url, agent.slug
        ))
        .bearer_auth(&agent.token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("bridge stream");
    assert_eq!(response.status(), StatusCode::OK, "bridge stream");
    SseReader::new(response)
}

/// The trace id of the next delivery on `stream`.
async fn next_trace_id(stream: &mut SseReader) -> String {
    let event = stream.next(WAIT).await.expect("a delivery");
    let delivery: Value = serde_json::from_str(&event.data).expect("delivery json");
    delivery["trace_id"].as_str().expect("trace id").to_string()
}

/// `(cursor, backlog)` of each bridge stream the host opened for `slug`, from its JSON log.
fn streams_opened(host: &Host, slug: &str) -> Vec<(i64, i64)> {
    let log = std::fs::read_to_string(&host.stderr_log).unwrap_or_default();
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"] == "bridge stream connected"
                && line["fields"]["agent"] == slug
        })
        .map(|line| {
            (
                line["fields"]["cursor"].as_i64().unwrap_or(-1),
                line["fields"]["backlog"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

async fn set_paused(host: &Host, agent: &Agent, paused: bool) {
    let response = host
        .admin(Method::PATCH, &format!("/api/agents/{}", agent.slug))
        .json(&json!({ "paused": paused }))
        .send()
        .await
        .expect("pause");
    assert_eq!(response.status(), StatusCode::OK, "pause");
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_the_last_delivery_and_repeats_no_answer() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Reconnector", &[GOOD]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;
    let one = agent.say(host, "one").await;
    agent.settled_reply(host, &one).await;

    // While the agent is paused, "two" waits on the host, unseen by the sidecar. Then the
    // sidecar's stream is cut: a newer one for the same agent takes over (and is itself ended
    // when the sidecar reconnects).
    set_paused(host, &agent, true).await;
    let two = agent.say(host, "two").await;
    let _intruder = open_stream(host, &agent, None).await;
    let opened = wait_for("the sidecar to reconnect", async || {
        let opened = streams_opened(host, &agent.slug);
        (opened.len() == 3).then_some(opened)
    })
    .await;
    // (cursor, backlog): the sidecar's first stream; the intruder's, which sent no id, so the
    // host starts at the newest delivery with the unanswered "two" as backlog; the sidecar's
    // reconnect, which said where it stopped (after "one"), so the host resumes there.
    assert_eq!(opened, [(0, 0), (2, 1), (1, 0)]);

    set_paused(host, &agent, false).await;
    let three = agent.say(host, "three").await;
    for trace_id in [&one, &two, &three] {
        let reply = agent.settled_reply(host, trace_id).await;
        assert_eq!(reply["state"], "complete");
        assert_eq!(reply["content"], REPLY);
        let traces = agent
            .traces_of(host, trace_id, |e| {
                !of_kind(e, "message_out").is_empty() && !llm_calls(e).is_empty()
            })
            .await;
        assert_eq!(llm_calls(&traces).len(), 1, "answered once: {traces:?}");
        assert_eq!(of_kind(&traces, "message_out").len(), 1);
    }
    stop_agent(trigger, task).await;
}

#[tokio::test]
async fn shutdown_abandons_a_slow_answer_and_marks_it_failed() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Staller", &[STALLS]).await;
    let (trigger, task) = start_agent(agent.config(host));
    agent.wait_connected(host).await;
    let mut ws = WsClient::connect(host, &host.local_token())
        .await
        .expect("ws");
    ws.subscribe(&agent.dm, Some(0)).await;

    let trace_id = agent.say(host, "hello?").await;
    agent_events(&mut ws, &agent, |events| {
        events.iter().any(|e| e["type"] == "message_delta")
    })
    .await;
    // The model never finishes, so only the grace running out can end the answer.
    stop_agent(trigger, task).await;
    let reply = agent.settled_reply(host, &trace_id).await;
    assert_eq!(reply["state"], "error");
    let traces = agent
        .traces_of(host, &trace_id, |e| !of_kind(e, "error").is_empty())
        .await;
    let errors = of_kind(&traces, "error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0]["payload"]["message"],
        "the agent stopped before finishing its answer"
    );
    agent.wait_lifecycle(host, &["start", "stop"]).await;
}

#[tokio::test]
async fn missing_variable_exits_with_code_2_naming_it() {
    // Checked before anything is contacted: no host needed.
    let env = HashMap::from([
        ("TAOS_BRIDGE_URL", "http://127.0.0.1:9"),
        ("TAOS_AGENT_NAME", "helper"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ("OPENAI_API_KEY", "taos_llm_secret_value"),
        ("TAOS_MODEL", GOOD),
    ]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .env_clear()
        .envs(env)
        .output()
        .await
        .expect("run taos-agent");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TAOS_AGENT_TOKEN"), "{stderr}");
    assert!(!stderr.contains("taos_llm_secret_value"), "{stderr}");
}

#[tokio::test]
async fn version_prints_the_version_with_no_configuration() {
    // What the arm64 image check runs under qemu (scripts/check-arm64.sh): no host, no env.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .arg("--version")
        .env_clear()
        .output()
        .await
        .expect("run taos-agent");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("taos-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn process_answers_then_stops_cleanly_on_sigterm() {
    let shared = shared().await;
    let host = &shared.host;
    let agent = Agent::create(host, "Process", &[GOOD]).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taos-agent"))
        .env_clear()
        .envs(agent.env(host))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn taos-agent");
    agent.wait_connected(host).await;
    let trace_id = agent.say(host, "hello?").await;
    let reply = agent.settled_reply(host, &trace_id).await;
    assert_eq!(reply["state"], "complete");
    assert_eq!(reply["content"], REPLY);

    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the agent exits after SIGTERM")
        .expect("agent output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    agent.wait_lifecycle(host, &["start", "stop"]).await;
    // Even at debug level, no secret reaches the log.
    assert!(!stderr.contains(&agent.token), "{stderr}");
    assert!(!stderr.contains(&agent.llm_key), "{stderr}");
}

/// The real host never refuses a token and later accepts the same one (a rotated token stays
/// refused), so only a fake host can show the sidecar riding out refusals until it is let in.
#[tokio::test]
async fn refused_stream_is_retried() {
    let host = fake::FakeHost::start().await;
    host.refuse_next_streams(2);
    let (trigger, task) = start_agent(host.config());
    let trace_id = host.deliver("hello?");
    fake::wait_until("the answer", || host.is_answered(&trace_id)).await;
    assert_eq!(host.stream_requests(), 3);
    stop_agent(trigger, task).await;
}
