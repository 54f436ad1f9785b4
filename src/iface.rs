//! Which interface carries VXLAN between nodes: flannel's `--iface`,
//! `--iface-regex`, `--iface-can-reach` and `--public-ip`, else the interface of
//! the default route.

use std::net::{Ipv4Addr, UdpSocket};

/// How the operator asked for the external interface.
#[derive(Debug, Clone, Default)]
pub struct IfaceSpec {
    /// Names or IPv4 addresses, tried in order.
    pub iface: Vec<String>,
    /// Regular expressions matched against names and addresses, tried in order.
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel would route this address through.
    pub iface_can_reach: Option<Ipv4Addr>,
    /// The address other nodes use to reach this one (default: the interface's).
    pub public_ip: Option<Ipv4Addr>,
}

/// The chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub name: String,
    /// The interface's own address: the VXLAN socket binds here.
    pub addr: Ipv4Addr,
    /// The address advertised in the lease.
    pub public_ip: Ipv4Addr,
    /// The interface's global IPv6 address, in a dual-stack network: the
    /// IPv6 VXLAN socket binds here.
    pub addr6: Option<std::net::Ipv6Addr>,
    /// The IPv6 address advertised in the lease (`PublicIPv6`).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
}

const FLAGS_HINT: &str = "name it with --iface NAME|IP, --iface-regex REGEX or --iface-can-reach IP (and --public-ip if other nodes reach this one at another address)";

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "Unable to find default route: this network namespace has no IPv4 default route, so weftd cannot tell which interface carries traffic between nodes. Add a default route (ip route add default via GATEWAY), or {FLAGS_HINT}"
    )]
    NoDefaultRoute,
    #[error("the default route's interface {name} has no IPv4 address; {FLAGS_HINT}")]
    DefaultNoAddr { name: String },
    #[error("no interface matches {wanted}; interfaces with IPv4 addresses here: {available}")]
    NotFound { wanted: String, available: String },
    #[error("--iface-regex {regex:?} is not a valid regular expression: {source}")]
    BadRegex { regex: String, source: regex::Error },
    #[error(
        "--iface-can-reach {addr}: no route to it from this node ({source}); check the address or {FLAGS_HINT}"
    )]
    Unreachable {
        addr: Ipv4Addr,
        source: std::io::Error,
    },
    #[error("cannot list interfaces: {0}")]
    List(std::io::Error),
}

/// The first global (not link-local, not loopback) IPv6 address of interface `name`.
pub fn global_ipv6_of(name: &str) -> Option<std::net::Ipv6Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|a| a.interface_name == name)
        .filter_map(|a| a.address?.as_sockaddr_in6().map(|s| s.ip()))
        .find(|ip| !ip.is_unicast_link_local() && !ip.is_loopback() && !ip.is_unspecified())
}

/// Every interface that has an IPv4 address: `(name, address)`, in kernel order.
///
/// # Errors
/// [`IfaceError::List`] when getifaddrs fails.
pub fn ipv4_interfaces() -> Result<Vec<(String, Ipv4Addr)>, IfaceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::List(e.into()))?;
    Ok(addrs
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .collect())
}

/// The interface of the IPv4 default route with the lowest metric, from
/// `/proc/net/route` text.
pub fn default_route_iface(proc_net_route: &str) -> Option<String> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
                Some((f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
            } else {
                None
            }
        })
        .min()
        .map(|(_, n)| n)
}

