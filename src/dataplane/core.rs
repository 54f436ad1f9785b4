//! The packet core: turns one packet into one action, with no I/O and no
//! allocation, so it can be tested back to back in memory and benchmarked alone.
//! IPv4 and, on a dual-stack node, IPv6: an inner IPv6 packet goes to the
//! peer's IPv6 VTEP, over the IPv6 underlay, as flannel's `flannel-v6.1` sends it.
//!
//! Buffers are slots of [`super::SLOT`] bytes with [`HEADROOM`] bytes free in
//! front: an inner IP packet read from TUN at `slot[HEADROOM..]` is encapsulated
//! by writing the VXLAN and inner Ethernet headers into the headroom, never by
//! copying the packet. A datagram received at `slot[HEADROOM - ENCAP_LEN..]`
//! decapsulates to an inner packet that starts at `HEADROOM`.
//!
//! Contract: no input panics; every refused packet maps to a [`DropReason`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use ipnet::{Ipv4Net, Ipv6Net};

use super::counters::DropReason;
use super::table::{SenderEntry, Table};
use super::{ENCAP_LEN, HEADROOM};
use crate::types::{Vni, VtepMac};
use crate::wire::{ethernet, icmp, icmpv6, ipv4, ipv6, tcp, vxlan};

/// What to do with a packet read from TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAction {
    /// Send `slot[range]` (VXLAN + inner frame) as one UDP datagram to `to`.
    Send {
        to: SocketAddr,
        range: Range<usize>,
        /// The peer's counter slot.
        slot: u32,
    },
    /// No route: write the ICMP unreachable in `scratch[..len]` back into TUN.
    Unreachable {
        len: usize,
    },
    Drop(DropReason),
}

/// Where a packet read from TUN goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To `to`, behind `prefix` (VXLAN + inner Ethernet header).
    Peer {
        to: SocketAddr,
        prefix: [u8; ENCAP_LEN],
        /// The peer's counter slot.
        slot: u32,
    },
    /// No route: write the ICMP unreachable in `scratch[..len]` back into TUN.
    Unreachable {
        len: usize,
    },
    Drop(DropReason),
}

/// What to do with a datagram received on the VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxAction {
    /// Write `slot[range]` (the inner IP packet) into TUN.
    Deliver(Range<usize>),
    Drop(DropReason),
}

/// Whom the receive path believes. Both checks are on unless an operator
/// relaxes one (`--accept-unknown-peers`, `--accept-foreign-sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceChecks {
    /// Accept VXLAN only from the public IP of a lease in this network.
    pub known_peers: bool,
    /// Accept inner packets only with a source inside the sender's subnets.
    pub own_sources: bool,
}

impl Default for SourceChecks {
    fn default() -> SourceChecks {
        SourceChecks {
            known_peers: true,
            own_sources: true,
        }
    }
}

