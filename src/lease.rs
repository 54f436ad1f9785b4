//! Leases in flannel's shapes: the attribute JSON stored per subnet, the VXLAN
//! backend data of each family, the `10.244.3.0-24` (dual-stack:
//! `10.244.3.0-24&fc00:0:0:3::-64`, IPv6-only: `0.0.0.0-0&fc00:0:0:3::-64`)
//! key form of a lease's subnets, and the [`LeaseId`] those subnets make.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::types::{Vni, VtepMac};

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

/// The `BackendData` of a vxlan lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI", default = "one")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: VtepMac,
}

fn one() -> u32 {
    1
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

/// Why a stored lease cannot be used as a VXLAN peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("subnet key {0:?} is not of the form 10.244.3.0-24 or 10.244.3.0-24&fc00:0:0:3::-64")]
    BadKey(String),
    #[error("backend type {0:?} is not vxlan")]
    NotVxlan(String),
    #[error("BackendData is not vxlan data ({{\"VNI\":1,\"VtepMAC\":\"…\"}}): {0}")]
    BadBackendData(String),
    #[error("BackendData VNI {0} does not fit in 24 bits")]
    BadVni(u32),
    #[error("BackendV6Data is not vxlan data ({{\"VNI\":1,\"VtepMAC\":\"…\"}}): {0}")]
    BadBackendV6Data(String),
}

impl LeaseAttrs {
    /// The attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: vxlan_json(vni, vtep_mac),
            backend_v6_data: None,
        }
    }

    /// The attributes of a vxlan lease on an IPv6-only network, as flannel
    /// writes them: PublicIP `0.0.0.0`, no BackendData, and the node's
    /// IPv6 VTEP.
    pub fn vxlan6_only(public_ipv6: Ipv6Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: serde_json::Value::Null,
            backend_v6_data: None,
        }
        .with_ipv6(public_ipv6, vni, vtep_mac)
    }

    /// These attributes with an IPv6 VTEP: the public IPv6 address and the
    /// VtepMAC of the node's IPv6 underlay, as flannel's dual-stack vxlan
    /// backend announces them.
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        self.public_ipv6 = Some(public_ipv6);
        self.backend_v6_data = Some(vxlan_json(vni, vtep_mac));
        self
    }

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

    /// The VXLAN data of the node's IPv6 VTEP; `None` when it announces none
    /// (flannel writes `null` for a node without IPv6).
    ///
    /// # Errors
    /// [`LeaseError`] when the backend is not vxlan or the data is malformed.
    pub fn vxlan_v6_data(&self) -> Result<Option<VxlanData>, LeaseError> {
        let Some(v) = self.backend_v6_data.as_ref().filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        if !self.backend_type.eq_ignore_ascii_case("vxlan") {
            return Err(LeaseError::NotVxlan(self.backend_type.clone()));
        }
        let d: VxlanData = serde_json::from_value(v.clone())
            .map_err(|e| LeaseError::BadBackendV6Data(e.to_string()))?;
        Vni::new(d.vni).ok_or(LeaseError::BadVni(d.vni))?;
        Ok(Some(d))
    }

    /// The VXLAN data of these attributes.
    ///
    /// # Errors
    /// [`LeaseError`] when the backend is not vxlan or its data is malformed.
    pub fn vxlan_data(&self) -> Result<VxlanData, LeaseError> {
        if !self.backend_type.eq_ignore_ascii_case("vxlan") {
            return Err(LeaseError::NotVxlan(self.backend_type.clone()));
        }
        let d: VxlanData = serde_json::from_value(self.backend_data.clone())
            .map_err(|e| LeaseError::BadBackendData(e.to_string()))?;
        Vni::new(d.vni).ok_or(LeaseError::BadVni(d.vni))?;
        Ok(d)
    }
}

