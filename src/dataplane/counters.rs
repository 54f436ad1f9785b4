//! Packet counters: why packets were dropped, and how many went each way.
//!
//! Workers count into a plain [`LocalCounts`] per packet and add it into the
//! shared atomic [`Counters`] once per batch, so the packet path takes no lock
//! and shares no cache line per packet. Per-peer counts go the same way: a
//! worker adds into its own cell for the peer's slot ([`PEER_SLOTS`] of them,
//! given out by the control plane, see [`PeerSlots`]) and the batch's flush
//! adds the cells it touched into [`PeerStats`].

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

/// Why a packet was dropped. Indexes the counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// From TUN: shorter than its IP header.
    TunTruncated,
    /// From TUN: not IP, or IPv6 on a node without an IPv6 subnet.
    TunNotIpv4,
    /// From TUN: no lease covers the destination (an ICMP unreachable may be sent).
    NoRoute,
    /// From TUN: the destination is in this node's own subnet (no local route for it).
    OwnSubnet,
    /// From UDP: shorter than VXLAN + Ethernet + IPv4 headers.
    VxlanTruncated,
    /// From UDP: the VXLAN I flag is not set.
    VxlanFlags,
    /// From UDP: a VNI other than this network's.
    WrongVni,
    /// From UDP: the inner destination MAC is not this node's VtepMAC.
    WrongMac,
    /// From UDP: the inner ethertype is neither IPv4 nor IPv6.
    BadEthertype,
    /// From UDP: an inner IPv6 packet, on a node without an IPv6 subnet.
    InnerIpv6,
    /// From UDP: the inner IP header is malformed or longer than the datagram.
    InnerMalformed,
    /// From UDP: the inner destination is not in this node's subnet.
    NotOurSubnet,
    /// From UDP: the outer source is no lease's public IP in this network.
    UnknownPeer,
    /// From UDP: the inner source is outside the subnets the sender holds.
    SpoofedSource,
    /// Sending a datagram failed (peer unreachable, buffer full).
    UdpSendError,
    /// Writing to the TUN device failed.
    TunWriteError,
    /// From TUN: a super-packet whose virtio-net header cannot be honoured
    /// (unknown segmentation type, offsets outside the packet, no payload).
    TunBadOffload,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        DropReason::TunTruncated,
        DropReason::TunNotIpv4,
        DropReason::NoRoute,
        DropReason::OwnSubnet,
        DropReason::VxlanTruncated,
        DropReason::VxlanFlags,
        DropReason::WrongVni,
        DropReason::WrongMac,
        DropReason::BadEthertype,
        DropReason::InnerIpv6,
        DropReason::InnerMalformed,
        DropReason::NotOurSubnet,
        DropReason::UnknownPeer,
        DropReason::SpoofedSource,
        DropReason::UdpSendError,
        DropReason::TunWriteError,
        DropReason::TunBadOffload,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The label used in metrics (`weft_drops_total{reason="…"}`).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::TunTruncated => "tun_truncated",
            DropReason::TunNotIpv4 => "tun_not_ipv4",
            DropReason::NoRoute => "no_route",
            DropReason::OwnSubnet => "own_subnet",
            DropReason::VxlanTruncated => "vxlan_truncated",
            DropReason::VxlanFlags => "vxlan_flags",
            DropReason::WrongVni => "wrong_vni",
            DropReason::WrongMac => "wrong_mac",
            DropReason::BadEthertype => "bad_ethertype",
            DropReason::InnerIpv6 => "inner_ipv6",
            DropReason::InnerMalformed => "inner_malformed",
            DropReason::NotOurSubnet => "not_our_subnet",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::UdpSendError => "udp_send_error",
            DropReason::TunWriteError => "tun_write_error",
            DropReason::TunBadOffload => "tun_bad_offload",
        }
    }
}

/// Counts kept by one worker between two flushes.
#[derive(Debug, Default)]
pub struct LocalCounts {
    pub drops: [u64; DropReason::COUNT],
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_sent: u64,
    /// TUN reads (one may be a super-packet of many segments).
    pub tun_reads: u64,
    /// TUN writes (one may carry many coalesced segments).
    pub tun_writes: u64,
    /// Per-peer counts, by slot.
    pub peers: PeerLocal,
}

impl LocalCounts {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
}

/// The node's counters, shared by the workers and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Per-peer counters, by slot.
    pub peers: PeerStats,
    drops: [AtomicU64; DropReason::COUNT],
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    icmp_sent: AtomicU64,
    tun_reads: AtomicU64,
    tun_writes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub drops: [u64; DropReason::COUNT],
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub icmp_sent: u64,
    /// TUN reads (one may be a super-packet of many segments).
    pub tun_reads: u64,
    /// TUN writes (one may carry many coalesced segments).
    pub tun_writes: u64,
}

