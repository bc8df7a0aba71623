//! What the host's integration tests set up again and again, written once: a host with the
//! fake upstream behind real LiteLLM, agents, deploys into real incus, test containers, and
//! [`step`] to give a long scenario named steps.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_host::runtime::incus::{Incus, DEFAULT_SOCKET};
use taos_host::runtime::{CreateSpec, Device, Runtime};
use taos_proto::agents::{AgentWithToken, NewAgent};
use tokio::sync::{Mutex, MutexGuard};

use crate::fake_llm::FakeLlm;
use crate::{Host, HostOptions};

/// Runs one named step of a long scenario. A panic inside fails the test with the step's name
/// in front of the message, so a failure says which step it was, not only which line.
pub async fn step<F: Future>(name: &str, body: F) -> F::Output {
    match AssertUnwindSafe(body).catch_unwind().await {
        Ok(output) => output,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            panic!("step {name:?} failed: {message}");
        }
    }
}

/// One LiteLLM at a time: it takes seconds to start and ~300 MB, so the tests that run it take
/// turns (one test process, one lock).
pub static LITELLM: Mutex<()> = Mutex::const_new(());

/// A test's turn at LiteLLM; the next test's starts when it is dropped.
pub type LiteLlmTurn = MutexGuard<'static, ()>;

/// The key the fake upstream wants; it must never show in an answer, a log or the data dir.
pub const UPSTREAM_SECRET: &str = "upstream-secret-Zq81xW";

/// The models the fake upstream serves, as LiteLLM lists them once it is ready.
pub const FAKE_MODELS: [&str; 2] = ["fake-gpt", "fake-other"];

/// The environment for a host without LiteLLM (for tests that never call a model).
pub const NO_LITELLM: (&str, &str) = ("TAOS_LLM__LITELLM_BIN", "/nonexistent/litellm");

/// A host with an owner and the fake upstream as its provider, LiteLLM serving its models.
/// Keep all three: the turn until the test ends (`let (_turn, host, fake) = …`).
pub async fn with_fake_provider(bin: &str, env: &[(&str, &str)]) -> (LiteLlmTurn, Host, FakeLlm) {
    let turn = LITELLM.lock().await;
    let fake = FakeLlm::start(UPSTREAM_SECRET, &FAKE_MODELS).await;
    let host = Host::start_with(bin, HostOptions::with_env(env))
        .await
        .expect("host starts");
    host.setup_owner().await;
    add_fake_provider(&host, &fake).await;
    wait_ready(&host, &FAKE_MODELS).await;
    (turn, host, fake)
}

