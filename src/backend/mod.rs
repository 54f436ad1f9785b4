//! The backend seam, as flannel's `pkg/backend`: everything that differs
//! between backend types sits behind [`Backend`], one module per type.
//!
//! A backend owns:
//! - its net-conf.json `Backend` keys, their defaults and refusals
//!   ([`Backend::parse`]);
//! - its lease data, `BackendType`, `BackendData` and `BackendV6Data`
//!   ([`Backend::own_attrs`] writes the node's own, [`Backend::peer`] reads a
//!   peer's);
//! - the bytes its encapsulation adds to a packet ([`Backend::overhead`]),
//!   from which the pod MTU follows;
//! - how one half of a peer's lease becomes forwarding state
//!   ([`Backend::peer`], called by [`crate::node`]'s admission after the
//!   checks every backend shares).
//!
//! The device a backend needs (VXLAN's TUN and UDP sockets) is set up by
//! the daemon in that backend's branch (`let Backend::Vxlan(vx) = …`).
//! Adding a backend is a variant here, a module beside [`vxlan`], and the
//! places the compiler then names (the daemon's device set-up, the doctor's
//! checks of that device); the reconciler and the stores stay as they are.

pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::dataplane::table::{Peer, Peer6, Table};
use crate::lease::{Lease, LeaseAttrs};

pub use vxlan::Vxlan;

/// The backend of a network: net-conf.json's `Backend`, parsed for its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// flannel's `vxlan`, in userspace over a TUN device.
    Vxlan(Vxlan),
}

/// flannel's other backend types, refused with their name: weft does not
/// implement them (yet).
const FLANNEL_TYPES: &[&str] = &[
    "udp",
    "host-gw",
    "wireguard",
    "ipip",
    "ipsec",
    "alloc",
    "extension",
    "alivpc",
    "ali-vpc",
    "awsvpc",
    "aws-vpc",
    "gce",
    "tencentvpc",
];

/// One half of a peer's lease as forwarding state: its IPv4 subnet's, or
/// its IPv6 subnet's. A backend that routes otherwise (plain kernel routes)
/// adds its kind here; the admission ([`crate::node::Admission`]) only
/// collects what [`Backend::peer`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRoute {
    /// An IPv4 subnet through the peer's VTEP, in the forwarding table.
    V4(Peer),
    /// An IPv6 subnet through the peer's IPv6 VTEP, in the forwarding table.
    V6(Peer6),
}

impl PeerRoute {
    /// The forwarding table of the routes that go through the tunnel.
    pub fn table(routes: impl IntoIterator<Item = PeerRoute>) -> Table {
        let (mut v4, mut v6) = (vec![], vec![]);
        for r in routes {
            match r {
                PeerRoute::V4(p) => v4.push(p),
                PeerRoute::V6(p6) => v6.push(p6),
            }
        }
        Table::from_routes(v4, v6)
    }
}

