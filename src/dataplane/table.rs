//! The forwarding table: subnet → peer (public IP, VtepMAC), immutable once
//! built, for IPv4 subnets and, in a dual-stack network, IPv6 ones (reached
//! over the peer's IPv6 underlay, as flannel's `flannel-v6.1` reaches them).
//!
//! The lease watcher builds a new table and swaps it in ([`SharedTable`], an
//! `ArcSwap`); workers load it once per batch without locks, so readers never
//! wait on the writer. Lookup is longest-prefix match over the few distinct
//! prefix lengths present (one, in a flannel network), each a hash probe.
//! The receive path asks the other way round: which subnets the node at a
//! public IP holds ([`Table::sender`]), once per datagram.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use rustc_hash::FxHashMap;

use crate::types::VtepMac;

/// Where packets for one subnet go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: VtepMac,
    /// The peer's VXLAN endpoint: public IP and the network's UDP port.
    pub endpoint: SocketAddrV4,
    /// Its per-peer counter slot ([`crate::dataplane::counters::PeerSlots`]);
    /// 0, `other`, until one is given.
    pub slot: u32,
}

/// Where packets for one IPv6 subnet go: the peer's IPv6 VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer6 {
    pub subnet: Ipv6Net,
    /// The IPv4 subnet of the lease it is the IPv6 half of; `None` for a
    /// lease of an IPv6-only network.
    pub v4: Option<Ipv4Net>,
    pub public_ip: Ipv6Addr,
    /// The VtepMAC of its IPv6 VTEP (`BackendV6Data`).
    pub vtep_mac: VtepMac,
    pub endpoint: SocketAddrV6,
    /// The lease's counter slot (shared with its IPv4 half).
    pub slot: u32,
}

/// The node behind one public IP (IPv4 or IPv6), as the receive path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderEntry {
    /// The subnets leased to it: where its inner sources may lie.
    pub nets: Vec<Ipv4Net>,
    /// Its IPv6 subnets, in a dual-stack network.
    pub nets6: Vec<Ipv6Net>,
    /// Its per-peer counter slot.
    pub slot: u32,
}

/// An immutable forwarding table.
#[derive(Debug, Default)]
pub struct Table {
    /// Distinct prefix lengths, longest first.
    lens: Vec<u8>,
    map: FxHashMap<u64, Peer>,
    dense: Option<Dense>,
    /// Public IP → the subnets leased to it (one per node, in a flannel network).
    senders: FxHashMap<Ipv4Addr, SenderEntry>,
    /// IPv6 prefix lengths, longest first, and the IPv6 routes.
    lens6: Vec<u8>,
    map6: FxHashMap<(u128, u8), Peer6>,
    /// Public IPv6 → the same entries as its node's public IPv4 has.
    /// Keyed by the address as a `u128`: hashing an `Ipv6Addr` hashes 16
    /// bytes one by one, and peers' addresses differ in their last few.
    senders6: FxHashMap<u128, SenderEntry>,
}

/// Every subnet of one Network at one prefix length, indexed by subnet number.
#[derive(Debug)]
struct Dense {
    base: u32,
    mask: u32,
    shift: u32,
    /// 0 = no lease; else 1 + an index into `peers`.
    slots: Vec<u32>,
    peers: Vec<Peer>,
}

