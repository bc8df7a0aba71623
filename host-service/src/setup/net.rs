//! The two network decisions setup makes, as pure functions over plain data (the gathering is
//! in `gather_*`): which fixed subnets the agents' bridges get, and which networks are "the LAN"
//! the firewall opens the public port to.

use std::net::IpAddr;

use crate::host_firewall::Network;
use crate::runtime::netpolicy::Range;

/// The agents' bridges' subnets setup may pick, in order (the bridge's own address with its
/// prefix). The first two are the config's defaults (`[runtime] incus_internet_subnet` and
/// `incus_lan_subnet`) and what CI uses; the rest are tried when those are taken. Never chosen
/// at random: incus's `auto` probes random private addresses, which is forbidden here.
pub const SUBNET_CANDIDATES: &[&str] = &[
    "10.203.0.1/24",
    "10.204.0.1/24",
    "10.205.0.1/24",
    "10.206.0.1/24",
    "10.207.0.1/24",
    "10.208.0.1/24",
    "10.209.0.1/24",
    "10.210.0.1/24",
    "172.30.203.1/24",
    "172.30.204.1/24",
    "192.168.203.1/24",
    "192.168.204.1/24",
];

/// The host's own agent bridges (made by the host from the config): their subnets are ours,
/// not a collision.
pub const OWN_BRIDGES: &[&str] = &["taos-inet", "taos-lan"];

/// One address on one interface, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: IpAddr,
    pub prefix: u8,
    /// A Linux bridge with no physical port: containers' or VMs' network on this host.
    pub internal_bridge: bool,
}

/// One IPv4 route's destination and the interface it leaves by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `a.b.c.d/n`; `default` routes are not collisions and are left out by the gatherer.
    pub destination: String,
    pub interface: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("{0:?} is not an IPv4 subnet (write the bridge's address/prefix, e.g. 10.203.0.1/24)")]
    Bad(String),
    #[error(
        "every candidate subnet collides with this machine's addresses or routes ({taken}); set \
         [runtime] incus_internet_subnet and incus_lan_subnet by hand"
    )]
    NoneFree { taken: String },
}

fn overlaps(a: Range, b: Range) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// What is in use on the machine, as IPv4 ranges: every address's network and every route's
/// destination, except those on the host's own agent bridges.
pub fn taken_ranges(addresses: &[InterfaceAddress], routes: &[Route]) -> Vec<Range> {
    let own = |name: &str| OWN_BRIDGES.contains(&name);
    let mut taken = Vec::new();
    for a in addresses {
        if let (IpAddr::V4(v4), false) = (a.address, own(&a.interface)) {
            if !v4.is_loopback() {
                taken.push(Range::network(v4, a.prefix));
            }
        }
    }
    for r in routes {
        if own(&r.interface) {
            continue;
        }
        if let Some(range) = Range::parse(&r.destination) {
            taken.push(range);
        }
    }
    taken
}

/// The subnets for the agents' bridges, one per `wanted` (the config's current values, in
/// order): each wanted subnet is kept when it collides with nothing taken nor with one chosen
/// before it; otherwise the next free candidate replaces it.
pub fn choose_subnets(
    wanted: &[&str],
    candidates: &[&str],
    taken: &[Range],
) -> Result<Vec<String>, SubnetError> {
    let mut chosen: Vec<(String, Range)> = Vec::new();
    let free = |range: Range, chosen: &[(String, Range)]| {
        !taken.iter().any(|t| overlaps(*t, range))
            && !chosen.iter().any(|(_, c)| overlaps(*c, range))
    };
    for want in wanted {
        let range = Range::parse(want)
            .filter(|_| want.contains('/'))
            .ok_or_else(|| SubnetError::Bad(want.to_string()))?;
        if free(range, &chosen) {
            chosen.push((want.to_string(), range));
            continue;
        }
        let next = candidates
            .iter()
            .filter_map(|c| Range::parse(c).map(|r| (c.to_string(), r)))
            .find(|(_, r)| free(*r, &chosen));
        match next {
            Some(pick) => chosen.push(pick),
            None => {
                let taken: Vec<String> = taken
                    .iter()
                    .map(|r| {
                        format!(
                            "{}-{}",
                            std::net::Ipv4Addr::from(r.first),
                            std::net::Ipv4Addr::from(r.last)
                        )
                    })
                    .collect();
                return Err(SubnetError::NoneFree {
                    taken: taken.join(", "),
                });
            }
        }
    }
    Ok(chosen.into_iter().map(|(s, _)| s).collect())
}

