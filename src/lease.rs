//! Leases in flannel's shapes: the attribute JSON stored per subnet, the VXLAN
//! backend data, and the `10.244.3.0-24` key form of a subnet.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::types::{Vni, VtepMac};

/// flannel's `LeaseAttrs`, as stored under `<prefix>/subnets/<key>`:
/// `{"PublicIP":"…","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: serde_json::Value,
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
    pub attrs: LeaseAttrs,
    /// `None` for leases that do not expire (a kube node's podCIDR).
    pub expiration: Option<SystemTime>,
}

/// Why a stored lease cannot be used as a VXLAN peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("subnet key {0:?} is not of the form 10.244.3.0-24")]
    BadKey(String),
    #[error("backend type {0:?} is not vxlan")]
    NotVxlan(String),
    #[error("BackendData is not vxlan data ({{\"VNI\":1,\"VtepMAC\":\"…\"}}): {0}")]
    BadBackendData(String),
    #[error("BackendData VNI {0} does not fit in 24 bits")]
    BadVni(u32),
}

impl LeaseAttrs {
    /// The attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({"VNI": vni.get(), "VtepMAC": vtep_mac.to_string()}),
        }
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

impl Lease {
    /// Whether the lease has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }
}

/// flannel's key form of a subnet: `10.244.3.0/24` → `10.244.3.0-24`.
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

pub fn subnet_key(s: &Ipv4Net) -> String {
    format!("{}-{}", s.addr(), s.prefix_len())
}

/// Parses flannel's key form of a subnet (`10.244.3.0-24`).
///
/// # Errors
/// [`LeaseError::BadKey`] for anything else, including host bits set.
pub fn parse_subnet_key(k: &str) -> Result<Ipv4Net, LeaseError> {
    let bad = || LeaseError::BadKey(k.to_string());
    let (a, l) = k.rsplit_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let l: u8 = l.parse().map_err(|_| bad())?;
    let n = Ipv4Net::new(a, l).map_err(|_| bad())?;
    if n.network() != a {
        return Err(bad());
    }
    Ok(n)
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
        assert_eq!(parse_subnet_key("10.244.3.0-24").unwrap(), n);
        for bad in [
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
