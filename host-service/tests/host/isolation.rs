//! Agents' network isolation, attacked from inside real agent containers (incus and Docker):
//! an agent reaches the host's agent listener and LLM gateway and the internet, and nothing
//! else: not another port of the host, not the LAN (unless deployed with `network: lan`), not
//! cloud metadata, not another agent. `network: none` has no NIC and still reaches the host.
//!
//! The "LAN" is a network namespace this test makes behind a veth pair: a web server on a LAN
//! address (192.168.77.2), one on the metadata address (169.254.169.254) and one on an address
//! that counts as public (203.0.113.7, routed to the namespace), so no traffic leaves the
//! machine. The agents probe with a static busybox pushed into them (`wget` under `timeout`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use taos_e2e::{Host, HostOptions};
use taos_host::runtime::docker::{Docker, DEFAULT_SOCKET as DOCKER_SOCKET};
use taos_host::runtime::{ContainerRuntime, Runtime};

use taos_e2e::fixtures::{catalog, deploy_with, finished, incus, require_image, wait_deploy};

use crate::{host_with, BIN};

/// One test at a time owns the LAN namespace and its addresses.
static LAN_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NETNS: &str = "taos-t-lan";
const VETH_HOST: &str = "taos-t-lan0";
const VETH_LAN: &str = "taos-t-lan1";
const HOST_LAN_IP: &str = "192.168.77.1";
const LAN_IP: &str = "192.168.77.2";
const METADATA_IP: &str = "169.254.169.254";
const PUBLIC_IP: &str = "203.0.113.7";
const SECOND: Duration = Duration::from_secs(1);

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The LAN namespace with its three web servers; everything is removed on drop.
struct Lan {
    servers: Vec<Child>,
    _www: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Lan {
    async fn create() -> Lan {
        let turn = LAN_TURN.lock().await;
        Lan::remove_leftovers();
        must(&["ip", "netns", "add", NETNS]);
        must(&[
            "ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_LAN,
        ]);
        must(&["ip", "link", "set", VETH_LAN, "netns", NETNS]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_LAN_IP}/24"),
            "dev",
            VETH_HOST,
        ]);
        must(&["ip", "link", "set", VETH_HOST, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", NETNS];
            all.extend_from_slice(args);
            must(&all);
        };
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{LAN_IP}/24"),
            "dev",
            VETH_LAN,
        ]);
        for extra in [METADATA_IP, PUBLIC_IP] {
            inside(&["ip", "addr", "add", &format!("{extra}/32"), "dev", VETH_LAN]);
        }
        inside(&["ip", "link", "set", VETH_LAN, "up"]);
        inside(&["ip", "route", "add", "default", "via", HOST_LAN_IP]);
        for extra in [METADATA_IP, PUBLIC_IP] {
            must(&["ip", "route", "add", &format!("{extra}/32"), "via", LAN_IP]);
        }
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "lan-answers\n").unwrap();
        let servers = [LAN_IP, METADATA_IP, PUBLIC_IP]
            .iter()
            .map(|ip| {
                Command::new("ip")
                    .args(["netns", "exec", NETNS, "busybox", "httpd", "-f"])
                    .arg("-p")
                    .arg(format!("{ip}:80"))
                    .arg("-h")
                    .arg(www.path())
                    .spawn()
                    .expect("busybox httpd (busybox-static, scripts/dev-incus.sh installs it)")
            })
            .collect();
        let lan = Lan {
            servers,
            _www: www,
            _turn: turn,
        };
        // The servers answer the host itself: a refusal from an agent is the fence, not them.
        for ip in [LAN_IP, METADATA_IP, PUBLIC_IP] {
            let deadline = Instant::now() + 10 * SECOND;
            while http_get(&format!("{ip}:80")).is_none() {
                assert!(
                    Instant::now() < deadline,
                    "the LAN server on {ip} never answered"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        lan
    }

    fn remove_leftovers() {
        for extra in [METADATA_IP, PUBLIC_IP] {
            let _ = run(&["ip", "route", "del", &format!("{extra}/32")]);
        }
        let _ = run(&["ip", "link", "del", VETH_HOST]);
        let _ = run(&["ip", "netns", "del", NETNS]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        Lan::remove_leftovers();
    }
}

/// A plain HTTP GET from the test process; the body, or None if nothing answered.
#[allow(
    clippy::disallowed_methods,
    reason = "a test's own probe, at most 3 s; it stalls only this test's runtime"
)]
fn http_get(addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&addr, 3 * SECOND).ok()?;
    stream.set_read_timeout(Some(3 * SECOND)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// A listener on a host address standing in for SSH or any other host service: it answers
/// every connection with `marker`. Runs until the test process ends.
fn host_service(ip: Ipv4Addr, marker: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            // Read the request first: closing with unread data would reset the connection.
            let _ = stream.set_read_timeout(Some(3 * SECOND));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{marker}\n");
        }
    });
    assert_eq!(
        http_get(&addr.to_string()).as_deref(),
        Some(format!("{marker}\n").as_str()),
        "the host service answers the host"
    );
    addr
}