/// Chooses the external interface as flannel does.
///
/// # Errors
/// [`IfaceError`] naming what was asked for, what exists, and the flags that fix it.
pub fn select(spec: &IfaceSpec) -> Result<ExtIface, IfaceError> {
    let all = ipv4_interfaces()?;
    let done = |name: &str, addr: Ipv4Addr| {
        let addr6 = global_ipv6_of(name);
        ExtIface {
            name: name.to_string(),
            addr,
            public_ip: spec.public_ip.unwrap_or(addr),
            addr6,
            public_ipv6: addr6,
        }
    };
    let available = || {
        let v: Vec<String> = all.iter().map(|(n, a)| format!("{n}={a}")).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };

    if !spec.iface.is_empty() {
        for want in &spec.iface {
            let hit = match want.parse::<Ipv4Addr>() {
                Ok(ip) => all.iter().find(|(_, a)| *a == ip),
                Err(_) => all.iter().find(|(n, _)| n == want),
            };
            if let Some((n, a)) = hit {
                return Ok(done(n, *a));
            }
        }
        return Err(IfaceError::NotFound {
            wanted: format!("--iface {}", spec.iface.join(",")),
            available: available(),
        });
    }
    if !spec.iface_regex.is_empty() {
        for r in &spec.iface_regex {
            let re = regex::Regex::new(r).map_err(|source| IfaceError::BadRegex {
                regex: r.clone(),
                source,
            })?;
            if let Some((n, a)) = all
                .iter()
                .find(|(n, a)| n != "lo" && (re.is_match(n) || re.is_match(&a.to_string())))
            {
                return Ok(done(n, *a));
            }
        }
        return Err(IfaceError::NotFound {
            wanted: format!("--iface-regex {}", spec.iface_regex.join(",")),
            available: available(),
        });
    }
    if let Some(target) = spec.iface_can_reach {
        // connect() on a UDP socket only asks the routing table; nothing is sent.
        let local = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect((target, 9)).map(|_| s))
            .and_then(|s| s.local_addr())
            .map_err(|source| IfaceError::Unreachable {
                addr: target,
                source,
            })?;
        let ip = match local.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => unreachable!("an IPv4 socket has an IPv4 address"),
        };
        return match all.iter().find(|(_, a)| *a == ip) {
            Some((n, a)) => Ok(done(n, *a)),
            None => Err(IfaceError::NotFound {
                wanted: format!("the interface holding {ip} (the source address towards {target})"),
                available: available(),
            }),
        };
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let name = default_route_iface(&routes).ok_or(IfaceError::NoDefaultRoute)?;
    match all.iter().find(|(n, _)| *n == name) {
        Some((n, a)) => Ok(done(n, *a)),
        None => Err(IfaceError::DefaultNoAddr { name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_from_proc() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                 eth0\t00000000\t010011AC\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                 eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(default_route_iface(t).as_deref(), Some("eth0"));
        assert_eq!(default_route_iface("Iface\tDestination\n"), None);
        assert_eq!(default_route_iface(""), None);
    }

    #[test]
    fn explicit_choices_and_their_errors() {
        // Loopback always exists with 127.0.0.1.
        let s = IfaceSpec {
            iface: vec!["nope0".into(), "127.0.0.1".into()],
            public_ip: Some(Ipv4Addr::new(198, 51, 100, 7)),
            ..Default::default()
        };
        let e = select(&s).unwrap();
        assert_eq!((e.name.as_str(), e.addr), ("lo", Ipv4Addr::LOCALHOST));
        assert_eq!(e.public_ip, Ipv4Addr::new(198, 51, 100, 7));
        let s = IfaceSpec {
            iface: vec!["nope0".into()],
            ..Default::default()
        };
        let m = select(&s).unwrap_err().to_string();
        assert!(
            m.contains("--iface nope0") && m.contains("lo=127.0.0.1"),
            "{m}"
        );
        let s = IfaceSpec {
            iface_regex: vec!["(".into()],
            ..Default::default()
        };
        assert!(
            select(&s)
                .unwrap_err()
                .to_string()
                .contains("not a valid regular expression")
        );
        let s = IfaceSpec {
            iface_can_reach: Some(Ipv4Addr::LOCALHOST),
            ..Default::default()
        };
        assert_eq!(select(&s).unwrap().name, "lo");
        assert!(
            IfaceError::NoDefaultRoute
                .to_string()
                .contains("--iface-can-reach")
        );
    }
}
