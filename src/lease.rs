//! Leases in flannel's shapes: the attribute JSON stored per subnet, the VXLAN
//! backend data of each family, and the `10.244.3.0-24` (dual-stack:
//! `10.244.3.0-24&fc00:0:0:3::-64`) key form of a lease's subnets.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::types::{Vni, VtepMac};

/// flannel's `LeaseAttrs`, as stored under `<prefix>/subnets/<key>`:
/// `{"PublicIP":"…","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}`,
/// and on a dual-stack node also `"PublicIPv6":"…"` and
/// `"BackendV6Data":{"VNI":1,"VtepMAC":"…"}` (the VTEP of its IPv6 underlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes `null` on a node without IPv6; weft leaves it out.
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
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

/// A leased subnet: who holds it, how to reach it, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    /// The node's IPv6 pod subnet, in a dual-stack network.
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

    /// These attributes with an IPv6 VTEP: the public IPv6 address and the
    /// VtepMAC of the node's IPv6 underlay, as flannel's dual-stack vxlan
    /// backend announces them.
    pub fn with_ipv6(mut self, public_ipv6: Ipv6Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        self.public_ipv6 = Some(public_ipv6);
        self.backend_v6_data = Some(vxlan_json(vni, vtep_mac));
        self
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
        lease_key(&self.subnet, self.ipv6_subnet.as_ref())
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
    pub fn checked_ipv6(self, network6: Option<&Ipv6Net>) -> (Lease, Option<String>) {
        match ipv6_half_problem(&self, network6) {
            None => (self, None),
            Some(why) => (self.without_ipv6(), Some(why)),
        }
    }
}

/// flannel's key form of a subnet: `10.244.3.0/24` → `10.244.3.0-24`.
pub fn subnet_key(s: &Ipv4Net) -> String {
    format!("{}-{}", s.addr(), s.prefix_len())
}

/// flannel's key for a lease's subnets: the IPv4 one, then `&` and the IPv6
/// one when there is one (`10.244.3.0-24&fc00:0:0:3::-64`).
pub fn lease_key(s: &Ipv4Net, s6: Option<&Ipv6Net>) -> String {
    match s6 {
        None => subnet_key(s),
        Some(s6) => format!("{}&{}-{}", subnet_key(s), s6.addr(), s6.prefix_len()),
    }
}

/// Parses flannel's key form of a lease's subnets: `10.244.3.0-24`, or
/// `10.244.3.0-24&fc00:0:0:3::-64` in a dual-stack network.
///
/// # Errors
/// [`LeaseError::BadKey`] for anything else, including host bits set.
pub fn parse_subnet_key(k: &str) -> Result<(Ipv4Net, Option<Ipv6Net>), LeaseError> {
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
    Ok((n, n6))
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
            r#"{"PublicIP":"192.168.1.137","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}}"#
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
            subnet: "10.244.3.0/24".parse().unwrap(),
            ipv6_subnet: Some("fc00:0:0:3::/64".parse().unwrap()),
            attrs: LeaseAttrs::vxlan(Ipv4Addr::new(192, 0, 2, 1), vni, mac).with_ipv6(
                "fd00::1".parse().unwrap(),
                vni,
                mac,
            ),
            expiration: None,
        };
        assert_eq!(ipv6_half_problem(&good, Some(&n6)), None);
        assert_eq!(good.clone().checked_ipv6(Some(&n6)), (good.clone(), None));
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
            let (kept, why) = l.clone().checked_ipv6(Some(&n6));
            let why = why.unwrap_or_default();
            assert!(why.contains(want), "{why} / {want}");
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
        assert_eq!(parse_subnet_key("10.244.3.0-24").unwrap(), (n, None));
        // flannel's dual-stack key (pkg/subnet MakeSubnetKey).
        let n6: Ipv6Net = "fc00:0:0:3::/64".parse().unwrap();
        assert_eq!(lease_key(&n, Some(&n6)), "10.244.3.0-24&fc00:0:0:3::-64");
        assert_eq!(
            parse_subnet_key("10.244.3.0-24&fc00:0:0:3::-64").unwrap(),
            (n, Some(n6))
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