impl Counters {
    /// Adds `l` into the shared counters and zeroes it (without allocating).
    pub fn flush(&self, l: &mut LocalCounts) {
        for (a, v) in self.drops.iter().zip(l.drops.iter_mut()) {
            if *v != 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        }
        for (a, v) in [
            (&self.tx_packets, l.tx_packets),
            (&self.tx_bytes, l.tx_bytes),
            (&self.rx_packets, l.rx_packets),
            (&self.rx_bytes, l.rx_bytes),
            (&self.icmp_sent, l.icmp_sent),
            (&self.tun_reads, l.tun_reads),
            (&self.tun_writes, l.tun_writes),
        ] {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
        (
            l.tx_packets,
            l.tx_bytes,
            l.rx_packets,
            l.rx_bytes,
            l.icmp_sent,
            l.tun_reads,
            l.tun_writes,
        ) = (0, 0, 0, 0, 0, 0, 0);
        self.peers.flush(&mut l.peers);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (o, a) in s.drops.iter_mut().zip(self.drops.iter()) {
            *o = a.load(Ordering::Relaxed);
        }
        s.tx_packets = self.tx_packets.load(Ordering::Relaxed);
        s.tx_bytes = self.tx_bytes.load(Ordering::Relaxed);
        s.rx_packets = self.rx_packets.load(Ordering::Relaxed);
        s.rx_bytes = self.rx_bytes.load(Ordering::Relaxed);
        s.icmp_sent = self.icmp_sent.load(Ordering::Relaxed);
        s.tun_reads = self.tun_reads.load(Ordering::Relaxed);
        s.tun_writes = self.tun_writes.load(Ordering::Relaxed);
        s
    }
}

/// Per-peer counter slots. Slot 0 is `other`: peers beyond the first
/// `PEER_SLOTS - 1`, and senders accepted without a lease
/// (`--accept-unknown-peers`). This bounds the memory and the metrics'
/// cardinality whatever the store holds.
pub const PEER_SLOTS: usize = 1024;

/// The per-peer reasons worth a series of their own: what a known sender's
/// datagrams are dropped for on receive. (A send error is counted for the
/// node: the kernel does not say which datagram of a batch failed.)
pub const PEER_DROPS: [DropReason; 9] = [
    DropReason::VxlanTruncated,
    DropReason::VxlanFlags,
    DropReason::WrongVni,
    DropReason::WrongMac,
    DropReason::BadEthertype,
    DropReason::InnerIpv6,
    DropReason::InnerMalformed,
    DropReason::NotOurSubnet,
    DropReason::SpoofedSource,
];

/// Where `r` is in [`PEER_DROPS`] (the other reasons are never per peer).
const fn peer_drop_index(r: DropReason) -> Option<usize> {
    let mut i = 0;
    while i < PEER_DROPS.len() {
        if PEER_DROPS[i] as u8 == r as u8 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One peer's shared counters, a cache line or two of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct PeerCell {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    /// Unix time in ms of the last flush that counted a packet each way (0: never).
    last_tx_ms: AtomicU64,
    last_rx_ms: AtomicU64,
    drops: [AtomicU64; PEER_DROPS.len()],
}

/// One peer's counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub last_tx_ms: u64,
    pub last_rx_ms: u64,
    /// By [`PEER_DROPS`].
    pub drops: [u64; PEER_DROPS.len()],
}

impl PeerSnapshot {
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// The node's per-peer counters, by slot.
#[derive(Debug)]
pub struct PeerStats {
    cells: Box<[PeerCell]>,
}

impl Default for PeerStats {
    fn default() -> PeerStats {
        PeerStats {
            cells: (0..PEER_SLOTS).map(|_| PeerCell::default()).collect(),
        }
    }
}

impl PeerStats {
    fn flush(&self, l: &mut PeerLocal) {
        if l.dirty.is_empty() {
            return;
        }
        let now = crate::clock::now_ms();
        for &slot in &l.dirty {
            let (Some(c), Some(a)) = (
                l.cells.get_mut(slot as usize),
                self.cells.get(slot as usize),
            ) else {
                continue;
            };
            if c.tx_packets != 0 {
                a.tx_packets.fetch_add(c.tx_packets, Ordering::Relaxed);
                a.tx_bytes.fetch_add(c.tx_bytes, Ordering::Relaxed);
                a.last_tx_ms.store(now, Ordering::Relaxed);
            }
            if c.rx_packets != 0 {
                a.rx_packets.fetch_add(c.rx_packets, Ordering::Relaxed);
                a.rx_bytes.fetch_add(c.rx_bytes, Ordering::Relaxed);
            }
            let mut dropped = false;
            for (a, v) in a.drops.iter().zip(c.drops.iter()) {
                if *v != 0 {
                    a.fetch_add(*v, Ordering::Relaxed);
                    dropped = true;
                }
            }
            // A datagram came in from the peer, delivered or not.
            if c.rx_packets != 0 || dropped {
                a.last_rx_ms.store(now, Ordering::Relaxed);
            }
            *c = LocalCell::default();
        }
        l.dirty.clear();
    }

