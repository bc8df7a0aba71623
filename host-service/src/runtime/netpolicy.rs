//! Where agents' network traffic may go, as sets of IPv4 addresses: the allow-lists of incus's
//! network ACLs and the deny-lists of the Docker firewall rules are both made from these.
//!
//! Agents get IPv4 only (their networks have no IPv6), so IPv6 is refused as a whole elsewhere.
//! The host itself is never a destination: agents reach the agent listener and the LLM gateway
//! through proxy devices (incus) or one allowed port on their network's gateway (Docker).

use std::net::Ipv4Addr;

use taos_proto::agents::AgentNetwork;

/// Private and shared address space: what a home or office LAN uses (RFC 1918, and the CGNAT
/// range that VPNs such as Tailscale hand out).
pub const LAN: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// Never a destination: "this network", loopback, link-local (where cloud metadata lives, at
/// 169.254.169.254), multicast, and the reserved block with the broadcast address.
pub const NEVER: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// An inclusive range of IPv4 addresses, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub first: u32,
    pub last: u32,
}

impl Range {
    pub fn single(ip: Ipv4Addr) -> Range {
        let n = u32::from(ip);
        Range { first: n, last: n }
    }

    /// The network `ip/prefix` is in.
    pub fn network(ip: Ipv4Addr, prefix: u8) -> Range {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let first = u32::from(ip) & mask;
        Range {
            first,
            last: first | !mask,
        }
    }

    /// `a.b.c.d/n` (or a bare address).
    pub fn parse(cidr: &str) -> Option<Range> {
        let (ip, prefix) = match cidr.split_once('/') {
            Some((ip, prefix)) => (ip, prefix.parse::<u8>().ok().filter(|p| *p <= 32)?),
            None => (cidr, 32),
        };
        Some(Range::network(ip.parse().ok()?, prefix))
    }
}

fn parse_all(list: &[&str]) -> Vec<Range> {
    list.iter().filter_map(|c| Range::parse(c)).collect()
}

/// Sorted, merged, no overlaps.
fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if u64::from(r.first) <= u64::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// `from` without the addresses in `remove`.
fn subtract(from: Vec<Range>, remove: &[Range]) -> Vec<Range> {
    let remove = normalize(remove.to_vec());
    let mut out = Vec::new();
    for r in normalize(from) {
        let mut first = u64::from(r.first);
        let last = u64::from(r.last);
        for cut in &remove {
            let (cut_first, cut_last) = (u64::from(cut.first), u64::from(cut.last));
            if cut_last < first || cut_first > last {
                continue;
            }
            if cut_first > first {
                out.push((first, cut_first - 1));
            }
            first = cut_last + 1;
            if first > last {
                break;
            }
        }
        if first <= last {
            out.push((first, last));
        }
    }
    out.into_iter()
        .map(|(first, last)| Range {
            first: first as u32,
            last: last as u32,
        })
        .collect()
}

/// What the machine's interfaces say: the host's own addresses and the subnets it sits on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostFacts {
    /// Every non-loopback IPv4 address of the host: never a destination for agents.
    pub addresses: Vec<Ipv4Addr>,
    /// The subnets of those addresses on real interfaces: the LAN, whatever its numbering.
    pub connected: Vec<Range>,
    /// The subnets of host-internal bridges (no physical port: Docker's, incus's, VMs'): other
    /// containers, never "the LAN".
    pub internal: Vec<Range>,
}

