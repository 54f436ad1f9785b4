//! What a stored lease means to this node, for every backend: whether it is
//! routed, which of its halves, and why not. The stores report leases as
//! they are stored; this is the one place that judges them.
//!
//! A lease is left out whole when it is the node's own, of another backend
//! type, outside the Network, or has an IPv4 subnet on an IPv6-only network.
//! Each half is then judged apart: the IPv4 subnet must be a node subnet and
//! the IPv6 one a node subnet inside the IPv6Network with a PublicIPv6; the
//! backend turns what passes into forwarding state ([`Backend::peer`]) or
//! says why it cannot (its data missing or malformed, another VNI). An
//! unusable IPv6 half leaves the IPv4 half routed; an IPv6-only lease with
//! an unusable half is left out.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::backend::{Backend, PeerRoute, Vxlan};
use crate::config::NetConfig;
use crate::dataplane::table::Table;
use crate::lease::{Lease, LeaseId, node_subnet_problem, node_subnet6_problem};
use crate::types::Vni;

/// A lease left out of the table, or the half of it left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subnet: LeaseId,
    pub why: String,
}

/// The network's rules for peers: its two halves and its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The IPv4 Network; `None` on an IPv6-only network.
    pub network: Option<Ipv4Net>,
    /// The IPv6Network of a dual-stack or IPv6-only network; `None` when
    /// the network carries no IPv6 (a peer's IPv6 half is then not routed).
    pub network6: Option<Ipv6Net>,
    pub backend: Backend,
}

impl Admission {
    /// The rules of `config`.
    pub fn new(config: &NetConfig) -> Admission {
        Admission {
            network: config.network(),
            network6: config.network6(),
            backend: config.backend,
        }
    }

    /// The rules of a vxlan network of `vni` on UDP `port` whose IPv4
    /// Network is every address (no lease is outside it), with `network6`
    /// as its IPv6Network: as benchmarks, the fuzzer and tests of the packet
    /// core build their tables.
    pub fn vxlan(network6: Option<Ipv6Net>, vni: Vni, port: u16) -> Admission {
        Admission {
            network: Some(Ipv4Net::default()),
            network6,
            backend: Backend::Vxlan(Vxlan {
                vni,
                port,
                mtu: None,
            }),
        }
    }

