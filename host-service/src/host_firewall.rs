//! The host's own nftables table, `inet taos`: who may reach the host's ports.
//!
//! - The public port (`[server] bind`) answers the LAN only: loopback and the given networks
//!   (by default the private, link-local and unique-local ranges).
//! - The agent listener (`[server] agent_bind`) answers loopback (incus proxy devices connect
//!   from the host side) and the agents' own bridges (`taos-*`, and Docker's `taosdk-*`) only.
//! - Nothing from outside reaches a loopback address (LiteLLM's port is on loopback).
//!
//! What agents may reach (the internet, not the LAN, not the host's other ports or cloud
//! metadata) is not here: the agents' bridges' network ACLs (`runtime::netpolicy`) and, under
//! Docker, `runtime::firewall` enforce it per agent network.
//!
//! The rules live in their own table, so they coexist with Docker's, incus's and the
//! distribution's, and they only reject: traffic they don't name passes on to the other
//! tables. The ruleset is written to `<data dir>/firewall.nft` and loaded with `nft -f` (one
//! transaction: the old table is replaced atomically); the unit loads the file again before
//! every start, so a reboot keeps it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fsutil;

pub const TABLE: &str = "taos";
pub const RULES_FILE: &str = "firewall.nft";

/// The LAN when none is given: private IPv4, link-local, IPv6 unique-local and link-local.
pub const DEFAULT_LAN: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{0}")]
    BadInput(String),
    #[error("cannot run nft ({0}); install the nftables package")]
    NoNft(std::io::Error),
    #[error("nft refused the rules: {0}")]
    Nft(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, FirewallError> {
        let bad = || {
            FirewallError::BadInput(format!(
                "{text:?} is not a network: write address/prefix, e.g. 192.168.1.0/24 or fd00::/8"
            ))
        };
        let (address, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Network { address, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// What the rules are made from.
#[derive(Debug, Clone)]
pub struct Plan {
    pub public_port: u16,
    pub agent_port: u16,
    pub lan: Vec<Network>,
    /// The LAN is this machine's own networks (setup derived it; no `[firewall] lan`): the
    /// running host re-derives it and applies the rules again when they change, so a board
    /// that gets another address range stays reachable from its LAN. Never for a LAN someone
    /// gave.
    pub follows_networks: bool,
}

/// The line that marks a saved ruleset whose LAN follows this machine's networks.
const FOLLOWS_MARK: &str = "# lan: this machine's networks, followed by the running host";

impl Plan {
    /// `lan` as given on the command line; empty means [`DEFAULT_LAN`].
    pub fn new(public_port: u16, agent_port: u16, lan: &[String]) -> Result<Plan, FirewallError> {
        let texts: Vec<&str> = if lan.is_empty() {
            DEFAULT_LAN.to_vec()
        } else {
            lan.iter().map(String::as_str).collect()
        };
        let lan = texts
            .into_iter()
            .map(Network::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if public_port == agent_port {
            return Err(FirewallError::BadInput(
                "the public port and the agent port are the same".into(),
            ));
        }
        Ok(Plan {
            public_port,
            agent_port,
            lan,
            follows_networks: false,
        })
    }

    /// The same rules with the LAN marked as this machine's own networks.
    pub fn following_networks(mut self) -> Plan {
        self.follows_networks = true;
        self
    }
}

/// The ruleset, for `nft -f`: creates the table if missing, deletes it, and makes it anew, in
/// one transaction.
pub fn ruleset(plan: &Plan) -> String {
    let v4: Vec<String> = plan
        .lan
        .iter()
        .filter(|n| n.address.is_ipv4())
        .map(Network::to_string)
        .collect();
    let v6: Vec<String> = plan
        .lan
        .iter()
        .filter(|n| n.address.is_ipv6())
        .map(Network::to_string)
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Made by `taos-host firewall apply`; see docs/install.md."
    );
    if plan.follows_networks {
        let _ = writeln!(out, "{FOLLOWS_MARK}");
    }
    let _ = writeln!(out, "table inet {TABLE}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    if !v4.is_empty() {
        let _ = writeln!(
            out,
            "  set lan4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}",
            v4.join(", ")
        );
    }
    if !v6.is_empty() {
        let _ = writeln!(
            out,
            "  set lan6 {{ type ipv6_addr; flags interval; elements = {{ {} }} }}",
            v6.join(", ")
        );
    }
    let _ = writeln!(out, "  chain input {{");
    // Before the usual filter priority, so an accept elsewhere can't open what this rejects;
    // the policy accepts, so what it does not name is left to the other tables.
    let _ = writeln!(
        out,
        "    type filter hook input priority filter - 10; policy accept;"
    );
    let _ = writeln!(out, "    iif \"lo\" accept");
    let _ = writeln!(
        out,
        "    ip daddr 127.0.0.0/8 counter drop comment \"loopback (LiteLLM) only from this machine\""
    );
    let _ = writeln!(
        out,
        "    ip6 daddr ::1 counter drop comment \"loopback only from this machine\""
    );
    let public = plan.public_port;
    if !v4.is_empty() {
        let _ = writeln!(out, "    tcp dport {public} ip saddr @lan4 accept");
    }
    if !v6.is_empty() {
        let _ = writeln!(out, "    tcp dport {public} ip6 saddr @lan6 accept");
    }
    let _ = writeln!(
        out,
        "    tcp dport {public} counter reject with tcp reset comment \"public port: LAN only\""
    );
    let agent = plan.agent_port;
    let _ = writeln!(
        out,
        "    tcp dport {agent} iifname \"taos*\" accept comment \"agents' bridges\""
    );
    let _ = writeln!(
        out,
        "    tcp dport {agent} counter reject with tcp reset comment \"agent listener: agents only\""
    );
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

pub fn rules_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RULES_FILE)
}

fn nft(args: &[&str]) -> Result<(), FirewallError> {
    let output = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(FirewallError::NoNft)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

/// Checks the ruleset with `nft --check`, then saves and loads it. A ruleset nft refuses is
/// neither saved nor loaded: the rules in force stay as they were.
pub fn apply(data_dir: &Path, plan: &Plan) -> Result<PathBuf, FirewallError> {
    let path = rules_path(data_dir);
    let text = ruleset(plan);
    let candidate = data_dir.join(format!("{RULES_FILE}.new"));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FirewallError::Write { path, source }
    };
    let _ = std::fs::remove_file(&candidate);
    fsutil::write_atomic(&candidate, text.as_bytes()).map_err(write_err(&candidate))?;
    let candidate_text = candidate.to_string_lossy().into_owned();
    let checked = nft(&["--check", "--file", &candidate_text]);
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&candidate);
        return Err(e);
    }
    std::fs::rename(&candidate, &path).map_err(write_err(&path))?;
    let path_text = path.to_string_lossy().into_owned();
    nft(&["--file", &path_text])?;
    Ok(path)
}

/// When the saved rules' LAN follows this machine's networks (see [`Plan::follows_networks`])
/// and `networks` (derived from the interfaces now) differ from it, applies the rules again
/// with them. Returns the new LAN when it changed. No networks at all (every interface down
/// for a moment) changes nothing: the board keeps the LAN it had rather than opening wider.
pub fn follow_networks(
    data_dir: &Path,
    public_port: u16,
    agent_port: u16,
    networks: &[String],
) -> Result<Option<Vec<Network>>, FirewallError> {
    let Ok(saved) = std::fs::read_to_string(rules_path(data_dir)) else {
        return Ok(None);
    };
    if networks.is_empty() || !saved.lines().any(|l| l == FOLLOWS_MARK) {
        return Ok(None);
    }
    let plan = Plan::new(public_port, agent_port, networks)?.following_networks();
    if ruleset(&plan) == saved {
        return Ok(None);
    }
    apply(data_dir, &plan)?;
    Ok(Some(plan.lan))
}

/// The saved rules again with the ports `taos.toml` names now, keeping their LAN (and whether it
/// follows the networks); `None` when the ports are the ones they name. A `[server] bind` or
/// `agent_bind` whose port changed would otherwise leave the new port unguarded (the table
/// rejects only the ports it names) until someone ran `firewall apply` again.
fn with_ports(
    saved: &str,
    public_port: u16,
    agent_port: u16,
) -> Result<Option<Plan>, FirewallError> {
    let mut lan = Vec::new();
    for line in saved.lines() {
        let line = line.trim_start();
        if !(line.starts_with("set lan4 ") || line.starts_with("set lan6 ")) {
            continue;
        }
        let elements = line
            .split_once("elements = {")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(inside, _)| inside);
        for element in elements.into_iter().flat_map(|e| e.split(',')) {
            lan.push(element.trim().to_string());
        }
    }
    // An empty LAN would mean the default ranges: never widen rules that could not be read.
    if lan.is_empty() {
        return Err(FirewallError::BadInput(
            "the saved rules name no LAN; run `sudo taos-host firewall apply` again".into(),
        ));
    }
    let mut plan = Plan::new(public_port, agent_port, &lan)?;
    if saved.lines().any(|l| l == FOLLOWS_MARK) {
        plan = plan.following_networks();
    }
    Ok((ruleset(&plan) != saved).then_some(plan))
}

