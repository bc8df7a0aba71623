//! openclaw deployed through the API into a real incus container (the `taos-openclaw` image
//! from scripts/build-openclaw-image.sh), answering through its gateway, the host's LLM
//! gateway, real LiteLLM and the fake upstream: a chat answer, one scripted `exec` tool call
//! that runs in the container, then archive → restore and it answers again, its session kept.
//!
//! openclaw's first turn is slow (tens of seconds cold, more on a busy machine), so the waits
//! are long; they only stop a broken run from hanging.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::{Scripted, REPLY};
use taos_e2e::fixtures::{incus, step, wait_deploy, with_fake_provider, Remove};
use taos_host::runtime::Runtime;
use taos_proto::agents::ArchivedAgent;

use crate::framework_images::{memory_of, require_image, say_and_settle, user_texts};
use crate::BIN;

const WAIT_LONG: Duration = Duration::from_secs(400);

#[tokio::test]
async fn openclaw_deploys_answers_runs_a_tool_in_its_container_and_comes_back_from_the_archive() {
    require_image(
        "taos-openclaw",
        "scripts/install-openclaw.sh and scripts/build-openclaw-image.sh",
    );
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;
    let name = taos_e2e::fixtures::unique("Claw");

    let (slug, dm, _cleanup) = step("deploy openclaw", async {
        let started = Instant::now();
        let r = host
            .admin(Method::POST, "/api/agents/deploy")
            .json(&json!({"name": name, "framework": "openclaw", "model": "fake-gpt"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let accepted: Value = r.json().await.unwrap();
        let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
        let cleanup = Remove(format!("taos-{slug}"));
        let status = wait_deploy(host, &slug, taos_e2e::fixtures::finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        eprintln!("openclaw deploy took {:?}", started.elapsed());
        let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
        let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
        (slug, dm, cleanup)
    })
    .await;
    let (slug, dm) = (slug.as_str(), dm.as_str());
    let container = format!("taos-{slug}");
    let container = container.as_str();

    step("the sidecar runs in openclaw mode", async {
        let env = String::from_utf8(
            incus()
                .pull_file(container, "/etc/taos/agent.env")
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(env.contains("TAOS_AGENT_MODE=openclaw\n"), "{env}");
    })
    .await;

    step("1. openclaw answers through the gateway", async {
        let started = Instant::now();
        let reply = say_and_settle(host, dm, slug, "hello claw, marker-one", WAIT_LONG).await;
        eprintln!("openclaw's first answer took {:?}", started.elapsed());
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(reply["content"], REPLY);
        let sent = fake.chat_requests(|b| b["model"] == "fake-gpt");
        assert!(
            sent.iter()
                .any(|b| user_texts(b).iter().any(|t| t.contains("marker-one"))),
            "the upstream never saw the message"
        );
    })
    .await;

    step("2. a scripted exec runs in the container", async {
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call(
                    "exec",
                    json!({"command": "id -un; hostname; echo ran > ran.txt"}),
                ),
                Scripted::final_text("Done."),
            ],
        );
        let reply = say_and_settle(host, dm, slug, "who are you, marker-tools", WAIT_LONG).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(reply["content"], "Done.");
        let steps = reply["metadata"]["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let exec: Vec<&Value> = steps.iter().filter(|s| s["tool"] == "exec").collect();
        assert_eq!(exec.len(), 1, "{reply}");
        assert_eq!(exec[0]["success"], true, "{reply}");
        let output = exec[0]["result"]["output"].as_str().unwrap_or("");
        // As the unprivileged account, in this agent's own container.
        assert!(output.contains("agent"), "{reply}");
        assert!(output.contains(container), "{reply}");
        let made = incus()
            .exec(
                container,
                &[
                    "stat",
                    "-c",
                    "%U",
                    "/home/agent/.openclaw/workspace/ran.txt",
                ],
                &Default::default(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(made.stdout.trim(), "agent", "{made:?}");
        let trace_id = reply["metadata"]["trace_id"].as_str().unwrap();
        let traces = taos_e2e::wait_for_trace(
            host,
            slug,
            &format!("?trace_id={trace_id}&limit=500"),
            |e| e.iter().any(|e| e["kind"] == "tool_result"),
        )
        .await;
        let calls: Vec<&Value> = traces.iter().filter(|e| e["kind"] == "tool_call").collect();
        assert_eq!(calls.len(), 1, "{traces:?}");
        assert_eq!(calls[0]["payload"]["tool"], "exec");
        eprintln!("container memory after two turns: {}", memory_of(container));
    })
    .await;

    let (archive_id, _archived) = step("archive", async {
        let archived: ArchivedAgent = host
            .call(
                Method::DELETE,
                &format!("/api/agents/{slug}"),
                None,
                StatusCode::OK,
            )
            .await;
        let kept = archived.container.clone().unwrap();
        let cleanup = Remove(kept.clone());
        assert!(!incus().exists(container).await.unwrap());
        assert!(incus().exists(&kept).await.unwrap());
        (archived.id, cleanup)
    })
    .await;

    step("3. restored, it answers with its session kept", async {
        let _: Value = host
            .call(
                Method::POST,
                &format!("/api/agents/archived/{archive_id}/restore"),
                None,
                StatusCode::OK,
            )
            .await;
        let before = fake.chat_requests(|b| b["model"] == "fake-gpt").len();
        let reply = say_and_settle(host, dm, slug, "are you back? marker-three", WAIT_LONG).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(reply["content"], REPLY);
        let sent = fake.chat_requests(|b| b["model"] == "fake-gpt");
        assert!(
            sent[before..].iter().any(|b| {
                let texts = user_texts(b);
                texts.iter().any(|t| t.contains("marker-three"))
                    && texts.iter().any(|t| t.contains("marker-one"))
            }),
            "the session did not survive the archive"
        );
        eprintln!(
            "container memory after restore and a turn: {}",
            memory_of(container)
        );
    })
    .await;
}