    /// The forwarding table of `leases`, without `own` (the node's own
    /// lease, under any key that names its subnet) and what cannot be routed,
    /// which comes back with why. No dense index is built
    /// ([`Table::index_dense`]).
    pub fn table<'a>(
        &self,
        leases: impl IntoIterator<Item = &'a Lease>,
        own: Option<LeaseId>,
    ) -> (Table, Vec<Skipped>) {
        let (routes, skipped) = self.routes(leases, own);
        (PeerRoute::table(routes), skipped)
    }

    /// The routes the peers of `leases` become (each lease's IPv4 half
    /// first), without `own`, and what cannot be routed with why. What a
    /// route is, is the backend's ([`PeerRoute`]); the rules here are every
    /// backend's.
    pub fn routes<'a>(
        &self,
        leases: impl IntoIterator<Item = &'a Lease>,
        own: Option<LeaseId>,
    ) -> (Vec<PeerRoute>, Vec<Skipped>) {
        let (mut routes, mut skipped) = (vec![], vec![]);
        for l in leases {
            if own.is_some_and(|o| is_own(l, o)) {
                continue;
            }
            self.admit(l, &mut routes, &mut skipped);
        }
        (routes, skipped)
    }

    /// The routes of one peer's lease, each half when usable; why not in
    /// `skipped`.
    fn admit(&self, l: &Lease, routes: &mut Vec<PeerRoute>, skipped: &mut Vec<Skipped>) {
        let id = l.id();
        let mut skip = |why: String| skipped.push(Skipped { subnet: id, why });
        if !self.backend.is_type_of(&l.attrs.backend_type) {
            skip(format!(
                "its node {} runs flannel's {:?} backend, not this network's {:?}",
                l.public_addr(),
                l.attrs.backend_type,
                self.backend.type_name()
            ));
            return;
        }
        match (l.subnet, self.network) {
            (Some(s), Some(n)) if !n.contains(&s) => {
                skip(format!("it is outside the Network {n}"));
                return;
            }
            (Some(_), None) => {
                skip("it has an IPv4 subnet, and this network is IPv6-only".into());
                return;
            }
            _ => {}
        }
        if let Some(subnet) = l.subnet {
            let public = IpAddr::V4(l.attrs.public_ip);
            match node_subnet_problem(&subnet) {
                Some(why) => skip(why.into()),
                None => match self.backend.peer(IpNet::V4(subnet), public, l) {
                    Ok(r) => routes.push(r),
                    Err(why) => skip(why),
                },
            }
        }
        match self.half6(l) {
            Ok(r) => routes.extend(r),
            Err(why) if l.subnet.is_none() => skip(why),
            Err(why) => skip(format!("its IPv6 half is not routed: {why}")),
        }
    }

    /// The IPv6 half's route: `None` when there is none to route (no IPv6
    /// subnet, or an IPv4 lease's on a network without IPv6).
    ///
    /// # Errors
    /// Why the half cannot be routed.
    fn half6(&self, l: &Lease) -> Result<Option<PeerRoute>, String> {
        let Some(s6) = l.ipv6_subnet else {
            return Ok(None);
        };
        let Some(n6) = self.network6 else {
            return match l.subnet {
                Some(_) => Ok(None),
                None => Err("it has only an IPv6 subnet, and this network carries no IPv6".into()),
            };
        };
        if let Some(why) = node_subnet6_problem(&s6) {
            return Err(format!("IPv6 subnet {s6}: {why}"));
        }
        if !n6.contains(&s6) {
            return Err(format!("IPv6 subnet {s6} is outside the IPv6Network {n6}"));
        }
        let Some(ip6) = l.attrs.public_ipv6 else {
            return Err(format!("it has the IPv6 subnet {s6} but no PublicIPv6"));
        };
        self.backend
            .peer(IpNet::V6(s6), IpAddr::V6(ip6), l)
            .map(Some)
    }
}

