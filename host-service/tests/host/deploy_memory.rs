//! A deploy needs its memory free on the host: the agent's limit (the request's, or its
//! framework's need, which is also the limit it gets) against the host's `MemAvailable` less
//! what running agents may still grow into. Real incus, the `direct` framework's image.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fixtures::{catalog, deploy_succeeded, incus, require_image, Remove};
use taos_host::runtime::Runtime;

use crate::host_with;

/// `MemAvailable` of this machine in MiB, as the host reads it.
fn mem_available_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .expect("MemAvailable in /proc/meminfo");
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// The memory limit incus enforces on a container.
fn memory_limit(container: &str) -> String {
    let out = std::process::Command::new("incus")
        .args(["query", &format!("/1.0/instances/{container}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let instance: Value = serde_json::from_slice(&out.stdout).unwrap();
    instance["config"]["limits.memory"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Asks for a deploy that must be refused for memory; checks the answer and that nothing of
/// it was made. Returns the message.
async fn refused_for_memory(host: &taos_e2e::Host, name: &str, limit_mib: u64) -> String {
    let before: Vec<Value> = host.get("/api/agents").await;
    let r = host
        .admin(Method::POST, "/api/agents/deploy")
        .json(&json!({"name": name, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": limit_mib}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_enough_memory", "{body}");
    let after: Vec<Value> = host.get("/api/agents").await;
    assert_eq!(before, after, "a refused deploy made an agent");
    let slug = name.to_lowercase().replace(' ', "-");
    assert!(
        !incus().exists(&format!("taos-{slug}")).await.unwrap(),
        "a refused deploy made a container"
    );
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_deploy_the_host_lacks_the_memory_for_is_refused_and_changes_nothing() {
    // The largest limit a request may ask for; no machine this runs on has it free.
    let limit = 262_144;
    assert!(
        mem_available_mib() < limit,
        "this machine has more than 256 GiB free; the test needs a limit above that"
    );
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let why = refused_for_memory(&host, "Too Big", limit).await;
    assert!(
        why.starts_with("this agent's memory limit is 256.0 GB; this host has ")
            && why.ends_with(" GB available — stop other agents or set a smaller memory limit"),
        "{why}"
    );
}

#[tokio::test]
async fn deploys_get_their_frameworks_memory_limit_and_running_agents_limits_count_as_taken() {
    require_image().await;
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let frameworks: Vec<Value> = host.get("/api/frameworks").await;
    let direct = frameworks.iter().find(|f| f["id"] == "direct").unwrap();
    let need = direct["requires"]["ram_mb"].as_u64().unwrap();

    // No limit in the request: the framework's need is the container's limit.
    let (slug, _a) = deploy_succeeded(
        &host,
        json!({"name": "Default Limit", "framework": "direct", "model": "fake-gpt", "disk_quota_gib": 2}),
    )
    .await;
    assert_eq!(memory_limit(&format!("taos-{slug}")), format!("{need}MiB"));

    // An agent given most of the free memory takes it from later deploys, though it uses
    // little of it: a second one as big no longer fits.
    let big = (mem_available_mib() * 6 / 10).min(262_144);
    let (slug, _b) = deploy_succeeded(
        &host,
        json!({"name": "Big One", "framework": "direct", "model": "fake-gpt", "memory_limit_mib": big, "disk_quota_gib": 2}),
    )
    .await;
    assert_eq!(memory_limit(&format!("taos-{slug}")), format!("{big}MiB"));
    let _c = Remove("taos-big-two".into());
    let why = refused_for_memory(&host, "Big Two", big).await;
    assert!(why.contains("stop other agents"), "{why}");
}
