//! Which interface carries VXLAN between nodes: flannel's `--iface`,
//! `--iface-regex`, `--iface-can-reach`, `--public-ip` and `--public-ipv6`,
//! else the interface of the default route; in a dual-stack network also
//! that interface's global IPv6 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

/// How the operator asked for the external interface.
#[derive(Debug, Clone, Default)]
pub struct IfaceSpec {
    /// Names or IP addresses (IPv4 or IPv6), tried in order.
    pub iface: Vec<String>,
    /// Regular expressions matched against names and addresses, tried in order.
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel would route this address (IPv4 or IPv6) through.
    pub iface_can_reach: Option<IpAddr>,
    /// The address other nodes use to reach this one (default: the interface's).
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 address other nodes use to reach this one in a dual-stack
    /// network (default: the interface's global IPv6 address).
    pub public_ipv6: Option<Ipv6Addr>,
}

/// The chosen interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtIface {
    pub name: String,
    /// The interface's own address: the VXLAN socket binds here.
    pub addr: Ipv4Addr,
    /// The address advertised in the lease.
    pub public_ip: Ipv4Addr,
    /// The interface's global IPv6 address, where the IPv6 VXLAN socket
    /// binds (dual-stack only; `None` when IPv6 is not wanted, or when only
    /// `--public-ipv6` names one).
    pub addr6: Option<Ipv6Addr>,
    /// The IPv6 address advertised in the lease (dual-stack only):
    /// `--public-ipv6`, else `addr6`.
    pub public_ipv6: Option<Ipv6Addr>,
}

const FLAGS_HINT: &str = "name it with --iface NAME|IP, --iface-regex REGEX or --iface-can-reach IP (and --public-ip if other nodes reach this one at another address)";

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "Unable to find default route: this network namespace has no {family} default route, so weftd cannot tell which interface carries traffic between nodes. Add a default route (ip {flag}route add default via GATEWAY), or {FLAGS_HINT}"
    )]
    NoDefaultRoute {
        family: &'static str,
        flag: &'static str,
    },
    #[error("the default route's interface {name} has no {family} address; {FLAGS_HINT}")]
    DefaultNoAddr { name: String, family: &'static str },
    #[error(
        "interface {name} has no IPv4 address, and the network carries IPv4 (net-conf.json's EnableIPv4, true by default); {FLAGS_HINT}, or on an IPv6-only underlay set EnableIPv4 to false with EnableIPv6 and IPv6Network"
    )]
    NoIpv4 { name: String },
    #[error(
        "interface {name} has no global IPv6 address (only link-local ones, or none), but net-conf.json enables IPv6; add an IPv6 address to {name}, name an interface that has one with --iface NAME|IPv6, set --public-ipv6, or set EnableIPv6 to false"
    )]
    NoIpv6 { name: String },
    #[error("no interface matches {wanted}; interfaces with IP addresses here: {available}")]
    NotFound { wanted: String, available: String },
    #[error("--iface-regex {regex:?} is not a valid regular expression: {source}")]
    BadRegex { regex: String, source: regex::Error },
    #[error(
        "--iface-can-reach {addr}: no route to it from this node ({source}); check the address or {FLAGS_HINT}"
    )]
    Unreachable {
        addr: IpAddr,
        source: std::io::Error,
    },
    #[error("cannot list interfaces: {0}")]
    List(std::io::Error),
}