/// Runs a command in an agent's container.
async fn exec(rt: &ContainerRuntime, container: &str, argv: &[&str]) -> (i32, String) {
    let out = rt
        .exec(container, argv, &Default::default(), 30 * SECOND)
        .await
        .unwrap();
    (out.exit_code, out.stdout)
}

/// Puts the host's static busybox into the container as /root/busybox.
async fn arm(rt: &ContainerRuntime, container: &str) {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    rt.push_file(container, "/root/busybox", &busybox, 0o755)
        .await
        .unwrap();
}

/// `wget` from inside the container: the body, or None if it could not connect.
async fn fetch(rt: &ContainerRuntime, container: &str, url: &str) -> Option<String> {
    let (code, body) = exec(
        rt,
        container,
        &[
            "/root/busybox",
            "timeout",
            "5",
            "/root/busybox",
            "wget",
            "-q",
            "-O-",
            url,
        ],
    )
    .await;
    (code == 0).then_some(body)
}

/// The agent listener (`/api/health`) and the LLM gateway (`/v1/models` with the agent's own
/// key) answer from inside, at the addresses the agent was given.
async fn assert_host_services_answer(rt: &ContainerRuntime, container: &str) {
    let script = ". /etc/taos/agent.env; \
        /root/busybox timeout 5 /root/busybox wget -q -O- \"$TAOS_BRIDGE_URL/api/health\" && echo && \
        /root/busybox timeout 5 /root/busybox wget -q -O- \
          --header \"Authorization: Bearer $OPENAI_API_KEY\" \"$OPENAI_BASE_URL/models\"";
    let (code, out) = exec(rt, container, &["sh", "-c", script]).await;
    assert_eq!(
        code, 0,
        "{container}: agent listener or gateway unreachable: {out}"
    );
    assert!(out.contains("\"status\""), "{container}: health: {out}");
    assert!(out.contains("fake-gpt"), "{container}: models: {out}");
}

/// The agent's IPv4 address on eth0, if it has one.
async fn address_of(rt: &ContainerRuntime, container: &str) -> Option<String> {
    let (_, out) = exec(
        rt,
        container,
        &["/root/busybox", "ip", "-4", "-o", "addr", "show", "eth0"],
    )
    .await;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(String::from)
}

/// Deploys several agents at once; returns their slugs, in order, once all are running.
async fn deploy_all(host: &Host, agents: &[(&str, Option<&str>)]) -> Vec<String> {
    let mut slugs = Vec::new();
    for (name, network) in agents {
        let mut body = json!({"name": name, "framework": "direct", "model": "fake-gpt",
            "memory_limit_mib": 256, "disk_quota_gib": 2});
        if let Some(network) = network {
            body["network"] = json!(network);
        }
        let accepted = deploy_with(host, body).await;
        slugs.push(accepted["agent"]["slug"].as_str().unwrap().to_string());
    }
    for slug in &slugs {
        let status = wait_deploy(host, slug, finished).await;
        assert_eq!(status["status"], "succeeded", "{status}");
    }
    slugs
}

