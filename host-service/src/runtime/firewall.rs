//! The host firewall for Docker agents (incus has network ACLs for this; Docker has nothing of
//! its own): iptables rules, run as argv vectors, never shell strings.
//!
//! Three chains, all ours:
//! - `TAOS-AGENTS`, jumped to from Docker's `DOCKER-USER` (forwarded traffic): what an agent
//!   network may not reach beyond the host, per network choice (DNS to the host's resolvers
//!   first, since Docker's embedded DNS forwards from the container).
//! - `TAOS-AGENTS-INPUT`, jumped to from `INPUT`: agents reach nothing on the host but the agent
//!   listener on their network's gateway.
//! - `TAOS-AGENT-LISTENERS`: one ACCEPT per running host's agent listener (tests run several
//!   hosts at once, each on its own port). A host adds its own at start and removes it at
//!   shutdown; rules whose port nobody listens on any more are dropped at any host's start.
//!
//! The first two are rewritten atomically (`iptables-restore --noflush`, which flushes only the
//! chains it names), so they never sit empty.

use std::net::Ipv4Addr;

use taos_proto::agents::AgentNetwork;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::netpolicy::{self, HostFacts};

const FORWARD_CHAIN: &str = "TAOS-AGENTS";
const INPUT_CHAIN: &str = "TAOS-AGENTS-INPUT";
const LISTENERS_CHAIN: &str = "TAOS-AGENT-LISTENERS";

/// One agent network as the firewall sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentBridge {
    pub mode: AgentNetwork,
    /// The Linux bridge's name, e.g. `taosdk-inet`.
    pub interface: String,
    /// The host's address on it, where the agent listener also binds.
    pub gateway: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
#[error("firewall: {0}")]
pub struct FirewallError(String);

async fn iptables(args: &[&str]) -> Result<std::process::Output, FirewallError> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| FirewallError(format!("cannot run iptables: {e}")))
}

async fn must(args: &[&str]) -> Result<(), FirewallError> {
    let out = iptables(args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Adds a rule unless it is there (`-C` first), at the top (`-I`) or the end (`-A`).
async fn ensure(chain: &str, rule: &[&str], first: bool) -> Result<(), FirewallError> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if iptables(&check).await?.status.success() {
        return Ok(());
    }
    let mut add = if first {
        vec!["-I", chain, "1"]
    } else {
        vec!["-A", chain]
    };
    add.extend_from_slice(rule);
    must(&add).await
}

/// The IPv4 name servers the host uses (what Docker's embedded DNS forwards to).
fn resolvers() -> Vec<Ipv4Addr> {
    let read = |path: &str| -> Vec<Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|ip| ip.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_loopback())
            .collect()
    };
    let mut found = read("/etc/resolv.conf");
    if found.is_empty() {
        // systemd-resolved's stub: Docker uses the upstream servers instead.
        found = read("/run/systemd/resolve/resolv.conf");
    }
    found
}

/// The rules of the two chains we own outright, as `iptables-restore` input.
fn rules(bridges: &[AgentBridge], facts: &HostFacts) -> String {
    let mut text = format!("*filter\n:{FORWARD_CHAIN} - [0:0]\n:{INPUT_CHAIN} - [0:0]\n");
    let dns = resolvers();
    for bridge in bridges {
        let i = &bridge.interface;
        if bridge.mode != AgentNetwork::None {
            for resolver in &dns {
                for proto in ["udp", "tcp"] {
                    text.push_str(&format!(
                        "-A {FORWARD_CHAIN} -i {i} -d {resolver}/32 -p {proto} --dport 53 -j RETURN\n"
                    ));
                }
            }
        }
        let denied = netpolicy::denied(bridge.mode, facts, &[]);
        for cidr in netpolicy::to_cidrs(&denied) {
            text.push_str(&format!("-A {FORWARD_CHAIN} -i {i} -d {cidr} -j REJECT\n"));
        }
        // The host: replies to what it started, its agent listener, nothing else.
        text.push_str(&format!(
            "-A {INPUT_CHAIN} -i {i} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
             -A {INPUT_CHAIN} -i {i} -j {LISTENERS_CHAIN}\n\
             -A {INPUT_CHAIN} -i {i} -j REJECT\n"
        ));
    }
    text.push_str("COMMIT\n");
    text
}