/// Every interface that has an IPv4 address: `(name, address)`, in kernel order.
///
/// # Errors
/// [`IfaceError::List`] when getifaddrs fails.
pub fn ipv4_interfaces() -> Result<Vec<(String, Ipv4Addr)>, IfaceError> {
    Ok(interfaces()?
        .into_iter()
        .filter_map(|(n, a)| match a {
            IpAddr::V4(a) => Some((n, a)),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Every address of every interface, IPv4 and IPv6: `(name, address)`, in kernel order.
///
/// # Errors
/// [`IfaceError::List`] when getifaddrs fails.
pub fn interfaces() -> Result<Vec<(String, IpAddr)>, IfaceError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfaceError::List(e.into()))?;
    Ok(addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect())
}

/// Whether `a` can carry VXLAN to other nodes: not link-local, loopback,
/// multicast or unspecified.
pub fn is_global6(a: &Ipv6Addr) -> bool {
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (a.segments()[0] & 0xffc0) == 0xfe80)
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

/// Chooses the external interface as flannel does; with `want_ipv6` (a
/// dual-stack network) also its IPv6 address: the one `--iface` or
/// `--iface-can-reach` named, else the interface's first global one.
///
/// # Errors
/// [`IfaceError`] naming what was asked for, what exists, and the flags that
/// fix it; [`IfaceError::NoIpv6`] when IPv6 is wanted and the interface has
/// no global IPv6 address and `--public-ipv6` is not set.
pub fn select(spec: &IfaceSpec, want_ipv6: bool) -> Result<ExtIface, IfaceError> {
    select_for(spec, true, want_ipv6)
}

/// [`select`] for the families a network carries: without `want_ipv4` (an
/// IPv6-only network) the interface needs no IPv4 address, its `addr` and
/// `public_ip` are `0.0.0.0`, and the default route looked for is IPv6's.
///
/// # Errors
/// As [`select`].
pub fn select_for(
    spec: &IfaceSpec,
    want_ipv4: bool,
    want_ipv6: bool,
) -> Result<ExtIface, IfaceError> {
    let all = interfaces()?;
    choose_for(spec, want_ipv4, want_ipv6, &all, || {
        let file = if want_ipv4 {
            "/proc/net/route"
        } else {
            "/proc/net/ipv6_route"
        };
        std::fs::read_to_string(file).unwrap_or_default()
    })
}

/// The interface of the IPv6 default route with the lowest metric, from
/// `/proc/net/ipv6_route` text (destination `::/0`).
pub fn default_route6_iface(proc_net_ipv6_route: &str) -> Option<String> {
    proc_net_ipv6_route
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dest plen src plen nexthop metric refcnt use flags iface
            if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                Some((
                    u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX),
                    f[9].to_string(),
                ))
            } else {
                None
            }
        })
        .min()
        .map(|(_, n)| n)
}

#[cfg(test)]
fn choose(
    spec: &IfaceSpec,
    want_ipv6: bool,
    all: &[(String, IpAddr)],
    routes: impl FnOnce() -> String,
) -> Result<ExtIface, IfaceError> {
    choose_for(spec, true, want_ipv6, all, routes)
}