    /// Slot `slot`'s counters (zeros for a slot out of range).
    pub fn snapshot(&self, slot: u32) -> PeerSnapshot {
        let Some(a) = self.cells.get(slot as usize) else {
            return PeerSnapshot::default();
        };
        let mut s = PeerSnapshot {
            tx_packets: a.tx_packets.load(Ordering::Relaxed),
            tx_bytes: a.tx_bytes.load(Ordering::Relaxed),
            rx_packets: a.rx_packets.load(Ordering::Relaxed),
            rx_bytes: a.rx_bytes.load(Ordering::Relaxed),
            last_tx_ms: a.last_tx_ms.load(Ordering::Relaxed),
            last_rx_ms: a.last_rx_ms.load(Ordering::Relaxed),
            drops: [0; PEER_DROPS.len()],
        };
        for (o, a) in s.drops.iter_mut().zip(a.drops.iter()) {
            *o = a.load(Ordering::Relaxed);
        }
        s
    }

    /// Zeroes `slot` before the control plane gives it to another peer.
    pub fn reset(&self, slot: u32) {
        if let Some(a) = self.cells.get(slot as usize) {
            for v in [
                &a.tx_packets,
                &a.tx_bytes,
                &a.rx_packets,
                &a.rx_bytes,
                &a.last_tx_ms,
                &a.last_rx_ms,
            ]
            .into_iter()
            .chain(a.drops.iter())
            {
                v.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// One peer's counts in one worker, between two flushes.
#[derive(Debug, Default, Clone, Copy)]
struct LocalCell {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    drops: [u64; PEER_DROPS.len()],
    dirty: bool,
}

/// A worker's per-peer counts: a cell per slot, allocated once, and the
/// slots touched since the last flush (so a flush visits only those).
#[derive(Debug)]
pub struct PeerLocal {
    cells: Vec<LocalCell>,
    dirty: Vec<u32>,
}

impl Default for PeerLocal {
    fn default() -> PeerLocal {
        PeerLocal {
            cells: vec![LocalCell::default(); PEER_SLOTS],
            dirty: Vec::with_capacity(PEER_SLOTS),
        }
    }
}

impl PeerLocal {
    #[inline]
    fn cell(&mut self, slot: u32) -> &mut LocalCell {
        // A slot out of range (none is given out) counts as `other`.
        let i = if (slot as usize) < self.cells.len() {
            slot as usize
        } else {
            0
        };
        let c = &mut self.cells[i];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i as u32);
        }
        c
    }

    /// `packets` datagrams of `bytes` sent to the peer in `slot`.
    #[inline]
    pub fn tx(&mut self, slot: u32, packets: u64, bytes: u64) {
        let c = self.cell(slot);
        c.tx_packets += packets;
        c.tx_bytes += bytes;
    }

    /// `packets` inner packets of `bytes` accepted from the peer in `slot`.
    #[inline]
    pub fn rx(&mut self, slot: u32, packets: u64, bytes: u64) {
        let c = self.cell(slot);
        c.rx_packets += packets;
        c.rx_bytes += bytes;
    }

    /// A datagram from the peer in `slot` dropped for `r` (reasons outside
    /// [`PEER_DROPS`] are the node's alone and not counted here).
    #[inline]
    pub fn drop(&mut self, slot: u32, r: DropReason) {
        if let Some(i) = peer_drop_index(r) {
            self.cell(slot).drops[i] += 1;
        }
    }
}

/// Which peer (by public IP, or public IPv6 for a peer of an IPv6-only
/// network: what a datagram's outer source says) holds
/// which counter slot. Control plane only, no I/O: the reconciler asks it
/// for every table it builds. A slot keeps its peer while the peer stays;
/// freed slots go to the back of the queue, so one is given to another
/// peer only after every never-used slot, and is zeroed first
/// ([`PeerSlots::assign`] returns it).
#[derive(Debug)]
pub struct PeerSlots {
    held: FxHashMap<IpAddr, u32>,
    free: VecDeque<u32>,
}

impl Default for PeerSlots {
    fn default() -> PeerSlots {
        PeerSlots {
            held: FxHashMap::default(),
            free: (1..PEER_SLOTS as u32).collect(),
        }
    }
}

impl PeerSlots {
    /// Gives a slot to each of `ips` (keeping the slots they held), frees the
    /// slots of peers no longer among them, and returns the slots given anew
    /// (to be zeroed before the table that uses them is published). Beyond
    /// the limit a peer gets slot 0, `other`.
    pub fn assign(
        &mut self,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> (FxHashMap<IpAddr, u32>, Vec<u32>) {
        let mut now: FxHashMap<IpAddr, u32> = FxHashMap::default();
        let mut wanted: Vec<IpAddr> = ips.into_iter().collect();
        wanted.sort_unstable();
        wanted.dedup();
        for ip in &wanted {
            if let Some(s) = self.held.remove(ip) {
                now.insert(*ip, s);
            }
        }
        // Whoever is left in `held` is gone.
        let mut gone: Vec<u32> = self.held.drain().map(|(_, s)| s).collect();
        gone.sort_unstable();
        self.free.extend(gone);
        let mut fresh = vec![];
        for ip in wanted {
            if now.contains_key(&ip) {
                continue;
            }
            let s = self.free.pop_front().unwrap_or(0);
            if s != 0 {
                fresh.push(s);
            }
            now.insert(ip, s);
        }
        self.held = now
            .iter()
            .filter(|(_, s)| **s != 0)
            .map(|(ip, s)| (*ip, *s))
            .collect();
        (now, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_adds_and_resets() {
        let c = Counters::default();
        let mut l = LocalCounts::default();
        l.drop(DropReason::WrongVni);
        l.drop(DropReason::WrongVni);
        l.tx_packets = 3;
        c.flush(&mut l);
        c.flush(&mut l);
        let s = c.snapshot();
        assert_eq!(s.drops[DropReason::WrongVni as usize], 2);
        assert_eq!(s.tx_packets, 3);
        assert_eq!(
            DropReason::ALL
                .iter()
                .map(|r| *r as usize)
                .collect::<Vec<_>>(),
            (0..DropReason::COUNT).collect::<Vec<_>>()
        );
    }

    #[test]
    fn peer_counts_reach_their_slot_once_per_flush() {
        let c = Counters::default();
        let mut l = LocalCounts::default();
        l.peers.tx(3, 2, 200);
        l.peers.rx(3, 1, 100);
        l.peers.rx(5, 1, 60);
        l.peers.drop(5, DropReason::SpoofedSource);
        l.peers.drop(5, DropReason::NoRoute); // the node's, not the peer's
        l.peers.tx(PEER_SLOTS as u32 + 7, 1, 10); // out of range: other
        c.flush(&mut l);
        c.flush(&mut l);
        let p3 = c.peers.snapshot(3);
        assert_eq!(
            (p3.tx_packets, p3.tx_bytes, p3.rx_packets, p3.rx_bytes),
            (2, 200, 1, 100)
        );
        assert!(p3.last_tx_ms > 0 && p3.last_rx_ms > 0);
        let p5 = c.peers.snapshot(5);
        assert_eq!((p5.tx_packets, p5.last_tx_ms, p5.rx_packets), (0, 0, 1));
        assert_eq!(p5.drops_total(), 1);
        assert_eq!(c.peers.snapshot(0).tx_packets, 1);
        c.peers.reset(3);
        assert_eq!(c.peers.snapshot(3), PeerSnapshot::default());
        assert_eq!(c.peers.snapshot(u32::MAX), PeerSnapshot::default());
    }

    #[test]
    fn peer_slots_are_stable_bounded_and_reused_last() {
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i));
        let mut s = PeerSlots::default();
        let (a, fresh) = s.assign([ip(1), ip(2), ip(2)]);
        assert_eq!(fresh.len(), 2);
        assert!(a.values().all(|v| *v != 0));
        let (b, fresh) = s.assign([ip(2), ip(3)]);
        assert_eq!(b[&ip(2)], a[&ip(2)], "kept while the peer stays");
        assert_eq!(fresh, vec![b[&ip(3)]]);
        assert_ne!(b[&ip(3)], a[&ip(1)], "a freed slot is reused last");
        // Far more peers than slots: the rest share `other`.
        let (c, fresh) = s.assign((0..3 * PEER_SLOTS as u32).map(ip));
        assert_eq!(fresh.len(), PEER_SLOTS - 1 - 2);
        assert_eq!(c.values().filter(|v| **v == 0).count(), 2 * PEER_SLOTS + 1);
        let mut given: Vec<u32> = c.values().copied().filter(|v| *v != 0).collect();
        given.sort_unstable();
        given.dedup();
        assert_eq!(given.len(), PEER_SLOTS - 1, "no slot given twice");
        // When they go, their slots come back.
        let (d, fresh) = s.assign([ip(9_999)]);
        assert_ne!(d[&ip(9_999)], 0);
        assert_eq!(fresh.len(), 1);
    }
}
