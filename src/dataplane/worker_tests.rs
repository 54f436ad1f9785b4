//! Whole worker turns over in-memory queues ([`MemQueue`]), no root: two
//! workers back to back carry packets from one TUN to the other, with and
//! without offloads, over both underlay families; ICMP answers, refused
//! sends, a kernel refusing UDP GSO and failed TUN writes are seen and
//! counted as the real queue would have them.

use std::net::IpAddr;

use super::*;
use crate::dataplane::memqueue::MemQueue;
use crate::dataplane::testkit::{
    node, pod, pod6, publics, read, shared, table, tcp4, tso_read, udp4, udp6,
};
use crate::wire::virtio;

/// Two nodes back to back: node 1 sends, node 2 receives.
struct Pair {
    a: Worker,
    b: Worker,
    qa: MemQueue,
    qb: MemQueue,
    ta: SharedTable,
    tb: SharedTable,
    la: LocalCounts,
    lb: LocalCounts,
}

impl Pair {
    fn new(offload: bool, socks: [usize; 2]) -> Pair {
        Pair {
            a: Worker::new(offload, offload),
            b: Worker::new(offload, offload),
            qa: MemQueue::new(socks[0], socks[1]),
            qb: MemQueue::new(socks[0], socks[1]),
            ta: shared(table(1, &[2, 3])),
            tb: shared(table(2, &[1, 3])),
            la: LocalCounts::default(),
            lb: LocalCounts::default(),
        }
    }

    /// One turn of node 1, its datagrams carried over (joined as UDP GRO
    /// joins them with `gro`), one turn of node 2; returns what node 2
    /// wrote to its TUN.
    fn turn(&mut self, gro: bool) -> Vec<Vec<u8>> {
        assert!(self.a.turn(&mut self.qa, &node(1), &self.ta, &mut self.la));
        self.qa.carry(&mut self.qb, publics(1), gro);
        assert!(self.b.turn(&mut self.qb, &node(2), &self.tb, &mut self.lb));
        std::mem::take(&mut self.qb.tun_out)
    }
}

#[test]
fn two_workers_back_to_back_without_offloads() {
    let mut p = Pair::new(false, [2, 2]);
    let mut sent = vec![];
    for (k, size) in [0usize, 1, 100, 1000, 1372].into_iter().enumerate() {
        sent.push(udp4(pod(1, 5), pod(2, 7), 1000 + k as u16, size));
    }
    sent.push(tcp4(pod(1, 5), pod(2, 8), 2000, 1, 1000));
    let sent6: Vec<Vec<u8>> = (0..4)
        .map(|k| udp6(pod6(1, 5), pod6(2, 7), 3000 + k, 100 * usize::from(k)))
        .collect();
    p.qa.tun_in.extend(sent.iter().cloned());
    p.qa.tun_in.extend(sent6.iter().cloned());
    let got = p.turn(false);
    // Node 2 reads its IPv4 socket, then its IPv6 one.
    let want: Vec<Vec<u8>> = sent.iter().chain(&sent6).cloned().collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "every packet, byte for byte");
    let got6: Vec<&Vec<u8>> = got.iter().filter(|g| g[0] >> 4 == 6).collect();
    assert_eq!(
        got6,
        sent6.iter().collect::<Vec<_>>(),
        "one flow's order kept"
    );
    let n = want.len() as u64;
    assert_eq!((p.la.tun_reads, p.la.tx_packets), (n, n));
    assert_eq!((p.lb.rx_packets, p.lb.tun_writes), (n, n));
    assert_eq!(p.la.drops.iter().chain(&p.lb.drops).sum::<u64>(), 0);
    // Nothing left, nothing to do.
    assert!(!p.a.turn(&mut p.qa, &node(1), &p.ta, &mut p.la));
    assert!(!p.b.turn(&mut p.qb, &node(2), &p.tb, &mut p.lb));
}

#[test]
fn a_super_packet_is_cut_carried_and_coalesced_again() {
    let mut p = Pair::new(true, [1, 1]);
    let sp = tcp4(pod(1, 5), pod(2, 7), 1000, 0x10, 20_000);
    let plain = udp4(pod(1, 5), pod(2, 7), 1001, 300);
    p.qa.tun_in.push_back(tso_read(sp.clone(), 1400));
    p.qa.tun_in.push_back(read(Default::default(), &plain));
    p.qa.tun_in
        .push_back(tso_read(udp6(pod6(1, 5), pod6(2, 7), 1002, 0), 1400));
    let got = p.turn(true);
    assert_eq!(p.la.tun_reads, 3);
    assert_eq!(
        p.la.tx_packets,
        15 + 1,
        "20 000 bytes in 15 segments, and the plain one"
    );
    assert_eq!(
        p.la.drops[DropReason::TunBadOffload as usize],
        1,
        "a UDP packet under TSO"
    );
    assert_eq!(p.qa.sends, 1, "one send for the batch");
    assert_eq!(p.qb.udp_in[0].len(), 0);
    // At node 2: one coalesced write of the whole stream, one plain write.
    assert_eq!(got.len(), 2, "{} writes", got.len());
    let h = virtio::Header::parse(&got[0]).unwrap();
    assert_eq!((h.gso_type, h.gso_size), (virtio::GSO_TCPV4, 1400));
    assert_eq!(&got[0][virtio::HEADER_LEN + 40..], &sp[40..]);
    assert_eq!(&got[1][virtio::HEADER_LEN..], &plain[..]);
    assert_eq!((p.lb.rx_packets, p.lb.tun_writes), (16, 2));
}

