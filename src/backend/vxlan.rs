//! flannel's `vxlan` backend: its net-conf.json keys (`VNI`, `Port`, `MTU`,
//! and the `DirectRouting`/`GBP`/`Learning` it refuses), its lease data
//! (`{"VNI":1,"VtepMAC":"…"}` per family), its overhead, and a peer's half
//! as a route in the forwarding table ([`crate::dataplane::table`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::PeerRoute;
use crate::dataplane::table::{Peer, Peer6};
use crate::gojson::get;
use crate::lease::{Lease, LeaseAttrs};
use crate::types::{Vni, VtepMac};

/// The type's name in net-conf.json and in leases' `BackendType`.
pub const TYPE: &str = "vxlan";

/// flannel's default VXLAN UDP port (the Linux kernel's, not IANA's 4789).
pub const DEFAULT_PORT: u16 = 8472;

/// Bytes of outer IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay: its header is 20 bytes longer.
pub const OVERHEAD6: u32 = 70;

/// The overhead over an IPv4 or (`ipv6_underlay`) an IPv6 underlay.
pub fn overhead(ipv6_underlay: bool) -> u32 {
    if ipv6_underlay { OVERHEAD6 } else { OVERHEAD }
}

/// The `Backend` object of a `vxlan` configuration, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: Vni,
    pub port: u16,
    /// `Backend.MTU`: the underlay MTU to assume instead of the interface's.
    pub mtu: Option<u32>,
}

/// The `BackendData` (and `BackendV6Data`) of a vxlan lease.
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

/// Why a lease's data is not a vxlan peer's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VxlanError {
    #[error("backend type {0:?} is not vxlan")]
    NotVxlan(String),
    #[error("BackendData is not vxlan data ({{\"VNI\":1,\"VtepMAC\":\"…\"}}): {0}")]
    BadBackendData(String),
    #[error("BackendData VNI {0} does not fit in 24 bits")]
    BadVni(u32),
    #[error("BackendV6Data is not vxlan data ({{\"VNI\":1,\"VtepMAC\":\"…\"}}): {0}")]
    BadBackendV6Data(String),
}

impl Vxlan {
    /// flannel's defaults: VNI 1 on UDP port 8472, the interface's MTU.
    pub fn flannel_default() -> Vxlan {
        Vxlan {
            vni: Vni::new(1).expect("1 fits"),
            port: DEFAULT_PORT,
            mtu: None,
        }
    }

    /// Reads a `vxlan` `Backend` object (its `Type` already checked).
    ///
    /// # Errors
    /// `bad`'s error, naming the key and its rule.
    pub fn parse<E>(
        b: &Map<String, Value>,
        bad: &dyn Fn(&'static str, String) -> E,
    ) -> Result<Vxlan, E> {
        for flag in ["DirectRouting", "GBP", "Learning"] {
            if get(b, flag).and_then(Value::as_bool) == Some(true) {
                return Err(bad(
                    "Backend",
                    format!("{flag}: true is not supported by weft's userspace VXLAN; remove it"),
                ));
            }
        }
        let vni = match get(b, "VNI").filter(|x| !x.is_null()) {
            None => Vni::new(1).expect("1 fits"),
            Some(x) => x
                .as_u64()
                .filter(|v| *v > 0)
                .and_then(|v| u32::try_from(v).ok())
                .and_then(Vni::new)
                .ok_or_else(|| bad("Backend.VNI", format!("{x} is not a VNI 1..=16777215")))?,
        };
        let port = match get(b, "Port").filter(|x| !x.is_null() && x.as_u64() != Some(0)) {
            None => DEFAULT_PORT,
            Some(x) => x
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| bad("Backend.Port", format!("{x} is not a UDP port 1..=65535")))?,
        };
        let mtu = match get(b, "MTU").filter(|x| !x.is_null() && x.as_u64() != Some(0)) {
            None => None,
            Some(x) => Some(
                x.as_u64()
                    .filter(|m| (576 + u64::from(OVERHEAD)..=65535).contains(m))
                    .ok_or_else(|| {
                        bad(
                            "Backend.MTU",
                            format!("{x} is not an MTU between {} and 65535", 576 + OVERHEAD),
                        )
                    })? as u32,
            ),
        };
        Ok(Vxlan { vni, port, mtu })
    }

    /// The node's own attributes ([`super::Backend::own_attrs`]): each
    /// VTEP's VtepMAC derived from its public address
    /// ([`VtepMac::derive`]), so that restarts keep it.
    pub fn own_attrs(
        &self,
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
    ) -> LeaseAttrs {
        let mac = |octets: &[u8]| VtepMac::derive(octets);
        match (public_ip, public_ipv6) {
            (Some(ip), None) => LeaseAttrs::vxlan(ip, self.vni, mac(&ip.octets())),
            (Some(ip), Some(ip6)) => LeaseAttrs::vxlan(ip, self.vni, mac(&ip.octets())).with_ipv6(
                ip6,
                self.vni,
                mac(&ip6.octets()),
            ),
            (None, Some(ip6)) => LeaseAttrs::vxlan6_only(ip6, self.vni, mac(&ip6.octets())),
            (None, None) => LeaseAttrs::vxlan(Ipv4Addr::UNSPECIFIED, self.vni, mac(&[0; 4])),
        }
    }