/// Whether `l` is the node's own lease `own`: the same IPv4 subnet, or on an
/// IPv6-only network the same IPv6 subnet.
fn is_own(l: &Lease, own: LeaseId) -> bool {
    match own.v4 {
        Some(_) => l.subnet == own.v4,
        None => l.subnet.is_none() && l.ipv6_subnet == own.v6,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rustc_hash::FxHashMap;

    use super::*;
    use crate::dataplane::table::Peer;
    use crate::lease::LeaseAttrs;
    use crate::types::VtepMac;

    /// The rules of a vxlan network (VNI 1, port 8472).
    /// (`None`: every IPv4 address is inside the Network.)
    fn vxlan(network: Option<Ipv4Net>, network6: Option<Ipv6Net>) -> Admission {
        Admission {
            network: network.or(Some(Ipv4Net::default())),
            network6,
            backend: Backend::Vxlan(Vxlan::flannel_default()),
        }
    }

    fn lease(s: &str, ip: [u8; 4], vni: u32) -> Lease {
        Lease {
            subnet: s.parse().ok(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(vni).unwrap(), VtepMac::derive(&ip)),
            expiration: None,
        }
    }

    fn lease6(s: &str, s6: &str, ip: [u8; 4], ip6: &str) -> Lease {
        let vni = Vni::new(1).unwrap();
        let ip6: Ipv6Addr = ip6.parse().unwrap();
        Lease {
            subnet: s.parse().ok(),
            ipv6_subnet: s6.parse().ok(),
            attrs: LeaseAttrs::vxlan(ip.into(), vni, VtepMac::derive(&ip)).with_ipv6(
                ip6,
                vni,
                VtepMac::derive(&ip6.octets()),
            ),
            expiration: None,
        }
    }

    /// A dual-stack lease gives an IPv6 route to its IPv6 VTEP; an unusable
    /// IPv6 half is skipped with its reason while its IPv4 half is routed;
    /// both public addresses of a node name one sender with both families'
    /// subnets and one counter slot.
    #[test]
    fn ipv6_routes_skipped_halves_and_joined_senders() {
        let mut bad_vni = lease6(
            "10.244.4.0/24",
            "fc00:0:0:4::/64",
            [192, 0, 2, 4],
            "2001:db8::4",
        );
        bad_vni.attrs.backend_v6_data =
            Some(serde_json::json!({"VNI": 9, "VtepMAC": "02:00:00:00:00:04"}));
        let mut no_ip6 = lease6(
            "10.244.5.0/24",
            "fc00:0:0:5::/64",
            [192, 0, 2, 5],
            "2001:db8::5",
        );
        no_ip6.attrs.public_ipv6 = None;
        let ls = vec![
            lease6(
                "10.244.1.0/24",
                "fc00:0:0:1::/64",
                [192, 0, 2, 1],
                "2001:db8::1",
            ),
            lease6(
                "10.244.2.0/24",
                "fc00:0:0:2::/64",
                [192, 0, 2, 2],
                "2001:db8::2",
            ),
            lease6("10.244.3.0/24", "fd99::/64", [192, 0, 2, 3], "2001:db8::3"),
            bad_vni,
            no_ip6,
            lease("10.244.6.0/24", [192, 0, 2, 6], 1),
        ];
        let own = Some("10.244.1.0/24".parse().unwrap());
        let n6 = "fc00::/48".parse().ok();
        let (mut t, skipped) = vxlan(None, n6).table(&ls, own);
        assert_eq!(t.len(), 5, "every IPv4 half routed");
        assert_eq!(t.peers6().count(), 1);
        let why: Vec<&str> = skipped.iter().map(|s| s.why.as_str()).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(
            why[0].contains("outside the IPv6Network fc00::/48"),
            "{why:?}"
        );
        assert!(why[1].contains("IPv6 VNI 9"), "{why:?}");
        assert!(why[2].contains("no PublicIPv6"), "{why:?}");
        let p = t.lookup6("fc00:0:0:2::7".parse().unwrap()).unwrap();
        assert_eq!(p.endpoint, "[2001:db8::2]:8472".parse().unwrap());
        assert_eq!(p.v4, "10.244.2.0/24".parse().ok());
        assert!(
            t.lookup6("fc00:0:0:1::7".parse().unwrap()).is_none(),
            "own subnet"
        );
        assert!(t.lookup6("fc00:0:0:6::7".parse().unwrap()).is_none());
        let mut slots = FxHashMap::default();
        slots.insert(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 7);
        t.set_slots(&slots);
        let by6 = t
            .sender("2001:db8::2".parse::<Ipv6Addr>().unwrap().into())
            .unwrap();
        let by4 = t.sender(Ipv4Addr::new(192, 0, 2, 2).into()).unwrap();
        assert_eq!(by6, by4);
        assert_eq!(by6.slot, 7);
        assert_eq!(by6.nets, vec!["10.244.2.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            by6.nets6,
            vec!["fc00:0:0:2::/64".parse::<Ipv6Net>().unwrap()]
        );
        assert_eq!(t.lookup6("fc00:0:0:2::7".parse().unwrap()).unwrap().slot, 7);
        // Without an IPv6Network (an IPv4-only node) no IPv6 half is looked at.
        let (t, skipped) = vxlan(None, None).table(&ls, own);
        assert_eq!((t.peers6().count(), skipped.len()), (0, 0));
    }
    /// On an IPv6-only network the leases have no IPv4 half: the own lease
    /// is left out by its IPv6 subnet, the others are routed by IPv6 alone,
    /// counted as peers, and named by their public IPv6.
    #[test]
    fn ipv6_only_leases_are_routed_counted_and_named() {
        let vni = Vni::new(1).unwrap();
        let only6 = |s6: &str, ip6: &str| {
            let ip6: Ipv6Addr = ip6.parse().unwrap();
            Lease {
                subnet: None,
                ipv6_subnet: s6.parse().ok(),
                attrs: LeaseAttrs::vxlan6_only(ip6, vni, VtepMac::derive(&ip6.octets())),
                expiration: None,
            }
        };
        let ls = vec![
            only6("fc00:0:0:1::/64", "2001:db8::1"),
            only6("fc00:0:0:2::/64", "2001:db8::2"),
            only6("fc00:0:0:3::/64", "2001:db8::3"),
        ];
        let own = Some(LeaseId {
            v4: None,
            v6: "fc00:0:0:1::/64".parse().ok(),
        });
        let (mut t, skipped) = vxlan(None, "fc00::/48".parse().ok()).table(&ls, own);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(
            (t.len(), t.peers().count(), t.peers6_only().count()),
            (2, 0, 2)
        );
        assert!(
            t.lookup6("fc00:0:0:1::9".parse().unwrap()).is_none(),
            "own subnet"
        );
        let p = t.lookup6("fc00:0:0:3::9".parse().unwrap()).unwrap();
        assert_eq!(p.endpoint, "[2001:db8::3]:8472".parse().unwrap());
        let mut names: Vec<IpAddr> = t.peer_names().collect();
        names.sort();
        assert_eq!(
            names,
            ["2001:db8::2", "2001:db8::3"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let mut slots = FxHashMap::default();
        slots.insert("2001:db8::3".parse::<IpAddr>().unwrap(), 4);
        t.set_slots(&slots);
        assert_eq!(t.lookup6("fc00:0:0:3::9".parse().unwrap()).unwrap().slot, 4);
        let by6 = t.sender("2001:db8::3".parse::<IpAddr>().unwrap()).unwrap();
        assert_eq!((by6.slot, by6.nets.len()), (4, 0));
        assert_eq!(
            by6.nets6,
            vec!["fc00:0:0:3::/64".parse::<Ipv6Net>().unwrap()]
        );
    }
    #[test]
    fn longest_prefix_match_and_own_subnet_left_out() {
        let ls = vec![
            lease("10.244.1.0/24", [192, 0, 2, 1], 1),
            lease("10.244.2.0/24", [192, 0, 2, 2], 1),
            lease("10.244.2.128/25", [192, 0, 2, 3], 1),
            lease("10.244.9.0/24", [192, 0, 2, 9], 7),
        ];
        let own = Some("10.244.1.0/24".parse().unwrap());
        let (t, skipped) = vxlan(None, None).table(&ls, own);
        assert_eq!(t.len(), 2);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].why.contains("VNI 7"), "{:?}", skipped);
        assert!(t.lookup(Ipv4Addr::new(10, 244, 1, 5)).is_none());
        assert_eq!(
            t.lookup(Ipv4Addr::new(10, 244, 2, 5)).unwrap().public_ip,
            Ipv4Addr::new(192, 0, 2, 2)
        );
        let p = t.lookup(Ipv4Addr::new(10, 244, 2, 200)).unwrap();
        assert_eq!(p.public_ip, Ipv4Addr::new(192, 0, 2, 3));
        assert_eq!(p.endpoint, "192.0.2.3:8472".parse().unwrap());
        assert!(t.lookup(Ipv4Addr::new(10, 245, 2, 5)).is_none());
    }
    /// A /0 peer (etcd key `…/subnets/0.0.0.0-0`, a node with podCIDR
    /// 0.0.0.0/0) under a /0 Network once made the dense index shift by 32
    /// and every lookup index out of bounds: it is skipped, and lookups
    /// answer None.
    #[test]
    fn a_slash_zero_or_slash_32_peer_is_skipped_and_lookups_never_panic() {
        let leases = [
            lease("0.0.0.0/0", [192, 0, 2, 2], 1),
            lease("10.244.7.1/32", [192, 0, 2, 3], 1),
        ];
        let (mut t, skipped) = vxlan(None, None).table(&leases, None);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].why.contains("/0"), "{skipped:?}");
        assert!(skipped[1].why.contains("/31 or /32"), "{skipped:?}");
        assert!(!t.index_dense("0.0.0.0/0".parse().unwrap()));
        assert!(t.lookup([10, 0, 2, 5].into()).is_none());
        // Inserted by hand anyway, the index refuses a shift of 32.
        let mut t = Table::default();
        t.insert(Peer {
            subnet: "0.0.0.0/0".parse().unwrap(),
            public_ip: [192, 0, 2, 2].into(),
            vtep_mac: VtepMac::derive(&[192, 0, 2, 2]),
            endpoint: "192.0.2.2:8472".parse().unwrap(),
            slot: 0,
        });
        assert!(!t.index_dense("0.0.0.0/0".parse().unwrap()));
        assert!(t.lookup([10, 0, 2, 5].into()).is_some());
    }

    /// An unusable IPv6 half is left out with why, its IPv4 half routed;
    /// on an IPv6-only network, where that half is the lease's only one,
    /// nothing is routed. Without an IPv6Network no IPv6 half is looked at.
    #[test]
    fn an_unusable_ipv6_half_is_dropped_and_the_ipv4_half_kept() {
        let n6: Ipv6Net = "fc00::/48".parse().unwrap();
        let good = lease6(
            "10.244.3.0/24",
            "fc00:0:0:3::/64",
            [192, 0, 2, 1],
            "fd00::1",
        );
        let (t, skipped) = vxlan(None, Some(n6)).table([&good], None);
        assert_eq!((t.len(), t.peers6().count(), skipped.len()), (1, 1, 0));
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
            let (t, skipped) = vxlan(None, Some(n6)).table([&l], None);
            assert_eq!((t.len(), t.peers6().count()), (1, 0), "{want}");
            let p = t.lookup([10, 244, 3, 9].into()).unwrap();
            assert_eq!(p.public_ip, l.attrs.public_ip);
            let [s] = &skipped[..] else {
                panic!("{skipped:?}")
            };
            assert!(
                s.why.contains("its IPv6 half is not routed") && s.why.contains(want),
                "{s:?} / {want}"
            );
            // The same lease on an IPv6-only network has nothing left.
            let v6only = Lease {
                subnet: None,
                ..l.clone()
            };
            let (t, skipped) = vxlan(None, Some(n6)).table([&v6only], None);
            assert!(t.is_empty());
            assert!(skipped[0].why.contains(want), "{skipped:?} / {want}");
            // An IPv4-only network never looks at the IPv6 half.
            let (t, skipped) = vxlan(None, None).table([&l], None);
            assert_eq!((t.len(), skipped.len()), (1, 0));
        }
    }

    /// A peer of another backend type is left out with one reason naming
    /// its node, as flannel ignores it; the rest of its data is not read.
    #[test]
    fn a_peer_of_another_backend_type_is_left_out_naming_its_node() {
        let mut hostgw = lease("10.244.4.0/24", [192, 0, 2, 4], 1);
        hostgw.attrs.backend_type = "host-gw".into();
        hostgw.attrs.backend_data = serde_json::Value::Null;
        let ls = [hostgw, lease("10.244.5.0/24", [192, 0, 2, 5], 1)];
        let (t, skipped) = vxlan("10.244.0.0/16".parse().ok(), None).table(&ls, None);
        assert_eq!(t.len(), 1);
        let [s] = &skipped[..] else {
            panic!("{skipped:?}")
        };
        assert_eq!(s.subnet.to_string(), "10.244.4.0/24");
        assert_eq!(
            s.why,
            "its node 192.0.2.4 runs flannel's \"host-gw\" backend, not this network's \"vxlan\""
        );
    }

    /// The Network is checked before anything else of a lease: outside it,
    /// or an IPv4 subnet on an IPv6-only network, nothing is routed.
    #[test]
    fn leases_outside_the_network_are_left_out_whole() {
        let ls = [
            lease6("10.99.0.0/24", "fc00:0:0:9::/64", [192, 0, 2, 9], "fd00::9"),
            lease6(
                "10.244.2.0/24",
                "fc00:0:0:2::/64",
                [192, 0, 2, 2],
                "fd00::2",
            ),
        ];
        let (t, skipped) =
            vxlan("10.244.0.0/16".parse().ok(), "fc00::/48".parse().ok()).table(&ls, None);
        assert_eq!((t.len(), t.peers6().count()), (1, 1));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].why, "it is outside the Network 10.244.0.0/16");
        let ipv6_only = Admission {
            network: None,
            ..vxlan(None, "fc00::/48".parse().ok())
        };
        let (t, skipped) = ipv6_only.table(&ls, None);
        assert!(t.is_empty());
        assert!(
            skipped
                .iter()
                .all(|s| s.why == "it has an IPv4 subnet, and this network is IPv6-only")
        );
    }
}
