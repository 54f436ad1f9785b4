//! Leases in flannel's shapes: the attribute JSON stored per subnet, the VXLAN
//! backend data of each family, the `10.244.3.0-24` (dual-stack:
//! `10.244.3.0-24&fc00:0:0:3::-64`, IPv6-only: `0.0.0.0-0&fc00:0:0:3::-64`)
//! key form of a lease's subnets, and the [`LeaseId`] those subnets make.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// flannel's `LeaseAttrs`, as stored under `<prefix>/subnets/<key>`:
/// `{"PublicIP":"…","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}`,
/// byte for byte as flanneld v0.28 writes it, and on a dual-stack node
/// `"PublicIPv6":"…"` and
/// `"BackendV6Data":{"VNI":1,"VtepMAC":"…"}` (the VTEP of its IPv6 underlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// `null` on a node without IPv6, as flanneld writes it (the field has
    /// no `omitempty` in flannel's `LeaseAttrs`).
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// Left out when null (an IPv6-only node), as flanneld does
    /// (`omitempty`).
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub backend_data: serde_json::Value,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
}

/// What names a lease, as its store key does: its IPv4 subnet, its IPv6
/// subnet, or both. Two leases are the same lease when their subnets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl LeaseId {
    /// The id of an IPv4-only lease.
    pub fn v4(s: Ipv4Net) -> LeaseId {
        LeaseId {
            v4: Some(s),
            v6: None,
        }
    }

    /// flannel's key of these subnets ([`lease_key`]).
    pub fn key(&self) -> String {
        lease_key(self.v4.as_ref(), self.v6.as_ref())
    }
}

/// Reads the form [`LeaseId`]'s `Display` and `Debug` users write: an IPv4
/// subnet (`10.244.3.0/24`), an IPv6 one (`fc00:0:0:3::/64`, an IPv6-only
/// lease), or both joined by `&`.
impl std::str::FromStr for LeaseId {
    type Err = LeaseError;

    fn from_str(s: &str) -> Result<LeaseId, LeaseError> {
        let bad = || LeaseError::BadKey(s.to_string());
        let mut id = LeaseId { v4: None, v6: None };
        for part in s.split('&') {
            match part.parse::<ipnet::IpNet>().map_err(|_| bad())? {
                ipnet::IpNet::V4(n) if id.v4.is_none() => id.v4 = Some(n),
                ipnet::IpNet::V6(n) if id.v6.is_none() => id.v6 = Some(n),
                _ => return Err(bad()),
            }
        }
        Ok(id)
    }
}

/// The lease's name in logs: its IPv4 subnet, or its IPv6 subnet on an
/// IPv6-only network.
impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(s), _) => write!(f, "{s}"),
            (None, Some(s6)) => write!(f, "{s6}"),
            (None, None) => f.write_str("(no subnet)"),
        }
    }
}

/// A leased subnet: who holds it, how to reach it, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node's IPv4 pod subnet; `None` in an IPv6-only network (flannel's
    /// key then reads `0.0.0.0-0&…` and its PublicIP `0.0.0.0`).
    pub subnet: Option<Ipv4Net>,
    /// The node's IPv6 pod subnet, in a dual-stack or IPv6-only network.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// `None` for leases that do not expire (a kube node's podCIDR).
    pub expiration: Option<SystemTime>,
}

/// A lease key that is not flannel's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("subnet key {0:?} is not of the form 10.244.3.0-24 or 10.244.3.0-24&fc00:0:0:3::-64")]
    BadKey(String),
}

impl LeaseAttrs {
    /// The address that names the node: its PublicIP, or with `ipv6_only`
    /// (an IPv6-only network, whose PublicIP is `0.0.0.0`) its PublicIPv6
    /// (unspecified when it announces none). Stores tell an own lease from
    /// another node's by it; per-peer counters and logs name a peer by it.
    pub fn public_addr(&self, ipv6_only: bool) -> IpAddr {
        match (ipv6_only, self.public_ipv6) {
            (true, Some(ip6)) => IpAddr::V6(ip6),
            (true, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (false, _) => IpAddr::V4(self.public_ip),
        }
    }
}

impl Lease {
    /// The lease's key in flannel's form: `10.244.3.0-24`, or
    /// `10.244.3.0-24&fc00:0:0:3::-64` with an IPv6 subnet.
    pub fn key(&self) -> String {
        self.id().key()
    }

    /// The lease's subnets, which name it.
    pub fn id(&self) -> LeaseId {
        LeaseId {
            v4: self.subnet,
            v6: self.ipv6_subnet,
        }
    }

    /// The address that names the node holding the lease: its PublicIP, or
    /// its PublicIPv6 on an IPv6-only network ([`LeaseAttrs::public_addr`]).
    pub fn public_addr(&self) -> IpAddr {
        self.attrs.public_addr(self.subnet.is_none())
    }

    /// Whether the lease has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

/// Why `s` cannot be a node's subnet, if it cannot: a /0 would route every
/// address (the underlay's too) into the overlay, and a /31 or /32 leaves no
/// address for a gateway and a pod. Every store's data and subnet.env are
/// held to this before weft routes to, or hands out addresses from, a subnet.
pub fn node_subnet_problem(s: &Ipv4Net) -> Option<&'static str> {
    match s.prefix_len() {
        0 => Some("a /0 node subnet would take every address, the underlay's included"),
        31 | 32 => Some(
            "a /31 or /32 node subnet leaves no address for the gateway and a pod (it must be /30 or shorter)",
        ),
        _ => None,
    }
}

/// The same check for an IPv6 node subnet: a /0 takes every address, and a
/// /127 or /128 leaves no room for a gateway and a pod.
pub fn node_subnet6_problem(s: &Ipv6Net) -> Option<&'static str> {
    match s.prefix_len() {
        0 => Some("a /0 node subnet would take every address, the underlay's included"),
        127 | 128 => Some(
            "a /127 or /128 node subnet leaves no address for the gateway and a pod (it must be /126 or shorter)",
        ),
        _ => None,
    }
}

