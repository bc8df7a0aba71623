//! The Docker fallback against real dockerd (scripts/dev-docker.sh provisions it with
//! userns-remap, a fixed bridge subnet and the busybox test image): the runtime's conformance,
//! what it refuses as unsupported, and a deploy that chats through the bridge gateway.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use taos_e2e::fake_llm::{Scripted, REPLY};
use taos_e2e::fixtures::{
    ask_and_wait, assert_exec_keeps_data, assert_limits_hold, assert_mount_writes_as, busybox,
    catalog, deploy_with, finished, step, trace_disk, unique, wait_deploy, with_fake_provider,
};
use taos_host::runtime::docker::{Docker, DEFAULT_SOCKET};
use taos_host::runtime::{Device, Limits, Runtime, RuntimeError};
use taos_proto::agents::ArchivedAgent;

use crate::{host_with, BIN};

const SECOND: Duration = Duration::from_secs(1);

/// Docker is the fallback runtime; scripts/test.sh provisions it, so a missing dockerd fails
/// these tests unless a developer skips them on purpose (`TAOS_TEST_ALLOW_SKIP=1`).
async fn docker() -> Option<Docker> {
    if let Ok(docker) = Docker::new(DEFAULT_SOCKET) {
        if docker.available().await {
            return Some(docker);
        }
    }
    taos_e2e::skip_for_missing(
        "the Docker tests",
        "dockerd is not running (scripts/dev-docker.sh starts it)",
    );
    None
}

/// Removes the container and its snapshot images even on panic (the incus guard,
/// `fixtures::Remove`, knows nothing of Docker's images).
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let id = docker(&["inspect", "-f", "{{.Id}}", &self.0]);
        if !id.is_empty() {
            let label = format!("label=taos.snapshot.of={id}");
            for image in docker(&["images", "-q", "--filter", &label]).lines() {
                docker(&["rmi", "--force", image]);
            }
        }
        docker(&["rm", "--force", &self.0]);
        // The image a backup's restore made it from.
        docker(&["rmi", &format!("taos-backup:{}", self.0)]);
    }
}