async fn agent(host: &Host, slug: &str) -> Value {
    host.admin(Method::GET, &format!("/api/agents/{slug}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An agent B serving a page on its own address; returns the URL (B reaches it itself).
async fn serve_from(rt: &ContainerRuntime, container: &str) -> String {
    let (code, _) = exec(
        rt,
        container,
        &["sh", "-c", "mkdir -p /root/www && echo agent-b-answers > /root/www/index.html && /root/busybox httpd -p 8081 -h /root/www"],
    )
    .await;
    assert_eq!(code, 0);
    let ip = address_of(rt, container)
        .await
        .expect("agent B has an address");
    let url = format!("http://{ip}:8081/");
    assert_eq!(
        fetch(rt, container, &url).await.as_deref(),
        Some("agent-b-answers\n"),
        "B serves on its own address"
    );
    url
}

fn incus_query(path: &str) -> Value {
    let out = run(&["incus", "query", path]);
    assert!(out.status.success(), "incus query {path}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Deletes containers even when the test fails (incus or Docker CLI).
struct Cleanup(Vec<String>, &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            // A host killed mid-change can leave the instance busy for a moment: retry.
            for _ in 0..5 {
                let out = match self.1 {
                    "docker" => run(&["docker", "rm", "--force", name]),
                    _ => run(&["incus", "delete", "--force", name]),
                };
                let gone = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || gone.contains("not found") || gone.contains("No such") {
                    break;
                }
                #[allow(clippy::disallowed_methods, reason = "a Drop can't await")]
                std::thread::sleep(SECOND);
            }
        }
    }
}

#[tokio::test]
async fn incus_agents_reach_their_host_services_and_the_internet_and_nothing_else() {
    require_image().await;
    let _lan = Lan::create().await;
    let host = host_with(&[]).await;
    host.setup_owner().await;
    catalog(&host).await;
    let rt = ContainerRuntime::Incus(incus());
    // Two agents with the default network choice (deployable on main too, where they sit on
    // the default profile's bridge with nothing in the way).
    let slugs = deploy_all(&host, &[("Fence A", None), ("Fence B", None)]).await;
    let mut containers: Vec<String> = slugs.iter().map(|s| format!("taos-{s}")).collect();
    let mut cleanup = Cleanup(containers.clone(), "incus");
    let (a, b) = (containers[0].clone(), containers[1].clone());
    for c in [&a, &b] {
        arm(&rt, c).await;
        assert_host_services_answer(&rt, c).await;
    }
    fenced_as_internet_agents(&rt, &a, &b).await;

    // What the API says, and what incus was told.
    for slug in &slugs {
        assert_eq!(agent(&host, slug).await["network"], "internet", "{slug}");
    }
    let more = deploy_all(
        &host,
        &[("Fence Lan", Some("lan")), ("Fence None", Some("none"))],
    )
    .await;
    let (lan_agent, none) = (format!("taos-{}", more[0]), format!("taos-{}", more[1]));
    containers.extend([lan_agent.clone(), none.clone()]);
    cleanup.0 = containers.clone();
    assert_eq!(agent(&host, &more[0]).await["network"], "lan");
    assert_eq!(agent(&host, &more[1]).await["network"], "none");
    for c in &containers {
        let instance = incus_query(&format!("/1.0/instances/{c}"));
        assert_eq!(instance["profiles"], json!(["taos-agent"]), "{c}");
        let config = &instance["expanded_config"];
        assert_eq!(config["security.idmap.isolated"], "true", "{c}");
        assert_eq!(config["security.privileged"], "false", "{c}");
        assert_eq!(config["security.nesting"], "false", "{c}");
        let nic = &instance["expanded_devices"]["eth0"];
        if *c == none {
            assert_eq!(nic["type"], "none", "{c}: {nic}");
        } else {
            for key in [
                "security.mac_filtering",
                "security.ipv4_filtering",
                "security.port_isolation",
            ] {
                assert_eq!(nic[key], "true", "{c}: {key}");
            }
        }
    }
    assert_eq!(
        incus_query("/1.0/networks/taos-inet")["config"]["security.acls"],
        "taos-agents-internet"
    );
    for c in [&lan_agent, &none] {
        arm(&rt, c).await;
        assert_host_services_answer(&rt, c).await;
    }
    fenced_as_lan_agent(&rt, &lan_agent, &b).await;
    // none: no NIC, nothing outside, the host's services still answer (checked above).
    let (_, links) = exec(&rt, &none, &["/root/busybox", "ip", "-o", "link"]).await;
    assert!(!links.contains("eth0"), "{links}");
    assert_eq!(address_of(&rt, &none).await, None);
    assert_eq!(
        fetch(&rt, &none, &format!("http://{PUBLIC_IP}/")).await,
        None
    );

    // Another container on the host (not an agent, on incus's default bridge) is not "the
    // LAN" either.
    let bystander = format!("taos-t-bystander-{:06x}", rand::random::<u32>() & 0xffffff);
    cleanup.0.push(bystander.clone());
    must(&["incus", "launch", "-q", "busybox", &bystander]);
    must(&[
        "incus",
        "exec",
        &bystander,
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo bystander > /www/index.html && httpd -p 8082 -h /www",
    ]);
    let bystander_ip = wait_for_address(&bystander).await;
    assert_eq!(
        http_get(&format!("{bystander_ip}:8082")).as_deref(),
        Some("bystander\n"),
        "the bystander answers the host"
    );
    let bystander_url = format!("http://{bystander_ip}:8082/");
    for c in [&a, &lan_agent] {
        assert_eq!(
            fetch(&rt, c, &bystander_url).await,
            None,
            "{c} reached {bystander_url}"
        );
    }

    // Archived and restored, the lan agent comes back on its network, fenced as before, even
    // when the snapshot it is restored from was taken with an open NIC.
    must(&["incus", "config", "device", "remove", &lan_agent, "eth0"]);
    must(&[
        "incus",
        "config",
        "device",
        "add",
        &lan_agent,
        "eth0",
        "nic",
        "network=incusbr0",
        "name=eth0",
    ]);
    let archived: Value = host
        .admin(Method::DELETE, &format!("/api/agents/{}", more[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cleanup
        .0
        .push(archived["container"].as_str().unwrap().to_string());
    let restored = host
        .admin(
            Method::POST,
            &format!(
                "/api/agents/archived/{}/restore",
                archived["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), reqwest::StatusCode::OK);
    let restored: Value = restored.json().await.unwrap();
    assert_eq!(restored["agent"]["network"], "lan", "{restored}");
    let instance = incus_query(&format!("/1.0/instances/{lan_agent}"));
    assert_eq!(instance["devices"]["eth0"]["network"], "taos-lan");
    assert_eq!(instance["profiles"], json!(["taos-agent"]));
    let lan_url = format!("http://{LAN_IP}/");
    assert!(
        wait_for(|| async { fetch(&rt, &lan_agent, &lan_url).await.is_some() }).await,
        "the restored lan agent reaches the LAN"
    );
    fenced_as_lan_agent(&rt, &lan_agent, &b).await;

    // Put on the default bridge by hand (no ACL there, as every container on main), agent A
    // reaches the LAN; the host's next start puts it back on its own network.
    must(&["incus", "config", "device", "remove", &a, "eth0"]);
    must(&[
        "incus",
        "config",
        "device",
        "add",
        &a,
        "eth0",
        "nic",
        "network=incusbr0",
        "name=eth0",
    ]);
    let lan_url = format!("http://{LAN_IP}/");
    assert!(
        wait_for(|| async { fetch(&rt, &a, &lan_url).await.is_some() }).await,
        "A on the default bridge reaches the LAN (what main does)"
    );
    let mut host = host;
    host.kill9().await;
    let restarted = Host::start_with(
        BIN,
        HostOptions {
            data_dir: Some(host.data_dir.clone()),
            env: vec![(
                "TAOS_LLM__LITELLM_BIN".into(),
                "/nonexistent/litellm".into(),
            )],
        },
    )
    .await
    .unwrap();
    let instance = format!("/1.0/instances/{a}");
    assert!(
        wait_for(|| async { incus_query(&instance)["devices"]["eth0"]["network"] == "taos-inet" })
            .await,
        "the restarted host did not put A back on its network: {}",
        std::fs::read_to_string(&restarted.stderr_log).unwrap_or_default()
    );
    let public_url = format!("http://{PUBLIC_IP}/");
    assert!(
        wait_for(|| async { fetch(&rt, &a, &public_url).await.is_some() }).await,
        "A has its network back"
    );
    assert_eq!(
        fetch(&rt, &a, &lan_url).await,
        None,
        "A reached the LAN after the restart"
    );
    drop(restarted);
}

/// The host's address on the agent's network (its default route): where a host service
/// listening on all addresses, or on that bridge, would answer it.
async fn gateway_of(rt: &ContainerRuntime, container: &str) -> Ipv4Addr {
    let (_, routes) = exec(rt, container, &["/root/busybox", "ip", "-4", "route"]).await;
    routes
        .lines()
        .find_map(|l| l.strip_prefix("default via "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("{container} has no default route: {routes}"))
}

/// The attacks of an agent with `network: internet` (A), and another agent (B) it must not
/// reach. The internet answers A; nothing else does.
async fn fenced_as_internet_agents(rt: &ContainerRuntime, a: &str, b: &str) {
    // Stand-ins for SSH: on the agent bridge's host address, and on the host's LAN address.
    let ssh_bridge = host_service(gateway_of(rt, a).await, "host-ssh-bridge");
    let ssh_lan_address = host_service(HOST_LAN_IP.parse().unwrap(), "host-ssh-lan-address");
    for c in [a, b] {
        assert_eq!(
            fetch(rt, c, &format!("http://{PUBLIC_IP}/"))
                .await
                .as_deref(),
            Some("lan-answers\n"),
            "{c}: the internet"
        );
        for target in [
            format!("http://{ssh_bridge}/"),
            format!("http://{ssh_lan_address}/"),
            format!("http://{LAN_IP}/"),
            format!("http://{METADATA_IP}/"),
        ] {
            assert_eq!(fetch(rt, c, &target).await, None, "{c} reached {target}");
        }
    }
    let b_url = serve_from(rt, b).await;
    assert_eq!(fetch(rt, a, &b_url).await, None, "{a} reached agent B");
}

/// The attacks of an agent with `network: lan`: the LAN answers, the host, metadata and
/// another agent (B, already serving) do not.
async fn fenced_as_lan_agent(rt: &ContainerRuntime, lan_agent: &str, b: &str) {
    assert_eq!(
        fetch(rt, lan_agent, &format!("http://{LAN_IP}/"))
            .await
            .as_deref(),
        Some("lan-answers\n"),
        "a `lan` agent reaches the LAN"
    );
    let ssh_bridge = host_service(gateway_of(rt, lan_agent).await, "host-ssh-lan-bridge");
    let ssh_lan_address = host_service(HOST_LAN_IP.parse().unwrap(), "host-ssh-lan-address");
    let b_ip = address_of(rt, b).await.unwrap();
    for target in [
        format!("http://{METADATA_IP}/"),
        format!("http://{ssh_bridge}/"),
        format!("http://{ssh_lan_address}/"),
        format!("http://{b_ip}:8081/"),
    ] {
        assert_eq!(
            fetch(rt, lan_agent, &target).await,
            None,
            "{lan_agent} reached {target}"
        );
    }
}

/// The IPv4 address a plain incus container got on its bridge.
async fn wait_for_address(container: &str) -> String {
    let deadline = Instant::now() + 30 * SECOND;
    loop {
        let out = run(&["incus", "list", container, "-f", "csv", "-c", "4"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(ip) = text.split_whitespace().next().filter(|ip| ip.contains('.')) {
            return ip.to_string();
        }
        assert!(Instant::now() < deadline, "{container} got no address");
        tokio::time::sleep(SECOND).await;
    }
}

/// Polls `check` for up to 60 s.
async fn wait_for<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + 60 * SECOND;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(SECOND).await;
    }
    false
}

async fn docker() -> Option<Docker> {
    let docker = Docker::new(DOCKER_SOCKET).ok()?;
    if docker.available().await {
        Some(docker)
    } else {
        eprintln!("SKIPPED: dockerd is not running (scripts/dev-docker.sh starts it)");
        None
    }
}

#[tokio::test]
async fn docker_agents_reach_their_host_services_and_the_internet_and_nothing_else() {
    let Some(docker) = docker().await else { return };
    let image = run(&["docker", "image", "inspect", "taos-agent:latest"]);
    assert!(
        image.status.success(),
        "the docker taos-agent image is missing: run scripts/build-agent-image.sh with dockerd up"
    );
    let _lan = Lan::create().await;
    let host = Host::start_with(
        BIN,
        HostOptions {
            env: vec![
                ("TAOS_RUNTIME__KIND".into(), "docker".into()),
                (
                    "TAOS_LLM__LITELLM_BIN".into(),
                    "/nonexistent/litellm".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.setup_owner().await;
    catalog(&host).await;
    let rt = ContainerRuntime::Docker(docker);
    let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let name = |n: &str| format!("{n}-{tag}");
    let (name_a, name_b) = (name("dfence-a"), name("dfence-b"));
    let slugs = deploy_all(&host, &[(&name_a, None), (&name_b, None)]).await;
    let mut containers: Vec<String> = slugs.iter().map(|s| format!("taos-{s}")).collect();
    let mut cleanup = Cleanup(containers.clone(), "docker");
    let (a, b) = (containers[0].clone(), containers[1].clone());
    for c in [&a, &b] {
        arm(&rt, c).await;
        assert_host_services_answer(&rt, c).await;
    }
    fenced_as_internet_agents(&rt, &a, &b).await;
    for slug in &slugs {
        assert_eq!(agent(&host, slug).await["network"], "internet", "{slug}");
    }

    let (name_lan, name_none) = (name("dfence-lan"), name("dfence-none"));
    let more = deploy_all(
        &host,
        &[(&name_lan, Some("lan")), (&name_none, Some("none"))],
    )
    .await;
    let (lan_agent, none) = (format!("taos-{}", more[0]), format!("taos-{}", more[1]));
    containers.extend([lan_agent.clone(), none.clone()]);
    cleanup.0 = containers.clone();
    assert_eq!(agent(&host, &more[0]).await["network"], "lan");
    assert_eq!(agent(&host, &more[1]).await["network"], "none");
    for c in [&lan_agent, &none] {
        arm(&rt, c).await;
        assert_host_services_answer(&rt, c).await;
    }
    fenced_as_lan_agent(&rt, &lan_agent, &b).await;
    // none: an internal network; only the host's agent listener (checked above).
    let ssh_none = host_service(gateway_of(&rt, &none).await, "host-ssh-none");
    for target in [
        format!("http://{PUBLIC_IP}/"),
        format!("http://{LAN_IP}/"),
        format!("http://{ssh_none}/"),
    ] {
        assert_eq!(
            fetch(&rt, &none, &target).await,
            None,
            "none agent reached {target}"
        );
    }
    // Only kill, setgid and setuid (bits 5-7: tools mode starts its tools as the `agent`
    // account and kills what they leave; other modes drop them in the sidecar), and no
    // privilege gain.
    for c in &containers {
        let (_, status) = exec(&rt, c, &["cat", "/proc/self/status"]).await;
        assert!(
            status.contains("CapEff:\t00000000000000e0"),
            "{c}: {status}"
        );
        assert!(status.contains("NoNewPrivs:\t1"), "{c}: {status}");
    }
    // With only those three the recycle bin still works: rm keeps, restore brings back.
    let (code, _) = exec(
        &rt,
        &a,
        &[
            "sh",
            "-c",
            "echo kept > /root/precious && rm /root/precious && test ! -e /root/precious",
        ],
    )
    .await;
    assert_eq!(code, 0);
    let bin: Value = host
        .admin(Method::GET, &format!("/api/agents/{}/recycle", slugs[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = bin["items"][0]["id"]
        .as_str()
        .expect("the deleted file is in the bin")
        .to_string();
    let r = host
        .admin(
            Method::POST,
            &format!("/api/agents/{}/recycle/restore", slugs[0]),
        )
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    assert_eq!(rt.pull_file(&a, "/root/precious").await.unwrap(), b"kept\n");
}