/// Interfaces that are never "the LAN": loopback, and the bridges and veths of incus, LXC,
/// Docker, libvirt and taos itself.
fn is_container_interface(name: &str) -> bool {
    name == "lo"
        || [
            "incusbr", "lxcbr", "lxdbr", "taos", "docker", "br-", "veth", "virbr", "vnet", "tap",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The network `address/prefix` is in, with the host bits cleared.
fn network_of(address: IpAddr, prefix: u8) -> Network {
    let address = match address {
        IpAddr::V4(v4) => {
            let prefix = prefix.min(32);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let prefix = prefix.min(128);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Network { address, prefix }
}

/// The LAN the public port opens to: the networks of this machine's own addresses on real
/// interfaces (not loopback, not container bridges), each once, in the order found.
pub fn derive_lan(addresses: &[InterfaceAddress]) -> Vec<Network> {
    let mut out: Vec<Network> = Vec::new();
    for a in addresses {
        if a.address.is_loopback() || a.internal_bridge || is_container_interface(&a.interface) {
            continue;
        }
        let network = network_of(a.address, a.prefix);
        if !out.contains(&network) {
            out.push(network);
        }
    }
    out
}

/// The machine's addresses now (getifaddrs).
pub fn gather_addresses() -> Vec<InterfaceAddress> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let (address, prefix) = match &i.addr {
                if_addrs::IfAddr::V4(v4) => (IpAddr::V4(v4.ip), v4.prefixlen),
                if_addrs::IfAddr::V6(v6) => (IpAddr::V6(v6.ip), v6.prefixlen),
            };
            InterfaceAddress {
                internal_bridge: crate::runtime::netpolicy::is_internal_bridge(&i.name),
                interface: i.name,
                address,
                prefix,
            }
        })
        .collect()
}

/// The machine's IPv4 routes now, from every table (`ip -json -4 route show table all`).
pub fn gather_routes() -> Result<Vec<Route>, String> {
    let output = std::process::Command::new("ip")
        .args(["-json", "-4", "route", "show", "table", "all"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "ip route failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cannot read ip's route list: {e}"))?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            // The default route and broadcast/local entries of single addresses say nothing
            // about which subnets are in use beyond the addresses themselves.
            if dst == "default" || r["type"].as_str().is_some_and(|t| t != "unicast") {
                return None;
            }
            Some(Route {
                destination: if dst.contains('/') {
                    dst.to_string()
                } else {
                    format!("{dst}/32")
                },
                interface: r["dev"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(interface: &str, address: &str, prefix: u8) -> InterfaceAddress {
        InterfaceAddress {
            interface: interface.to_string(),
            address: address.parse().unwrap(),
            prefix,
            internal_bridge: false,
        }
    }

    fn route(destination: &str, interface: &str) -> Route {
        Route {
            destination: destination.to_string(),
            interface: interface.to_string(),
        }
    }

    #[test]
    fn free_defaults_are_kept() {
        let taken = taken_ranges(
            &[addr("eth0", "192.168.1.20", 24), addr("lo", "127.0.0.1", 8)],
            &[route("192.168.1.0/24", "eth0")],
        );
        let chosen = choose_subnets(
            &["10.203.0.1/24", "10.204.0.1/24"],
            SUBNET_CANDIDATES,
            &taken,
        )
        .unwrap();
        assert_eq!(chosen, ["10.203.0.1/24", "10.204.0.1/24"]);
    }

    #[test]
    fn a_colliding_subnet_moves_to_the_next_free_candidate() {
        // The LAN is 10.0.0.0/8 (a /8 swallows every 10.x candidate), and a VPN route holds
        // 172.30.203.0/24: the first free candidates are 172.30.204 and 192.168.203.
        let taken = taken_ranges(
            &[addr("eth0", "10.1.2.3", 8)],
            &[route("172.30.203.0/24", "wg0"), route("10.0.0.0/8", "eth0")],
        );
        let chosen = choose_subnets(
            &["10.203.0.1/24", "10.204.0.1/24"],
            SUBNET_CANDIDATES,
            &taken,
        )
        .unwrap();
        assert_eq!(chosen, ["172.30.204.1/24", "192.168.203.1/24"]);
    }

    #[test]
    fn only_the_colliding_one_moves_and_never_onto_the_other() {
        // Docker's bridge holds 10.204.0.0/16: 10.203 stays, and the LAN bridge skips 10.203
        // (chosen already) for 10.205.
        let taken = taken_ranges(&[addr("docker0", "10.204.0.1", 16)], &[]);
        let chosen = choose_subnets(
            &["10.203.0.1/24", "10.204.0.1/24"],
            SUBNET_CANDIDATES,
            &taken,
        )
        .unwrap();
        assert_eq!(chosen, ["10.203.0.1/24", "10.205.0.1/24"]);
        // Two wanted subnets that overlap each other: the second moves.
        let chosen =
            choose_subnets(&["10.203.0.1/24", "10.203.0.1/16"], SUBNET_CANDIDATES, &[]).unwrap();
        assert_eq!(chosen, ["10.203.0.1/24", "10.204.0.1/24"]);
    }

    #[test]
    fn the_hosts_own_bridges_are_not_collisions() {
        // A re-run: taos-inet and taos-lan already carry the chosen subnets.
        let taken = taken_ranges(
            &[
                addr("taos-inet", "10.203.0.1", 24),
                addr("taos-lan", "10.204.0.1", 24),
            ],
            &[
                route("10.203.0.0/24", "taos-inet"),
                route("10.204.0.0/24", "taos-lan"),
            ],
        );
        assert!(taken.is_empty());
        let chosen = choose_subnets(
            &["10.203.0.1/24", "10.204.0.1/24"],
            SUBNET_CANDIDATES,
            &taken,
        )
        .unwrap();
        assert_eq!(chosen, ["10.203.0.1/24", "10.204.0.1/24"]);
    }

    #[test]
    fn no_free_candidate_is_an_error_in_words() {
        let taken = [
            Range::parse("0.0.0.0/1").unwrap(),
            Range::parse("128.0.0.0/1").unwrap(),
        ];
        let err = choose_subnets(&["10.203.0.1/24"], SUBNET_CANDIDATES, &taken).unwrap_err();
        assert!(matches!(err, SubnetError::NoneFree { .. }));
        assert!(err.to_string().contains("incus_internet_subnet"), "{err}");
        assert_eq!(
            choose_subnets(&["10.203.0.1"], SUBNET_CANDIDATES, &[]),
            Err(SubnetError::Bad("10.203.0.1".to_string()))
        );
        assert!(choose_subnets(&["lan"], SUBNET_CANDIDATES, &[]).is_err());
    }

    #[test]
    fn the_lan_is_the_real_interfaces_networks() {
        let mut incus = addr("incusbr0", "10.200.0.1", 24);
        incus.internal_bridge = true;
        let mut unnamed_bridge = addr("mybridge", "10.99.0.1", 24);
        unnamed_bridge.internal_bridge = true;
        let lan = derive_lan(&[
            addr("lo", "127.0.0.1", 8),
            addr("lo", "::1", 128),
            addr("eth0", "192.168.1.20", 24),
            addr("eth0", "fd12:3456::20", 64),
            addr("eth0", "fe80::1234:5678", 64),
            addr("wlan0", "192.168.1.31", 24),
            addr("wlan0", "10.10.5.9", 16),
            addr("docker0", "172.17.0.1", 16),
            addr("br-0a1b2c", "172.18.0.1", 16),
            addr("taos-inet", "10.203.0.1", 24),
            addr("veth12", "169.254.3.3", 16),
            incus,
            unnamed_bridge,
        ]);
        let lan: Vec<String> = lan.iter().map(ToString::to_string).collect();
        assert_eq!(
            lan,
            [
                "192.168.1.0/24",
                "fd12:3456::/64",
                "fe80::/64",
                "10.10.0.0/16"
            ]
        );
        assert!(derive_lan(&[addr("lo", "127.0.0.1", 8)]).is_empty());
    }
}