fn vxlan_json(vni: Vni, vtep_mac: VtepMac) -> serde_json::Value {
    serde_json::json!({"VNI": vni.get(), "VtepMAC": vtep_mac.to_string()})
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

/// Why the IPv6 half of a peer's lease cannot be routed to, if it cannot:
/// its IPv6 subnet is no node subnet ([`node_subnet6_problem`]) or lies
/// outside `network6` (the IPv6Network, when known), it announces no
/// PublicIPv6, or its BackendV6Data is missing or not vxlan data. The IPv4
/// half is judged apart; a lease without an IPv6 subnet has no IPv6 half.
pub fn ipv6_half_problem(l: &Lease, network6: Option<&Ipv6Net>) -> Option<String> {
    let s6 = l.ipv6_subnet?;
    if let Some(why) = node_subnet6_problem(&s6) {
        return Some(format!("IPv6 subnet {s6}: {why}"));
    }
    if let Some(n6) = network6 {
        if !n6.contains(&s6) {
            return Some(format!("IPv6 subnet {s6} is outside the IPv6Network {n6}"));
        }
    }
    if l.attrs.public_ipv6.is_none() {
        return Some(format!("it has the IPv6 subnet {s6} but no PublicIPv6"));
    }
    match l.attrs.vxlan_v6_data() {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!("it has the IPv6 subnet {s6} but no BackendV6Data")),
        Err(e) => Some(e.to_string()),
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

    /// The lease as a peer: whole, or without its IPv6 half and why
    /// ([`ipv6_half_problem`]) when only that half is unusable.
    ///
    /// # Errors
    /// Why, when the lease is IPv6-only and that half, its only one, is
    /// unusable: there is nothing left to route to.
    pub fn checked_ipv6(
        self,
        network6: Option<&Ipv6Net>,
    ) -> Result<(Lease, Option<String>), String> {
        match ipv6_half_problem(&self, network6) {
            None if self.subnet.is_none() && self.ipv6_subnet.is_none() => {
                Err("it has neither an IPv4 nor an IPv6 subnet".into())
            }
            None => Ok((self, None)),
            Some(why) if self.subnet.is_none() => Err(why),
            Some(why) => Ok((self.without_ipv6(), Some(why))),
        }
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
    fn flannel_value_json_round_trips() {
        // The value an operator's etcd holds (seed 001).
        let v = r#"{"PublicIP":"192.168.1.137","BackendType":"vxlan","BackendData":{"VtepMAC":"62:fc:03:83:1b:2b"}}"#;
        let a: LeaseAttrs = serde_json::from_str(v).unwrap();
        let d = a.vxlan_data().unwrap();
        assert_eq!(d.vni, 1);
        assert_eq!(d.vtep_mac.to_string(), "62:fc:03:83:1b:2b");
        let ours = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 1, 137),
            Vni::new(1).unwrap(),
            d.vtep_mac,
        );
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            r#"{"PublicIP":"192.168.1.137","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}}"#,
            "as flanneld v0.28.11 writes it (netns flannel:: tests compare with the real one)"
        );
    }

    #[test]
    fn dual_stack_attrs_in_flannels_shape() {
        // flannel's v4-only value carries "PublicIPv6":null.
        let v = r#"{"PublicIP":"192.168.1.137","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"},"BackendV6Data":null}"#;
        let a: LeaseAttrs = serde_json::from_str(v).unwrap();
        assert_eq!(a.public_ipv6, None);
        assert_eq!(a.vxlan_v6_data(), Ok(None));
        // A dual-stack value as flannel's vxlan backend writes it.
        let v = r#"{"PublicIP":"192.168.1.137","PublicIPv6":"fd00::137","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}}"#;
        let a: LeaseAttrs = serde_json::from_str(v).unwrap();
        assert_eq!(a.public_ipv6, Some("fd00::137".parse().unwrap()));
        let d6 = a.vxlan_v6_data().unwrap().unwrap();
        assert_eq!(d6.vtep_mac.to_string(), "8a:2e:0c:11:3d:4f");
        let ours = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 1, 137),
            Vni::new(1).unwrap(),
            a.vxlan_data().unwrap().vtep_mac,
        )
        .with_ipv6(
            "fd00::137".parse().unwrap(),
            Vni::new(1).unwrap(),
            d6.vtep_mac,
        );
        assert_eq!(ours, a);
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            r#"{"PublicIP":"192.168.1.137","PublicIPv6":"fd00::137","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"},"BackendV6Data":{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}}"#
        );
        let mut b = a.clone();
        b.backend_v6_data = Some(serde_json::json!({"VtepMAC": "nope"}));
        assert!(matches!(
            b.vxlan_v6_data(),
            Err(LeaseError::BadBackendV6Data(_))
        ));
        assert!(
            serde_json::from_str::<LeaseAttrs>(
                r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.1","BackendType":"vxlan"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn an_unusable_ipv6_half_is_dropped_and_the_ipv4_half_kept() {
        let n6: Ipv6Net = "fc00::/48".parse().unwrap();
        let mac = VtepMac::derive(&[192, 0, 2, 1]);
        let vni = Vni::new(1).unwrap();
        let good = Lease {
            subnet: "10.244.3.0/24".parse().ok(),
            ipv6_subnet: Some("fc00:0:0:3::/64".parse().unwrap()),
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 1), vni, mac).with_ipv6(
                "fd00::1".parse().unwrap(),
                vni,
                mac,
            ),
            expiration: None,
        };
        assert_eq!(ipv6_half_problem(&good, Some(&n6)), None);
        assert_eq!(
            good.clone().checked_ipv6(Some(&n6)),
            Ok((good.clone(), None))
        );
        let v4only = good.clone().without_ipv6();
        assert_eq!(v4only.key(), "10.244.3.0-24");
        assert_eq!(ipv6_half_problem(&v4only, Some(&n6)), None);
        let cases: Vec<(Lease, &str)> = vec![
            (
                Lease {
                    ipv6_subnet: Some("fc01:0:0:3::/64".parse().unwrap()),
                    ..good.clone()
                },
                "outside the IPv6Network fc00::/48",
            ),
            (
                Lease {
                    ipv6_subnet: Some("fc00::/127".parse().unwrap()),
                    ..good.clone()
                },
                "/127 or /128",
            ),
            (
                {
                    let mut l = good.clone();
                    l.attrs.public_ipv6 = None;
                    l
                },
                "no PublicIPv6",
            ),
            (
                {
                    let mut l = good.clone();
                    l.attrs.backend_v6_data = Some(serde_json::json!("garbage"));
                    l
                },
                "BackendV6Data is not vxlan data",
            ),
            (
                {
                    let mut l = good.clone();
                    l.attrs.backend_v6_data = None;
                    l
                },
                "no BackendV6Data",
            ),
        ];
        for (l, want) in cases {
            let (kept, why) = l.clone().checked_ipv6(Some(&n6)).unwrap();
            let why = why.unwrap_or_default();
            assert!(why.contains(want), "{why} / {want}");
            // The same lease on an IPv6-only network has nothing left.
            let v6only = Lease {
                subnet: None,
                ..l.clone()
            };
            let gone = v6only.checked_ipv6(Some(&n6)).unwrap_err();
            assert!(gone.contains(want), "{gone} / {want}");
            assert_eq!(kept.subnet, l.subnet);
            assert_eq!(kept.attrs.public_ip, l.attrs.public_ip);
            assert_eq!(kept.attrs.backend_data, l.attrs.backend_data);
            assert_eq!(kept.ipv6_subnet, None);
            assert_eq!(kept.attrs.public_ipv6, None);
        }
        // Without a known IPv6Network only the lease's own data is judged.
        let outside = Lease {
            ipv6_subnet: Some("fc01:0:0:3::/64".parse().unwrap()),
            ..good
        };
        assert_eq!(ipv6_half_problem(&outside, None), None);
    }

    #[test]
    fn non_vxlan_and_malformed_data_are_errors() {
        let a: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"udp"}"#).unwrap();
        assert_eq!(a.vxlan_data(), Err(LeaseError::NotVxlan("udp".into())));
        let a: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"nope"}}"#,
        )
        .unwrap();
        assert!(matches!(a.vxlan_data(), Err(LeaseError::BadBackendData(_))));
        let a: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":99999999,"VtepMAC":"02:00:00:00:00:01"}}"#).unwrap();
        assert_eq!(a.vxlan_data(), Err(LeaseError::BadVni(99999999)));
    }

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
