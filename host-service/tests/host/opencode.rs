//! opencode deployed through the API into a real incus container (the `taos-opencode` image
//! from scripts/build-opencode-image.sh), driven by the sidecar in `acp` mode over stdio and
//! answering through the host's LLM gateway, real LiteLLM and the fake upstream: a chat answer,
//! one scripted `bash` tool call that runs in the container as its unprivileged account, then
//! archive → restore and it answers again, its session kept.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::{Scripted, REPLY};
use taos_e2e::fixtures::{incus, step, wait_deploy, with_fake_provider, Remove};
use taos_host::runtime::Runtime;
use taos_proto::agents::ArchivedAgent;

use crate::framework_images::{memory_of, require_image, say_and_settle, user_texts};
use crate::BIN;

/// Only there to stop a broken run from hanging (opencode starts in seconds).
const WAIT_LONG: Duration = Duration::from_secs(300);

/// The resident memory of each process in the container, from /proc (printed for the report:
/// `incus info`'s figure includes the page cache, which fills up to the limit).
async fn rss_of(container: &str) -> String {
    let out = incus()
        .exec(
            container,
            &[
                "sh",
                "-c",
                "for p in /proc/[0-9]*; do r=$(awk '/VmRSS/ {print $2}' $p/status 2>/dev/null); [ -n \"$r\" ] && echo \"$(cat $p/comm) ${r}kB\"; done",
            ],
            &Default::default(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    out.stdout.lines().collect::<Vec<_>>().join(", ")
}

#[tokio::test]
async fn opencode_deploys_answers_runs_a_tool_in_its_container_and_comes_back_from_the_archive() {
    require_image(
        "taos-opencode",
        "scripts/build-opencode-image.sh (it installs opencode first)",
    );
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;
    let name = taos_e2e::fixtures::unique("Coder");

    let (slug, dm, _cleanup) = step("deploy opencode", async {
        let started = Instant::now();
        let r = host
            .admin(Method::POST, "/api/agents/deploy")
            .json(&json!({"name": name, "framework": "opencode", "model": "fake-gpt"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let accepted: Value = r.json().await.unwrap();
        let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
        let cleanup = Remove(format!("taos-{slug}"));
        let status = wait_deploy(host, &slug, taos_e2e::fixtures::finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        eprintln!("opencode deploy took {:?}", started.elapsed());
        let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
        let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
        (slug, dm, cleanup)
    })
    .await;
    let (slug, dm) = (slug.as_str(), dm.as_str());
    let container = format!("taos-{slug}");
    let container = container.as_str();

    step(
        "the sidecar runs opencode in acp mode, as the manifest says",
        async {
            let env = String::from_utf8(
                incus()
                    .pull_file(container, "/etc/taos/agent.env")
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert!(env.contains("TAOS_AGENT_MODE=acp\n"), "{env}");
            assert!(
                env.contains(
                    "TAOS_ACP_COMMAND='[\"/opt/opencode/bin/opencode\",\"acp\",\"--pure\"]'\n"
                ),
                "{env}"
            );
            assert!(env.contains("OPENCODE_CONFIG_CONTENT"), "{env}");
        },
    )
    .await;

    step("1. opencode answers through the gateway", async {
        let started = Instant::now();
        let reply = say_and_settle(host, dm, slug, "hello coder, marker-one", WAIT_LONG).await;
        eprintln!("opencode's first answer took {:?}", started.elapsed());
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(reply["content"], REPLY);
        let sent = fake.chat_requests(|b| b["model"] == "fake-gpt");
        assert!(
            sent.iter()
                .any(|b| user_texts(b).iter().any(|t| t.contains("marker-one"))),
            "the upstream never saw the message"
        );
        eprintln!("container memory after one turn: {}", memory_of(container));
        eprintln!("processes after one turn: {}", rss_of(container).await);
    })
    .await;

    step("2. a scripted bash call runs in the container as its account", async {
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call(
                    "bash",
                    json!({"command": "id -un; hostname; echo ran > ran.txt; pwd", "description": "Who am I"}),
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
        assert_eq!(steps.len(), 1, "{reply}");
        assert_eq!(steps[0]["tool"], "execute", "{reply}");
        assert_eq!(steps[0]["success"], true, "{reply}");
        let output = steps[0]["result"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // As the unprivileged account, in this agent's own container.
        assert!(output.contains("agent"), "{reply}");
        assert!(output.contains(container), "{reply}");
        let pwd = output
            .lines()
            .find(|l| l.starts_with('/'))
            .unwrap_or_default()
            .to_string();
        assert!(!pwd.is_empty(), "{reply}");
        let made = incus()
            .exec(
                container,
                &["stat", "-c", "%U", &format!("{pwd}/ran.txt")],
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
        eprintln!("container memory after two turns: {}", memory_of(container));
        eprintln!("processes after two turns: {}", rss_of(container).await);
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
    })
    .await;
}