impl Lease {
    /// The lease without its IPv6 half (subnet, PublicIPv6, BackendV6Data):
    /// what is left to route to when only that half is unusable.
    pub fn without_ipv6(mut self) -> Lease {
        self.ipv6_subnet = None;
        self.attrs.public_ipv6 = None;
        self.attrs.backend_v6_data = None;
        self
    }
}

/// flannel's key form of a subnet: `10.244.3.0/24` → `10.244.3.0-24`.
pub fn subnet_key(s: &Ipv4Net) -> String {
    format!("{}-{}", s.addr(), s.prefix_len())
}

/// The IPv4 half of an IPv6-only lease's key, as flannel's `MakeSubnetKey`
/// writes its empty IPv4 subnet.
const NO_IPV4: &str = "0.0.0.0-0";

/// flannel's key for a lease's subnets: the IPv4 one, then `&` and the IPv6
/// one when there is one (`10.244.3.0-24&fc00:0:0:3::-64`); an IPv6-only
/// lease's IPv4 half is `0.0.0.0-0`.
pub fn lease_key(s: Option<&Ipv4Net>, s6: Option<&Ipv6Net>) -> String {
    let k4 = s.map_or_else(|| NO_IPV4.to_string(), subnet_key);
    match s6 {
        None => k4,
        Some(s6) => format!("{k4}&{}-{}", s6.addr(), s6.prefix_len()),
    }
}

/// Parses flannel's key form of a lease's subnets: `10.244.3.0-24`,
/// `10.244.3.0-24&fc00:0:0:3::-64` in a dual-stack network, or
/// `0.0.0.0-0&fc00:0:0:3::-64` (no IPv4 subnet) in an IPv6-only one. A bare
/// `0.0.0.0-0` is a /0 IPv4 subnet, left for [`node_subnet_problem`] to refuse.
///
/// # Errors
/// [`LeaseError::BadKey`] for anything else, including host bits set.
pub fn parse_subnet_key(k: &str) -> Result<LeaseId, LeaseError> {
    let bad = || LeaseError::BadKey(k.to_string());
    let (k4, k6) = match k.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (k, None),
    };
    let (a, l) = k4.rsplit_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let l: u8 = l.parse().map_err(|_| bad())?;
    let n = Ipv4Net::new(a, l).map_err(|_| bad())?;
    if n.network() != a {
        return Err(bad());
    }
    let n6 = match k6 {
        None => None,
        Some(k6) => {
            let (a, l) = k6.rsplit_once('-').ok_or_else(bad)?;
            let a: Ipv6Addr = a.parse().map_err(|_| bad())?;
            let l: u8 = l.parse().map_err(|_| bad())?;
            let n6 = Ipv6Net::new(a, l).map_err(|_| bad())?;
            if n6.network() != a {
                return Err(bad());
            }
            Some(n6)
        }
    };
    let v4 = if n6.is_some() && k4 == NO_IPV4 {
        None
    } else {
        Some(n)
    };
    Ok(LeaseId { v4, v6: n6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys() {
        let n: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(&n), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24").unwrap(), LeaseId::v4(n));
        // flannel's dual-stack key (pkg/subnet MakeSubnetKey).
        let n6: Ipv6Net = "fc00:0:0:3::/64".parse().unwrap();
        let dual = LeaseId {
            v4: Some(n),
            v6: Some(n6),
        };
        assert_eq!(dual.key(), "10.244.3.0-24&fc00:0:0:3::-64");
        assert_eq!(
            parse_subnet_key("10.244.3.0-24&fc00:0:0:3::-64").unwrap(),
            dual
        );
        // An IPv6-only lease: flannel's empty IPv4 subnet, named by its IPv6 one.
        let v6only = LeaseId {
            v4: None,
            v6: Some(n6),
        };
        assert_eq!(v6only.key(), "0.0.0.0-0&fc00:0:0:3::-64");
        assert_eq!(parse_subnet_key(&v6only.key()).unwrap(), v6only);
        assert_eq!(v6only.to_string(), "fc00:0:0:3::/64");
        assert_eq!(dual.to_string(), "10.244.3.0/24");
        // A bare 0.0.0.0-0 stays a /0, for the node-subnet check to refuse.
        assert_eq!(
            parse_subnet_key("0.0.0.0-0").unwrap(),
            LeaseId::v4("0.0.0.0/0".parse().unwrap())
        );
        for bad in [
            "10.244.3.0-24&",
            "10.244.3.0-24&fc00:0:0:3::1-64",
            "10.244.3.0-24&fc00:0:0:3::-129",
            "10.244.3.0-24&10.0.0.0-8",
            "10.244.3.0-24&fc00::-64&fc01::-64",
            "10.244.3.0/24",
            "10.244.3.1-24",
            "10.244.3.0-33",
            "x-24",
            "",
            "-",
        ] {
            assert!(parse_subnet_key(bad).is_err(), "{bad}");
        }
    }
}
