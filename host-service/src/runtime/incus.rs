//! incus over its REST API on the unix socket: typed answers instead of parsed CLI output, no
//! argument quoting, async operations waited on, and the same API an incus cluster serves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use taos_proto::agents::AgentNetwork;
use tokio::net::UnixStream;

use super::netpolicy::{self, HostFacts, Range};
use super::{
    validate_env_key, validate_name, validate_path, ContainerState, CreateSpec, Device, ExecResult,
    Runtime, RuntimeError,
};

pub const DEFAULT_SOCKET: &str = "/var/lib/incus/unix.socket";
const RUNTIME: &str = "incus";
/// How long an ordinary operation (create, start, snapshot…) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a call waits for another operation on the same instance to finish.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// The profile of every agent container: unprivileged, no nesting, a uid range of its own (a
/// container escape lands on uids no other container or host file has), a root disk, and the
/// default NIC (the internet bridge).
pub const AGENT_PROFILE: &str = "taos-agent";
/// The bridges agents are attached to and the ACL on each, per network choice. `none` has no
/// NIC at all: the proxy devices connect from the host side, so they need none.
const AGENT_NETWORKS: [(AgentNetwork, &str, &str); 2] = [
    (AgentNetwork::Internet, "taos-inet", "taos-agents-internet"),
    (AgentNetwork::Lan, "taos-lan", "taos-agents-lan"),
];

/// The fixed subnets of the agents' bridges (`[runtime] incus_internet_subnet`, `…_lan_subnet`),
/// as the bridge's own address with its prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSubnets {
    pub internet: String,
    pub lan: String,
}

impl AgentSubnets {
    fn of(&self, mode: AgentNetwork) -> &str {
        match mode {
            AgentNetwork::Lan => &self.lan,
            _ => &self.internet,
        }
    }
}

/// The agent's NIC for a network choice: on its bridge, unable to spoof MAC or IP addresses
/// (so the ACL sees its real source) and isolated from the bridge's other ports (so no agent
/// reaches another one directly). `none` masks the profile's NIC.
pub fn agent_nic(mode: AgentNetwork) -> Value {
    match AGENT_NETWORKS.iter().find(|(m, _, _)| *m == mode) {
        Some((_, network, _)) => json!({
            "type": "nic",
            "name": "eth0",
            "network": network,
            "security.mac_filtering": "true",
            "security.ipv4_filtering": "true",
            // The bridges have no IPv6, so this drops all IPv6 from the agent.
            "security.ipv6_filtering": "true",
            "security.port_isolation": "true",
        }),
        None => json!({"type": "none"}),
    }
}

/// An `a.b.c.d/n` network address as the range it covers.
fn subnet_range(cidr: &str) -> Option<Range> {
    let (ip, prefix) = cidr.split_once('/')?;
    Some(Range::network(ip.parse().ok()?, prefix.parse().ok()?))
}

pub struct Incus {
    socket: PathBuf,
    /// Cluster member to place new instances on; None lets incus choose.
    target: Option<String>,
    /// Storage pool for root disks with a size.
    pool: String,
    pool_driver: std::sync::OnceLock<String>,
    /// The incus project every call is made in; `None`: the default project. Restore drills
    /// work in a throwaway project of their own (see `in_project`).
    project: Option<String>,
}

/// An answer from incus, raw or JSON.
struct Answer {
    status: u16,
    body: Bytes,
}

fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn device_json(device: &Device) -> Value {
    match device {
        Device::Proxy {
            listen, connect, ..
        } => json!({
            "type": "proxy", "listen": listen, "connect": connect, "bind": "instance",
        }),
        Device::Disk {
            source,
            path,
            readonly,
            shift,
            ..
        } => json!({
            "type": "disk", "source": source, "path": path,
            "readonly": readonly.to_string(), "shift": shift.to_string(),
        }),
    }
}

impl Incus {
    pub fn new(
        socket: impl Into<PathBuf>,
        target: Option<String>,
        pool: impl Into<String>,
    ) -> Incus {
        Incus {
            socket: socket.into(),
            target,
            pool: pool.into(),
            pool_driver: std::sync::OnceLock::new(),
            project: None,
        }
    }

    /// The same incus, every call made in `project` (which must exist: `create_project`).
    pub fn in_project(&self, project: &str) -> Result<Incus, RuntimeError> {
        validate_name("project name", project)?;
        Ok(Incus {
            socket: self.socket.clone(),
            target: self.target.clone(),
            pool: self.pool.clone(),
            pool_driver: std::sync::OnceLock::new(),
            project: Some(project.to_string()),
        })
    }

    /// `path` with this handle's project in its query string.
    fn scoped(&self, path: &str) -> String {
        match &self.project {
            None => path.to_string(),
            Some(project) => {
                let join = if path.contains('?') { '&' } else { '?' };
                format!("{path}{join}project={}", percent_encode(project))
            }
        }
    }