/// Who sent a datagram, found once per datagram by [`Core::sender`].
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// The node holding these subnets (one per family, in a flannel network).
    Leased(&'a SenderEntry),
    /// No lease has the datagram's source address, and unknown peers are
    /// accepted: an inner source must then lie in some peer's subnet.
    Unknown(&'a Table),
    /// Inner sources are not checked.
    Anyone,
}

/// This node's identity on the overlay, as the core needs it.
#[derive(Debug, Clone, Copy)]
pub struct Core {
    pub vni: Vni,
    pub mac: VtepMac,
    /// The node's leased subnet: inner destinations accepted from peers;
    /// `None` on a node of an IPv6-only network, which carries no IPv4.
    pub subnet: Option<Ipv4Net>,
    /// The node's `.0` address (on TUN): the source of ICMP errors.
    pub router: Option<Ipv4Addr>,
    /// The node's IPv6 subnet, on a dual-stack or IPv6-only node; its `::` address (on
    /// TUN, as flannel puts it on `flannel-v6.1`) is the source of ICMPv6 errors.
    pub subnet6: Option<Ipv6Net>,
    /// The VtepMAC of the node's IPv6 VTEP (`BackendV6Data`): IPv6 frames
    /// are sent from it and accepted to it, as `flannel-v6.1` has its own.
    pub mac6: VtepMac,
    pub checks: SourceChecks,
}

impl Core {
    /// A node's core with both source checks on.
    pub fn new(vni: Vni, mac: VtepMac, subnet: Ipv4Net) -> Core {
        Core {
            vni,
            mac,
            subnet: Some(subnet),
            router: Some(subnet.network()),
            subnet6: None,
            mac6: mac,
            checks: SourceChecks::default(),
        }
    }

    /// The core of a node of an IPv6-only network: IPv6 in `subnet6`, with
    /// the IPv6 VTEP's `mac6`; inner IPv4 is neither sent nor accepted.
    pub fn ipv6_only(vni: Vni, mac6: VtepMac, subnet6: Ipv6Net) -> Core {
        Core {
            vni,
            mac: mac6,
            subnet: None,
            router: None,
            subnet6: Some(subnet6),
            mac6,
            checks: SourceChecks::default(),
        }
    }

    /// This core with the node's IPv6 subnet and IPv6 VtepMAC: it then
    /// carries IPv6 too.
    pub fn with_ipv6(mut self, subnet6: Ipv6Net, mac6: VtepMac) -> Core {
        self.subnet6 = Some(subnet6);
        self.mac6 = mac6;
        self
    }

    /// Who sent a datagram from the outer source `src`, by `table`; refused
    /// ([`DropReason::UnknownPeer`]) when no lease has that public IP and
    /// unknown peers are not accepted.
    #[inline]
    pub fn sender<'t>(&self, table: &'t Table, src: IpAddr) -> Result<Sender<'t>, DropReason> {
        self.identify(table, src).map(|(s, _)| s)
    }

    /// As [`Core::sender`], with the sender's counter slot (0, `other`, for
    /// a sender accepted without a lease).
    #[inline]
    pub fn identify<'t>(
        &self,
        table: &'t Table,
        src: IpAddr,
    ) -> Result<(Sender<'t>, u32), DropReason> {
        match table.sender(src) {
            Some(e) if !self.checks.own_sources => Ok((Sender::Anyone, e.slot)),
            Some(e) => Ok((Sender::Leased(e), e.slot)),
            None if self.checks.known_peers => Err(DropReason::UnknownPeer),
            None if self.checks.own_sources => Ok((Sender::Unknown(table), 0)),
            None => Ok((Sender::Anyone, 0)),
        }
    }

    /// Encapsulates the IP packet at `slot[HEADROOM..HEADROOM + len]` for its peer.
    /// On `Unreachable`, the ICMP answer is built in `scratch`.
    #[inline]
    pub fn encap(
        &self,
        table: &Table,
        slot: &mut [u8],
        len: usize,
        scratch: &mut [u8],
    ) -> TxAction {
        let Some(pkt) = HEADROOM
            .checked_add(len)
            .and_then(|end| slot.get(HEADROOM..end))
        else {
            return TxAction::Drop(DropReason::TunTruncated);
        };
        match self.route(table, pkt, scratch) {
            Route::Peer {
                to,
                prefix,
                slot: peer,
            } => {
                let start = HEADROOM - ENCAP_LEN;
                slot[start..HEADROOM].copy_from_slice(&prefix);
                TxAction::Send {
                    to,
                    range: start..HEADROOM + len,
                    slot: peer,
                }
            }
            Route::Unreachable { len } => TxAction::Unreachable { len },
            Route::Drop(r) => TxAction::Drop(r),
        }
    }

    /// Finds the peer for the IP packet `pkt` and builds the VXLAN + inner
    /// Ethernet header every datagram to it starts with. On `Unreachable`,
    /// the ICMP answer is built in `scratch`.
    #[inline]
    pub fn route(&self, table: &Table, pkt: &[u8], scratch: &mut [u8]) -> Route {
        if pkt.first().is_some_and(|b| b >> 4 == 6) {
            if let Some(own6) = self.subnet6 {
                return self.route6(table, own6, pkt, scratch);
            }
        }
        let Some(dst) = ipv4::peek_dst(pkt) else {
            return Route::Drop(if pkt.first().is_some_and(|b| b >> 4 == 4) {
                DropReason::TunTruncated
            } else {
                DropReason::TunNotIpv4
            });
        };
        let Some(peer) = table.lookup(dst) else {
            if self.subnet.is_some_and(|s| s.contains(&dst)) {
                return Route::Drop(DropReason::OwnSubnet);
            }
            return match self.unreachable(pkt, scratch) {
                Some(len) => Route::Unreachable { len },
                None => Route::Drop(DropReason::NoRoute),
            };
        };
        Route::Peer {
            to: SocketAddr::V4(peer.endpoint),
            prefix: self.prefix(peer.vtep_mac, self.mac, ethernet::ETHERTYPE_IPV4),
            slot: peer.slot,
        }
    }

    /// [`Core::route`] for an IPv6 packet on a node whose IPv6 subnet is `own6`.
    #[inline]
    fn route6(&self, table: &Table, own6: Ipv6Net, pkt: &[u8], scratch: &mut [u8]) -> Route {
        let Some(dst) = ipv6::peek_dst(pkt) else {
            return Route::Drop(DropReason::TunTruncated);
        };
        let Some(peer) = table.lookup6(dst) else {
            if own6.contains(&dst) {
                return Route::Drop(DropReason::OwnSubnet);
            }
            return match self.unreachable6(own6.network(), pkt, scratch) {
                Some(len) => Route::Unreachable { len },
                None => Route::Drop(DropReason::NoRoute),
            };
        };
        Route::Peer {
            to: SocketAddr::V6(peer.endpoint),
            prefix: self.prefix(peer.vtep_mac, self.mac6, ethernet::ETHERTYPE_IPV6),
            slot: peer.slot,
        }
    }

    /// The VXLAN header and inner Ethernet header (from `from` to `to`,
    /// `ethertype`) every datagram to one peer starts with.
    #[inline]
    fn prefix(&self, to: VtepMac, from: VtepMac, ethertype: u16) -> [u8; ENCAP_LEN] {
        let mut prefix = [0u8; ENCAP_LEN];
        vxlan::Packet::new_unchecked(&mut prefix[..vxlan::HEADER_LEN]).emit(self.vni);
        ethernet::Frame::new_unchecked(&mut prefix[vxlan::HEADER_LEN..]).emit(
            to.octets(),
            from.octets(),
            ethertype,
        );
        prefix
    }

    fn unreachable(&self, pkt: &[u8], scratch: &mut [u8]) -> Option<usize> {
        let ip = ipv4::Packet::new_checked(pkt).ok()?;
        if !icmp::may_answer(&ip) {
            return None;
        }
        icmp::emit_unreachable(scratch, pkt, self.router?, icmp::CODE_NET_UNREACHABLE)
    }

    fn unreachable6(&self, router: Ipv6Addr, pkt: &[u8], scratch: &mut [u8]) -> Option<usize> {
        let ip = ipv6::Packet::new_checked(pkt).ok()?;
        if !icmpv6::may_answer(&ip) {
            return None;
        }
        icmpv6::emit_unreachable(scratch, pkt, router, icmpv6::CODE_NO_ROUTE)
    }

    /// Checks and decapsulates the datagram at `slot[start..start + len]`
    /// from `from` (what [`Core::sender`] found for its outer source).
    #[inline]
    pub fn decap(&self, from: Sender<'_>, slot: &[u8], start: usize, len: usize) -> RxAction {
        let Some(d) = start.checked_add(len).and_then(|end| slot.get(start..end)) else {
            return RxAction::Drop(DropReason::VxlanTruncated);
        };
        if d.len() < ENCAP_LEN + ipv4::MIN_HEADER_LEN {
            return RxAction::Drop(DropReason::VxlanTruncated);
        }
        let vx = vxlan::Packet::new_unchecked(d);
        if vx.flags() & vxlan::FLAG_I == 0 {
            return RxAction::Drop(DropReason::VxlanFlags);
        }
        if vx.vni() != self.vni.get() {
            return RxAction::Drop(DropReason::WrongVni);
        }
        let eth = ethernet::Frame::new_unchecked(vx.payload());
        match eth.ethertype() {
            ethernet::ETHERTYPE_IPV4 => {}
            ethernet::ETHERTYPE_IPV6 => {
                return match self.subnet6 {
                    Some(_) if eth.dst() != self.mac6.octets() => {
                        RxAction::Drop(DropReason::WrongMac)
                    }
                    Some(own6) => Self::decap6(own6, from, eth.payload(), start),
                    None => RxAction::Drop(DropReason::InnerIpv6),
                };
            }
            _ => return RxAction::Drop(DropReason::BadEthertype),
        }
        if eth.dst() != self.mac.octets() {
            return RxAction::Drop(DropReason::WrongMac);
        }
        let inner = eth.payload();
        let ip = match ipv4::Packet::new_checked(inner) {
            Ok(ip) => ip,
            Err(_) => return RxAction::Drop(DropReason::InnerMalformed),
        };
        if !self.subnet.is_some_and(|s| s.contains(&ip.dst())) {
            return RxAction::Drop(DropReason::NotOurSubnet);
        }
        let src = ip.src();
        let sourced = match from {
            Sender::Leased(e) => e.nets.iter().any(|n| n.contains(&src)),
            Sender::Unknown(table) => table.lookup(src).is_some(),
            Sender::Anyone => true,
        };
        if !sourced {
            return RxAction::Drop(DropReason::SpoofedSource);
        }
        let off = start + ENCAP_LEN;
        // Trim Ethernet padding: the IP total length is what the kernel gets.
        RxAction::Deliver(off..off + usize::from(ip.total_len()))
    }

    /// The IPv6 half of [`Core::decap`]: `inner` follows the inner Ethernet
    /// header, at `start + ENCAP_LEN`.
    #[inline]
    fn decap6(own6: Ipv6Net, from: Sender<'_>, inner: &[u8], start: usize) -> RxAction {
        let ip = match ipv6::Packet::new_checked(inner) {
            Ok(ip) => ip,
            Err(_) => return RxAction::Drop(DropReason::InnerMalformed),
        };
        if !in6(&own6, ip.dst()) {
            return RxAction::Drop(DropReason::NotOurSubnet);
        }
        let src = ip.src();
        let sourced = match from {
            Sender::Leased(e) => e.nets6.iter().any(|n| in6(n, src)),
            Sender::Unknown(table) => table.lookup6(src).is_some(),
            Sender::Anyone => true,
        };
        if !sourced {
            return RxAction::Drop(DropReason::SpoofedSource);
        }
        let off = start + ENCAP_LEN;
        RxAction::Deliver(off..off + ip.total_len())
    }
}