/// When the saved rules name other ports than `public_port` and `agent_port` (the config's
/// now), applies them again with these ports and the same LAN. Returns the plan loaded, if
/// any. No saved rules: nothing to follow.
pub fn follow_ports(
    data_dir: &Path,
    public_port: u16,
    agent_port: u16,
) -> Result<Option<Plan>, FirewallError> {
    let Ok(saved) = std::fs::read_to_string(rules_path(data_dir)) else {
        return Ok(None);
    };
    let Some(plan) = with_ports(&saved, public_port, agent_port)? else {
        return Ok(None);
    };
    apply(data_dir, &plan)?;
    Ok(Some(plan))
}

/// Deletes the table and the saved ruleset. Nothing to do is not an error.
pub fn remove(data_dir: &Path) -> Result<bool, FirewallError> {
    let path = rules_path(data_dir);
    let had_file = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(FirewallError::Write { path, source }),
    };
    let had_table = match nft(&["delete", "table", "inet", TABLE]) {
        Ok(()) => true,
        // nft says "No such file or directory" for a table that isn't there.
        Err(FirewallError::Nft(text)) if text.contains("No such file") => false,
        Err(e) => return Err(e),
    };
    Ok(had_file || had_table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rules_marked_as_following_the_networks_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let lan = vec!["192.168.1.0/24".to_string()];
        let other = vec!["10.9.0.0/16".to_string()];
        // No saved rules: nothing to follow.
        assert!(follow_networks(dir.path(), 6969, 6970, &other)
            .unwrap()
            .is_none());
        // Rules someone gave a LAN: left alone whatever the networks are.
        let given = Plan::new(6969, 6970, &lan).unwrap();
        std::fs::write(rules_path(dir.path()), ruleset(&given)).unwrap();
        assert!(follow_networks(dir.path(), 6969, 6970, &other)
            .unwrap()
            .is_none());
        // Setup's derived rules, and the networks unchanged: nothing to do.
        let derived = Plan::new(6969, 6970, &lan).unwrap().following_networks();
        assert!(ruleset(&derived).contains(FOLLOWS_MARK));
        std::fs::write(rules_path(dir.path()), ruleset(&derived)).unwrap();
        assert!(follow_networks(dir.path(), 6969, 6970, &lan)
            .unwrap()
            .is_none());
        // Every interface down for a moment: the LAN it had stays.
        assert!(follow_networks(dir.path(), 6969, 6970, &[])
            .unwrap()
            .is_none());
        assert_eq!(
            std::fs::read_to_string(rules_path(dir.path())).unwrap(),
            ruleset(&derived)
        );
        // (A change loads rules with nft: the install test checks it in a container.)
    }

    /// A changed `[server] bind` port: the saved rules come back with the new port and the
    /// same LAN (and mark); the same ports change nothing; rules whose LAN can't be read are
    /// refused rather than widened to the default ranges.
    #[test]
    fn saved_rules_follow_a_changed_port_with_their_lan() {
        let lan = vec!["192.168.1.0/24".to_string(), "fd00::/8".to_string()];
        let derived = Plan::new(6969, 6970, &lan).unwrap().following_networks();
        let saved = ruleset(&derived);
        assert!(with_ports(&saved, 6969, 6970).unwrap().is_none());
        let moved = with_ports(&saved, 7443, 6970)
            .unwrap()
            .expect("the port changed");
        assert_eq!(moved.public_port, 7443);
        assert_eq!(moved.agent_port, 6970);
        assert_eq!(moved.lan, derived.lan);
        assert!(moved.follows_networks, "a followed LAN stays followed");
        let text = ruleset(&moved);
        assert!(
            text.contains("tcp dport 7443 ip saddr @lan4 accept"),
            "{text}"
        );
        assert!(
            text.contains("tcp dport 7443 ip6 saddr @lan6 accept"),
            "{text}"
        );
        assert!(!text.contains("6969"), "{text}");
        let agent = with_ports(&saved, 6969, 7001)
            .unwrap()
            .expect("the agent port changed");
        assert!(ruleset(&agent).contains("tcp dport 7001 counter reject"));
        // A LAN someone gave stays theirs, unmarked.
        let given = Plan::new(6969, 6970, &lan[..1]).unwrap();
        let moved = with_ports(&ruleset(&given), 7443, 6970).unwrap().unwrap();
        assert!(!moved.follows_networks);
        assert_eq!(moved.lan, given.lan);
        // The same port for both is refused, as `firewall apply` refuses it.
        assert!(matches!(
            with_ports(&saved, 6970, 6970),
            Err(FirewallError::BadInput(_))
        ));
        assert!(matches!(
            with_ports("# not ours\n", 7443, 6970),
            Err(FirewallError::BadInput(_))
        ));
    }

    #[test]
    fn networks_are_checked() {
        assert_eq!(
            Network::parse("192.168.1.0/24").unwrap().to_string(),
            "192.168.1.0/24"
        );
        assert!(Network::parse("fd00::/8").is_ok());
        for bad in [
            "192.168.1.0",
            "10.0.0.0/33",
            "::/129",
            "lan",
            "1.2.3.4/x",
            "; flush ruleset",
        ] {
            assert!(
                matches!(Network::parse(bad), Err(FirewallError::BadInput(_))),
                "{bad}"
            );
        }
        assert!(Plan::new(6969, 6969, &[]).is_err());
    }

    #[test]
    fn the_ruleset_names_both_ports_and_the_lan() {
        let plan = Plan::new(6969, 6970, &["192.168.1.0/24".into(), "fd00::/8".into()]).unwrap();
        let text = ruleset(&plan);
        assert!(text.contains("elements = { 192.168.1.0/24 }"));
        assert!(text.contains("elements = { fd00::/8 }"));
        assert!(text.contains("tcp dport 6969 ip saddr @lan4 accept"));
        assert!(text.contains("tcp dport 6969 counter reject"));
        assert!(text.contains("tcp dport 6970 iifname \"taos*\" accept"));
        assert!(text.contains("tcp dport 6970 counter reject"));
        // Replaced atomically: made if missing, deleted, made anew.
        assert!(text.starts_with("# Made by"));
        assert!(text.contains("table inet taos\ndelete table inet taos\ntable inet taos {"));
        // Only IPv4 given: no IPv6 set, and the public port then rejects IPv6 peers.
        let v4_only = ruleset(&Plan::new(6969, 6970, &["10.0.0.0/8".into()]).unwrap());
        assert!(!v4_only.contains("lan6"));
    }
}