    /// The host uid that root inside the container maps to (set once the container has
    /// started). A host folder owned by it is writable by container root without ever being
    /// written as host root — unlike `shift=true`, which would map container root to host root.
    pub async fn root_host_uid(&self, name: &str) -> Result<Option<u32>, RuntimeError> {
        let instance = self.call(Method::GET, &Self::instance(name)?, None).await?;
        // `current` is the map in force once started; before the first start, `next` is the
        // map it will get. (`last_state` can be an empty "[]".)
        let map = instance["config"]["volatile.idmap.current"]
            .as_str()
            .or_else(|| instance["config"]["volatile.idmap.next"].as_str())
            .unwrap_or("[]");
        let entries: Value = serde_json::from_str(map).unwrap_or_default();
        Ok(entries.as_array().and_then(|list| {
            list.iter()
                .find(|e| e["Isuid"] == true && e["Nsid"] == 0)
                .and_then(|e| e["Hostid"].as_u64())
                .and_then(|id| u32::try_from(id).ok())
        }))
    }

    /// The driver of the pool agents' root disks live on (`btrfs`, `zfs`, `dir`…). Only some
    /// enforce a root disk size.
    pub async fn pool_driver(&self) -> Result<String, RuntimeError> {
        if let Some(driver) = self.pool_driver.get() {
            return Ok(driver.clone());
        }
        validate_name("pool name", &self.pool)?;
        let pool = self
            .call(
                Method::GET,
                &format!("/1.0/storage-pools/{}", self.pool),
                None,
            )
            .await?;
        let driver = pool["driver"].as_str().unwrap_or_default().to_string();
        // A pool's driver can't change; ask incus once.
        let _ = self.pool_driver.set(driver.clone());
        Ok(driver)
    }

    /// Free and total bytes of the pool agents' root disks live on (incus's own figures for
    /// the pool, which for a `dir` pool are its filesystem's).
    pub async fn pool_space(&self) -> Result<(u64, u64), RuntimeError> {
        validate_name("pool name", &self.pool)?;
        let mut path = format!("/1.0/storage-pools/{}/resources", self.pool);
        if let Some(member) = &self.target {
            path.push_str(&format!("?target={}", percent_encode(member)));
        }
        let resources = self.call(Method::GET, &path, None).await?;
        let space = &resources["space"];
        match (space["total"].as_u64(), space["used"].as_u64()) {
            (Some(total), Some(used)) => Ok((total.saturating_sub(used), total)),
            _ => Err(RuntimeError::Refused {
                runtime: "incus",
                message: format!("pool {:?} reports no space figures", self.pool),
            }),
        }
    }

    /// The pool's name, for messages.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// Sets the size of a container's root disk (grows at once, even while running).
    pub async fn set_root_size(&self, name: &str, mib: u64) -> Result<(), RuntimeError> {
        let path = Self::instance(name)?;
        let instance = self.call(Method::GET, &path, None).await?;
        let mut root = instance["devices"]["root"].clone();
        if !root.is_object() {
            // Inherited from the profile: give the instance its own root device.
            root = json!({"type": "disk", "path": "/", "pool": self.pool});
        }
        root["size"] = json!(format!("{mib}MiB"));
        self.call(
            Method::PATCH,
            &path,
            Some(json!({"devices": {"root": root}})),
        )
        .await
        .map(|_| ())
    }

    /// The local mount of the agents' storage pool, when it is a btrfs pool on this machine.
    async fn local_btrfs_pool(&self) -> Option<std::path::PathBuf> {
        validate_name("pool name", &self.pool).ok()?;
        let incus_dir = self
            .socket
            .parent()
            .unwrap_or(std::path::Path::new("/var/lib/incus"));
        let mount = incus_dir.join("storage-pools").join(&self.pool);
        (self.pool_driver().await.ok().as_deref() == Some("btrfs") && mount.is_dir())
            .then_some(mount)
    }

    /// Repairs btrfs quota accounting if the kernel marked it inconsistent. Deleting containers
    /// can leave it so (a subvolume's qgroup goes while the cleaner still holds its numbers),
    /// and then usage reads wrong and limits are not enforced until a rescan (~50 ms).
    pub async fn repair_quota_accounting(&self) {
        let Some(mount) = self.local_btrfs_pool().await else {
            return;
        };
        let show = tokio::process::Command::new("btrfs")
            .args(["qgroup", "show"])
            .arg(&mount)
            .output()
            .await;
        let inconsistent = show
            .map(|out| String::from_utf8_lossy(&out.stderr).contains("inconsistent"))
            .unwrap_or(false);
        if inconsistent {
            tracing::warn!(pool = %self.pool, "btrfs quota accounting is inconsistent; rescanning");
            let rescan = tokio::process::Command::new("btrfs")
                .args(["quota", "rescan", "-w"])
                .arg(&mount)
                .output()
                .await;
            if !rescan.as_ref().is_ok_and(|out| out.status.success()) {
                tracing::warn!(pool = %self.pool, "btrfs quota rescan failed; usage may be off: {rescan:?}");
            }
        }
    }