/// Whether `net` holds `a`: the prefix bits compared in one 128-bit XOR
/// (`ipnet`'s `contains` builds the network and broadcast addresses, and
/// took a quarter of an IPv6 decapsulation's time).
#[inline]
fn in6(net: &Ipv6Net, a: Ipv6Addr) -> bool {
    let len = u32::from(net.prefix_len());
    len == 0 || (u128::from(a) ^ u128::from(net.addr())) >> (128 - len) == 0
}

/// A hash of an IPv4 packet's flow: addresses, protocol and, for TCP and UDP
/// (not fragmented), ports — what the kernel's VXLAN hashes to pick a source
/// port. Packets of one flow hash alike, so choosing a sending socket by it
/// never reorders a flow. Anything unparsable hashes to 0.
/// IPv6 alike: addresses folded to 64 bits, the next header, and the ports
/// when the next header is TCP or UDP.
#[inline]
pub fn flow_hash(pkt: &[u8]) -> u32 {
    let (mut h, ports_at) = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        let Ok(ip) = ipv6::Packet::new_checked(pkt) else {
            return 0;
        };
        let (s, d) = (u128::from(ip.src()), u128::from(ip.dst()));
        let x = s ^ d.rotate_left(64);
        let h = ((x >> 64) as u64) ^ (x as u64) ^ (u64::from(ip.next_header()) << 56);
        let l4 = matches!(ip.next_header(), tcp::PROTO_TCP | tcp::PROTO_UDP);
        (h, l4.then_some(ipv6::HEADER_LEN))
    } else {
        let Ok(ip) = ipv4::Packet::new_checked(pkt) else {
            return 0;
        };
        let mut h = (u64::from(u32::from(ip.src())) << 32) | u64::from(u32::from(ip.dst()));
        h ^= u64::from(ip.protocol()) << 56;
        let l4 = matches!(ip.protocol(), tcp::PROTO_TCP | tcp::PROTO_UDP)
            && ip.frag_offset() == 0
            && !ip.more_frags();
        (h, l4.then_some(ip.header_len()))
    };
    if let Some(p) = ports_at.and_then(|hl| pkt.get(hl..hl + 4)) {
        h = h.rotate_left(17) ^ u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
    }
    // splitmix64's finaliser: every input bit reaches every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_is_per_flow() {
        let mut a = udp_packet([10, 244, 1, 2], [10, 244, 2, 3], b"x");
        let b = udp_packet([10, 244, 1, 2], [10, 244, 2, 3], b"a longer payload");
        // Same addresses and ports: same flow, whatever the payload.
        assert_eq!(flow_hash(&a), flow_hash(&b));
        // Another source port: another flow (ports live right after the header).
        a[20] ^= 1;
        assert_ne!(flow_hash(&a), flow_hash(&b));
        // Garbage and truncation do not panic.
        assert_eq!(flow_hash(&[]), 0);
        for n in 0..b.len() {
            let _ = flow_hash(&b[..n]);
        }
        // Spread: 1000 flows over 8 sockets leave no socket empty.
        let mut seen = [0u32; 8];
        for port in 0..1000u16 {
            let mut p = b.clone();
            p[20..22].copy_from_slice(&port.to_be_bytes());
            seen[flow_hash(&p) as usize % 8] += 1;
        }
        assert!(seen.iter().all(|&c| c > 60), "{seen:?}");
    }
    use crate::dataplane::SLOT;
    use crate::lease::{Lease, LeaseAttrs};
    use crate::node::Admission;

    fn node(n: u8) -> Core {
        let ip = [192, 0, 2, n];
        Core::new(
            Vni::new(1).unwrap(),
            VtepMac::derive(&ip),
            format!("10.244.{n}.0/24").parse().unwrap(),
        )
    }

    fn table_of(nodes: &[u8], own: u8) -> Table {
        let leases: Vec<Lease> = nodes
            .iter()
            .map(|n| Lease {
                subnet: format!("10.244.{n}.0/24").parse().ok(),
                ipv6_subnet: None,
                attrs: LeaseAttrs::vxlan(
                    [192, 0, 2, *n].into(),
                    Vni::new(1).unwrap(),
                    VtepMac::derive(&[192, 0, 2, *n]),
                ),
                expiration: None,
            })
            .collect();
        Admission::vxlan(None, Vni::new(1).unwrap(), 8472)
            .table(&leases, Some(format!("10.244.{own}.0/24").parse().unwrap()))
            .0
    }

    fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload.len()];
        ipv4::emit_header(
            &mut p,
            (28 + payload.len()) as u16,
            64,
            17,
            src.into(),
            dst.into(),
        );
        p[28..].copy_from_slice(payload);
        p
    }

    /// Two cores back to back in memory: what node 1 sends, node 2 delivers, byte for byte.
    #[test]
    fn encap_then_decap_is_identity() {
        let (a, b) = (node(1), node(2));
        let ta = table_of(&[1, 2, 3], 1);
        let tb = table_of(&[1, 2, 3], 2);
        let from = b.sender(&tb, [192, 0, 2, 1].into()).unwrap();
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        for size in [1usize, 64, 1372, 1422] {
            let pkt = udp_packet([10, 244, 1, 5], [10, 244, 2, 7], &vec![0xab; size]);
            slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let TxAction::Send { to, range, .. } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch)
            else {
                panic!("expected a send")
            };
            assert_eq!(to, "192.0.2.2:8472".parse().unwrap());
            assert_eq!(range.len(), pkt.len() + ENCAP_LEN);
            // Wire bytes: flags 0x08, VNI 1, dst MAC = node 2's VtepMAC, src = node 1's.
            let wire = slot[range.clone()].to_vec();
            assert_eq!(&wire[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
            assert_eq!(&wire[8..14], &b.mac.octets());
            assert_eq!(&wire[14..20], &a.mac.octets());
            assert_eq!(&wire[20..22], &[0x08, 0x00]);
            // Received into another slot at the receive offset.
            let mut rx = vec![0u8; SLOT];
            let start = HEADROOM - ENCAP_LEN;
            rx[start..start + wire.len()].copy_from_slice(&wire);
            let RxAction::Deliver(r) = b.decap(from, &rx, start, wire.len()) else {
                panic!("expected delivery")
            };
            assert_eq!(&rx[r], &pkt[..]);
        }
    }

    #[test]
    fn unroutable_destinations() {
        let a = node(1);
        let ta = table_of(&[1, 2], 1);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        // No lease: an ICMP net unreachable from 10.244.1.0 back to the sender.
        let pkt = udp_packet([10, 244, 1, 5], [10, 244, 9, 9], b"hi");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let TxAction::Unreachable { len } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch) else {
            panic!()
        };
        let ip = ipv4::Packet::new_checked(&scratch[..len]).unwrap();
        assert_eq!(
            (ip.src(), ip.dst()),
            (Ipv4Addr::new(10, 244, 1, 0), Ipv4Addr::new(10, 244, 1, 5))
        );
        assert_eq!(scratch[20], icmp::TYPE_DEST_UNREACHABLE);
        // Own subnet: dropped, no ICMP.
        let pkt = udp_packet([10, 244, 1, 5], [10, 244, 1, 9], b"hi");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        assert_eq!(
            a.encap(&ta, &mut slot, pkt.len(), &mut scratch),
            TxAction::Drop(DropReason::OwnSubnet)
        );
        // IPv6 and runts.
        slot[HEADROOM] = 0x60;
        assert_eq!(
            a.encap(&ta, &mut slot, 40, &mut scratch),
            TxAction::Drop(DropReason::TunNotIpv4)
        );
        slot[HEADROOM] = 0x45;
        assert_eq!(
            a.encap(&ta, &mut slot, 10, &mut scratch),
            TxAction::Drop(DropReason::TunTruncated)
        );
        assert_eq!(
            a.encap(&ta, &mut slot, SLOT, &mut scratch),
            TxAction::Drop(DropReason::TunTruncated)
        );
    }

    #[test]
    fn bad_datagrams_are_dropped_by_reason() {
        let (a, b) = (node(1), node(2));
        let ta = table_of(&[2], 1);
        let tb = table_of(&[1], 2);
        let from = b.sender(&tb, [192, 0, 2, 1].into()).unwrap();
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        let pkt = udp_packet([10, 244, 1, 5], [10, 244, 2, 7], b"payload!");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let TxAction::Send { range, .. } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch) else {
            panic!()
        };
        let good = slot[range].to_vec();
        let start = HEADROOM - ENCAP_LEN;
        let check = |mutate: &dyn Fn(&mut Vec<u8>), want: DropReason| {
            let mut d = good.clone();
            mutate(&mut d);
            let mut rx = vec![0u8; SLOT];
            rx[start..start + d.len()].copy_from_slice(&d);
            assert_eq!(b.decap(from, &rx, start, d.len()), RxAction::Drop(want));
        };
        check(&|d| d[6] = 2, DropReason::WrongVni);
        check(&|d| d[0] = 0, DropReason::VxlanFlags);
        check(&|d| d[8] ^= 0xff, DropReason::WrongMac);
        check(
            &|d| d[20..22].copy_from_slice(&[0x86, 0xdd]),
            DropReason::InnerIpv6,
        );
        check(
            &|d| d[20..22].copy_from_slice(&[0x08, 0x06]),
            DropReason::BadEthertype,
        );
        check(&|d| d[22] = 0x4f, DropReason::InnerMalformed);
        check(&|d| d.truncate(30), DropReason::VxlanTruncated);
        check(&|d| d[22 + 18] = 3, DropReason::NotOurSubnet);
        check(&|d| d.truncate(good.len() - 1), DropReason::InnerMalformed);
        // Ethernet padding after the IP packet is trimmed, not delivered.
        let mut d = good.clone();
        d.extend_from_slice(&[0; 10]);
        let mut rx = vec![0u8; SLOT];
        rx[start..start + d.len()].copy_from_slice(&d);
        let RxAction::Deliver(r) = b.decap(from, &rx, start, d.len()) else {
            panic!()
        };
        assert_eq!(&rx[r], &pkt[..]);
    }

    fn public6(n: u8) -> std::net::Ipv6Addr {
        format!("2001:db8::{n}").parse().unwrap()
    }

    /// Node `n` of a dual-stack network: `fc00:0:0:n::/64`, IPv6 VTEP at
    /// `2001:db8::n` with a VtepMAC of its own.
    fn node6(n: u8) -> Core {
        node(n).with_ipv6(
            format!("fc00:0:0:{n}::/64").parse().unwrap(),
            VtepMac::derive(&public6(n).octets()),
        )
    }

    fn table6_of(nodes: &[u8], own: u8) -> Table {
        let vni = Vni::new(1).unwrap();
        let leases: Vec<Lease> = nodes
            .iter()
            .map(|n| Lease {
                subnet: format!("10.244.{n}.0/24").parse().ok(),
                ipv6_subnet: format!("fc00:0:0:{n}::/64").parse().ok(),
                attrs: LeaseAttrs::vxlan(
                    [192, 0, 2, *n].into(),
                    vni,
                    VtepMac::derive(&[192, 0, 2, *n]),
                )
                .with_ipv6(
                    public6(*n),
                    vni,
                    VtepMac::derive(&public6(*n).octets()),
                ),
                expiration: None,
            })
            .collect();
        let own = Some(format!("10.244.{own}.0/24").parse().unwrap());
        Admission::vxlan("fc00::/48".parse().ok(), vni, 8472)
            .table(&leases, own)
            .0
    }

    fn udp6_packet(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 48 + payload.len()];
        ipv6::emit_header(
            &mut p,
            (8 + payload.len()) as u16,
            tcp::PROTO_UDP,
            64,
            src.parse().unwrap(),
            dst.parse().unwrap(),
        );
        p[40..44].copy_from_slice(&[0x30, 0x39, 0x1f, 0x90]);
        p[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p[48..].copy_from_slice(payload);
        p
    }

    /// IPv6 pod traffic goes to the peer's IPv6 VTEP — its PublicIPv6 and
    /// the VtepMAC of BackendV6Data, ethertype 0x86dd, from this node's IPv6
    /// VtepMAC — and comes out of the peer byte for byte, from either of
    /// the sender's addresses; IPv4 beside it is unchanged.
    #[test]
    fn ipv6_encap_then_decap_is_identity() {
        let (a, b) = (node6(1), node6(2));
        let ta = table6_of(&[1, 2, 3], 1);
        let tb = table6_of(&[1, 2, 3], 2);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        for size in [0usize, 1, 64, 1352, 1382] {
            let pkt = udp6_packet("fc00:0:0:1::5", "fc00:0:0:2::7", &vec![0xab; size]);
            slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let TxAction::Send {
                to,
                range,
                slot: peer,
            } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch)
            else {
                panic!("expected a send")
            };
            assert_eq!(to, "[2001:db8::2]:8472".parse().unwrap());
            assert_eq!(peer, ta.lookup([10, 244, 2, 1].into()).unwrap().slot);
            let wire = slot[range.clone()].to_vec();
            assert_eq!(&wire[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
            assert_eq!(&wire[8..14], &b.mac6.octets());
            assert_eq!(&wire[14..20], &a.mac6.octets());
            assert_ne!(a.mac6, a.mac, "the IPv6 VTEP has a MAC of its own");
            assert_eq!(&wire[20..22], &[0x86, 0xdd]);
            for src in [IpAddr::from(public6(1)), IpAddr::from([192, 0, 2, 1])] {
                let from = b.sender(&tb, src).unwrap();
                let mut rx = vec![0u8; SLOT];
                let start = HEADROOM - ENCAP_LEN;
                rx[start..start + wire.len()].copy_from_slice(&wire);
                let RxAction::Deliver(r) = b.decap(from, &rx, start, wire.len()) else {
                    panic!("expected delivery from {src}")
                };
                assert_eq!(&rx[r], &pkt[..]);
            }
        }
        // IPv4 on the same dual-stack node still goes over IPv4.
        let pkt = udp_packet([10, 244, 1, 5], [10, 244, 3, 7], b"v4");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let TxAction::Send { to, .. } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch) else {
            panic!()
        };
        assert_eq!(to, "192.0.2.3:8472".parse().unwrap());
    }

    #[test]
    fn ipv6_unroutable_own_and_foreign() {
        let a = node6(1);
        let ta = table6_of(&[1, 2], 1);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 1400];
        // No lease: ICMPv6 no-route from the node's fc00:0:0:1:: back to the sender.
        let pkt = udp6_packet("fc00:0:0:1::5", "fc00:0:0:9::9", b"hi");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let TxAction::Unreachable { len } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch) else {
            panic!()
        };
        let ip = ipv6::Packet::new_checked(&scratch[..len]).unwrap();
        assert_eq!(
            ip.src(),
            "fc00:0:0:1::".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ip.dst(),
            "fc00:0:0:1::5".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(scratch[40], icmpv6::TYPE_DEST_UNREACHABLE);
        // Own IPv6 subnet: dropped without an answer; multicast: no answer.
        for (dst, want) in [
            ("fc00:0:0:1::9", DropReason::OwnSubnet),
            ("ff02::1", DropReason::NoRoute),
        ] {
            let pkt = udp6_packet("fc00:0:0:1::5", dst, b"hi");
            slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            assert_eq!(
                a.encap(&ta, &mut slot, pkt.len(), &mut scratch),
                TxAction::Drop(want)
            );
        }
        // On a node without IPv6, IPv6 is still refused as before.
        let pkt = udp6_packet("fc00:0:0:1::5", "fc00:0:0:2::9", b"hi");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        assert_eq!(
            node(1).encap(&ta, &mut slot, pkt.len(), &mut scratch),
            TxAction::Drop(DropReason::TunNotIpv4)
        );
    }

    /// The receive path's IPv6 refusals: the IPv4 VtepMAC on an IPv6 frame,
    /// another node's destination, an inner source the sender does not hold,
    /// a truncated header, and IPv6 on a node without it.
    #[test]
    fn ipv6_datagrams_are_checked_like_ipv4() {
        let (a, b) = (node6(1), node6(2));
        let ta = table6_of(&[2], 1);
        let tb = table6_of(&[1, 3], 2);
        let from = b.sender(&tb, public6(1).into()).unwrap();
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        let pkt = udp6_packet("fc00:0:0:1::5", "fc00:0:0:2::7", b"payload!");
        slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let TxAction::Send { range, .. } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch) else {
            panic!()
        };
        let good = slot[range].to_vec();
        let start = HEADROOM - ENCAP_LEN;
        let run = |core: &Core, d: &[u8]| {
            let mut rx = vec![0u8; SLOT];
            rx[start..start + d.len()].copy_from_slice(d);
            core.decap(from, &rx, start, d.len())
        };
        let check = |mutate: &dyn Fn(&mut Vec<u8>), want: DropReason| {
            let mut d = good.clone();
            mutate(&mut d);
            assert_eq!(run(&b, &d), RxAction::Drop(want));
        };
        let mac4 = b.mac.octets();
        check(&|d| d[8..14].copy_from_slice(&mac4), DropReason::WrongMac);
        // Destination in node 3's subnet (byte 7 of the address: fc00:0:0:3::7).
        check(&|d| d[22 + 24 + 7] = 3, DropReason::NotOurSubnet);
        // Source in node 3's subnet, sent by node 1.
        check(&|d| d[22 + 8 + 7] = 3, DropReason::SpoofedSource);
        check(&|d| d.truncate(22 + 10), DropReason::VxlanTruncated);
        check(&|d| d.truncate(22 + 39), DropReason::InnerMalformed);
        check(&|d| d.truncate(good.len() - 1), DropReason::InnerMalformed);
        assert_eq!(run(&node(2), &good), RxAction::Drop(DropReason::InnerIpv6));
        assert!(matches!(run(&b, &good), RxAction::Deliver(_)));
        // A stranger's IPv6 address is refused unless unknown peers are accepted.
        assert_eq!(
            b.sender(
                &tb,
                "2001:db8::99".parse::<std::net::Ipv6Addr>().unwrap().into()
            )
            .err(),
            Some(DropReason::UnknownPeer)
        );
    }

    #[test]
    fn in6_agrees_with_ipnet() {
        let addrs: Vec<Ipv6Addr> = ["fc00:0:0:2::7", "fc00:0:0:3::", "::", "ffff::1", "fc00::"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for net in [
            "fc00:0:0:2::/64",
            "fc00::/48",
            "::/0",
            "fc00:0:0:2::7/128",
            "fc00:0:0:2::5/64",
        ] {
            let n: Ipv6Net = net.parse().unwrap();
            for a in &addrs {
                assert_eq!(in6(&n, *a), n.contains(a), "{n} {a}");
            }
        }
    }

    #[test]
    fn ipv6_flow_hash_is_per_flow() {
        let a = udp6_packet("fc00:0:0:1::5", "fc00:0:0:2::7", b"x");
        let b = udp6_packet("fc00:0:0:1::5", "fc00:0:0:2::7", b"a longer payload");
        assert_eq!(flow_hash(&a), flow_hash(&b));
        assert_ne!(flow_hash(&a), 0);
        let mut c = a.clone();
        c[40] ^= 1;
        assert_ne!(flow_hash(&a), flow_hash(&c));
        let d = udp6_packet("fc00:0:0:1::6", "fc00:0:0:2::7", b"x");
        assert_ne!(flow_hash(&a), flow_hash(&d));
        for n in 0..a.len() {
            let _ = flow_hash(&a[..n]);
        }
    }

    /// A datagram from an address no lease has, or with an inner source the
    /// sender does not hold, is refused by reason; each check relaxes alone.
    #[test]
    fn source_checks_refuse_strangers_and_foreign_inner_sources() {
        let (a, mut b) = (node(1), node(2));
        let ta = table_of(&[2], 1);
        let tb = table_of(&[1, 3], 2);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        let mut datagram = |src: [u8; 4]| {
            let pkt = udp_packet(src, [10, 244, 2, 7], b"payload!");
            slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let TxAction::Send { range, .. } = a.encap(&ta, &mut slot, pkt.len(), &mut scratch)
            else {
                panic!()
            };
            (slot.clone(), range)
        };
        let own = datagram([10, 244, 1, 5]);
        let node3s = datagram([10, 244, 3, 5]);
        let outside = datagram([192, 168, 9, 9]);
        let stranger: Ipv4Addr = [192, 0, 2, 99].into();
        let node1: Ipv4Addr = [192, 0, 2, 1].into();
        let decap = |b: &Core, src: Ipv4Addr, (rx, r): &(Vec<u8>, Range<usize>)| match b
            .sender(&tb, src.into())
        {
            Ok(from) => b.decap(from, rx, r.start, r.len()),
            Err(why) => RxAction::Drop(why),
        };
        let delivered = |a: RxAction| matches!(a, RxAction::Deliver(_));
        // Both checks on (the default).
        assert!(delivered(decap(&b, node1, &own)));
        assert_eq!(
            decap(&b, stranger, &own),
            RxAction::Drop(DropReason::UnknownPeer)
        );
        assert_eq!(
            decap(&b, node1, &node3s),
            RxAction::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            decap(&b, node1, &outside),
            RxAction::Drop(DropReason::SpoofedSource)
        );
        // --accept-unknown-peers: a stranger's inner source must still be a peer's.
        b.checks.known_peers = false;
        assert!(delivered(decap(&b, stranger, &own)));
        assert!(delivered(decap(&b, stranger, &node3s)));
        assert_eq!(
            decap(&b, stranger, &outside),
            RxAction::Drop(DropReason::SpoofedSource)
        );
        assert_eq!(
            decap(&b, node1, &node3s),
            RxAction::Drop(DropReason::SpoofedSource)
        );
        // --accept-foreign-sources alone: strangers still refused.
        b.checks = SourceChecks {
            known_peers: true,
            own_sources: false,
        };
        assert!(delivered(decap(&b, node1, &outside)));
        assert_eq!(
            decap(&b, stranger, &own),
            RxAction::Drop(DropReason::UnknownPeer)
        );
        // Both relaxed: anything well-formed for this node.
        b.checks.known_peers = false;
        assert!(delivered(decap(&b, stranger, &outside)));
    }

    /// Lengths and starts near `usize::MAX` (found by the fuzzer:
    /// `HEADROOM + len` and `start + len` overflowed) are refused.
    #[test]
    fn lengths_near_usize_max_are_dropped_not_overflowed() {
        let (a, b) = (node(1), node(2));
        let ta = table_of(&[2], 1);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        for len in [usize::MAX, usize::MAX - HEADROOM, usize::MAX - HEADROOM + 1] {
            assert_eq!(
                a.encap(&ta, &mut slot, len, &mut scratch),
                TxAction::Drop(DropReason::TunTruncated)
            );
        }
        for (start, len) in [
            (HEADROOM - ENCAP_LEN, usize::MAX),
            (usize::MAX, 1),
            (usize::MAX - 3, 100),
            (1, usize::MAX),
        ] {
            assert_eq!(
                b.decap(Sender::Anyone, &slot, start, len),
                RxAction::Drop(DropReason::VxlanTruncated),
                "{start} + {len}"
            );
        }
    }

    /// Random bytes of every length never panic and are never delivered
    /// unless they happen to form a valid frame for us.
    #[test]
    fn random_input_never_panics() {
        let (a, b) = (node(1), node(2));
        let ta = table_of(&[2], 1);
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            for byte in slot[HEADROOM - ENCAP_LEN..HEADROOM + len].iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            let _ = b.decap(Sender::Anyone, &slot, HEADROOM - ENCAP_LEN, len);
            let _ = a.encap(&ta, &mut slot, len, &mut scratch);
            let _ = b.decap(Sender::Unknown(&ta), &slot, SLOT - 5, len);
            let _ = b.decap(Sender::Anyone, &slot, usize::MAX, len);
        }
    }
}
