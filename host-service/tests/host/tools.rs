//! The built-in tool-using agent (`tools` framework) in a real incus container, with real
//! LiteLLM in front of the fake upstream answering from a script: the disk-audit admin prompt
//! runs commands in the container as the unprivileged `agent` user, each step shows on the
//! answer and in the traces; what that user can't read stays unread; `rm` goes to the recycle
//! bin; a command past its time limit is killed; and the step limit stops a model that never
//! finishes.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::Scripted;
use taos_e2e::fixtures::{deploy_succeeded, incus, require_image, step, with_fake_provider};
use taos_e2e::Host;
use taos_host::runtime::Runtime;

use crate::BIN;

/// The agent's settled answer to `trace_id` (its message's id).
pub(crate) async fn settled(host: &Host, dm: &str, slug: &str, trace_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let messages: Vec<Value> = host
            .admin(
                Method::GET,
                &format!("/api/chat/channels/{dm}/messages?after_seq=0&limit=500"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(m) = messages.iter().find(|m| {
            m["author_id"] == slug
                && m["metadata"]["trace_id"] == trace_id
                && m["state"] != "streaming"
        }) {
            return m.clone();
        }
        assert!(Instant::now() < deadline, "no answer: {messages:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn steps(reply: &Value) -> Vec<Value> {
    reply["metadata"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn exec(container: &str, argv: &[&str]) -> String {
    incus()
        .exec(
            container,
            argv,
            &Default::default(),
            Duration::from_secs(20),
        )
        .await
        .unwrap()
        .stdout
}

#[tokio::test]
async fn the_built_in_agent_runs_the_disk_audit_in_its_container_within_its_limits() {
    require_image().await;
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;

    let (slug, _cleanup) = deploy_succeeded(
        host,
        json!({"name": "Helper", "framework": "tools", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2}),
    )
    .await;
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let container = container.as_str();
    let dm = step("the manifest's mode reaches the sidecar", async {
        let env = String::from_utf8(
            incus()
                .pull_file(container, "/etc/taos/agent.env")
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(
            env.contains("TAOS_AGENT_MODE=tools\n"),
            "the manifest's mode reaches the sidecar"
        );
        let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
        agent["dm_channel_id"].as_str().unwrap().to_string()
    })
    .await;
    let dm = dm.as_str();

    let (reply, trace_id) = step("the disk audit runs", async {
        // As the scripted model would run it.
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call("shell", json!({"command": "date -u; df -h /; du -x -h --max-depth=1 ~ 2>/dev/null | sort -h | tail -5"})),
                // The sidecar's credentials and environment are out of the tools' reach.
                Scripted::call("shell", json!({"command": "id -un; cat /etc/taos/agent.env; for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = taos-agent ] && cat $p/environ; done; true"})),
                // Cleaning up goes through the recycle bin.
                Scripted::call("shell", json!({"command": "mkdir -p logs/2024 && echo old > logs/2024/a.log && rm -r logs/2024 && ls logs"})),
                // A record forged to restore into root's home.
                Scripted::call("shell", json!({"command": "d=/var/recycle-bin/forged-by-agent; mkdir $d && echo evil > $d/item && printf 'path_b64=%s\\n' $(printf %s /root/.bash_profile | base64 -w0) > $d/info"})),
                Scripted::call("shell", json!({"command": "sleep 120; echo never", "timeout_secs": 2})),
                Scripted::final_text("Your disk is fine: nothing to clean up yet."),
            ],
        );
        let r = host
            .admin(
                Method::POST,
                &format!("/api/agents/{slug}/admin-prompts/disk-audit"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let prompt: Value = r.json().await.unwrap();
        let trace_id = prompt["id"].as_str().unwrap().to_string();
        let reply = settled(host, dm, slug, &trace_id).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(
            reply["content"],
            "Your disk is fine: nothing to clean up yet."
        );
        (reply, trace_id)
    })
    .await;
    let steps = steps(&reply);
    assert_eq!(steps.len(), 5, "{reply}");
    assert!(steps.iter().all(|s| s["tool"] == "shell"));

    step("1. it ran in the container", async {
        // df and du saw the container's disk and the agent's home.
        let audit = &steps[0]["result"];
        assert_eq!(steps[0]["success"], true, "{audit}");
        let out = audit["stdout"].as_str().unwrap();
        assert!(out.contains("UTC") && out.contains("Filesystem"), "{out}");
        assert!(
            out.contains("/home/agent"),
            "du over the agent's home: {out}"
        );
    })
    .await;

    step("2. as agent, without the sidecar's secrets", async {
        // `agent` reads neither the credentials file nor the sidecar's environment.
        let who = &steps[1]["result"];
        assert_eq!(who["stdout"].as_str().unwrap().trim(), "agent", "{who}");
        let err = who["stderr"].as_str().unwrap();
        assert!(
            err.contains("/etc/taos/agent.env: Permission denied"),
            "{err}"
        );
        assert!(err.contains("environ: Permission denied"), "{err}");
        assert!(
            !reply.to_string().contains("taos_ag_") && !reply.to_string().contains("taos_llm_")
        );
    })
    .await;

    step("3. rm went to the recycle bin", async {
        // The owner sees the folder there and can restore it.
        assert_eq!(steps[2]["success"], true, "{}", steps[2]);
        let bin: Value = host.get(&format!("/api/agents/{slug}/recycle")).await;
        let items = bin["items"].as_array().unwrap();
        let deleted = items
            .iter()
            .find(|i| i["original_path"] == "/home/agent/logs/2024")
            .unwrap_or_else(|| panic!("the deleted folder is in the bin: {bin}"));
        let r = host
            .admin(Method::POST, &format!("/api/agents/{slug}/recycle/restore"))
            .json(&json!({"id": deleted["id"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "{}",
            r.text().await.unwrap()
        );
        assert_eq!(
            exec(
                container,
                &["stat", "-c", "%U %s", "/home/agent/logs/2024/a.log"]
            )
            .await
            .trim(),
            "agent 4"
        );
    })
    .await;

    step("4. a forged recycle record is refused", async {
        // Its item stays out of root's home.
        assert_eq!(steps[3]["success"], true, "{}", steps[3]);
        let r = host
            .admin(Method::POST, &format!("/api/agents/{slug}/recycle/restore"))
            .json(&json!({"id": "forged-by-agent"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let why = r.text().await.unwrap();
        assert!(why.contains("deleted by uid 1000"), "{why}");
        assert!(exec(
            container,
            &["sh", "-c", "ls /root/.bash_profile 2>&1; true"]
        )
        .await
        .contains("No such file"));
    })
    .await;

    step("5. a command past its time limit was killed", async {
        // And the model was told.
        let slow = &steps[4]["result"];
        assert_eq!(slow["timed_out"], true, "{slow}");
        assert_eq!(steps[4]["success"], false);
        let left = "n=0; for p in /proc/[0-9]*; do [ \"$(stat -c %U $p 2>/dev/null)\" = agent ] && n=$((n+1)); done; echo $n";
        assert_eq!(exec(container, &["sh", "-c", left]).await.trim(), "0");
    })
    .await;

    step("every call and result is traced", async {
        // Under the prompt's trace id.
        let traces = taos_e2e::wait_for_trace(
            host,
            slug,
            &format!("?trace_id={trace_id}&limit=500"),
            |e| {
                e.iter().filter(|e| e["kind"] == "tool_result").count() == 5
                    && e.iter().any(|e| e["kind"] == "message_out")
            },
        )
        .await;
        let kinds = |kind: &str| traces.iter().filter(|e| e["kind"] == kind).count();
        assert_eq!(kinds("tool_call"), 5, "{traces:?}");
        assert_eq!(kinds("tool_result"), 5, "{traces:?}");
        assert_eq!(kinds("llm_call"), 6, "{traces:?}");
        assert!(traces.iter().any(|e| e["kind"] == "tool_call"
            && e["payload"]["args"]["command"]
                .as_str()
                .is_some_and(|c| c.starts_with("date -u"))));
    })
    .await;

    step("the step limit stops a model that never answers", async {
        // 20 steps by default.
        fake.script_forever(
            "fake-gpt",
            Scripted::call("shell", json!({"command": ["true"]})),
        );
        let r = host
            .admin(Method::POST, "/api/chat/messages")
            .json(&json!({"channel_id": dm, "content": "keep going"}))
            .send()
            .await
            .unwrap();
        let asked: Value = r.json().await.unwrap();
        let trace_id = asked["id"].as_str().unwrap();
        let reply = settled(host, dm, slug, trace_id).await;
        assert_eq!(reply["state"], "error", "{reply}");
        assert_eq!(
            reply["metadata"]["failure"]["code"], "turn_limit",
            "{reply}"
        );
        assert!(reply["metadata"]["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("steps or time"));
        assert_eq!(reply["metadata"]["tools"].as_array().unwrap().len(), 20);
    })
    .await;
}

/// Sends the admin prompt `name` (with `body`) to the agent; returns its message's id, which
/// is the turn's trace id.
async fn send_prompt(host: &Host, slug: &str, name: &str, body: Value) -> String {
    let r = host
        .admin(
            Method::POST,
            &format!("/api/agents/{slug}/admin-prompts/{name}"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{name}");
    let prompt: Value = r.json().await.unwrap();
    prompt["id"].as_str().unwrap().to_string()
}

/// The stdout of a settled answer's step `n`, which must have succeeded.
fn stdout_of(reply: &Value, n: usize) -> String {
    let steps = steps(reply);
    assert_eq!(steps[n]["success"], true, "step {n}: {reply}");
    steps[n]["result"]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("step {n} has stdout: {reply}"))
        .to_string()
}

/// The other three admin prompts, end to end in one container: the scripted model runs the
/// commands each prompt asks for, and the checks read what those commands printed (the tool
/// results on the answer, and the traces), not the model's words. `weekly-summary` reads the
/// agent's own trace through the host (`read_trace` → `GET /api/agents/{agent}/trace`) and finds
/// the two audits just run.
#[tokio::test]
async fn the_memory_health_and_weekly_prompts_run_their_commands_in_the_container() {
    require_image().await;
    let (_turn, host, fake) = with_fake_provider(BIN, &[]).await;
    let host = &host;
    // A name of its own, so its container (`taos-<slug>`) clashes with no other test's.
    let name = format!("Prompts {:08x}", rand::random::<u32>());
    let (slug, _cleanup) = deploy_succeeded(
        host,
        json!({"name": name, "framework": "tools", "model": "fake-gpt", "memory_limit_mib": 256, "disk_quota_gib": 2}),
    )
    .await;
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let dm = dm.as_str();
    let since = (chrono::Utc::now() - chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let memory = step("memory-audit runs free and ps in the container", async {
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call("shell", json!({"command": "date -u; hostname"})),
                Scripted::call(
                    "shell",
                    json!({"command": "free -m; ps -eo pid,rss,etime,comm --sort=-rss | head -11"}),
                ),
                Scripted::final_text("Memory looks fine."),
            ],
        );
        let trace_id = send_prompt(host, slug, "memory-audit", json!({})).await;
        let reply = settled(host, dm, slug, &trace_id).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(steps(&reply).len(), 2, "{reply}");
        let first = stdout_of(&reply, 0);
        assert!(first.contains("UTC"), "{first}");
        // The command ran on the container, not on the host.
        assert!(first.contains(&container), "{first}");
        let out = stdout_of(&reply, 1);
        assert!(out.contains("Mem:") && out.contains("available"), "{out}");
        // ps saw the container's own processes: its init and the sidecar.
        assert!(
            out.contains("PID") && out.contains("taos-agent") && out.contains("systemd"),
            "{out}"
        );
        trace_id
    })
    .await;

    let health = step("health-report reads disk, memory, units and the journal", async {
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call("shell", json!({"command": "date -u; df -h /; free -m"})),
                Scripted::call(
                    "shell",
                    json!({"command": "systemctl --failed --no-pager; journalctl -p err -n 20 --no-pager; true"}),
                ),
                Scripted::final_text("All healthy."),
            ],
        );
        let trace_id = send_prompt(host, slug, "health-report", json!({})).await;
        let reply = settled(host, dm, slug, &trace_id).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        let first = stdout_of(&reply, 0);
        assert!(
            first.contains("UTC") && first.contains("Filesystem") && first.contains("Mem:"),
            "{first}"
        );
        // systemctl asked the container's systemd: it lists the failed units (none here).
        let units = stdout_of(&reply, 1);
        assert!(units.contains("loaded units listed"), "{units}");
        trace_id
    })
    .await;

    step(
        "weekly-summary reads the agent's own trace from the host",
        async {
            fake.script(
                "fake-gpt",
                vec![
                    Scripted::call("shell", json!({"command": "date -u"})),
                    Scripted::call(
                        "read_trace",
                        json!({"since": since, "kind": "tool_call", "limit": 100}),
                    ),
                    Scripted::final_text("This week: two audits."),
                ],
            );
            let trace_id = send_prompt(
                host,
                slug,
                "weekly-summary",
                json!({"variables": {"since": since}}),
            )
            .await;
            let reply = settled(host, dm, slug, &trace_id).await;
            assert_eq!(reply["state"], "complete", "{reply}");
            let steps = steps(&reply);
            assert_eq!(steps.len(), 2, "{reply}");
            assert_eq!(steps[1]["tool"], "read_trace");
            assert_eq!(steps[1]["success"], true, "{reply}");
            let events = steps[1]["result"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(events.iter().all(|e| e["kind"] == "tool_call"), "{reply}");
            // The page holds the audits' commands, under their own turns.
            for (trace, command) in [(&memory, "free -m"), (&health, "systemctl --failed")] {
                assert!(
                    events.iter().any(|e| e["trace_id"] == trace.as_str()
                        && e["payload"]["args"]["command"]
                            .as_str()
                            .is_some_and(|c| c.contains(command))),
                    "{command} under {trace}: {events:?}"
                );
            }
            // What the model was given is that page: the tool message carries the audits' ids.
            let tool_messages: Vec<String> = fake
                .chat_requests(|r| r["model"] == "fake-gpt")
                .iter()
                .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
                .filter(|m| m["role"] == "tool")
                .map(|m| m["content"].as_str().unwrap_or_default().to_string())
                .collect();
            assert!(
                tool_messages
                    .iter()
                    .any(|m| m.contains(memory.as_str()) && m.contains(health.as_str())),
                "{tool_messages:?}"
            );
            // And the read itself is traced under this turn.
            let traces = taos_e2e::wait_for_trace(
                host,
                slug,
                &format!("?trace_id={trace_id}&limit=500"),
                |e| e.iter().filter(|e| e["kind"] == "tool_result").count() == 2,
            )
            .await;
            assert!(
                traces
                    .iter()
                    .any(|e| e["kind"] == "tool_call" && e["payload"]["tool"] == "read_trace"),
                "{traces:?}"
            );
        },
    )
    .await;
}