impl Backend {
    /// Reads net-conf.json's `Backend` object `b`; `bad` makes the error
    /// of a field and its rule (naming the file: [`crate::config`]'s).
    ///
    /// # Errors
    /// `bad`'s, for a type weft does not implement (named, with what it
    /// does implement) or a key of that type's that breaks its rule.
    pub fn parse<E>(
        b: &Map<String, Value>,
        bad: &dyn Fn(&'static str, String) -> E,
    ) -> Result<Backend, E> {
        let ty = crate::gojson::get(b, "Type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if ty.eq_ignore_ascii_case(vxlan::TYPE) {
            return Ok(Backend::Vxlan(Vxlan::parse(b, bad)?));
        }
        let rule = if FLANNEL_TYPES.iter().any(|t| t.eq_ignore_ascii_case(ty)) {
            format!(
                "{ty:?} is flannel's {ty} backend, which weft does not implement yet; weft implements flannel's \"vxlan\" backend only"
            )
        } else {
            format!(
                "{ty:?} is not a flannel backend type; weft implements flannel's \"vxlan\" backend only"
            )
        };
        Err(bad("Backend.Type", rule))
    }

    /// flannel's name of the type, as leases carry it in `BackendType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => vxlan::TYPE,
        }
    }

    /// Whether a lease's `BackendType` is this backend's (case aside, as
    /// flannel compares them).
    pub fn is_type_of(&self, backend_type: &str) -> bool {
        backend_type.eq_ignore_ascii_case(self.type_name())
    }

    /// The bytes the encapsulation adds to each packet over an IPv4 or
    /// (`ipv6_underlay`) an IPv6 underlay.
    pub fn overhead(&self, ipv6_underlay: bool) -> u32 {
        match self {
            Backend::Vxlan(_) => vxlan::overhead(ipv6_underlay),
        }
    }

    /// `Backend.MTU` when the configuration sets one: the underlay MTU to
    /// assume instead of the interface's.
    pub fn mtu(&self) -> Option<u32> {
        match self {
            Backend::Vxlan(v) => v.mtu,
        }
    }

    /// The node's own lease attributes, as weftd announces them:
    /// `public_ip` (`None` on an IPv6-only network, whose PublicIP flannel
    /// writes as `0.0.0.0`) and `public_ipv6` (with the IPv6 half), with
    /// this backend's data for each half.
    pub fn own_attrs(
        &self,
        public_ip: Option<Ipv4Addr>,
        public_ipv6: Option<Ipv6Addr>,
    ) -> LeaseAttrs {
        match self {
            Backend::Vxlan(v) => v.own_attrs(public_ip, public_ipv6),
        }
    }

    /// One half of a peer's lease as forwarding state: `subnet` (of either
    /// family, one of `lease`'s) reached at `public` (the lease's PublicIP
    /// or PublicIPv6), with the backend data of that half read from the
    /// lease. The checks every backend shares (the subnet inside the
    /// Network, the node's own lease, `BackendType`) are made before
    /// ([`crate::node::Admission`]).
    ///
    /// # Errors
    /// Why the half cannot be routed, for the log (bad or missing backend
    /// data, another VNI).
    pub fn peer(&self, subnet: IpNet, public: IpAddr, lease: &Lease) -> Result<PeerRoute, String> {
        match self {
            Backend::Vxlan(v) => v.peer(subnet, public, lease),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &str) -> Result<Backend, String> {
        let v: Value = serde_json::from_str(b).unwrap();
        let bad = |field: &'static str, rule: String| format!("field {field}: {rule}");
        Backend::parse(v.as_object().unwrap(), &bad)
    }

    #[test]
    fn flannels_other_types_are_refused_by_name() {
        let e = parse(r#"{"Type":"host-gw"}"#).unwrap_err();
        assert!(
            e.contains("Backend.Type")
                && e.contains("flannel's host-gw backend")
                && e.contains("does not implement yet"),
            "{e}"
        );
        let e = parse(r#"{"Type":"WireGuard"}"#).unwrap_err();
        assert!(
            e.contains("\"WireGuard\" is flannel's WireGuard backend"),
            "{e}"
        );
        let e = parse(r#"{"Type":"geneve"}"#).unwrap_err();
        assert!(
            e.contains("\"geneve\" is not a flannel backend type"),
            "{e}"
        );
        let e = parse(r#"{}"#).unwrap_err();
        assert!(e.contains("\"\" is not a flannel backend type"), "{e}");
    }

    #[test]
    fn vxlan_is_the_backend_weft_implements() {
        let b = parse(r#"{"Type":"VXLAN"}"#).unwrap();
        assert_eq!(b.type_name(), "vxlan");
        assert!(b.is_type_of("vxlan") && b.is_type_of("VxLan") && !b.is_type_of("host-gw"));
        assert_eq!((b.overhead(false), b.overhead(true)), (50, 70));
        assert_eq!(b.mtu(), None);
    }
}