    /// What counts toward a container's root disk quota, in bytes.
    ///
    /// On btrfs, incus reports a container's *exclusive* bytes, but the quota limits
    /// *referenced* bytes, which include the image data the container shares (~290 MB for the
    /// Debian agent image): by incus's figure a full disk looks 73 % full. So on a local btrfs
    /// pool this reads the qgroup's referenced count (`btrfs qgroup show`, argv, no shell);
    /// elsewhere it is incus's figure.
    /// Callers that sample many containers run [`Incus::repair_quota_accounting`] once first.
    pub async fn quota_usage(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        validate_name("container name", name)?;
        if let Some(mount) = self.local_btrfs_pool().await {
            let volume = mount.join("containers").join(name);
            let out = tokio::process::Command::new("btrfs")
                .args(["qgroup", "show", "-r", "--raw", "-f"])
                .arg(&volume)
                .output()
                .await;
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                // The last line: qgroupid referenced exclusive max_referenced path
                let referenced = text
                    .lines()
                    .last()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok());
                if referenced.is_some() {
                    return Ok(referenced);
                }
            }
        }
        Ok(self.state(name).await?.disk_used_bytes)
    }

    /// Creates or updates, idempotently, what agent containers need: the ACLs, the two agent
    /// bridges (fixed subnets, the ACL on each, default reject both ways) and the agent profile.
    /// Run once at start; deploys then only name the profile and a NIC.
    pub async fn prepare_agents(
        &self,
        subnets: &AgentSubnets,
        facts: &HostFacts,
    ) -> Result<(), RuntimeError> {
        validate_name("pool name", &self.pool)?;
        // One listing serves the ACLs (other bridges' subnets) and the bridges themselves, so
        // a start where nothing changed costs three GETs.
        let networks = self
            .call(Method::GET, "/1.0/networks?recursion=1", None)
            .await?;
        self.write_agent_acls(subnets, facts, &networks).await?;
        for (mode, network, acl) in AGENT_NETWORKS {
            let current = networks
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["name"] == network);
            self.ensure_agent_network(network, subnets.of(mode), acl, current)
                .await?;
        }
        let profile = json!({
            "description": "taos agents: unprivileged, isolated uid range, filtered NIC",
            "config": {
                "security.privileged": "false",
                "security.nesting": "false",
                "security.idmap.isolated": "true",
            },
            "devices": {
                "root": {"type": "disk", "path": "/", "pool": self.pool},
                "eth0": agent_nic(AgentNetwork::Internet),
            },
        });
        let path = format!("/1.0/profiles/{AGENT_PROFILE}");
        match self.call(Method::GET, &path, None).await {
            Ok(current) => {
                if current["config"] != profile["config"]
                    || current["devices"] != profile["devices"]
                {
                    self.call(Method::PUT, &path, Some(profile)).await?;
                }
            }
            Err(RuntimeError::NotFound(_)) => {
                let mut body = profile.clone();
                body["name"] = json!(AGENT_PROFILE);
                if let Err(e) = self.call(Method::POST, "/1.0/profiles", Some(body)).await {
                    // Another host process made it meanwhile: make it ours.
                    self.call(Method::PUT, &path, Some(profile))
                        .await
                        .map_err(|_| e)?;
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Writes the agents' ACLs for the machine as it is now (its addresses and subnets change
    /// with DHCP or a new interface); only what changed is written.
    pub async fn update_agent_acls(
        &self,
        subnets: &AgentSubnets,
        facts: &HostFacts,
    ) -> Result<(), RuntimeError> {
        let networks = self
            .call(Method::GET, "/1.0/networks?recursion=1", None)
            .await?;
        self.write_agent_acls(subnets, facts, &networks).await
    }

    async fn write_agent_acls(
        &self,
        subnets: &AgentSubnets,
        facts: &HostFacts,
        networks: &Value,
    ) -> Result<(), RuntimeError> {
        // Other containers are never "the LAN": every incus bridge's subnet is left out.
        let mut internal: Vec<Range> = [&subnets.internet, &subnets.lan]
            .into_iter()
            .filter_map(|s| subnet_range(s))
            .collect();
        for network in networks.as_array().into_iter().flatten() {
            if network["managed"] == true {
                if let Some(range) = network["config"]["ipv4.address"]
                    .as_str()
                    .and_then(subnet_range)
                {
                    internal.push(range);
                }
            }
        }
        let acls = self
            .call(Method::GET, "/1.0/network-acls?recursion=1", None)
            .await?;
        for (mode, _, acl) in AGENT_NETWORKS {
            let cidrs = netpolicy::to_cidrs(&netpolicy::allowed(mode, facts, &internal));
            let egress: Vec<Value> = cidrs
                .chunks(64)
                .map(|chunk| {
                    json!({
                        "action": "allow",
                        "destination": chunk.join(","),
                        "description": format!("{} destinations", mode.as_str()),
                        "state": "enabled",
                    })
                })
                .collect();
            let desired = json!({
                "description": format!(
                    "taos agents with network={}: everything else is refused (host, other \
                     containers, link-local, metadata{})",
                    mode.as_str(),
                    if mode == AgentNetwork::Internet { ", LAN" } else { "" }
                ),
                "egress": egress,
                "ingress": [],
                "config": {},
            });
            let path = format!("/1.0/network-acls/{acl}");
            let current = acls
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["name"] == acl);
            match current {
                Some(current) => {
                    if current["egress"] != desired["egress"]
                        || current["ingress"] != desired["ingress"]
                        || current["description"] != desired["description"]
                    {
                        self.call(Method::PUT, &path, Some(desired)).await?;
                    }
                }
                None => {
                    let mut body = desired.clone();
                    body["name"] = json!(acl);
                    if let Err(e) = self
                        .call(Method::POST, "/1.0/network-acls", Some(body))
                        .await
                    {
                        // Another host process made it meanwhile: make it ours.
                        self.call(Method::PUT, &path, Some(desired))
                            .await
                            .map_err(|_| e)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One agent bridge: NAT to the outside, no IPv6, the ACL, and "reject" for whatever the
    /// ACL does not allow, both ways. DNS and DHCP to the bridge itself always work (incus
    /// adds those before any ACL).
    async fn ensure_agent_network(
        &self,
        name: &str,
        subnet: &str,
        acl: &str,
        current: Option<&Value>,
    ) -> Result<(), RuntimeError> {
        let config = json!({
            "ipv4.address": subnet,
            "ipv4.nat": "true",
            "ipv6.address": "none",
            "security.acls": acl,
            "security.acls.default.egress.action": "reject",
            "security.acls.default.ingress.action": "reject",
        });
        let path = format!("/1.0/networks/{name}");
        let current = match current {
            Some(c) if c["status"].as_str() == Some("Pending") => {
                self.remove_pending_network(name, c).await?;
                None
            }
            other => other,
        };
        match current {
            Some(current) => {
                let differs = config
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(k, v)| current["config"].get(k) != Some(v));
                if differs {
                    // PATCH merges: other keys an admin set stay.
                    self.call(Method::PATCH, &path, Some(json!({"config": config})))
                        .await?;
                }
                Ok(())
            }
            None => {
                let body = json!({
                    "name": name,
                    "type": "bridge",
                    "description": "taos agents",
                    "config": config,
                });
                match self.call(Method::POST, "/1.0/networks", Some(body)).await {
                    Ok(_) => Ok(()),
                    // Made by another host process meanwhile.
                    Err(e) => match self.call(Method::GET, &path, None).await {
                        Ok(_) => Ok(()),
                        Err(_) => Err(e),
                    },
                }
            }
        }
    }

    /// A network incus left half-made (status `Pending`: its creation was cut off, as when
    /// the host is stopped during the agents' networks' first creation, which
    /// `setup --restore-from` does right after `apt install` started the service) can be
    /// neither used nor made again, so it is removed to be made anew. Only the agents' profile
    /// may name it (no instance can have run on it); the profile goes too, and
    /// [`Incus::prepare_agents`] makes it again after the networks. Anything else using it is
    /// left alone and the reason returned.
    pub async fn remove_pending_network(
        &self,
        name: &str,
        current: &Value,
    ) -> Result<(), RuntimeError> {
        let profile = format!("/1.0/profiles/{AGENT_PROFILE}");
        let users: Vec<&str> = current["used_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if let Some(other) = users
            .iter()
            .find(|u| **u != profile && **u != format!("{profile}?project=default"))
        {
            return Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!(
                    "incus's network {name} was left half-made (status Pending) and {other} \
                     uses it: remove that use, then start the host again"
                ),
            });
        }
        if !users.is_empty() {
            // incus refuses this if an instance uses the profile, and then so do we.
            self.call(Method::DELETE, &profile, None).await?;
        }
        let path = format!("/1.0/networks/{name}");
        self.call(Method::DELETE, &path, None).await?;
        // The cut-off creation may have made the kernel's bridge, which incus then shows as
        // an unmanaged network of that name until its teardown ends; a new one of the same
        // name can only be made after that.
        for _ in 0..40 {
            match self.call(Method::GET, &path, None).await {
                Err(RuntimeError::NotFound(_)) => break,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        tracing::warn!(
            network = name,
            "removed an agents' network incus had left half-made (its creation was cut off); \
             making it again"
        );
        Ok(())
    }

    /// Puts a container on the agent profile with the NIC for its network choice (at start for
    /// every agent, and after a snapshot restore, which brings back the snapshot's devices).
    /// Returns whether anything changed.
    pub async fn set_agent_network(
        &self,
        name: &str,
        mode: AgentNetwork,
    ) -> Result<bool, RuntimeError> {
        let path = Self::instance(name)?;
        let instance = self.call(Method::GET, &path, None).await?;
        let mut changed = false;
        // The NIC first: it is what keeps the agent off the host and the LAN, and it changes
        // live. (A local device overrides the profile's device of the same name.)
        let nic = agent_nic(mode);
        if instance["devices"]["eth0"] != nic {
            self.call(
                Method::PATCH,
                &path,
                Some(json!({"devices": {"eth0": nic}})),
            )
            .await?;
            changed = true;
        }
        let profiles = json!([AGENT_PROFILE]);
        if instance["profiles"] != profiles {
            self.call(Method::PATCH, &path, Some(json!({"profiles": profiles})))
                .await?;
            changed = true;
        }
        Ok(changed)
    }

    /// incus's version, for the log and `/api/health`.
    pub async fn version(&self) -> Option<String> {
        let info = self.call(Method::GET, "/1.0", None).await.ok()?;
        info["environment"]["server_version"]
            .as_str()
            .map(String::from)
    }

    /// Whether incus answers on the socket (for runtime auto-detection).
    pub async fn available(&self) -> bool {
        self.call(Method::GET, "/1.0", None).await.is_ok()
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<Answer, RuntimeError> {
        let response = self.send(method, path, Full::new(body), headers).await?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok(Answer { status, body })
    }

    /// One request with any body (a file streamed for an import), the answer's body left to
    /// the caller (streamed to a file for an export). `path` is scoped to the project here.
    async fn send<B>(
        &self,
        method: Method,
        path: &str,
        body: B,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, RuntimeError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| RuntimeError::Unreachable(format!("{}: {e}", self.socket.display())))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            // The connection ends when its requests fail; they report the error to their callers.
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://incus{}", self.scoped(path)))
            .header("host", "incus");
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let request = request
            .body(body)
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))
    }

    /// A JSON call. Async operations are waited for; errors become typed errors carrying
    /// incus's own message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RuntimeError> {
        self.call_timeout(method, path, body, OPERATION_TIMEOUT)
            .await
    }

    async fn call_timeout(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, RuntimeError> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        // incus runs one operation per instance at a time and refuses another meanwhile
        // ("Instance is busy running a … operation"), either at once or as the operation's
        // result. A refused operation did nothing: wait and ask again, as incus's CLI does.
        let busy_until = tokio::time::Instant::now() + timeout.min(BUSY_WAIT);
        loop {
            let result = self
                .call_once(method.clone(), path, bytes.clone(), timeout)
                .await;
            let busy = matches!(&result, Err(RuntimeError::Refused { message, .. })
                if message.contains("is busy running a"));
            if !busy || tokio::time::Instant::now() >= busy_until {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        bytes: Bytes,
        timeout: Duration,
    ) -> Result<Value, RuntimeError> {
        let answer = self
            .raw(
                method,
                path,
                bytes,
                &[("content-type", "application/json".to_string())],
            )
            .await?;
        let value: Value =
            serde_json::from_slice(&answer.body).map_err(|_| RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("unreadable answer (HTTP {})", answer.status),
            })?;
        match value["type"].as_str() {
            Some("error") => Err(error_of(&value, path)),
            Some("async") => {
                let operation = value["operation"].as_str().unwrap_or_default().to_string();
                self.wait(&operation, timeout).await
            }
            _ => Ok(value["metadata"].clone()),
        }
    }

    async fn wait(&self, operation: &str, timeout: Duration) -> Result<Value, RuntimeError> {
        let secs = timeout.as_secs().max(1);
        let answer = self
            .raw(
                Method::GET,
                &format!("{operation}/wait?timeout={secs}"),
                Bytes::new(),
                &[],
            )
            .await?;
        let value: Value =
            serde_json::from_slice(&answer.body).map_err(|_| RuntimeError::Refused {
                runtime: RUNTIME,
                message: "unreadable operation answer".into(),
            })?;
        if value["type"] == "error" {
            return Err(error_of(&value, operation));
        }
        let op = &value["metadata"];
        match op["status_code"].as_i64() {
            Some(200) => Ok(op.clone()),
            // Still running when the wait ended.
            Some(103) | Some(105) => Err(RuntimeError::Timeout(timeout)),
            _ => Err(RuntimeError::Refused {
                runtime: RUNTIME,
                message: op["err"].as_str().unwrap_or("operation failed").to_string(),
            }),
        }
    }

    fn instance(name: &str) -> Result<String, RuntimeError> {
        validate_name("container name", name)?;
        Ok(format!("/1.0/instances/{name}"))
    }

    async fn set_state(&self, name: &str, action: &str, force: bool) -> Result<(), RuntimeError> {
        let path = format!("{}/state", Self::instance(name)?);
        self.call(
            Method::PUT,
            &path,
            Some(json!({"action": action, "timeout": 30, "force": force})),
        )
        .await
        .map(|_| ())
    }

    /// A command's recorded output, read up to [`EXEC_LOG_MAX`]: what runs in a container is
    /// the agent's to choose, so its output is never read whole into the host's memory.
    async fn fetch_log(&self, url: &str) -> String {
        let text = match self
            .send(Method::GET, url, Full::new(Bytes::new()), &[])
            .await
        {
            Ok(response) => {
                match http_body_util::Limited::new(response.into_body(), EXEC_LOG_MAX)
                    .collect()
                    .await
                {
                    Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    Err(_) => {
                        format!("(the output was over {EXEC_LOG_MAX} bytes and was not read)")
                    }
                }
            }
            Err(_) => String::new(),
        };
        // Tidying only: incus drops the log with the instance in any case.
        let _ = self.raw(Method::DELETE, url, Bytes::new(), &[]).await;
        text
    }
}

/// The most of a command's stdout or stderr the host reads back from incus.
const EXEC_LOG_MAX: usize = 1 << 20;

/// incus's backup of an instance, the way backups carry it: without its snapshots (a backup
/// is of the container as it is), a plain tarball (`optimized_storage` would tie it to the
/// pool's driver), uncompressed, so restic's content-defined chunks of unchanged files are the
/// same from one backup to the next and deduplicate (a gzip stream changes throughout).
fn backup_request(name: &str) -> Value {
    json!({
        "name": name,
        // incus removes the backup by itself if the host dies before it does.
        "expires_at": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
        "instance_only": true,
        "optimized_storage": false,
        "compression_algorithm": "none",
    })
}

/// A readable file as a request body, 64 KiB at a time (an import never holds the tarball).
fn file_body(
    file: tokio::fs::File,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>>,
> {
    use futures_util::TryStreamExt;
    http_body_util::StreamBody::new(super::file_chunks(file).map_ok(hyper::body::Frame::data))
}

impl Incus {
    /// Exports an instance as a backup tarball into `to` (a new 0600 file), streamed: one
    /// frame in memory at a time. A running container is exported live (incus copies its file
    /// system from a snapshot it takes for the purpose), so agents keep running. incus's own
    /// copy of the backup is deleted afterwards, whatever happened. Returns the bytes written.
    pub async fn export_to_file(
        &self,
        name: &str,
        to: &std::path::Path,
        timeout: Duration,
    ) -> Result<u64, RuntimeError> {
        let instance = Self::instance(name)?;
        let backup = format!("taos-backup-{}", chrono::Utc::now().timestamp_millis());
        self.call_timeout(
            Method::POST,
            &format!("{instance}/backups"),
            Some(backup_request(&backup)),
            timeout,
        )
        .await?;
        let written = self
            .download(&format!("{instance}/backups/{backup}/export"), to)
            .await;
        let removed = self
            .call(
                Method::DELETE,
                &format!("{instance}/backups/{backup}"),
                None,
            )
            .await;
        if let Err(e) = removed {
            // incus expires it within a day in any case.
            tracing::warn!(instance = name, backup, error = %e, "cannot delete incus's copy of a backup");
        }
        written
    }

    async fn download(&self, path: &str, to: &std::path::Path) -> Result<u64, RuntimeError> {
        let response = self
            .send(Method::GET, path, Full::new(Bytes::new()), &[])
            .await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status / 100 != 2 {
            let bytes = body
                .collect()
                .await
                .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(error_of(&value, path));
        }
        let io = |e: std::io::Error| RuntimeError::Refused {
            runtime: RUNTIME,
            message: format!("cannot write {}: {e}", to.display()),
        };
        let mut file = crate::fsutil::StreamedFile::create_new(to).map_err(io)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                file.write(&data).await.map_err(io)?;
            }
        }
        file.finish().await.map_err(io)
    }

    /// Makes instance `name` (stopped) from a backup tarball `export_to_file` wrote, streamed
    /// from the file, on this handle's pool and in its project.
    pub async fn import_from_file(
        &self,
        from: &std::path::Path,
        name: &str,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        validate_name("container name", name)?;
        let file = tokio::fs::File::open(from)
            .await
            .map_err(|e| RuntimeError::Refused {
                runtime: RUNTIME,
                message: format!("cannot read {}: {e}", from.display()),
            })?;
        let path = match &self.target {
            Some(member) => format!("/1.0/instances?target={}", percent_encode(member)),
            None => "/1.0/instances".to_string(),
        };
        let response = self
            .send(
                Method::POST,
                &path,
                file_body(file),
                &[
                    ("content-type", "application/octet-stream".to_string()),
                    ("x-incus-name", name.to_string()),
                    ("x-incus-pool", self.pool.clone()),
                ],
            )
            .await?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| RuntimeError::Refused {
            runtime: RUNTIME,
            message: format!("unreadable answer to an import (HTTP {status})"),
        })?;
        match value["type"].as_str() {
            Some("error") => Err(error_of(&value, name)),
            Some("async") => {
                let operation = value["operation"].as_str().unwrap_or_default().to_string();
                self.wait(&operation, timeout).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Cuts a (stopped) instance off for a restore drill: its proxy devices (which would
    /// reach the live host's agent listener with the real agent's token) and its NIC are
    /// removed, so the copy boots with loopback only.
    pub async fn isolate_for_drill(&self, name: &str) -> Result<(), RuntimeError> {
        let path = Self::instance(name)?;
        let mut instance = self.call(Method::GET, &path, None).await?;
        if let Some(devices) = instance["devices"].as_object_mut() {
            devices.retain(|_, d| d["type"] != "proxy" && d["type"] != "nic");
            // The profile's NIC too: a device of type none masks it.
            devices.insert("eth0".into(), json!({"type": "none"}));
        }
        let body = json!({
            "architecture": instance["architecture"],
            "config": instance["config"],
            "devices": instance["devices"],
            "ephemeral": instance["ephemeral"],
            "profiles": instance["profiles"],
            "description": instance["description"],
        });
        self.call(Method::PUT, &path, Some(body)).await.map(|_| ())
    }

    /// A project of its own for throwaway instances (restore drills): it shares the default
    /// project's profiles, images, networks and volumes, so an agent's container imported
    /// into it finds its profile, and nothing in it can clash with a live agent's name.
    pub async fn create_project(&self, project: &str) -> Result<(), RuntimeError> {
        validate_name("project name", project)?;
        self.call(
            Method::POST,
            "/1.0/projects",
            Some(json!({
                "name": project,
                "description": "taos restore drill (throwaway)",
                "config": {
                    "features.images": "false",
                    "features.profiles": "false",
                    "features.storage.volumes": "false",
                    "features.networks": "false",
                },
            })),
        )
        .await
        .map(|_| ())
    }

    /// Deletes a project (it must be empty).
    pub async fn delete_project(&self, project: &str) -> Result<(), RuntimeError> {
        validate_name("project name", project)?;
        self.call(Method::DELETE, &format!("/1.0/projects/{project}"), None)
            .await
            .map(|_| ())
    }

    /// The instances in this handle's project, by name.
    pub async fn instance_names(&self) -> Result<Vec<String>, RuntimeError> {
        let list = self.call(Method::GET, "/1.0/instances", None).await?;
        Ok(list
            .as_array()
            .map(|urls| {
                urls.iter()
                    .filter_map(|u| u.as_str())
                    .filter_map(|u| u.split('?').next())
                    .filter_map(|u| u.rsplit('/').next())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Projects whose names start with `prefix` (drills left by a host that died mid-drill).
    pub async fn projects_with_prefix(&self, prefix: &str) -> Result<Vec<String>, RuntimeError> {
        let list = self.call(Method::GET, "/1.0/projects", None).await?;
        Ok(list
            .as_array()
            .map(|urls| {
                urls.iter()
                    .filter_map(|u| u.as_str())
                    .filter_map(|u| u.rsplit('/').next())
                    .filter(|n| n.starts_with(prefix))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn error_of(value: &Value, what: &str) -> RuntimeError {
    let message = value["error"]
        .as_str()
        .unwrap_or("unknown error")
        .to_string();
    if value["error_code"].as_i64() == Some(404) {
        RuntimeError::NotFound(what.rsplit('/').next().unwrap_or(what).to_string())
    } else {
        RuntimeError::Refused {
            runtime: RUNTIME,
            message,
        }
    }
}

impl Runtime for Incus {
    fn kind(&self) -> &'static str {
        RUNTIME
    }

    async fn create(&self, spec: &CreateSpec) -> Result<(), RuntimeError> {
        validate_name("container name", &spec.name)?;
        if spec.image.is_empty()
            || spec.image.len() > 200
            || spec.image.chars().any(|c| c.is_control())
        {
            return Err(RuntimeError::Invalid {
                what: "image",
                value: spec.image.clone(),
            });
        }
        let mut config = serde_json::Map::new();
        if let Some(mib) = spec.limits.memory_mib {
            config.insert("limits.memory".into(), json!(format!("{mib}MiB")));
        }
        if let Some(cpus) = spec.limits.cpus {
            config.insert("limits.cpu".into(), json!(cpus.to_string()));
        }
        if let Some(processes) = spec.limits.processes {
            config.insert("limits.processes".into(), json!(processes.to_string()));
        }
        for (k, v) in &spec.env {
            validate_env_key(k)?;
            config.insert(format!("environment.{k}"), json!(v));
        }
        let mut devices = serde_json::Map::new();
        if let Some(mib) = spec.root_disk_mib {
            // The limit is only as good as the accounting behind it.
            self.repair_quota_accounting().await;
            devices.insert(
                "root".into(),
                json!({"type": "disk", "path": "/", "pool": self.pool, "size": format!("{mib}MiB")}),
            );
        }
        for device in &spec.devices {
            validate_name("device name", device.name())?;
            devices.insert(device.name().to_string(), device_json(device));
        }
        let mut body = json!({
            "name": spec.name,
            "source": {"type": "image", "alias": spec.image},
            "config": config,
            "devices": devices,
            "start": false,
        });
        if let Some(mode) = spec.network {
            // An agent: its own profile (made at start) instead of the default one.
            body["profiles"] = json!([AGENT_PROFILE]);
            body["devices"]["eth0"] = agent_nic(mode);
        }
        let path = match &self.target {
            Some(member) => format!("/1.0/instances?target={}", percent_encode(member)),
            None => "/1.0/instances".to_string(),
        };
        self.call(Method::POST, &path, Some(body)).await.map(|_| ())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.set_state(name, "start", false).await
    }

    async fn stop(&self, name: &str, force: bool) -> Result<(), RuntimeError> {
        self.set_state(name, "stop", force).await
    }

    async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        self.call(Method::DELETE, &Self::instance(name)?, None)
            .await
            .map(|_| ())
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), RuntimeError> {
        validate_name("container name", new_name)?;
        self.call(
            Method::POST,
            &Self::instance(name)?,
            Some(json!({"name": new_name})),
        )
        .await
        .map(|_| ())
    }

    async fn exists(&self, name: &str) -> Result<bool, RuntimeError> {
        match self.call(Method::GET, &Self::instance(name)?, None).await {
            Ok(_) => Ok(true),
            Err(RuntimeError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn state(&self, name: &str) -> Result<ContainerState, RuntimeError> {
        let state = self
            .call(
                Method::GET,
                &format!("{}/state", Self::instance(name)?),
                None,
            )
            .await?;
        let status = state["status"].as_str().unwrap_or("Unknown").to_string();
        Ok(ContainerState {
            running: status == "Running",
            status,
            disk_used_bytes: state["disk"]["root"]["usage"].as_u64(),
            memory_used_bytes: state["memory"]["usage"].as_u64(),
        })
    }

    async fn exec(
        &self,
        name: &str,
        argv: &[&str],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        if argv.is_empty() || argv.iter().any(|a| a.contains('\0')) {
            return Err(RuntimeError::Invalid {
                what: "command",
                value: argv.join(" "),
            });
        }
        for key in env.keys() {
            validate_env_key(key)?;
        }
        let body = json!({
            "command": argv,
            "environment": env,
            "wait-for-websocket": false,
            "interactive": false,
            "record-output": true,
        });
        let op = self
            .call_timeout(
                Method::POST,
                &format!("{}/exec", Self::instance(name)?),
                Some(body),
                timeout,
            )
            .await?;
        let meta = &op["metadata"];
        let exit_code = meta["return"].as_i64().unwrap_or(-1) as i32;
        let stdout = match meta["output"]["1"].as_str() {
            Some(url) => self.fetch_log(url).await,
            None => String::new(),
        };
        let stderr = match meta["output"]["2"].as_str() {
            Some(url) => self.fetch_log(url).await,
            None => String::new(),
        };
        Ok(ExecResult {
            exit_code,
            stdout,
            stderr,
        })
    }

    async fn push_file(
        &self,
        name: &str,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), RuntimeError> {
        validate_path(path)?;
        let url = format!(
            "{}/files?path={}",
            Self::instance(name)?,
            percent_encode(path)
        );
        let answer = self
            .raw(
                Method::POST,
                &url,
                Bytes::copy_from_slice(contents),
                &[
                    ("content-type", "application/octet-stream".to_string()),
                    ("x-incus-uid", "0".to_string()),
                    ("x-incus-gid", "0".to_string()),
                    ("x-incus-mode", format!("{mode:04o}")),
                    ("x-incus-type", "file".to_string()),
                    ("x-incus-write", "overwrite".to_string()),
                ],
            )
            .await?;
        if answer.status / 100 == 2 {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        Err(error_of(&value, name))
    }

    async fn pull_file(&self, name: &str, path: &str) -> Result<Vec<u8>, RuntimeError> {
        validate_path(path)?;
        let url = format!(
            "{}/files?path={}",
            Self::instance(name)?,
            percent_encode(path)
        );
        let answer = self.raw(Method::GET, &url, Bytes::new(), &[]).await?;
        if answer.status / 100 == 2 {
            return Ok(answer.body.to_vec());
        }
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        Err(error_of(&value, path))
    }

    async fn snapshot_create(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("snapshot name", snapshot)?;
        self.call(
            Method::POST,
            &format!("{}/snapshots", Self::instance(name)?),
            Some(json!({"name": snapshot})),
        )
        .await
        .map(|_| ())
    }

    async fn snapshot_list(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let list = self
            .call(
                Method::GET,
                &format!("{}/snapshots", Self::instance(name)?),
                None,
            )
            .await?;
        Ok(list
            .as_array()
            .map(|urls| {
                urls.iter()
                    .filter_map(|u| u.as_str())
                    .filter_map(|u| u.rsplit('/').next())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn snapshot_restore(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("snapshot name", snapshot)?;
        self.call(
            Method::PUT,
            &Self::instance(name)?,
            Some(json!({"restore": snapshot})),
        )
        .await
        .map(|_| ())
    }

    async fn snapshot_delete(&self, name: &str, snapshot: &str) -> Result<(), RuntimeError> {
        validate_name("snapshot name", snapshot)?;
        self.call(
            Method::DELETE,
            &format!("{}/snapshots/{snapshot}", Self::instance(name)?),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn set_env(&self, name: &str, key: &str, value: &str) -> Result<(), RuntimeError> {
        validate_env_key(key)?;
        self.call(
            Method::PATCH,
            &Self::instance(name)?,
            Some(json!({"config": {format!("environment.{key}"): value}})),
        )
        .await
        .map(|_| ())
    }

    async fn add_device(&self, name: &str, device: &Device) -> Result<(), RuntimeError> {
        validate_name("device name", device.name())?;
        self.call(
            Method::PATCH,
            &Self::instance(name)?,
            Some(json!({"devices": {device.name(): device_json(device)}})),
        )
        .await
        .map(|_| ())
    }

    async fn remove_device(&self, name: &str, device: &str) -> Result<(), RuntimeError> {
        validate_name("device name", device)?;
        let path = Self::instance(name)?;
        // PATCH merges, so removing a device means writing the instance back without it.
        let mut instance = self.call(Method::GET, &path, None).await?;
        let removed = instance["devices"]
            .as_object_mut()
            .and_then(|devices| devices.remove(device))
            .is_some();
        if !removed {
            return Err(RuntimeError::NotFound(device.to_string()));
        }
        let body = json!({
            "architecture": instance["architecture"],
            "config": instance["config"],
            "devices": instance["devices"],
            "ephemeral": instance["ephemeral"],
            "profiles": instance["profiles"],
            "description": instance["description"],
        });
        self.call(Method::PUT, &path, Some(body)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("/root/a b&c=d"), "/root/a%20b%26c%3Dd");
        assert_eq!(percent_encode("/x?y#z"), "/x%3Fy%23z");
    }
}