/// Waits until LiteLLM serves exactly these models.
pub async fn wait_ready(host: &Host, models: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status: Value = host.get("/api/llm/status").await;
        let have: Vec<&str> = status["models"]
            .as_array()
            .map(|m| m.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if status["state"] == "ready" && have == models {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "LiteLLM never became ready: {status}"
        );
        assert_ne!(status["state"], "failed", "LiteLLM failed: {status}");
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(
            !error.contains("not installed"),
            "LiteLLM is missing: run scripts/dev-litellm.sh (scripts/test.sh does)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Adds the fake upstream as a provider (models discovered) and gives it prices.
pub async fn add_fake_provider(host: &Host, fake: &FakeLlm) -> Value {
    let r = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "fake", "type": "openai-compatible", "url": fake.url(), "api_key": UPSTREAM_SECRET}))
        .send()
        .await
        .expect("add the provider");
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().await.expect("the provider");
    assert!(!text.contains(UPSTREAM_SECRET), "the key never comes back");
    let provider: Value = serde_json::from_str(&text).expect("provider json");
    assert_eq!(provider["has_api_key"], true);
    let ids: Vec<&str> = provider["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, FAKE_MODELS, "discovered from <url>/models");
    // $0 / $4000 per million tokens: a call (10 in, 5 out) costs exactly $0.02, and so does
    // the reservation of a call with max_tokens 5 (input is free, so the prompt bound adds 0).
    host.patch(
        "/api/providers/fake",
        &json!({"models": [{"id": "fake-gpt", "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 4000.0}, {"id": "fake-other"}]}),
    )
    .await
}

/// A provider with a model, no LiteLLM needed (for deploys that never chat).
pub async fn catalog(host: &Host) {
    let r = host
        .admin(Method::POST, "/api/providers")
        .json(&json!({"name": "stub", "type": "openai-compatible", "url": "http://127.0.0.1:9/v1", "models": [{"id": "fake-gpt"}]}))
        .send()
        .await
        .expect("add the stub provider");
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Creates an external agent named `name`; the answer carries its token and LLM key.
pub async fn create_agent(host: &Host, name: &str) -> AgentWithToken {
    create_agent_with(host, new_agent(name)).await
}

/// The request for an agent named `name`, the rest left to the host (set fields on it with
/// `NewAgent { model: …, ..new_agent(name) }`).
pub fn new_agent(name: &str) -> NewAgent {
    NewAgent {
        name: name.to_string(),
        emoji: None,
        color: None,
        model: None,
        fallback_models: None,
        tool_policy: None,
        tool_overrides: None,
    }
}

/// Creates an external agent from a whole request.
pub async fn create_agent_with(host: &Host, agent: NewAgent) -> AgentWithToken {
    host.post("/api/agents", &agent).await
}

/// A container name no other test (or test run) uses: `taos-t-<what>-<random>`.
pub fn unique(what: &str) -> String {
    format!("taos-t-{what}-{:08x}", rand::random::<u32>())
}

/// A container from the busybox test image (scripts/dev-incus.sh and scripts/dev-docker.sh
/// provide it), with nothing else set.
pub fn busybox(name: &str) -> CreateSpec {
    CreateSpec {
        name: name.to_string(),
        image: "busybox".into(),
        ..Default::default()
    }
}

/// Checks from inside a container made with 64 MiB and 100 processes that the limits bite:
/// a 100 MiB buffer is killed (137) while a 16 MiB one is fine, and forking past the process
/// limit fails. Leaves the container at its process limit: stop or delete it next.
pub async fn assert_limits_hold(rt: &impl Runtime, name: &str) {
    let run = |argv: &'static [&'static str]| async move {
        rt.exec(name, argv, &BTreeMap::new(), Duration::from_secs(30))
            .await
            .expect("exec")
    };
    let small = run(&["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"]).await;
    assert_eq!(small.exit_code, 0, "16 MiB fits in 64: {}", small.stderr);
    let big = run(&["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]).await;
    assert_eq!(big.exit_code, 137, "100 MiB is over the limit: {big:?}");
    let forks = run(&[
        "sh",
        "-c",
        // ash gives up the subshell at the first failed fork; the sleeps stay until the
        // container goes, so callers check this last.
        "(i=0; while [ $i -lt 150 ]; do sleep 60 </dev/null >/dev/null 2>&1 & i=$((i+1)); done) 2>&1; true",
    ])
    .await;
    assert!(
        forks.stdout.contains("can't fork") || forks.stderr.contains("can't fork"),
        "150 processes in a container limited to 100: {forks:?}"
    );
}

/// Checks exec in a running container made with `GREETING=-starts-with-dash` in its
/// environment: exit code, stdout and stderr come back apart, and argv and env pass as data,
/// never through a shell string.
pub async fn assert_exec_keeps_data(rt: &impl Runtime, name: &str) {
    let out = rt
        .exec(
            name,
            &["sh", "-c", "echo \"$GREETING\"; echo oops >&2; exit 7"],
            &BTreeMap::new(),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout, "-starts-with-dash\n");
    assert_eq!(out.stderr, "oops\n");
    let extra = BTreeMap::from([("ONE_OFF".to_string(), "$(not a shell)".to_string())]);
    let out = rt
        .exec(
            name,
            &["sh", "-c", "echo \"$ONE_OFF\""],
            &extra,
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.stdout, "$(not a shell)\n",
        "argv and env pass as data, never through a shell string"
    );
}

/// The trace folder mount the runtime conformance tests give a container: `source` on the
/// host at `/root/.taos/trace` inside, writable.
pub fn trace_disk(source: &Path) -> Device {
    Device::Disk {
        name: "trace".into(),
        source: source.display().to_string(),
        path: "/root/.taos/trace".into(),
        readonly: false,
        shift: false,
    }
}

/// Writes a file into the [`trace_disk`] mount as root inside the running container and checks
/// that on the host it belongs to `root_uid` (the container's root), never to host root.
pub async fn assert_mount_writes_as(rt: &impl Runtime, name: &str, host_dir: &Path, root_uid: u32) {
    let out = rt
        .exec(
            name,
            &[
                "sh",
                "-c",
                "echo written > /root/.taos/trace/probe && id -u",
            ],
            &BTreeMap::new(),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "0", "written as root inside");
    let meta = std::fs::metadata(host_dir.join("probe")).expect("the probe on the host");
    assert_eq!(meta.uid(), root_uid);
    assert_ne!(meta.uid(), 0, "not owned by host root");
}

/// The local incus, where agents are deployed.
pub fn incus() -> Incus {
    Incus::new(DEFAULT_SOCKET, None, "default")
}

/// Deletes an incus container even when the test fails (through the CLI: Drop can't await).
pub struct Remove(pub String);

impl Drop for Remove {
    fn drop(&mut self) {
        // Best effort: the container may never have been made, or be gone already.
        let _ = std::process::Command::new("incus")
            .args(["delete", "--force", &self.0])
            .output();
    }
}

/// Fails the test when the agent image deploys need is missing.
pub async fn require_image() {
    let out = std::process::Command::new("incus")
        .args(["image", "show", "taos-agent"])
        .output()
        .expect("run incus");
    assert!(
        out.status.success(),
        "the taos-agent image is missing: run scripts/build-agent-image.sh (scripts/test.sh does)"
    );
}

/// Starts a deploy with this request body; expects it accepted.
pub async fn deploy_with(host: &Host, body: Value) -> Value {
    let r = host
        .admin(Method::POST, "/api/agents/deploy")
        .json(&body)
        .send()
        .await
        .expect("deploy request");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.json().await.expect("deploy json")
}

/// Deploys `body`, waits for it and expects it succeeded; returns the agent's slug and the
/// guard that deletes its container (made before the wait, so a failed wait cleans up too).
pub async fn deploy_succeeded(host: &Host, body: Value) -> (String, Remove) {
    let accepted = deploy_with(host, body).await;
    let slug = accepted["agent"]["slug"]
        .as_str()
        .expect("slug")
        .to_string();
    let cleanup = Remove(format!("taos-{slug}"));
    let status = wait_deploy(host, &slug, finished).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    (slug, cleanup)
}

/// Polls the deploy until `until` says stop (usually [`finished`]).
pub async fn wait_deploy(host: &Host, slug: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status: Value = host.get(&format!("/api/agents/{slug}/deploy")).await;
        if until(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "deploy stuck: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a deploy has left `running`.
pub fn finished(status: &Value) -> bool {
    status["status"] != "running"
}

/// Says `text` in the agent's DM and waits (90 s at most) for its complete answer.
pub async fn ask_and_wait(host: &Host, slug: &str, text: &str) -> Value {
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().expect("a DM").to_string();
    let sent: Value = host
        .post(
            "/api/chat/messages",
            &json!({"channel_id": dm, "content": text}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let messages: Vec<Value> = host
            .get(&format!(
                "/api/chat/channels/{dm}/messages?after_seq={}",
                sent["seq"]
            ))
            .await;
        if let Some(m) = messages
            .iter()
            .find(|m| m["author_id"] == slug && m["state"] == "complete")
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{slug} did not answer: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_passes_its_output_through() {
        assert_eq!(step("add", async { 1 + 1 }).await, 2);
    }

    #[tokio::test]
    async fn a_panic_in_a_step_names_the_step() {
        let failed = AssertUnwindSafe(step("archive", async {
            assert_eq!(1, 2, "one is not two");
        }))
        .catch_unwind()
        .await
        .expect_err("the step fails the test");
        let message = failed.downcast_ref::<String>().expect("a message");
        assert!(
            message.starts_with("step \"archive\" failed: "),
            "{message}"
        );
        assert!(message.contains("one is not two"), "{message}");
    }
}