#[tokio::test]
async fn a_docker_container_lives_and_dies_through_the_engine_api() {
    let Some(rt) = docker().await else { return };
    let name = unique("dlife");
    let _cleanup = Remove(name.clone());
    let mut spec = busybox(&name);
    spec.limits = Limits {
        memory_mib: Some(64),
        cpus: Some(1),
        processes: Some(100),
    };
    spec.env = BTreeMap::from([("GREETING".to_string(), "-starts-with-dash".to_string())]);
    assert!(!rt.exists(&name).await.unwrap());
    rt.create(&spec).await.unwrap();
    assert!(rt.exists(&name).await.unwrap());
    assert!(!rt.state(&name).await.unwrap().running);
    assert_eq!(
        rt.memory_used(&name).await.unwrap(),
        None,
        "stopped: no memory"
    );
    // Files go in before the first start (how deploy hands over credentials).
    rt.push_file(&name, "/root/note.txt", b"first", 0o600)
        .await
        .unwrap();
    rt.start(&name).await.unwrap();
    let state = rt.state(&name).await.unwrap();
    assert!(state.running, "{state:?}");
    assert!(state.memory_used_bytes.is_some(), "{state:?}");
    // The home screen's cheap reading (no size of the writable layer) sees it too.
    assert!(rt.memory_used(&name).await.unwrap().is_some_and(|m| m > 0));

    assert_exec_keeps_data(&rt, &name).await;
    // The limits reached the container's cgroup (v2's files, or v1's where the host has v1)…
    let read =
        |v2: &'static str, v1: &'static [&'static str]| {
            let rt = &rt;
            let name = &name;
            async move {
                let script =
                    format!(
                "if [ -f /sys/fs/cgroup/{v2} ]; then cat /sys/fs/cgroup/{v2}; else cat {}; fi",
                v1.iter().map(|f| format!("/sys/fs/cgroup/{f}")).collect::<Vec<_>>().join(" ")
            );
                let out = rt
                    .exec(name, &["sh", "-c", &script], &BTreeMap::new(), 10 * SECOND)
                    .await
                    .unwrap();
                assert_eq!(out.exit_code, 0, "no cgroup file for {v2}: {}", out.stderr);
                out.stdout
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            }
        };
    assert_eq!(
        read("memory.max", &["memory/memory.limit_in_bytes"]).await,
        [(64u64 * 1024 * 1024).to_string()]
    );
    assert_eq!(read("pids.max", &["pids/pids.max"]).await, ["100"]);
    let cpu = read(
        "cpu.max",
        &["cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"],
    )
    .await;
    assert_eq!(
        cpu[0], cpu[1],
        "one CPU's worth of time per period: {cpu:?}"
    );

    assert_eq!(
        rt.pull_file(&name, "/root/note.txt").await.unwrap(),
        b"first"
    );
    let mode = rt
        .exec(
            &name,
            &["stat", "-c", "%a %u", "/root/note.txt"],
            &BTreeMap::new(),
            10 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(mode.stdout.trim(), "600 0");

    // Snapshots are committed images that follow the container through a rename.
    rt.snapshot_create(&name, "before").await.unwrap();
    assert_eq!(rt.snapshot_list(&name).await.unwrap(), ["before"]);
    assert!(matches!(
        rt.snapshot_create(&name, "before").await,
        Err(RuntimeError::Refused { .. })
    ));
    // What Docker can't do says so, and changes nothing.
    for unsupported in [
        rt.snapshot_restore(&name, "before").await,
        rt.set_env(&name, "LATER", "1").await,
        rt.add_device(
            &name,
            &Device::Proxy {
                name: "p".into(),
                listen: "tcp:127.0.0.1:1".into(),
                connect: "tcp:127.0.0.1:2".into(),
            },
        )
        .await,
        rt.remove_device(&name, "trace").await,
    ] {
        assert!(
            matches!(
                unsupported,
                Err(RuntimeError::Unsupported {
                    runtime: "docker",
                    ..
                })
            ),
            "{unsupported:?}"
        );
    }
    // …and the limits hold. Last, because the process check leaves the container full.
    assert_limits_hold(&rt, &name).await;

    rt.stop(&name, false).await.unwrap();
    assert!(!rt.state(&name).await.unwrap().running);
    rt.stop(&name, false).await.unwrap();
    let renamed = unique("drenamed");
    let _cleanup2 = Remove(renamed.clone());
    rt.rename(&name, &renamed).await.unwrap();
    assert!(!rt.exists(&name).await.unwrap());
    assert!(rt.exists(&renamed).await.unwrap());
    assert_eq!(rt.snapshot_list(&renamed).await.unwrap(), ["before"]);
    rt.snapshot_delete(&renamed, "before").await.unwrap();
    assert!(rt.snapshot_list(&renamed).await.unwrap().is_empty());
    rt.snapshot_create(&renamed, "again").await.unwrap();
    // Delete takes the snapshots with it.
    rt.delete(&renamed).await.unwrap();
    assert!(!rt.exists(&renamed).await.unwrap());
    let left = std::process::Command::new("docker")
        .args(["images", "-q", "--filter", "label=taos.snapshot.name=again"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "snapshot images left behind"
    );
}

#[tokio::test]
async fn docker_errors_are_typed_and_bad_input_never_reaches_dockerd() {
    let Some(rt) = docker().await else { return };
    assert!(matches!(
        rt.state("taos-t-never-existed").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        rt.start("taos-t-never-existed").await,
        Err(RuntimeError::NotFound(_))
    ));
    for bad in ["../containers", "a/b", "UPPER", "x?y", ""] {
        assert!(
            matches!(rt.exists(bad).await, Err(RuntimeError::Invalid { .. })),
            "{bad:?}"
        );
    }
    let name = unique("derr");
    let _cleanup = Remove(name.clone());
    rt.create(&busybox(&name)).await.unwrap();
    assert!(matches!(
        rt.create(&busybox(&name)).await,
        Err(RuntimeError::Refused { .. })
    ));
    for bad in ["/root/../etc/x", "relative", "/a\0b"] {
        assert!(matches!(
            rt.push_file(&name, bad, b"x", 0o600).await,
            Err(RuntimeError::Invalid { .. })
        ));
    }
    let mut colon = busybox(&unique("dcolon"));
    colon.devices = vec![Device::Disk {
        name: "trace".into(),
        source: "/tmp/a:/etc".into(),
        path: "/mnt".into(),
        readonly: false,
        shift: false,
    }];
    assert!(matches!(
        rt.create(&colon).await,
        Err(RuntimeError::Invalid { .. })
    ));
    let mut proxied = busybox(&unique("dproxy"));
    proxied.devices = vec![Device::Proxy {
        name: "p".into(),
        listen: "tcp:127.0.0.1:1".into(),
        connect: "tcp:127.0.0.1:2".into(),
    }];
    assert!(matches!(
        rt.create(&proxied).await,
        Err(RuntimeError::Unsupported { .. })
    ));
    let mut missing_image = busybox(&unique("dnoimg"));
    missing_image.image = "taos-no-such-image".into();
    assert!(rt.create(&missing_image).await.is_err());
    assert!(!rt.exists(&missing_image.name).await.unwrap());
    rt.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_docker_bind_mount_is_writable_inside_without_writing_as_host_root() {
    let Some(rt) = docker().await else { return };
    let root_uid = rt.root_host_uid().await.unwrap().unwrap();
    assert_ne!(
        root_uid, 0,
        "dockerd runs with userns-remap (scripts/dev-docker.sh)"
    );
    let name = unique("dmount");
    let _cleanup = Remove(name.clone());
    let host_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(host_dir.path(), Some(root_uid), Some(root_uid)).unwrap();
    let mut spec = busybox(&name);
    spec.devices = vec![trace_disk(host_dir.path())];
    rt.create(&spec).await.unwrap();
    rt.start(&name).await.unwrap();
    assert_mount_writes_as(&rt, &name, host_dir.path(), root_uid).await;
    rt.stop(&name, true).await.unwrap();
    rt.delete(&name).await.unwrap();
}

/// Deploy on Docker: the agent reaches the host through the bridge gateway and answers;
/// archive works; restore says plainly that Docker can't; purge leaves nothing.
#[tokio::test]
async fn deploy_chat_archive_and_purge_on_docker() {
    let Some(rt) = docker().await else { return };
    let rt = &rt;
    let image = std::process::Command::new("docker")
        .args(["image", "inspect", "taos-agent:latest"])
        .output()
        .unwrap();
    assert!(
        image.status.success(),
        "the docker taos-agent image is missing: run scripts/build-agent-image.sh with dockerd up"
    );
    let (_turn, host, _fake) = with_fake_provider(BIN, &[("TAOS_RUNTIME__KIND", "docker")]).await;
    let host = &host;

    step("the runtime is docker, on its own network", async {
        let health: Value = host.get("/api/health").await;
        let runtime = health["subsystems"]["runtime"].as_str().unwrap();
        assert!(runtime.starts_with("ok: docker "), "{runtime}");
        // Agents sit on their own network (not Docker's default bridge) and reach the host on
        // its gateway.
        let gateway = std::process::Command::new("docker")
            .args([
                "network",
                "inspect",
                "-f",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                "taos-agents-internet",
            ])
            .output()
            .unwrap();
        let gateway = String::from_utf8_lossy(&gateway.stdout).trim().to_string();
        assert!(
            runtime.contains(&format!("agents via {gateway}:")),
            "{runtime}"
        );
    })
    .await;

    let slug = format!("dock-{:06x}", rand::random::<u32>() & 0xffffff);
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let container = container.as_str();
    let _c1 = Remove(container.to_string());
    step("deploy and chat", async {
        deploy_with(
            host,
            json!({"name": slug, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256}),
        )
        .await;
        let status = wait_deploy(host, slug, finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        let steps: Vec<&str> = status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let docker_steps: Vec<&str> = taos_host::agents::deploy::DOCKER_STEPS
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(steps, docker_steps, "Docker's own step list");
        assert!(rt.state(container).await.unwrap().running);
        // The credentials are a 0600 file, not the container's inspectable environment.
        let inspect = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{json .Config.Env}}", container])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&inspect.stdout).contains("TAOS_AGENT_TOKEN"));
        assert_eq!(
            ask_and_wait(host, slug, "hello from docker").await["content"],
            REPLY
        );
    })
    .await;

    step("logs, stop and start, quota", async {
        // The sidecar's log is the container's.
        let logs = host
            .admin(Method::GET, &format!("/api/agents/{slug}/logs?lines=50"))
            .send()
            .await
            .unwrap();
        assert_eq!(logs.status(), StatusCode::OK);
        let text = logs.text().await.unwrap();
        assert!(
            text.contains("taos-agent starting") && text.contains(slug),
            "the sidecar's own log: {text}"
        );
        // Lifecycle: stop and start again; it reconnects and answers.
        for action in ["stop", "start"] {
            let _: Value = host
                .call(
                    Method::POST,
                    &format!("/api/agents/{slug}/{action}"),
                    None,
                    StatusCode::OK,
                )
                .await;
        }
        assert_eq!(
            ask_and_wait(host, slug, "still there?").await["content"],
            REPLY
        );
        // The quota can't be enforced on Docker's storage: a clear 409, nothing changed.
        let r = host
            .admin(Method::POST, &format!("/api/agents/{slug}/quota"))
            .json(&json!({"size_gib": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT);
    })
    .await;

    let (archived, _c2) = step("archive", async {
        // Stopped, snapshotted, renamed away.
        let archived: ArchivedAgent = host
            .call(
                Method::DELETE,
                &format!("/api/agents/{slug}"),
                None,
                StatusCode::OK,
            )
            .await;
        let archived_container = archived.container.clone().unwrap();
        let cleanup = Remove(archived_container.clone());
        assert!(!rt.exists(container).await.unwrap());
        assert_eq!(
            rt.snapshot_list(&archived_container).await.unwrap().len(),
            1
        );
        (archived, cleanup)
    })
    .await;
    let archived_container = archived.container.as_deref().unwrap();
    let id = archived.id.as_str();

    step("restore is refused", async {
        // Restore needs a snapshot restore: 501 with the reason, and the archive is unchanged.
        let r = host
            .admin(Method::POST, &format!("/api/agents/archived/{id}/restore"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("docker"),
            "{body}"
        );
        assert!(rt.exists(archived_container).await.unwrap());
        assert!(!rt.exists(container).await.unwrap());
    })
    .await;

    step("purge", async {
        // No container, no snapshot image, no archive left.
        host.delete(&format!("/api/agents/archived/{id}")).await;
        assert!(!rt.exists(archived_container).await.unwrap());
        let snapshot = archived.snapshot.as_deref().unwrap();
        let images = std::process::Command::new("docker")
            .args([
                "images",
                "-q",
                "--filter",
                &format!("label=taos.snapshot.name={snapshot}"),
            ])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&images.stdout).trim().is_empty(),
            "snapshot image left behind"
        );
        assert!(!host.data_dir.join("traces").join(slug).exists());
    })
    .await;
}

/// A failure at any Docker deploy step leaves no container, agent, channel or trace folder.
#[tokio::test]
async fn a_failed_docker_deploy_leaves_nothing_behind() {
    let Some(rt) = docker().await else { return };
    for step in &taos_host::agents::deploy::DOCKER_STEPS[1..] {
        let host = host_with(&[
            ("TAOS_RUNTIME__KIND", "docker"),
            (taos_host::faults::FAIL_ENV, &format!("deploy:{step}")),
        ])
        .await;
        host.setup_owner().await;
        catalog(&host).await;
        let name = format!("dfail-{step}-{:06x}", rand::random::<u32>() & 0xffffff);
        let accepted = deploy_with(
            &host,
            json!({"name": name, "framework": "direct", "model": "fake-gpt"}),
        )
        .await;
        let slug = accepted["agent"]["slug"].as_str().unwrap().to_string();
        let _cleanup = Remove(format!("taos-{slug}"));
        let status = wait_deploy(&host, &slug, finished).await;
        assert_eq!(status["status"], "rolled_back", "{step}: {status}");
        assert!(
            !rt.exists(&format!("taos-{slug}")).await.unwrap(),
            "{step}: container left"
        );
        let agent = host
            .admin(Method::GET, &format!("/api/agents/{slug}"))
            .send()
            .await
            .unwrap();
        assert_eq!(agent.status(), StatusCode::NOT_FOUND, "{step}: agent left");
        let channels: Vec<Value> = host
            .admin(Method::GET, &format!("/api/chat/channels?member={slug}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(channels.is_empty(), "{step}: channel left: {channels:?}");
        assert!(
            !host.data_dir.join("traces").join(&slug).exists(),
            "{step}: trace folder left"
        );
    }
}

/// Tools mode on Docker keeps the guarantees it has under incus: the tools run as the
/// unprivileged `agent` account, can't read the sidecar's credentials file or environment, and
/// a call past its time limit is killed with everything it started (even a process that left
/// its process group).
#[tokio::test]
async fn tools_mode_on_docker_runs_as_agent_without_the_credentials() {
    let Some(_rt) = docker().await else { return };
    let (_turn, host, fake) = with_fake_provider(BIN, &[("TAOS_RUNTIME__KIND", "docker")]).await;
    let host = &host;
    let slug = format!("dtool-{:06x}", rand::random::<u32>() & 0xffffff);
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let _c = Remove(container.clone());
    step("deploy the tools framework on docker", async {
        deploy_with(
            host,
            json!({"name": slug, "framework": "tools", "model": "fake-gpt", "memory_limit_mib": 256}),
        )
        .await;
        let status = wait_deploy(host, slug, finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
    })
    .await;
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let reply = step("a scripted turn runs its commands", async {
        fake.script(
            "fake-gpt",
            vec![
                Scripted::call("shell", json!({"command": "id -un; cat /etc/taos/agent.env; for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = taos-agent ] && cat $p/environ; done; true"})),
                Scripted::call("shell", json!({"command": "setsid sleep 300 & sleep 120; echo never", "timeout_secs": 2})),
                Scripted::final_text("Done on docker."),
            ],
        );
        let sent: Value = host
            .call(
                Method::POST,
                "/api/chat/messages",
                Some(&json!({"channel_id": dm, "content": "who are you?"})),
                StatusCode::CREATED,
            )
            .await;
        let reply = crate::tools::settled(host, &dm, slug, sent["id"].as_str().unwrap()).await;
        assert_eq!(reply["state"], "complete", "{reply}");
        assert_eq!(reply["content"], "Done on docker.");
        reply
    })
    .await;
    let steps = crate::tools::steps(&reply);
    assert_eq!(steps.len(), 2, "{reply}");
    step(
        "the tools ran as agent, without the sidecar's secrets",
        async {
            let who = &steps[0]["result"];
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
        },
    )
    .await;
    step("a call past its limit is killed with what it started", async {
        assert_eq!(steps[1]["result"]["timed_out"], true, "{}", steps[1]);
        let left = std::process::Command::new("docker")
            .args([
                "exec",
                &container,
                "sh",
                "-c",
                "n=0; for p in /proc/[0-9]*; do [ \"$(stat -c %U $p 2>/dev/null)\" = agent ] && n=$((n+1)); done; echo $n",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0", "{left:?}");
    })
    .await;
}

/// Issue 18 item 2 on Docker: a Docker agent's container is committed and saved into the
/// backup while it runs; a restore drill loads it as a throwaway container on the agents'
/// network that reaches only the host, whose sidecar answers the drill's own bridge session
/// (the live agent carries on); after the host and the container are wiped, `taos-host restore`
/// loads it and creates the container again with its limits and network, the restored host's
/// agent answers, and a file written inside the container before the backup is there. A
/// restored container whose credentials file names another gateway (a Docker whose agents'
/// network has another subnet) is re-pointed at the current one when the host starts. Then the
/// agent, archived and purged, comes back alone from the backup (`POST /api/backups/agents`):
/// a host killed after its container was loaded and made removes both at its next start, and
/// the next try brings it back running, with the file, reporting its phases on `/api/events`.
#[tokio::test]
async fn a_whole_host_restore_brings_a_docker_agents_container_back() {
    let Some(rt) = docker().await else { return };
    let rt = &rt;
    // Both hosts' agent listener on one port: the container's credentials file names it (the
    // test kit's default, a random port per host, would move it; a real host keeps 6970).
    let agent_bind = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let env = [
        ("TAOS_RUNTIME__KIND", "docker"),
        ("TAOS_SERVER__AGENT_BIND", agent_bind.as_str()),
    ];
    let out = crate::backup::outside();
    let (_turn, mut host, _fake) = with_fake_provider(BIN, &env).await;
    let slug = format!("dbk-{:06x}", rand::random::<u32>() & 0xffffff);
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let container = container.as_str();
    let _cleanup = Remove(container.to_string());
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    step("deploy, chat, write a file inside", async {
        deploy_with(
            &host,
            json!({"name": slug, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256}),
        )
        .await;
        let status = wait_deploy(&host, slug, finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        assert_eq!(
            ask_and_wait(&host, slug, "before the backup").await["content"],
            REPLY
        );
        rt.push_file(container, "/root/kept.txt", b"written before the backup", 0o600)
            .await
            .unwrap();
    })
    .await;

    let run = step("back up, the container committed and saved live", async {
        std::fs::create_dir_all(out.repo.parent().unwrap()).unwrap();
        let _: Value = host
            .call(
                Method::PUT,
                "/api/backups/settings",
                Some(&json!({
                    "destination": {"kind": "local", "path": out.repo.display().to_string()},
                    "passphrase": crate::backup::PASSPHRASE,
                })),
                StatusCode::OK,
            )
            .await;
        let run = crate::backup::run_backup(&host).await;
        assert_eq!(
            run.state,
            taos_proto::backup::BackupState::Succeeded,
            "{run:?}"
        );
        assert_eq!(run.containers, Some(1), "{run:?}");
        assert!(run.warnings.is_empty(), "{run:?}");
        assert!(rt.state(container).await.unwrap().running, "never stopped");
        // The commit's image went again (its tag only; the container keeps nothing of it).
        assert_eq!(
            docker(&["images", "-q", &format!("taos-backup:{container}")]),
            ""
        );
        run
    })
    .await;

    step(
        "a restore drill starts a copy of the Docker agent, cut off, and it answers its own session",
        async {
            let drill = crate::backup_agents::run_drill(&host).await;
            assert_eq!(
                drill.state,
                taos_proto::backup::DrillState::Passed,
                "{drill:?}"
            );
            let check = |name: String| {
                drill
                    .checks
                    .iter()
                    .find(|c| c.name == name)
                    .unwrap_or_else(|| panic!("no check {name}: {drill:?}"))
                    .clone()
            };
            let loaded = check(format!("container:{container}"));
            assert!(
                loaded.ok && loaded.detail.contains("whole") && loaded.detail.contains("loaded into Docker"),
                "{loaded:?}"
            );
            let trip = check(format!("bridge_round_trip:{container}"));
            assert!(trip.ok && trip.detail.contains("answered"), "{trip:?}");
            // The copy is gone, with the image it was loaded as; the agent never stopped and
            // still answers over its own session.
            assert_eq!(docker(&["ps", "-aq", "--filter", "name=taosdrill-"]), "");
            assert_eq!(
                docker(&["images", "-q", &format!("taos-backup:{container}")]),
                ""
            );
            assert!(rt.state(container).await.unwrap().running);
            assert_eq!(
                ask_and_wait(&host, slug, "after the drill").await["content"],
                REPLY
            );
        },
    )
    .await;

    // The killed host's data dir outlives it: the next host starts on it.
    let mut kept_temp = None;
    step(
        "a host killed while a drill's Docker copy exists removes the copy at its next start",
        async {
            let drill: Value = host
                .call(
                    Method::POST,
                    "/api/backups/drill",
                    None,
                    StatusCode::ACCEPTED,
                )
                .await;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while docker(&["ps", "-aq", "--filter", "name=taosdrill-"]).is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the drill never loaded its copy"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            host.kill9().await;
            kept_temp = host.take_temp();
            host = taos_e2e::Host::start_with(
                BIN,
                crate::backup_agents::no_litellm(Some(host.data_dir.clone()), &env),
            )
            .await
            .unwrap();
            let failed: Value = host
                .get(&format!(
                    "/api/backups/drills/{}",
                    drill["id"].as_str().unwrap()
                ))
                .await;
            assert_eq!(failed["state"], "failed", "{failed}");
            assert_eq!(docker(&["ps", "-aq", "--filter", "name=taosdrill-"]), "");
            assert!(
                rt.state(container).await.unwrap().running,
                "the agent is untouched"
            );
        },
    )
    .await;

    assert_eq!(host.terminate().await.unwrap(), Some(0));
    std::fs::remove_dir_all(&host.data_dir).unwrap();
    drop(kept_temp);
    rt.delete(container).await.unwrap();
    assert!(!rt.exists(container).await.unwrap());

    let fresh_temp = tempfile::tempdir().unwrap();
    let fresh = fresh_temp.path().join("data");
    step("restore into a fresh data dir and a wiped Docker", async {
        let output = std::process::Command::new(BIN)
            .arg("--data-dir")
            .arg(&fresh)
            .arg("restore")
            .arg("--from")
            .arg(&out.repo)
            .arg("--password-file")
            .arg(&out.password_file)
            .envs(env)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "restore: {said} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains(run.snapshot_id.as_deref().unwrap()), "{said}");
        assert!(said.contains("1 agent container(s) imported"), "{said}");
        assert!(rt.state(container).await.unwrap().running, "started again");
        // Made as deploy makes it: its limits, its network, hardened.
        assert_eq!(
            docker(&[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.NetworkMode}} {{.HostConfig.CapDrop}} \
                 {{.HostConfig.RestartPolicy.Name}}",
                container
            ]),
            format!(
                "{} taos-agents-internet [ALL] unless-stopped",
                256u64 * 1024 * 1024
            )
        );
        // Its image, the one the backup saved, is its base now.
        assert_ne!(
            docker(&["images", "-q", &format!("taos-backup:{container}")]),
            ""
        );
    })
    .await;

    // A Docker whose agents' network has another gateway than the backed-up host's: the
    // container's credentials file names an address nothing answers at (TEST-NET-1).
    let credentials = "/etc/taos/agent.env";
    let port = agent_bind.rsplit_once(':').unwrap().1;
    step(
        "the restored container names a gateway that is gone",
        async {
            let file =
                String::from_utf8(rt.pull_file(container, credentials).await.unwrap()).unwrap();
            let moved: String = file
                .lines()
                .map(|line| {
                    if line.starts_with("TAOS_BRIDGE_URL=") {
                        format!("TAOS_BRIDGE_URL=http://192.0.2.1:{port}\n")
                    } else if line.starts_with("OPENAI_BASE_URL=") {
                        format!("OPENAI_BASE_URL=http://192.0.2.1:{port}/v1\n")
                    } else {
                        format!("{line}\n")
                    }
                })
                .collect();
            assert_ne!(moved, file, "{file}");
            rt.push_file(container, credentials, moved.as_bytes(), 0o600)
                .await
                .unwrap();
            docker(&["restart", "-t", "5", container]);
        },
    )
    .await;

    let restored_env = |extra: &[(&str, &str)]| taos_e2e::HostOptions {
        data_dir: Some(fresh.clone()),
        env: env
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut restored = taos_e2e::Host::start_with(
        BIN,
        restored_env(&[(taos_host::faults::PAUSE_ENV, "agent-restore:imported")]),
    )
    .await
    .expect("the restored host starts");
    step(
        "the restored agent is re-pointed, answers and keeps its file",
        async {
            taos_e2e::fixtures::wait_ready(&restored, &taos_e2e::fixtures::FAKE_MODELS).await;
            assert_eq!(
                ask_and_wait(&restored, slug, "after the restore").await["content"],
                REPLY
            );
            assert_eq!(
                rt.pull_file(container, "/root/kept.txt").await.unwrap(),
                b"written before the backup"
            );
            let gateway = docker(&[
                "network",
                "inspect",
                "-f",
                "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                "taos-agents-internet",
            ]);
            let file =
                String::from_utf8(rt.pull_file(container, credentials).await.unwrap()).unwrap();
            assert!(
                file.contains(&format!("TAOS_BRIDGE_URL=http://{gateway}:{port}\n"))
                    && file.contains(&format!("OPENAI_BASE_URL=http://{gateway}:{port}/v1\n"))
                    && !file.contains("192.0.2.1")
                    && file.contains("TAOS_AGENT_TOKEN=taos_ag_"),
                "re-pointed, its token kept"
            );
        },
    )
    .await;

    step("the agent is archived and purged", async {
        let archived: ArchivedAgent = restored
            .call(
                Method::DELETE,
                &format!("/api/agents/{slug}"),
                None,
                StatusCode::OK,
            )
            .await;
        let r = restored
            .admin(
                Method::DELETE,
                &format!("/api/agents/archived/{}", archived.id),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(!rt.exists(container).await.unwrap());
        // Purged: the restored container's image went with it.
        assert_eq!(
            docker(&["images", "-q", &format!("taos-backup:{container}")]),
            ""
        );
    })
    .await;

    let imported = step(
        "killed after its container was loaded and made, before it was taken in",
        async {
            let request = restored
                .admin(Method::POST, "/api/backups/agents")
                .json(&json!({"agent": slug}))
                .send();
            let log = restored.stderr_log.clone();
            let paused = async {
                let deadline = std::time::Instant::now() + Duration::from_secs(300);
                while !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("fault injection: paused at agent-restore:imported")
                {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the restore never imported"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                answer = request => panic!("the paused restore answered: {:?}", answer.map(|r| r.status())),
                () = paused => {}
            }
            let pending: Value = serde_json::from_slice(
                &std::fs::read(restored.data_dir.join("backup/agent-restore.json")).unwrap(),
            )
            .unwrap();
            let imported = pending["container"].as_str().unwrap().to_string();
            assert!(imported.starts_with("taos-x-"), "{pending}");
            assert!(!rt.state(&imported).await.unwrap().running, "made, not started");
            assert_ne!(
                docker(&["images", "-q", &format!("taos-backup:{container}")]),
                "",
                "its image loaded"
            );
            restored.kill9().await;
            (imported, pending)
        },
    )
    .await;
    let _imported_cleanup = Remove(imported.0.clone());

    let restored = taos_e2e::Host::start_with(BIN, restored_env(&[]))
        .await
        .expect("the restored host starts again");
    step(
        "the next start removed what the killed restore made",
        async {
            assert!(
                !rt.exists(&imported.0).await.unwrap(),
                "the container is removed"
            );
            assert_eq!(
                docker(&["images", "-q", &format!("taos-backup:{container}")]),
                "",
                "and the image it was made from"
            );
            assert!(!std::path::Path::new(imported.1["dir"].as_str().unwrap()).exists());
            assert!(!restored.data_dir.join("backup/agent-restore.json").exists());
            assert!(!restored.data_dir.join("backup/agent-restore").exists());
            let archived: Vec<Value> = restored.get("/api/agents/archived").await;
            assert!(archived.is_empty(), "{archived:?}");
            let r = restored
                .admin(Method::GET, &format!("/api/agents/{slug}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
        },
    )
    .await;

    step(
        "one Docker agent comes back from the backup, running, with its file",
        async {
            taos_e2e::fixtures::wait_ready(&restored, &taos_e2e::fixtures::FAKE_MODELS).await;
            let mut events = taos_e2e::SseReader::new(
                restored
                    .admin(Method::GET, "/api/events")
                    .send()
                    .await
                    .unwrap(),
            );
            let back: Value = restored
                .call(
                    Method::POST,
                    "/api/backups/agents",
                    Some(&json!({"agent": slug})),
                    StatusCode::OK,
                )
                .await;
            assert_eq!(back["agent"]["slug"], slug, "{back}");
            assert_eq!(back["agent"]["status"], "running", "{back}");
            assert!(rt.state(container).await.unwrap().running);
            assert_eq!(
                rt.pull_file(container, "/root/kept.txt").await.unwrap(),
                b"written before the backup"
            );
            assert_eq!(
                ask_and_wait(&restored, slug, "back alone").await["content"],
                REPLY
            );
            // Made as deploy makes it, from the backup's image.
            assert_eq!(
                docker(&[
                    "inspect",
                    "-f",
                    "{{.Config.Image}} {{.HostConfig.NetworkMode}} {{.HostConfig.CapDrop}}",
                    container
                ]),
                format!("taos-backup:{container} taos-agents-internet [ALL]")
            );
            let mut phases = Vec::new();
            loop {
                let event = events
                    .next(Duration::from_secs(30))
                    .await
                    .expect("agent restore events");
                if event.event.as_deref() != Some("backup.agent_restore") {
                    continue;
                }
                let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
                assert_eq!(data["data"]["agent"], slug, "{data}");
                let phase = data["data"]["phase"].as_str().unwrap().to_string();
                let done = phase == "finished" || phase == "failed";
                phases.push(phase);
                if done {
                    break;
                }
            }
            assert_eq!(
                phases,
                [
                    "checking",
                    "downloading",
                    "importing",
                    "starting",
                    "finished"
                ]
            );
            let names = docker(&["ps", "-a", "--format", "{{.Names}}"]);
            assert!(!names.contains(&imported.0), "{names}");
            assert!(!restored.data_dir.join("backup/agent-restore").exists());
            assert!(!restored.data_dir.join("backup/agent-restore.json").exists());
        },
    )
    .await;
    drop(restored);
}

/// Issue 18 item 7 on Docker: with `archive_target = backup`, an archived Docker agent's
/// container (committed and saved, as a backup does) leaves Docker for the backup repository
/// in the next run, and comes back when the archive is restored: loaded and created again,
/// without an archive snapshot (Docker has none), answering with its chat history and a file
/// written before. A host killed after the container was made again, before the archive was
/// settled, finds it whole at its next start (Docker makes it in one call) and keeps it; the
/// restore then goes on from there.
#[tokio::test]
async fn archive_target_backup_moves_a_docker_archive_off_and_back() {
    use crate::backup_agents::{archive_snapshots, messages, paused_at, the_archive};
    let Some(rt) = docker().await else { return };
    let rt = &rt;
    let agent_bind = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let env = [
        ("TAOS_RUNTIME__KIND", "docker"),
        ("TAOS_SERVER__AGENT_BIND", agent_bind.as_str()),
        (taos_host::faults::PAUSE_ENV, "archive-return:imported"),
    ];
    let out = crate::backup::outside();
    let (_turn, mut host, _fake) = with_fake_provider(BIN, &env).await;
    let slug = format!("dmv-{:06x}", rand::random::<u32>() & 0xffffff);
    let slug = slug.as_str();
    let container = format!("taos-{slug}");
    let _cleanup = Remove(container.clone());
    let exists = |name: &str| {
        std::process::Command::new("docker")
            .args(["inspect", "--type", "container", name])
            .output()
            .unwrap()
            .status
            .success()
    };

    step("deploy, chat, write a file inside", async {
        deploy_with(
            &host,
            json!({"name": slug, "framework": "direct", "model": "fake-gpt", "memory_limit_mib": 256}),
        )
        .await;
        let status = wait_deploy(&host, slug, finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
        assert_eq!(
            ask_and_wait(&host, slug, "before the archive").await["content"],
            REPLY
        );
        rt.push_file(&container, "/root/kept.txt", b"written before the archive", 0o600)
            .await
            .unwrap();
    })
    .await;
    let agent: Value = host.get(&format!("/api/agents/{slug}")).await;
    let dm = agent["dm_channel_id"].as_str().unwrap().to_string();
    let before = messages(&host, &dm).await;
    assert!(before.len() >= 2, "{before:?}");

    std::fs::create_dir_all(out.repo.parent().unwrap()).unwrap();
    let _: Value = host
        .call(
            Method::PUT,
            "/api/backups/settings",
            Some(&json!({
                "destination": {"kind": "local", "path": out.repo.display().to_string()},
                "passphrase": crate::backup::PASSPHRASE,
                "archive_target": "backup",
            })),
            StatusCode::OK,
        )
        .await;
    let archived: Value = host
        .call(
            Method::DELETE,
            &format!("/api/agents/{slug}"),
            None,
            StatusCode::OK,
        )
        .await;
    let archive_id = archived["id"].as_str().unwrap().to_string();
    let archived_name = archived["container"].as_str().unwrap().to_string();
    let _archived_cleanup = Remove(archived_name.clone());
    assert_eq!(archived["location"], "pool", "{archived}");
    assert!(exists(&archived_name));

    step(
        "the next run moves the archived container out of Docker",
        async {
            let run = crate::backup::run_backup(&host).await;
            assert_eq!(
                run.state,
                taos_proto::backup::BackupState::Succeeded,
                "{run:?}"
            );
            assert!(run.warnings.is_empty(), "{run:?}");
            let moved = the_archive(&host).await;
            assert_eq!(moved["location"], "backup", "{moved}");
            let snapshot = moved["backup_snapshot"].as_str().unwrap().to_string();
            assert!(!exists(&archived_name), "Docker is freed of it");
            assert!(
                archive_snapshots(&out)
                    .iter()
                    .any(|s| s["id"] == snapshot.as_str()),
                "its own snapshot is in the repository"
            );
        },
    )
    .await;

    step(
        "killed after the container was made again, before the archive settled",
        async {
            let request = host
                .admin(
                    Method::POST,
                    &format!("/api/agents/archived/{archive_id}/restore"),
                )
                .send();
            tokio::select! {
                answer = request => panic!("the paused restore answered: {:?}", answer.map(|r| r.status())),
                () = paused_at(&host, "archive-return:imported") => {}
            }
            assert!(exists(&archived_name));
            assert_eq!(the_archive(&host).await["location"], "moving_in");
            host.kill9().await;
        },
    )
    .await;

    let again = taos_e2e::Host::start_with(
        BIN,
        taos_e2e::HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: env[..2]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    )
    .await
    .expect("the host starts again");
    step(
        "the next start keeps the whole container; the restore brings the agent back",
        async {
            let settled = the_archive(&again).await;
            assert_eq!(settled["location"], "pool", "{settled}");
            assert!(exists(&archived_name));
            assert!(!again.data_dir.join("backup/archive-return").exists());
            taos_e2e::fixtures::wait_ready(&again, &taos_e2e::fixtures::FAKE_MODELS).await;
            let restored: Value = again
                .call(
                    Method::POST,
                    &format!("/api/agents/archived/{archive_id}/restore"),
                    None,
                    StatusCode::OK,
                )
                .await;
            assert_eq!(restored["agent"]["slug"], slug, "{restored}");
            assert!(rt.state(&container).await.unwrap().running);
            let kept = rt.pull_file(&container, "/root/kept.txt").await.unwrap();
            assert_eq!(kept, b"written before the archive");
            assert_eq!(messages(&again, &dm).await, before);
            assert_eq!(
                ask_and_wait(&again, slug, "after the return").await["content"],
                REPLY
            );
            // Its snapshot in the repository is forgotten (its data goes at the next prune).
            assert!(archive_snapshots(&out).is_empty());
        },
    )
    .await;
}