/// Writes the agent networks' rules for the machine as it is now. Idempotent; run at start
/// and whenever the host's addresses change.
pub async fn apply(bridges: &[AgentBridge], facts: &HostFacts) -> Result<(), FirewallError> {
    for bridge in bridges {
        // Interface names go into the rules: only what Docker allows (and no option syntax).
        let ok = !bridge.interface.is_empty()
            && bridge.interface.len() <= 15
            && bridge
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !bridge.interface.starts_with('-');
        if !ok {
            return Err(FirewallError(format!(
                "bad interface name {:?}",
                bridge.interface
            )));
        }
    }
    // The listeners chain is shared by every host on the machine: created, never flushed.
    let out = iptables(&["-N", LISTENERS_CHAIN]).await?;
    if !out.status.success()
        && iptables(&["-S", LISTENERS_CHAIN])
            .await
            .map(|o| !o.status.success())?
    {
        return Err(FirewallError(format!(
            "cannot create {LISTENERS_CHAIN}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut restore = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError(format!("cannot run iptables-restore: {e}")))?;
    if let Some(mut stdin) = restore.stdin.take() {
        stdin
            .write_all(rules(bridges, facts).as_bytes())
            .await
            .map_err(|e| FirewallError(format!("iptables-restore: {e}")))?;
    }
    let out = restore
        .wait_with_output()
        .await
        .map_err(|e| FirewallError(format!("iptables-restore: {e}")))?;
    if !out.status.success() {
        return Err(FirewallError(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // First in line, before Docker's own rules accept the traffic.
    ensure("DOCKER-USER", &["-j", FORWARD_CHAIN], true).await?;
    ensure("INPUT", &["-j", INPUT_CHAIN], true).await?;
    Ok(())
}

fn listener_rule(bridge: &AgentBridge, port: u16) -> Vec<String> {
    [
        "-i",
        &bridge.interface,
        "-d",
        &format!("{}/32", bridge.gateway),
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &port.to_string(),
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Lets agents reach this host's agent listener on each network's gateway, and drops the
/// rules of listeners that are gone (hosts that were killed).
pub async fn open_listener(bridges: &[AgentBridge], port: u16) -> Result<(), FirewallError> {
    for bridge in bridges {
        let rule = listener_rule(bridge, port);
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ensure(LISTENERS_CHAIN, &rule, false).await?;
    }
    let listing = iptables(&["-S", LISTENERS_CHAIN]).await?;
    let listening = listening_sockets();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"-A") {
            continue;
        }
        let value = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
        };
        let address = value("-d")
            .and_then(|d| d.strip_suffix("/32"))
            .and_then(|d| d.parse::<Ipv4Addr>().ok());
        let dport = value("--dport").and_then(|p| p.parse::<u16>().ok());
        if let (Some(address), Some(dport)) = (address, dport) {
            if !listening.contains(&(address, dport)) {
                let mut delete = vec!["-D"];
                delete.extend_from_slice(&words[1..]);
                if let Err(e) = iptables(&delete).await {
                    tracing::warn!("could not remove a stale listener rule: {e}");
                }
            }
        }
    }
    Ok(())
}

/// Removes this host's listener rules (at shutdown).
pub async fn close_listener(bridges: &[AgentBridge], port: u16) {
    for bridge in bridges {
        let rule = listener_rule(bridge, port);
        let mut delete = vec!["-D", LISTENERS_CHAIN];
        delete.extend(rule.iter().map(String::as_str));
        if let Err(e) = iptables(&delete).await {
            tracing::warn!("could not remove this host's listener rule: {e}");
        }
    }
}

/// IPv4 TCP sockets in LISTEN state on this machine, from /proc/net/tcp.
fn listening_sockets() -> Vec<(Ipv4Addr, u16)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is the address as the kernel holds it (network order), printed as
            // a native-endian number; st 0A is LISTEN.
            if fields.get(3) != Some(&"0A") {
                return None;
            }
            let (ip, port) = fields.get(1)?.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some((Ipv4Addr::from(ip.to_ne_bytes()), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_refuse_lan_and_metadata_and_admit_only_the_listener_on_the_host() {
        let bridges = [
            AgentBridge {
                mode: AgentNetwork::Internet,
                interface: "taosdk-inet".into(),
                gateway: "10.202.0.1".parse().unwrap(),
            },
            AgentBridge {
                mode: AgentNetwork::Lan,
                interface: "taosdk-lan".into(),
                gateway: "10.202.1.1".parse().unwrap(),
            },
        ];
        let text = rules(&bridges, &HostFacts::default());
        assert!(text.starts_with("*filter\n") && text.ends_with("COMMIT\n"));
        assert!(text.contains("-A TAOS-AGENTS -i taosdk-inet -d 10.0.0.0/8 -j REJECT"));
        assert!(text.contains("-A TAOS-AGENTS -i taosdk-inet -d 192.168.0.0/16 -j REJECT"));
        assert!(text.contains("-A TAOS-AGENTS -i taosdk-inet -d 169.254.0.0/16 -j REJECT"));
        assert!(text.contains("-A TAOS-AGENTS -i taosdk-lan -d 169.254.0.0/16 -j REJECT"));
        assert!(!text.contains("-A TAOS-AGENTS -i taosdk-lan -d 192.168.0.0/16"));
        assert!(text.contains("-A TAOS-AGENTS-INPUT -i taosdk-lan -j TAOS-AGENT-LISTENERS"));
        assert!(text.contains("-A TAOS-AGENTS-INPUT -i taosdk-lan -j REJECT"));
    }

    #[test]
    fn a_listener_of_this_process_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_sockets().contains(&(Ipv4Addr::LOCALHOST, port)));
    }
}