    /// A peer's half as a route through its VTEP ([`super::Backend::peer`]):
    /// the data of that half (`BackendData` or `BackendV6Data`), in this
    /// network's VNI.
    ///
    /// # Errors
    /// Why not: no or malformed data for that half, or another VNI.
    pub fn peer(&self, subnet: IpNet, public: IpAddr, lease: &Lease) -> Result<PeerRoute, String> {
        let (vni, attrs) = (self.vni, &lease.attrs);
        match (subnet, public) {
            (IpNet::V4(subnet), IpAddr::V4(public_ip)) => {
                let d = attrs.vxlan_data().map_err(|e| e.to_string())?;
                if d.vni != vni.get() {
                    return Err(format!("its VNI {} is not this network's VNI {vni}", d.vni));
                }
                Ok(PeerRoute::V4(Peer {
                    subnet,
                    public_ip,
                    vtep_mac: d.vtep_mac,
                    endpoint: SocketAddrV4::new(public_ip, self.port),
                    slot: 0,
                }))
            }
            (IpNet::V6(subnet), IpAddr::V6(public_ip)) => match attrs.vxlan_v6_data() {
                Ok(Some(d)) if d.vni != vni.get() => Err(format!(
                    "its IPv6 VNI {} is not this network's VNI {vni}",
                    d.vni
                )),
                Ok(Some(d)) => Ok(PeerRoute::V6(Peer6 {
                    subnet,
                    v4: lease.subnet,
                    public_ip,
                    vtep_mac: d.vtep_mac,
                    endpoint: SocketAddrV6::new(public_ip, self.port, 0, 0),
                    slot: 0,
                })),
                Ok(None) => Err(format!("it leases {subnet} but announces no BackendV6Data")),
                Err(e) => Err(e.to_string()),
            },
            (s, p) => Err(format!(
                "{s} is not reached over {p}, an address of the other family"
            )),
        }
    }
}

impl LeaseAttrs {
    /// The attributes of a vxlan lease.
    pub fn vxlan(public_ip: Ipv4Addr, vni: Vni, vtep_mac: VtepMac) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: TYPE.into(),
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
            backend_type: TYPE.into(),
            backend_data: Value::Null,
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

    /// The VXLAN data of the node's IPv6 VTEP; `None` when it announces none
    /// (flannel writes `null` for a node without IPv6).
    ///
    /// # Errors
    /// [`VxlanError`] when the backend is not vxlan or the data is malformed.
    pub fn vxlan_v6_data(&self) -> Result<Option<VxlanData>, VxlanError> {
        let Some(v) = self.backend_v6_data.as_ref().filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        if !self.backend_type.eq_ignore_ascii_case(TYPE) {
            return Err(VxlanError::NotVxlan(self.backend_type.clone()));
        }
        let d: VxlanData = serde_json::from_value(v.clone())
            .map_err(|e| VxlanError::BadBackendV6Data(e.to_string()))?;
        Vni::new(d.vni).ok_or(VxlanError::BadVni(d.vni))?;
        Ok(Some(d))
    }

    /// The VXLAN data of these attributes.
    ///
    /// # Errors
    /// [`VxlanError`] when the backend is not vxlan or its data is malformed.
    pub fn vxlan_data(&self) -> Result<VxlanData, VxlanError> {
        if !self.backend_type.eq_ignore_ascii_case(TYPE) {
            return Err(VxlanError::NotVxlan(self.backend_type.clone()));
        }
        let d: VxlanData = serde_json::from_value(self.backend_data.clone())
            .map_err(|e| VxlanError::BadBackendData(e.to_string()))?;
        Vni::new(d.vni).ok_or(VxlanError::BadVni(d.vni))?;
        Ok(d)
    }
}

fn vxlan_json(vni: Vni, vtep_mac: VtepMac) -> Value {
    serde_json::json!({"VNI": vni.get(), "VtepMAC": vtep_mac.to_string()})
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
            Err(VxlanError::BadBackendV6Data(_))
        ));
        assert!(
            serde_json::from_str::<LeaseAttrs>(
                r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.1","BackendType":"vxlan"}"#
            )
            .is_err()
        );
    }
    #[test]
    fn non_vxlan_and_malformed_data_are_errors() {
        let a: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"udp"}"#).unwrap();
        assert_eq!(a.vxlan_data(), Err(VxlanError::NotVxlan("udp".into())));
        let a: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VtepMAC":"nope"}}"#,
        )
        .unwrap();
        assert!(matches!(a.vxlan_data(), Err(VxlanError::BadBackendData(_))));
        let a: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":99999999,"VtepMAC":"02:00:00:00:00:01"}}"#).unwrap();
        assert_eq!(a.vxlan_data(), Err(VxlanError::BadVni(99999999)));
    }
}
