//! Packet counters: why packets were dropped, and how many went each way.
//!
//! Workers count into a plain [`LocalCounts`] per packet and add it into the
//! shared atomic [`Counters`] once per batch, so the packet path takes no lock
//! and shares no cache line per packet.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Indexes the counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// From TUN: shorter than an IPv4 header.
    TunTruncated,
    /// From TUN: IPv6 or not IP (weft carries IPv4 only).
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
    /// From UDP: an inner IPv6 packet (weft carries IPv4 only).
    InnerIpv6,
    /// From UDP: the inner IPv4 header is malformed or longer than the datagram.
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
#[derive(Debug, Default, Clone)]
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
    /// Adds `l` into the shared counters and zeroes it.
    pub fn flush(&self, l: &mut LocalCounts) {
        for (a, v) in self.drops.iter().zip(l.drops.iter()) {
            if *v != 0 {
                a.fetch_add(*v, Ordering::Relaxed);
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
        *l = LocalCounts::default();
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
}