#[test]
fn with_only_ipv6_sockets_everything_leaves_on_the_ipv6_underlay() {
    let mut p = Pair::new(false, [0, 3]);
    let pkts: Vec<Vec<u8>> = (0..20)
        .map(|k| udp6(pod6(1, 5), pod6(2, 7), 1000 + k, 64))
        .collect();
    p.qa.tun_in.extend(pkts.iter().cloned());
    p.a.turn(&mut p.qa, &node(1), &p.ta, &mut p.la);
    assert!(
        p.qa.sent
            .iter()
            .all(|s| s.sock.family == Family::V6 && s.to.is_ipv6())
    );
    let socks: std::collections::BTreeSet<usize> = p.qa.sent.iter().map(|s| s.sock.index).collect();
    assert!(socks.len() > 1, "flows spread over the sockets: {socks:?}");
    p.qa.carry(&mut p.qb, publics(1), false);
    p.b.turn(&mut p.qb, &node(2), &p.tb, &mut p.lb);
    let mut got = std::mem::take(&mut p.qb.tun_out);
    got.sort();
    let mut want = pkts;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn unrouted_packets_are_answered_into_tun() {
    let mut q = MemQueue::new(1, 1);
    let mut w = Worker::new(false, false);
    let t = shared(table(1, &[2]));
    let mut local = LocalCounts::default();
    q.tun_in.push_back(udp4(pod(1, 5), pod(9, 9), 1000, 10));
    q.tun_in.push_back(udp6(pod6(1, 5), pod6(9, 9), 1000, 10));
    assert!(w.turn(&mut q, &node(1), &t, &mut local));
    assert_eq!(q.tun_out.len(), 2);
    assert_eq!(
        &q.tun_out[0][16..20],
        &[10, 244, 1, 5],
        "back to the sender"
    );
    assert_eq!(q.tun_out[1][0] >> 4, 6);
    assert_eq!(local.icmp_sent, 2);
    assert_eq!(local.drops[DropReason::NoRoute as usize], 2);
    assert!(q.sent.is_empty());
    // An answer the device does not take is not counted sent.
    q.fail_tun_writes = 1;
    q.tun_in.push_back(udp4(pod(1, 5), pod(9, 9), 1000, 10));
    w.turn(&mut q, &node(1), &t, &mut local);
    assert_eq!((local.icmp_sent, q.tun_out.len()), (2, 2));
}

#[test]
fn refused_sends_are_counted_and_a_refused_gso_turns_it_off() {
    let mut p = Pair::new(true, [1, 1]);
    p.qa.fail_sends = 2;
    for k in 0..5 {
        p.qa.tun_in.push_back(read(
            Default::default(),
            &udp4(pod(1, 5), pod(2, 7), 1000 + k, 10),
        ));
    }
    p.turn(false);
    assert_eq!(p.la.tx_packets, 3);
    assert_eq!(p.la.drops[DropReason::UdpSendError as usize], 2);
    assert_eq!(p.lb.rx_packets, 3);
    assert!(p.a.gso());

    p.qa.refuse_gso = true;
    p.qa.tun_in
        .push_back(tso_read(tcp4(pod(1, 5), pod(2, 7), 1000, 0, 5000), 1400));
    p.a.turn(&mut p.qa, &node(1), &p.ta, &mut p.la);
    assert!(!p.a.gso(), "GSO off for good once the kernel refuses it");
    assert_eq!(p.la.drops[DropReason::UdpSendError as usize], 2 + 4);
    // From then on, segments go without GSO (which this kernel takes).
    p.qa.tun_in
        .push_back(tso_read(tcp4(pod(1, 5), pod(2, 7), 1000, 0, 5000), 1400));
    let got = p.turn(true);
    assert_eq!(got.len(), 1);
    assert_eq!(p.la.tx_packets, 3 + 4);
}

#[test]
fn failed_tun_writes_and_strangers_are_counted() {
    let mut p = Pair::new(false, [1, 1]);
    p.qb.fail_tun_writes = 1;
    for k in 0..3 {
        p.qa.tun_in
            .push_back(udp4(pod(1, 5), pod(2, 7), 1000 + k, 10));
    }
    let got = p.turn(false);
    assert_eq!(got.len(), 2);
    assert_eq!(p.lb.drops[DropReason::TunWriteError as usize], 1);
    assert_eq!((p.lb.rx_packets, p.lb.tun_writes), (2, 2));
    // From an address no lease has: refused, each datagram counted.
    p.qa.tun_in.push_back(udp4(pod(1, 5), pod(2, 7), 1000, 10));
    p.a.turn(&mut p.qa, &node(1), &p.ta, &mut p.la);
    let stranger: [IpAddr; 2] = [
        "192.0.2.99".parse().unwrap(),
        "2001:db8::99".parse().unwrap(),
    ];
    p.qa.carry(&mut p.qb, stranger, false);
    p.b.turn(&mut p.qb, &node(2), &p.tb, &mut p.lb);
    assert_eq!(p.lb.drops[DropReason::UnknownPeer as usize], 1);
    assert!(p.qb.tun_out.is_empty());
}