/// A Linux bridge with no physical port (only veths or taps, or none): a network of
/// containers or VMs on this host. A bridge holding the uplink (br0 with eth0) is the LAN.
pub fn is_internal_bridge(name: &str) -> bool {
    let net = std::path::Path::new("/sys/class/net");
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return false;
    }
    if !net.join(name).join("bridge").is_dir() {
        return false;
    }
    let ports = std::fs::read_dir(net.join(name).join("brif"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        .unwrap_or_default();
    !ports
        .iter()
        .any(|port| net.join(port).join("device").exists())
}

impl HostFacts {
    pub fn gather() -> HostFacts {
        let mut facts = HostFacts::default();
        for interface in if_addrs::get_if_addrs().unwrap_or_default() {
            if let if_addrs::IfAddr::V4(v4) = interface.addr {
                if v4.ip.is_loopback() {
                    continue;
                }
                facts.addresses.push(v4.ip);
                let subnet = Range::network(v4.ip, v4.prefixlen);
                if is_internal_bridge(&interface.name) {
                    facts.internal.push(subnet);
                } else {
                    facts.connected.push(subnet);
                }
            }
        }
        facts.addresses.sort();
        facts.addresses.dedup();
        facts.connected = normalize(facts.connected);
        facts.internal = normalize(facts.internal);
        facts
    }
}

/// The destinations an agent with this network choice may reach. `internal` are the subnets of
/// the runtime's own container networks (other containers are never "the LAN"), on top of the
/// host-internal bridges the facts found.
pub fn allowed(mode: AgentNetwork, facts: &HostFacts, internal: &[Range]) -> Vec<Range> {
    let everything = vec![Range {
        first: 0,
        last: u32::MAX,
    }];
    let mut refused = parse_all(NEVER);
    refused.extend(internal.iter().copied());
    refused.extend(facts.internal.iter().copied());
    refused.extend(facts.addresses.iter().copied().map(Range::single));
    match mode {
        AgentNetwork::None => Vec::new(),
        AgentNetwork::Lan => subtract(everything, &refused),
        AgentNetwork::Internet => {
            refused.extend(parse_all(LAN));
            refused.extend(facts.connected.iter().copied());
            subtract(everything, &refused)
        }
    }
}

/// Everything [`allowed`] leaves out.
pub fn denied(mode: AgentNetwork, facts: &HostFacts, internal: &[Range]) -> Vec<Range> {
    let everything = vec![Range {
        first: 0,
        last: u32::MAX,
    }];
    subtract(everything, &allowed(mode, facts, internal))
}

/// The smallest list of CIDR blocks covering exactly these ranges, e.g. `10.0.0.0/8`.
pub fn to_cidrs(ranges: &[Range]) -> Vec<String> {
    let mut out = Vec::new();
    for r in normalize(ranges.to_vec()) {
        let mut first = u64::from(r.first);
        let last = u64::from(r.last);
        while first <= last {
            // The largest block that starts at `first` (aligned) and ends within the range.
            let mut size: u64 = if first == 0 {
                1 << 32
            } else {
                1 << first.trailing_zeros()
            };
            while first + size - 1 > last {
                size >>= 1;
            }
            let prefix = 32 - size.trailing_zeros();
            out.push(format!("{}/{prefix}", Ipv4Addr::from(first as u32)));
            first += size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            addresses: vec![
                "192.168.1.20".parse().unwrap(),
                "203.0.113.5".parse().unwrap(),
            ],
            connected: vec![
                Range::parse("192.168.1.0/24").unwrap(),
                Range::parse("203.0.113.0/24").unwrap(),
            ],
            internal: vec![Range::parse("172.17.0.0/16").unwrap()],
        }
    }

    fn contains(ranges: &[Range], ip: &str) -> bool {
        let n = u32::from(ip.parse::<Ipv4Addr>().unwrap());
        ranges.iter().any(|r| r.first <= n && n <= r.last)
    }

    #[test]
    fn internet_is_public_addresses_only() {
        let bridge = [Range::parse("10.203.0.0/24").unwrap()];
        let ok = allowed(AgentNetwork::Internet, &facts(), &bridge);
        for public in ["1.1.1.1", "8.8.8.8", "198.51.100.7", "223.255.255.255"] {
            assert!(contains(&ok, public), "{public}");
        }
        for never in [
            "10.0.0.1",
            "10.203.0.1",
            "172.16.5.5",
            "192.168.77.2",
            "100.64.0.1",
            "169.254.169.254",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "203.0.113.5",
            "203.0.113.9",
            "0.0.0.0",
        ] {
            assert!(!contains(&ok, never), "{never}");
        }
    }

    #[test]
    fn lan_adds_private_ranges_but_never_the_host_metadata_or_containers() {
        let bridge = [Range::parse("10.203.0.0/24").unwrap()];
        let ok = allowed(AgentNetwork::Lan, &facts(), &bridge);
        for lan in [
            "10.0.0.1",
            "192.168.77.2",
            "192.168.1.21",
            "172.16.5.5",
            "8.8.8.8",
            "203.0.113.9",
        ] {
            assert!(contains(&ok, lan), "{lan}");
        }
        for never in [
            "192.168.1.20",
            "203.0.113.5",
            "10.203.0.1",
            "10.203.0.7",
            "172.17.0.2",
            "169.254.169.254",
            "127.0.0.1",
        ] {
            assert!(!contains(&ok, never), "{never}");
        }
        assert!(allowed(AgentNetwork::None, &facts(), &bridge).is_empty());
    }

    #[test]
    fn a_subnet_is_either_the_lan_or_internal() {
        let facts = HostFacts::gather();
        for r in &facts.internal {
            assert!(!facts.connected.contains(r), "{r:?}");
        }
        assert!(!facts.addresses.iter().any(|a| a.is_loopback()));
        assert!(!is_internal_bridge("lo") && !is_internal_bridge("../x"));
    }

    #[test]
    fn denied_is_the_complement_and_cidrs_are_exact() {
        let ok = allowed(AgentNetwork::Internet, &facts(), &[]);
        let no = denied(AgentNetwork::Internet, &facts(), &[]);
        for ip in ["8.8.8.8", "10.1.2.3", "169.254.169.254", "203.0.113.5"] {
            assert_ne!(contains(&ok, ip), contains(&no, ip), "{ip}");
        }
        assert_eq!(
            to_cidrs(&[Range::parse("10.0.0.0/8").unwrap()]),
            ["10.0.0.0/8"]
        );
        let split = subtract(
            vec![Range::parse("10.0.0.0/8").unwrap()],
            &[Range::parse("10.200.0.1").unwrap()],
        );
        let cidrs = to_cidrs(&split);
        assert!(cidrs.contains(&"10.200.0.0/32".to_string()));
        assert!(cidrs.contains(&"10.200.0.2/31".to_string()));
        assert!(!cidrs.contains(&"10.200.0.1/32".to_string()));
        assert_eq!(
            to_cidrs(&[Range {
                first: 0,
                last: u32::MAX
            }]),
            ["0.0.0.0/0"]
        );
        let back: Vec<Range> = cidrs.iter().filter_map(|c| Range::parse(c)).collect();
        assert_eq!(normalize(back), split);
    }
}
