//! The forwarding table: subnet → peer (public IP, VtepMAC), immutable once built.
//!
//! The lease watcher builds a new table and swaps it in ([`SharedTable`], an
//! `ArcSwap`); workers load it once per batch without locks, so readers never
//! wait on the writer. Lookup is longest-prefix match over the few distinct
//! prefix lengths present (one, in a flannel network), each a hash probe.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;

use crate::lease::Lease;
use crate::types::{Vni, VtepMac};

/// Where packets for one subnet go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: VtepMac,
    /// The peer's VXLAN endpoint: public IP and the network's UDP port.
    pub endpoint: SocketAddrV4,
}

/// An immutable forwarding table.
#[derive(Debug, Default)]
pub struct Table {
    /// Distinct prefix lengths, longest first.
    lens: Vec<u8>,
    map: FxHashMap<u64, Peer>,
}

/// A lease left out of the table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subnet: Ipv4Net,
    pub why: String,
}

fn key(addr: u32, len: u8) -> u64 {
    (u64::from(addr) << 8) | u64::from(len)
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Table {
    /// Builds a table from `leases`, leaving out this node's own subnet and
    /// leases that are not usable VXLAN peers of network `vni`.
    pub fn build<'a>(
        leases: impl IntoIterator<Item = &'a Lease>,
        own: Option<Ipv4Net>,
        vni: Vni,
        port: u16,
    ) -> (Table, Vec<Skipped>) {
        let mut t = Table::default();
        let mut skipped = vec![];
        for l in leases {
            if Some(l.subnet) == own {
                continue;
            }
            match l.attrs.vxlan_data() {
                Ok(d) if d.vni != vni.get() => skipped.push(Skipped {
                    subnet: l.subnet,
                    why: format!("its VNI {} is not this network's VNI {vni}", d.vni),
                }),
                Ok(d) => {
                    t.insert(Peer {
                        subnet: l.subnet,
                        public_ip: l.attrs.public_ip,
                        vtep_mac: d.vtep_mac,
                        endpoint: SocketAddrV4::new(l.attrs.public_ip, port),
                    });
                }
                Err(e) => skipped.push(Skipped {
                    subnet: l.subnet,
                    why: e.to_string(),
                }),
            }
        }
        (t, skipped)
    }

    /// Adds or replaces the route for `p.subnet`.
    pub fn insert(&mut self, p: Peer) {
        let len = p.subnet.prefix_len();
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        self.map.insert(key(u32::from(p.subnet.network()), len), p);
    }

    /// The peer whose subnet holds `dst` (longest prefix first).
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        for &len in &self.lens {
            if let Some(p) = self.map.get(&key(a & mask(len), len)) {
                return Some(p);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every peer, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.map.values()
    }
}

/// The table as the workers see it: swapped whole by the watcher, read without locks.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// An empty shared table.
pub fn shared() -> SharedTable {
    Arc::new(ArcSwap::from_pointee(Table::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(s: &str, ip: [u8; 4], vni: u32) -> Lease {
        Lease {
            subnet: s.parse().unwrap(),
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(vni).unwrap(), VtepMac::derive(&ip)),
            expiration: None,
        }
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
        let (t, skipped) = Table::build(&ls, own, Vni::new(1).unwrap(), 8472);
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

    #[test]
    fn readers_see_whole_swaps() {
        let s = shared();
        assert!(s.load().is_empty());
        let ls = [lease("10.244.3.0/24", [192, 0, 2, 3], 1)];
        let (t, _) = Table::build(&ls, None, Vni::new(1).unwrap(), 8472);
        let before = s.load_full();
        s.store(Arc::new(t));
        assert!(
            before.is_empty(),
            "a reader's loaded table never changes under it"
        );
        assert_eq!(s.load().len(), 1);
    }
}