/// At most 2^16 subnets per Network get a dense index (256 KiB).
const DENSE_MAX_BITS: u8 = 16;

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
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
    /// A table of these routes, for IPv4 subnets and IPv6 ones, each
    /// node's two public addresses joined into one sender. Routes are
    /// admitted by [`crate::node::Admission`]; a later route for the same
    /// subnet replaces an earlier one.
    pub fn from_routes(
        peers: impl IntoIterator<Item = Peer>,
        peers6: impl IntoIterator<Item = Peer6>,
    ) -> Table {
        let mut t = Table::default();
        for p6 in peers6 {
            t.insert6(p6);
        }
        for p in peers {
            t.insert(p);
        }
        t.join_senders();
        t
    }

    /// Adds the dense index when every peer has the same prefix length inside
    /// `network` and the network holds at most 2^16 such subnets (a flannel
    /// network: 10.244.0.0/16 with /24s has 256). Lookups answer the same
    /// with or without it. Returns whether the index was built.
    pub fn index_dense(&mut self, network: Ipv4Net) -> bool {
        self.dense = None;
        let [len] = self.lens[..] else { return false };
        let plen = network.prefix_len();
        // A shift of 32 (a /0 peer) has no meaning: no index then.
        if len == 0
            || len < plen
            || len - plen > DENSE_MAX_BITS
            || !self.map.values().all(|p| network.contains(&p.subnet))
        {
            return false;
        }
        let shift = 32 - u32::from(len);
        let base = u32::from(network.network());
        let mut d = Dense {
            base,
            mask: mask(plen),
            shift,
            slots: vec![0; 1 << (len - plen)],
            peers: Vec::with_capacity(self.map.len()),
        };
        for p in self.map.values() {
            d.peers.push(*p);
            d.slots[((u32::from(p.subnet.network()) - base) >> shift) as usize] =
                d.peers.len() as u32;
        }
        self.dense = Some(d);
        true
    }

    /// Adds or replaces the route for `p.subnet`.
    pub fn insert(&mut self, p: Peer) {
        self.dense = None;
        let len = p.subnet.prefix_len();
        if !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        if let Some(old) = self.map.insert(key(u32::from(p.subnet.network()), len), p) {
            if let Some(e) = self.senders.get_mut(&old.public_ip) {
                e.nets.retain(|n| *n != old.subnet);
                if e.nets.is_empty() {
                    self.senders.remove(&old.public_ip);
                }
            }
        }
        let e = self.senders.entry(p.public_ip).or_insert(SenderEntry {
            nets: vec![],
            nets6: vec![],
            slot: p.slot,
        });
        e.nets.push(p.subnet);
    }

    /// Adds or replaces the IPv6 route for `p.subnet`; the peer's public
    /// IPv6 address then names the same node as its lease's public IPv4.
    pub fn insert6(&mut self, p: Peer6) {
        let len = p.subnet.prefix_len();
        if !self.lens6.contains(&len) {
            self.lens6.push(len);
            self.lens6.sort_unstable_by(|a, b| b.cmp(a));
        }
        let k = (u128::from(p.subnet.network()), len);
        if let Some(old) = self.map6.insert(k, p) {
            if let Some(e) = self.senders6.get_mut(&u128::from(old.public_ip)) {
                e.nets6.retain(|n| *n != old.subnet);
            }
        }
        let e = self
            .senders6
            .entry(u128::from(p.public_ip))
            .or_insert(SenderEntry {
                nets: vec![],
                nets6: vec![],
                slot: p.slot,
            });
        e.nets6.push(p.subnet);
    }

    /// Makes each node's two public addresses name one sender: the subnets
    /// of both families, wherever its datagrams come from.
    fn join_senders(&mut self) {
        let v4_of: FxHashMap<Ipv6Addr, Ipv4Addr> = self
            .map6
            .values()
            .filter_map(|p6| {
                let s = p6.v4?;
                self.lookup(s.network())
                    .filter(|p| p.subnet == s)
                    .map(|p| (p6.public_ip, p.public_ip))
            })
            .collect();
        for (ip6, ip4) in v4_of {
            let nets6 = self
                .senders6
                .get(&u128::from(ip6))
                .map(|e| e.nets6.clone())
                .unwrap_or_default();
            if let Some(e4) = self.senders.get_mut(&ip4) {
                for n in nets6 {
                    if !e4.nets6.contains(&n) {
                        e4.nets6.push(n);
                    }
                }
                let joined = e4.clone();
                self.senders6.insert(u128::from(ip6), joined);
            }
        }
    }

    /// The names of the peers, for [`crate::dataplane::counters::PeerSlots`]:
    /// each IPv4 route's public IP, and the public IPv6 of each IPv6 route
    /// whose lease has no IPv4 half (a peer of an IPv6-only network).
    pub fn peer_names(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.map
            .values()
            .map(|p| IpAddr::V4(p.public_ip))
            .chain(self.peers6_only().map(|p6| IpAddr::V6(p6.public_ip)))
    }

    /// Gives every peer the counter slot `slots` holds for its name
    /// ([`Table::peer_names`]; 0, `other`, when it holds none); the IPv6
    /// route of a dual-stack lease takes its IPv4 half's. Lookups answer as
    /// before.
    pub fn set_slots(&mut self, slots: &FxHashMap<IpAddr, u32>) {
        let of = |ip: IpAddr| slots.get(&ip).copied().unwrap_or(0);
        for p in self.map.values_mut() {
            p.slot = of(IpAddr::V4(p.public_ip));
        }
        if let Some(d) = &mut self.dense {
            for p in &mut d.peers {
                p.slot = of(IpAddr::V4(p.public_ip));
            }
        }
        for (ip, e) in &mut self.senders {
            e.slot = of(IpAddr::V4(*ip));
        }
        for (ip6, e) in &mut self.senders6 {
            e.slot = of(IpAddr::V6(Ipv6Addr::from(*ip6)));
        }
        let slot_of_lease: FxHashMap<Ipv4Net, u32> =
            self.map.values().map(|p| (p.subnet, p.slot)).collect();
        for p in self.map6.values_mut() {
            p.slot = match p.v4 {
                Some(s) => slot_of_lease.get(&s).copied().unwrap_or(0),
                None => of(IpAddr::V6(p.public_ip)),
            };
        }
        self.join_senders();
    }

    /// The node whose public IP (either family) is `ip`: the subnets leased
    /// to it (where the inner sources of its datagrams may lie) and its
    /// counter slot. None: no lease has that IP.
    #[inline]
    pub fn sender(&self, ip: IpAddr) -> Option<&SenderEntry> {
        match ip {
            IpAddr::V4(a) => self.senders.get(&a),
            IpAddr::V6(a) => self.senders6.get(&u128::from(a)),
        }
    }

    /// The IPv6 route whose subnet holds `dst` (longest prefix first).
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer6> {
        let a = u128::from(dst);
        for &len in &self.lens6 {
            if let Some(p) = self.map6.get(&(a & mask6(len), len)) {
                return Some(p);
            }
        }
        None
    }

    /// Every IPv6 route, in no particular order.
    pub fn peers6(&self) -> impl Iterator<Item = &Peer6> {
        self.map6.values()
    }

    /// The peer whose subnet holds `dst` (longest prefix first).
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let a = u32::from(dst);
        if let Some(d) = &self.dense {
            if a & d.mask == d.base {
                let i = d.slots[((a - d.base) >> d.shift) as usize];
                return i.checked_sub(1).map(|i| &d.peers[i as usize]);
            }
        }
        for &len in &self.lens {
            if let Some(p) = self.map.get(&key(a & mask(len), len)) {
                return Some(p);
            }
        }
        None
    }

    /// The peers' leases routed: those with an IPv4 half, and the IPv6-only
    /// ones (not on the packet path: it counts).
    pub fn len(&self) -> usize {
        self.map.len() + self.peers6_only().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The IPv6 routes of leases without an IPv4 half (peers of an
    /// IPv6-only network).
    pub fn peers6_only(&self) -> impl Iterator<Item = &Peer6> {
        self.map6.values().filter(|p6| p6.v4.is_none())
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

    /// A peer at `ip` for subnet `s`.
    fn peer(s: &str, ip: [u8; 4]) -> Peer {
        let public_ip = Ipv4Addr::from(ip);
        Peer {
            subnet: s.parse().unwrap(),
            public_ip,
            vtep_mac: VtepMac::derive(&ip),
            endpoint: SocketAddrV4::new(public_ip, 8472),
            slot: 0,
        }
    }

    fn table(peers: &[Peer]) -> Table {
        Table::from_routes(peers.iter().copied(), [])
    }

    #[test]
    fn dense_index_answers_like_the_hash() {
        let ls: Vec<Peer> = (1..=300u32)
            .filter(|i| i % 7 != 0)
            .map(|i| {
                peer(
                    &format!("10.244.{}.0/24", i % 256),
                    [192, 0, (i / 256) as u8 + 2, i as u8],
                )
            })
            .collect();
        let (mut t, _) = (table(&ls), ());
        let probes: Vec<Ipv4Addr> = (0..70_000u32)
            .map(|i| Ipv4Addr::from(0x0af3_0000 + i * 61))
            .collect();
        let hashed: Vec<Option<Peer>> = probes.iter().map(|a| t.lookup(*a).copied()).collect();
        assert!(t.index_dense("10.244.0.0/16".parse().unwrap()));
        let dense: Vec<Option<Peer>> = probes.iter().map(|a| t.lookup(*a).copied()).collect();
        assert_eq!(hashed, dense);
        assert!(dense.iter().any(Option::is_some) && dense.iter().any(Option::is_none));
        // Mixed prefix lengths, or peers outside the network: no dense index.
        t.insert(Peer {
            subnet: "10.244.200.128/25".parse().unwrap(),
            ..*t.lookup(Ipv4Addr::new(10, 244, 1, 1)).unwrap()
        });
        assert!(!t.index_dense("10.244.0.0/16".parse().unwrap()));
        let mut t = table(&ls);
        assert!(
            !t.index_dense("10.244.0.0/17".parse().unwrap()),
            "leases outside 10.244.0.0/17"
        );
        assert!(
            t.index_dense("10.0.0.0/8".parse().unwrap()),
            "2^16 subnets: indexed"
        );
        assert!(
            !t.index_dense("10.0.0.0/7".parse().unwrap()),
            "2^17 subnets: too many"
        );
    }
    #[test]
    fn senders_are_indexed_by_public_ip() {
        let ls = [
            peer("10.244.1.0/24", [192, 0, 2, 1]),
            peer("10.244.2.0/24", [192, 0, 2, 2]),
            // Two leases behind one address (nodes behind one NAT).
            peer("10.244.3.0/24", [192, 0, 2, 2]),
        ];
        let mut t = table(&ls);
        assert_eq!(
            t.sender([192, 0, 2, 1].into()).map(|e| &e.nets[..]),
            Some(&["10.244.1.0/24".parse().unwrap()][..])
        );
        let mut two = t.sender([192, 0, 2, 2].into()).unwrap().nets.clone();
        two.sort();
        assert_eq!(
            two,
            [
                "10.244.2.0/24".parse::<Ipv4Net>().unwrap(),
                "10.244.3.0/24".parse().unwrap()
            ]
        );
        assert_eq!(t.sender([192, 0, 2, 9].into()), None);
        // A subnet that moves to another node leaves its old sender.
        t.insert(Peer {
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: [192, 0, 2, 7].into(),
            vtep_mac: VtepMac::derive(&[192, 0, 2, 7]),
            endpoint: "192.0.2.7:8472".parse().unwrap(),
            slot: 0,
        });
        assert_eq!(t.sender([192, 0, 2, 1].into()), None);
        assert_eq!(
            t.sender([192, 0, 2, 7].into()).map(|e| e.nets.len()),
            Some(1)
        );
        // Slots follow the public IP, in the hash, the dense index and the senders.
        assert!(t.index_dense("10.244.0.0/16".parse().unwrap()));
        let slots = FxHashMap::from_iter([(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 7)]);
        t.set_slots(&slots);
        assert_eq!(t.lookup([10, 244, 2, 9].into()).map(|p| p.slot), Some(7));
        assert_eq!(t.lookup([10, 244, 3, 9].into()).map(|p| p.slot), Some(7));
        assert_eq!(t.lookup([10, 244, 1, 9].into()).map(|p| p.slot), Some(0));
        assert_eq!(t.sender([192, 0, 2, 2].into()).map(|e| e.slot), Some(7));
        assert_eq!(t.sender([192, 0, 2, 7].into()).map(|e| e.slot), Some(0));
    }
    #[test]
    fn readers_see_whole_swaps() {
        let s = shared();
        assert!(s.load().is_empty());
        let ls = [peer("10.244.3.0/24", [192, 0, 2, 3])];
        let t = table(&ls);
        let before = s.load_full();
        s.store(Arc::new(t));
        assert!(
            before.is_empty(),
            "a reader's loaded table never changes under it"
        );
        assert_eq!(s.load().len(), 1);
    }
}