/// [`select_for`] over the addresses `all` and the routing table `routes`
/// reads (IPv4's, or IPv6's without `want_ipv4`).
fn choose_for(
    spec: &IfaceSpec,
    want_ipv4: bool,
    want_ipv6: bool,
    all: &[(String, IpAddr)],
    routes: impl FnOnce() -> String,
) -> Result<ExtIface, IfaceError> {
    let v4_of = |name: &str| {
        all.iter().find_map(|(n, a)| match a {
            IpAddr::V4(a) if n == name => Some(*a),
            _ => None,
        })
    };
    // The interface `name`, with `addr6` when the operator named that address.
    let global6_of = |name: &str| {
        all.iter().find_map(|(n, a)| match a {
            IpAddr::V6(a) if n == name && is_global6(a) => Some(*a),
            _ => None,
        })
    };
    // The family an interface must have to be chosen.
    let usable = |name: &str| {
        if want_ipv4 {
            v4_of(name).is_some()
        } else {
            global6_of(name).is_some()
        }
    };
    let done = |name: &str, named6: Option<Ipv6Addr>| -> Result<ExtIface, IfaceError> {
        let addr = match v4_of(name) {
            _ if !want_ipv4 => Ipv4Addr::UNSPECIFIED,
            Some(a) => a,
            None => {
                return Err(IfaceError::NoIpv4 {
                    name: name.to_string(),
                });
            }
        };
        let (addr6, public_ipv6) = if want_ipv6 {
            let addr6 = named6.or_else(|| global6_of(name));
            let public_ipv6 = spec.public_ipv6.or(addr6);
            if public_ipv6.is_none() {
                return Err(IfaceError::NoIpv6 {
                    name: name.to_string(),
                });
            }
            (addr6, public_ipv6)
        } else {
            (None, None)
        };
        Ok(ExtIface {
            name: name.to_string(),
            addr,
            public_ip: if want_ipv4 {
                spec.public_ip.unwrap_or(addr)
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            addr6,
            public_ipv6,
        })
    };
    let available = || {
        let v: Vec<String> = all.iter().map(|(n, a)| format!("{n}={a}")).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let v6 = |a: &IpAddr| match a {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    };

    if !spec.iface.is_empty() {
        for want in &spec.iface {
            let hit = match want.parse::<IpAddr>() {
                Ok(ip) => all.iter().find(|(_, a)| *a == ip),
                Err(_) => all.iter().find(|(n, _)| n == want),
            };
            if let Some((n, a)) = hit {
                let named6 = want.parse::<IpAddr>().ok().and_then(|_| v6(a));
                return done(n, named6);
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
            // An interface with an address of the network's family (IPv4,
            // or IPv6 on an IPv6-only network), matched by name or by any address.
            let hit = all.iter().find(|(n, _)| {
                n != "lo"
                    && usable(n)
                    && (re.is_match(n)
                        || all
                            .iter()
                            .any(|(m, a)| m == n && re.is_match(&a.to_string())))
            });
            if let Some((n, _)) = hit {
                return done(n, None);
            }
        }
        return Err(IfaceError::NotFound {
            wanted: format!("--iface-regex {}", spec.iface_regex.join(",")),
            available: available(),
        });
    }
    if let Some(target) = spec.iface_can_reach {
        // connect() on a UDP socket only asks the routing table; nothing is sent.
        let any: IpAddr = match target {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let local = UdpSocket::bind((any, 0))
            .and_then(|s| s.connect((target, 9)).map(|_| s))
            .and_then(|s| s.local_addr())
            .map_err(|source| IfaceError::Unreachable {
                addr: target,
                source,
            })?;
        let ip = local.ip();
        return match all.iter().find(|(_, a)| *a == ip) {
            Some((n, a)) => done(n, v6(a)),
            None => Err(IfaceError::NotFound {
                wanted: format!("the interface holding {ip} (the source address towards {target})"),
                available: available(),
            }),
        };
    }
    let table = routes();
    let name = if want_ipv4 {
        default_route_iface(&table)
    } else {
        default_route6_iface(&table)
    }
    .ok_or(IfaceError::NoDefaultRoute {
        family: if want_ipv4 { "IPv4" } else { "IPv6" },
        flag: if want_ipv4 { "" } else { "-6 " },
    })?;
    if !usable(&name) {
        return Err(IfaceError::DefaultNoAddr {
            name,
            family: if want_ipv4 { "IPv4" } else { "global IPv6" },
        });
    }
    done(&name, None)
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
        let e = select(&s, false).unwrap();
        assert_eq!((e.name.as_str(), e.addr), ("lo", Ipv4Addr::LOCALHOST));
        assert_eq!(e.public_ip, Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!((e.addr6, e.public_ipv6), (None, None));
        let s = IfaceSpec {
            iface: vec!["nope0".into()],
            ..Default::default()
        };
        let m = select(&s, false).unwrap_err().to_string();
        assert!(
            m.contains("--iface nope0") && m.contains("lo=127.0.0.1"),
            "{m}"
        );
        let s = IfaceSpec {
            iface_regex: vec!["(".into()],
            ..Default::default()
        };
        assert!(
            select(&s, false)
                .unwrap_err()
                .to_string()
                .contains("not a valid regular expression")
        );
        let s = IfaceSpec {
            iface_can_reach: Some(Ipv4Addr::LOCALHOST.into()),
            ..Default::default()
        };
        assert_eq!(select(&s, false).unwrap().name, "lo");
        assert!(
            IfaceError::NoDefaultRoute {
                family: "IPv4",
                flag: ""
            }
            .to_string()
            .contains("--iface-can-reach")
        );
    }

    fn table() -> Vec<(String, IpAddr)> {
        [
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("eth0", "192.0.2.10"),
            ("eth0", "fe80::1"),
            ("eth0", "2001:db8::10"),
            ("eth0", "2001:db8::11"),
            ("eth1", "198.51.100.10"),
            ("eth1", "fe80::2"),
            ("v6only", "2001:db8:1::1"),
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect()
    }

    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                          eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\n";

    #[test]
    fn dual_stack_takes_the_interfaces_global_ipv6_address() {
        let all = table();
        let spec = IfaceSpec::default();
        let e = choose(&spec, true, &all, || ROUTES.into()).unwrap();
        assert_eq!(e.name, "eth0");
        assert_eq!(e.addr6, Some("2001:db8::10".parse().unwrap()));
        assert_eq!(e.public_ipv6, e.addr6);
        // IPv6 not wanted: nothing changes.
        let e = choose(&spec, false, &all, || ROUTES.into()).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr6, e.public_ipv6),
            ("eth0", None, None)
        );
        // --iface by IPv6 address: that interface, and that address.
        let spec = IfaceSpec {
            iface: vec!["2001:db8::11".into()],
            public_ipv6: Some("2001:db8:ff::1".parse().unwrap()),
            ..Default::default()
        };
        let e = choose(&spec, true, &all, String::new).unwrap();
        assert_eq!(
            (e.name.as_str(), e.addr),
            ("eth0", "192.0.2.10".parse().unwrap())
        );
        assert_eq!(e.addr6, Some("2001:db8::11".parse().unwrap()));
        assert_eq!(e.public_ipv6, Some("2001:db8:ff::1".parse().unwrap()));
        // The regex matches IPv6 addresses too.
        let spec = IfaceSpec {
            iface_regex: vec!["^2001:db8::1".into()],
            ..Default::default()
        };
        assert_eq!(choose(&spec, true, &all, String::new).unwrap().name, "eth0");
    }

    #[test]
    fn dual_stack_without_a_global_ipv6_address_says_what_to_do() {
        let all = table();
        let spec = IfaceSpec {
            iface: vec!["eth1".into()],
            ..Default::default()
        };
        let m = choose(&spec, true, &all, String::new)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("interface eth1 has no global IPv6 address")
                && m.contains("--iface")
                && m.contains("--public-ipv6")
                && m.contains("EnableIPv6 to false"),
            "{m}"
        );
        // --public-ipv6 stands in for the interface's address.
        let spec = IfaceSpec {
            iface: vec!["eth1".into()],
            public_ipv6: Some("2001:db8:ff::1".parse().unwrap()),
            ..Default::default()
        };
        let e = choose(&spec, true, &all, String::new).unwrap();
        assert_eq!(e.addr6, None);
        assert_eq!(e.public_ipv6, Some("2001:db8:ff::1".parse().unwrap()));
        // An interface without IPv4: weft still needs that half.
        let spec = IfaceSpec {
            iface: vec!["v6only".into()],
            ..Default::default()
        };
        let m = choose(&spec, true, &all, String::new)
            .unwrap_err()
            .to_string();
        assert!(m.contains("v6only has no IPv4 address"), "{m}");
        assert!(!is_global6(&"fe80::1".parse().unwrap()));
        assert!(!is_global6(&"::1".parse().unwrap()));
        assert!(is_global6(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn iface_can_reach_an_ipv6_address() {
        // ::1 routes through lo when the host has IPv6 at all.
        let Ok(all) = interfaces() else { return };
        if !all
            .iter()
            .any(|(_, a)| *a == IpAddr::from(Ipv6Addr::LOCALHOST))
        {
            return;
        }
        let spec = IfaceSpec {
            iface_can_reach: Some(Ipv6Addr::LOCALHOST.into()),
            ..Default::default()
        };
        let e = select(&spec, true).unwrap();
        assert_eq!(e.name, "lo");
        assert_eq!(e.addr6, Some(Ipv6Addr::LOCALHOST));
    }
}
