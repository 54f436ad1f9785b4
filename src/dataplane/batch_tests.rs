//! Tests of the batches, in memory: the socket each packet leaves from,
//! checksum completion, encapsulation and segmentation, the send when the
//! arena is full, drops by reason, ICMP answers and their rate, and on the
//! way in GRO buffers cut, packets written alone or coalesced, and senders
//! refused. Every turn is walked as the worker walks it, with the I/O each
//! step names recorded instead of done.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::dataplane::testkit::{
    decap, node, partial_read, ping4, pod, pod6, public, publics, read, table, tcp4, tcp6,
    tso_read, udp4, udp6,
};
use crate::wire::{checksum_finish, checksum_sum, icmp, icmpv6, ipv4, ipv6};

/// A datagram a `Send` step handed out.
#[derive(Debug, Clone)]
struct Dgram {
    to: SocketAddr,
    /// How many parts it was gathered from (1: encapsulated in place;
    /// 2: a segment's header, then its payload).
    parts: usize,
    /// The packet it came from.
    from_read: usize,
    bytes: Vec<u8>,
}

/// What the worker was asked to do.
#[derive(Debug)]
enum Did {
    Sent(SockId, Vec<Dgram>),
    Answered(Vec<u8>),
}

fn fill(b: &mut TxBatch, reads: &[Vec<u8>], local: &mut LocalCounts) {
    b.clear();
    for r in reads {
        let room = b.room().expect("room for every read of a test");
        let n = r.len().min(room.len());
        room[..n].copy_from_slice(&r[..n]);
        b.filled(n, local);
    }
}

/// Walks a transmit turn to its end, recording each step's I/O (answers
/// allowed as the limit says at `now`).
fn walk_tx(
    b: &mut TxBatch,
    core: &Core,
    t: &Table,
    socks: [usize; 2],
    local: &mut LocalCounts,
    now: Instant,
) -> Vec<Did> {
    let mut turn = b.turn(core, t, socks);
    let mut did = vec![];
    for _ in 0..100_000 {
        match turn.next(local) {
            TxStep::Send(sock) => {
                let (from, dgrams) = turn.pending();
                assert!(!dgrams.is_empty(), "a send of nothing");
                let ds = dgrams
                    .iter()
                    .map(|d| {
                        let bytes: Vec<u8> =
                            from.slices(d.parts.clone()).flatten().copied().collect();
                        assert_eq!(bytes.len(), d.len);
                        let from_read = from.parts[d.parts.clone()]
                            .iter()
                            .find_map(|p| match p {
                                Part::Buf(j, _) => Some(*j),
                                Part::Arena(_) => None,
                            })
                            .expect("every datagram carries bytes read");
                        Dgram {
                            to: d.to,
                            parts: d.parts.len(),
                            from_read,
                            bytes,
                        }
                    })
                    .collect();
                did.push(Did::Sent(sock, ds));
            }
            TxStep::Answer(len) => {
                if turn.may_answer(now) {
                    did.push(Did::Answered(turn.answer(len).to_vec()));
                    turn.answered(local);
                }
            }
            TxStep::Done => return did,
        }
    }
    panic!("the turn did not end");
}

fn sends(did: &[Did]) -> Vec<(SockId, Vec<Dgram>)> {
    did.iter()
        .filter_map(|d| match d {
            Did::Sent(s, ds) => Some((*s, ds.clone())),
            Did::Answered(_) => None,
        })
        .collect()
}

fn answers(did: &[Did]) -> Vec<Vec<u8>> {
    did.iter()
        .filter_map(|d| match d {
            Did::Answered(a) => Some(a.clone()),
            Did::Sent(..) => None,
        })
        .collect()
}

fn v4(index: usize) -> SockId {
    SockId {
        family: Family::V4,
        index,
    }
}

fn v6(index: usize) -> SockId {
    SockId {
        family: Family::V6,
        index,
    }
}

fn drops(local: &LocalCounts, r: DropReason) -> u64 {
    local.drops[r as usize]
}

fn total_drops(local: &LocalCounts) -> u64 {
    local.drops.iter().sum()
}

/// A source port from `from` on whose flow `socket_for(socks, ..)` picks
/// another socket than for port `not`.
fn port_on_other_socket(socks: [usize; 2], not: u16) -> u16 {
    let at = |p| socket_for(socks, &udp4(pod(1, 5), pod(2, 7), p, 10));
    (not + 1..u16::MAX)
        .find(|&p| at(p) != at(not))
        .expect("8 sockets")
}

#[test]
fn family_then_flow_hash_pick_the_socket() {
    let mut used = [[false; 8]; 2];
    for port in 1000..1400 {
        let p4 = udp4(pod(1, 5), pod(2, 7), port, 10);
        let s = socket_for([8, 8], &p4);
        assert_eq!(s, v4(flow_hash(&p4) as usize % 8));
        used[0][s.index] = true;
        let p6 = udp6(pod6(1, 5), pod6(2, 7), port, 10);
        let s = socket_for([8, 8], &p6);
        assert_eq!(s, v6(flow_hash(&p6) as usize % 8));
        used[1][s.index] = true;
        // One flow, one socket, whatever the payload.
        assert_eq!(
            socket_for([8, 8], &udp4(pod(1, 5), pod(2, 7), port, 1000)),
            socket_for([8, 8], &p4)
        );
    }
    assert!(
        used.iter().flatten().all(|u| *u),
        "400 flows spread over every socket"
    );
    let p4 = udp4(pod(1, 5), pod(2, 7), 1000, 10);
    let p6 = udp6(pod6(1, 5), pod6(2, 7), 1000, 10);
    // An IPv4-only node: IPv6 goes to the IPv4 set (the core drops it).
    assert_eq!(socket_for([3, 0], &p6).family, Family::V4);
    // An IPv6-only node: everything from the IPv6 set.
    assert_eq!(socket_for([0, 2], &p4).family, Family::V6);
    // One socket: no hash needed.
    assert_eq!(socket_for([1, 1], &p4), v4(0));
    assert_eq!(socket_for([1, 1], &p6), v6(0));
    // Garbage and nothing at all.
    assert_eq!(socket_for([8, 8], &[]), v4(0));
    assert_eq!(socket_for([8, 8], &[0x60]), v6(0));
}

#[test]
fn datagrams_go_socket_by_socket_in_order() {
    let (core, t) = (node(1), table(1, &[1, 2, 3]));
    let socks = [8, 8];
    let a = 1000;
    let b = port_on_other_socket(socks, a);
    let pkt = |port, len| udp4(pod(1, 5), pod(2, 7), port, len);
    let reads = vec![pkt(a, 1), pkt(a, 2), pkt(b, 3), pkt(b, 4), pkt(a, 5)];
    let (sa, sb) = (socket_for(socks, &reads[0]), socket_for(socks, &reads[2]));
    let mut tx = TxBatch::new(false);
    let mut local = LocalCounts::default();
    fill(&mut tx, &reads, &mut local);
    let did = walk_tx(&mut tx, &core, &t, socks, &mut local, Instant::now());
    let got: Vec<(SockId, Vec<usize>)> = sends(&did)
        .into_iter()
        .map(|(s, ds)| (s, ds.iter().map(|d| d.from_read).collect()))
        .collect();
    assert_eq!(got, vec![(sa, vec![0, 1]), (sb, vec![2, 3]), (sa, vec![4])]);
    // Each is the packet behind its VXLAN header, for node 2.
    for (_, ds) in sends(&did) {
        for d in ds {
            assert_eq!(d.to, SocketAddr::new(public(2).into(), 8472));
            assert_eq!(d.parts, 1);
            let got = decap(&node(2), &table(2, &[1]), public(1).into(), &d.bytes);
            assert_eq!(got.as_deref(), Ok(&reads[d.from_read][..]));
        }
    }
    assert_eq!((local.tun_reads, local.tx_packets), (5, 5));
    assert_eq!(
        local.tx_bytes,
        reads
            .iter()
            .map(|r| (r.len() + ENCAP_LEN) as u64)
            .sum::<u64>()
    );
    assert_eq!(total_drops(&local), 0);
}

#[test]
fn each_family_leaves_from_its_own_sockets() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    let reads = vec![
        udp4(pod(1, 5), pod(2, 7), 1000, 10),
        udp6(pod6(1, 5), pod6(2, 7), 1000, 10),
        tcp6(pod6(1, 5), pod6(2, 7), 1001, 7, 100),
    ];
    let mut tx = TxBatch::new(false);
    let mut local = LocalCounts::default();
    fill(&mut tx, &reads, &mut local);
    let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
    let s = sends(&did);
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].0, s[0].1.len()), (v4(0), 1));
    assert_eq!((s[1].0, s[1].1.len()), (v6(0), 2));
    assert_eq!(s[0].1[0].to, "192.0.2.2:8472".parse().unwrap());
    assert_eq!(s[1].1[0].to, "[2001:db8::2]:8472".parse().unwrap());
    for d in &s[1].1 {
        let got = decap(&node(2), &table(2, &[1]), publics(1)[1], &d.bytes);
        assert_eq!(got.as_deref(), Ok(&reads[d.from_read][..]));
    }
}

#[test]
fn partial_checksums_are_completed_before_sending() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    let good = [
        udp4(pod(1, 5), pod(2, 7), 1000, 333),
        tcp4(pod(1, 5), pod(2, 7), 1001, 9, 1000),
        udp6(pod6(1, 5), pod6(2, 7), 1002, 17),
        tcp6(pod6(1, 5), pod6(2, 7), 1003, 9, 1000),
    ];
    let mut reads: Vec<Vec<u8>> = good.iter().map(|p| partial_read(p.clone())).collect();
    // Offsets outside the packet: nothing to complete, dropped.
    let mut bad = reads[0].clone();
    bad[6..8].copy_from_slice(&2000u16.to_ne_bytes());
    reads.push(bad);
    let mut tx = TxBatch::new(true);
    let mut local = LocalCounts::default();
    fill(&mut tx, &reads, &mut local);
    let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
    let ds: Vec<Dgram> = sends(&did).into_iter().flat_map(|(_, d)| d).collect();
    assert_eq!(ds.len(), 4);
    for d in &ds {
        let inner = &d.bytes[ENCAP_LEN..];
        assert!(
            crate::dataplane::testkit::l4_checksum_ok(inner),
            "read {}",
            d.from_read
        );
        assert_eq!(
            inner,
            &good[d.from_read][..],
            "completed as the sender would have"
        );
    }
    assert_eq!(drops(&local, DropReason::TunBadOffload), 1);
    assert_eq!(local.tx_packets, 4);
}

#[test]
fn super_packets_are_cut_and_plain_packets_encapsulated() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    let plain = udp4(pod(1, 5), pod(2, 7), 1000, 500);
    let sp = tcp4(pod(1, 5), pod(2, 7), 1001, 0xffff_0000, 10_000);
    let sp6 = tcp6(pod6(1, 5), pod6(2, 7), 1002, 1, 5000);
    let reads = vec![
        read(Default::default(), &plain),
        tso_read(sp.clone(), 1400),
        tso_read(sp6.clone(), 1380),
    ];
    let mut tx = TxBatch::new(true);
    let mut local = LocalCounts::default();
    fill(&mut tx, &reads, &mut local);
    let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
    let s = sends(&did);
    assert_eq!(s.len(), 2, "one send per socket");
    let (ds4, ds6) = (&s[0].1, &s[1].1);
    assert_eq!(
        ds4.len(),
        1 + 8,
        "the plain packet, then 10 000 bytes in 1400-byte segments"
    );
    assert_eq!(ds6.len(), 4);
    assert_eq!((ds4[0].from_read, ds4[0].parts), (0, 1));
    assert_eq!(&ds4[0].bytes[ENCAP_LEN..], &plain[..]);
    for (ds, sp, hl, mss) in [(&ds4[1..], &sp, 40, 1400), (&ds6[..], &sp6, 60, 1380)] {
        let mut payload = vec![];
        for (k, d) in ds.iter().enumerate() {
            assert_eq!(d.parts, 2, "a header, then the payload where it was read");
            let inner = &d.bytes[ENCAP_LEN..];
            assert!(
                crate::dataplane::testkit::l4_checksum_ok(inner),
                "segment {k}"
            );
            assert!(inner.len() <= hl + mss);
            let got = decap(
                &node(2),
                &table(2, &[1]),
                publics(1)[usize::from(hl == 60)],
                &d.bytes,
            );
            assert_eq!(got.as_deref(), Ok(inner));
            payload.extend_from_slice(&inner[hl..]);
        }
        assert_eq!(&payload[..], &sp[hl..]);
    }
    assert_eq!(local.tx_packets, 13);
    assert_eq!(local.tun_reads, 3);
    assert_eq!(total_drops(&local), 0);
}

#[test]
fn a_full_arena_sends_what_it_holds_and_cuts_again() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    // 65 495 bytes in 32-byte segments: 2047 headers of 62 bytes each, so
    // the arena holds two such super-packets and not three.
    let sp = |seq| tso_read(tcp4(pod(1, 5), pod(2, 7), 1000, seq, 65_495), 32);
    let reads = vec![sp(0), sp(65_495), sp(2 * 65_495)];
    let mut tx = TxBatch::new(true);
    let mut local = LocalCounts::default();
    fill(&mut tx, &reads, &mut local);
    assert_eq!(tx.len(), 3);
    let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
    let s = sends(&did);
    let shape: Vec<(SockId, usize)> = s.iter().map(|(k, ds)| (*k, ds.len())).collect();
    assert_eq!(shape, vec![(v4(0), 2 * 2047), (v4(0), 2047)]);
    let order: Vec<usize> = s
        .iter()
        .flat_map(|(_, ds)| ds.iter().map(|d| d.from_read))
        .collect();
    assert!(order.is_sorted(), "nothing reordered around the retry");
    // The payloads in order are the three super-packets' payloads.
    let mut seq = 0u32;
    for d in s.iter().flat_map(|(_, ds)| ds) {
        let inner = &d.bytes[ENCAP_LEN..];
        assert_eq!(u32::from_be_bytes(inner[24..28].try_into().unwrap()), seq);
        seq += (inner.len() - 40) as u32;
    }
    assert_eq!(seq, 3 * 65_495);
    assert_eq!(local.tx_packets, 3 * 2047);
    assert_eq!(total_drops(&local), 0);
}

#[test]
fn a_batch_stops_at_its_read_and_byte_limits() {
    let mut local = LocalCounts::default();
    let mut tx = TxBatch::new(false);
    let small = udp4(pod(1, 5), pod(2, 7), 1000, 10);
    fill(&mut tx, &vec![small; TX_READS], &mut local);
    assert!(tx.room().is_none(), "{TX_READS} reads fill a batch");
    let mut tx = TxBatch::new(true);
    let big = tso_read(tcp4(pod(1, 5), pod(2, 7), 1000, 0, 65_495), 1400);
    fill(&mut tx, &vec![big; 4], &mut local);
    assert!(tx.room().is_none(), "four 64 KiB reads fill a batch");
    tx.clear();
    assert!(tx.room().is_some());
    assert_eq!(local.tun_reads, TX_READS as u64 + 4);
}

#[test]
fn drops_are_counted_by_reason() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    let to2 = udp4(pod(1, 5), pod(2, 7), 1000, 10);
    let mut not_ip = to2.clone();
    not_ip[0] = 0x25;
    let mut unknown_gso = read(Default::default(), &to2);
    unknown_gso[1] = 9;
    let no_payload = tso_read(tcp4(pod(1, 5), pod(2, 7), 1000, 0, 0), 1400);
    let mut icmp_error = ping4(pod(1, 5), pod(9, 9));
    icmp_error[20] = icmp::TYPE_DEST_UNREACHABLE;
    let reads = [
        (vec![0u8; 5], DropReason::TunTruncated),
        (read(Default::default(), &not_ip), DropReason::TunNotIpv4),
        (
            read(Default::default(), &to2[..12]),
            DropReason::TunTruncated,
        ),
        (
            read(Default::default(), &udp4(pod(1, 5), pod(1, 9), 1000, 10)),
            DropReason::OwnSubnet,
        ),
        (unknown_gso, DropReason::TunBadOffload),
        (no_payload, DropReason::TunBadOffload),
        (
            read(Default::default(), &udp4(pod(1, 5), pod(9, 9), 1000, 10)),
            DropReason::NoRoute,
        ),
        // No ICMP error about an ICMP error: dropped without an answer.
        (read(Default::default(), &icmp_error), DropReason::NoRoute),
    ];
    let mut want = [0u64; DropReason::COUNT];
    for (_, r) in &reads {
        want[*r as usize] += 1;
    }
    let mut all: Vec<Vec<u8>> = reads.iter().map(|(b, _)| b.clone()).collect();
    all.push(read(Default::default(), &to2));
    let mut tx = TxBatch::new(true);
    let mut local = LocalCounts::default();
    fill(&mut tx, &all, &mut local);
    assert_eq!(
        tx.len(),
        all.len() - 1,
        "the read shorter than its header is not kept"
    );
    let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
    assert_eq!(local.drops, want);
    assert_eq!(local.tx_packets, 1);
    assert_eq!(answers(&did).len(), 1);
    assert_eq!(local.icmp_sent, 1);
}

#[test]
fn unrouted_destinations_are_answered_from_the_subnet_address() {
    let (core, t) = (node(1), table(1, &[1, 2]));
    let p4 = udp4(pod(1, 5), pod(9, 9), 1000, 10);
    let p6 = udp6(pod6(1, 5), pod6(9, 9), 1000, 10);
    for offload in [false, true] {
        let reads: Vec<Vec<u8>> = if offload {
            vec![read(Default::default(), &p4), read(Default::default(), &p6)]
        } else {
            vec![p4.clone(), p6.clone()]
        };
        let mut tx = TxBatch::new(offload);
        let mut local = LocalCounts::default();
        fill(&mut tx, &reads, &mut local);
        let did = walk_tx(&mut tx, &core, &t, [1, 1], &mut local, Instant::now());
        let a = answers(&did);
        assert_eq!(a.len(), 2);
        let vh = if offload { virtio::HEADER_LEN } else { 0 };
        for w in &a {
            assert!(
                w[..vh].iter().all(|b| *b == 0),
                "a zero virtio-net header first"
            );
        }
        let ip = ipv4::Packet::new_checked(&a[0][vh..]).unwrap();
        assert!(ip.checksum_ok());
        assert_eq!(
            (ip.src(), ip.dst()),
            (Ipv4Addr::new(10, 244, 1, 0), pod(1, 5))
        );
        assert_eq!(a[0][vh + 20], icmp::TYPE_DEST_UNREACHABLE);
        assert_eq!(checksum_finish(checksum_sum(&a[0][vh + 20..], 0)), 0);
        let ip6 = ipv6::Packet::new_checked(&a[1][vh..]).unwrap();
        assert_eq!(
            ip6.src(),
            "fc00:0:0:1::".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(ip6.dst(), pod6(1, 5));
        assert_eq!(a[1][vh + 40], icmpv6::TYPE_DEST_UNREACHABLE);
        assert_eq!(
            (local.icmp_sent, drops(&local, DropReason::NoRoute)),
            (2, 2)
        );
        assert!(sends(&did).is_empty());
    }
}

#[test]
fn answers_are_limited_per_second() {
    let t0 = Instant::now();
    let mut l = IcmpLimit::new(t0);
    for _ in 0..ICMP_PER_SEC {
        assert!(l.allows(t0));
        l.spend();
    }
    assert!(!l.allows(t0));
    assert!(!l.allows(t0 + Duration::from_millis(999)));
    assert!(
        l.allows(t0 + Duration::from_secs(1)),
        "a second later, refilled"
    );
    // A refusal spends nothing; a clock that goes back refills nothing.
    let mut l = IcmpLimit::new(t0 + Duration::from_secs(5));
    assert!(l.allows(t0));

    // In a batch: of 150 unrouted packets in one second, 100 are answered,
    // all 150 counted as no_route.
    let (core, t) = (node(1), table(1, &[1, 2]));
    let mut tx = TxBatch::new(false);
    let mut local = LocalCounts::default();
    let now = Instant::now();
    let mut answered = 0;
    for chunk in (0..150u16).collect::<Vec<_>>().chunks(50) {
        let reads: Vec<Vec<u8>> = chunk
            .iter()
            .map(|p| udp4(pod(1, 5), pod(9, 9), 1000 + p, 10))
            .collect();
        fill(&mut tx, &reads, &mut local);
        answered += answers(&walk_tx(&mut tx, &core, &t, [1, 1], &mut local, now)).len();
    }
    assert_eq!(answered, ICMP_PER_SEC as usize);
    assert_eq!(local.icmp_sent, u64::from(ICMP_PER_SEC));
    assert_eq!(drops(&local, DropReason::NoRoute), 150);
}

#[test]
fn refused_sends_become_drops() {
    let mut local = LocalCounts {
        tx_packets: 5,
        ..Default::default()
    };
    count_unsent(&mut local, 2);
    assert_eq!(
        (local.tx_packets, drops(&local, DropReason::UdpSendError)),
        (3, 2)
    );
    count_unsent(&mut local, 9);
    assert_eq!(
        (local.tx_packets, drops(&local, DropReason::UdpSendError)),
        (0, 11)
    );
    count_written(&mut local, 4, true);
    count_written(&mut local, 3, false);
    assert_eq!((local.rx_packets, local.tun_writes), (4, 1));
    assert_eq!(drops(&local, DropReason::TunWriteError), 3);
}

/// xorshift64*, for inputs that are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn any_read_is_sent_or_dropped_and_never_panics() {
    let (core, t) = (node(1), table(1, &[1, 2, 3]));
    let seeds = [
        udp4(pod(1, 5), pod(2, 7), 1000, 100),
        udp6(pod6(1, 5), pod6(3, 7), 1000, 100),
        tcp4(pod(1, 5), pod(2, 7), 1000, 0, 3000),
        tcp6(pod6(1, 5), pod6(2, 7), 1000, 0, 3000),
        udp4(pod(1, 5), pod(9, 7), 1000, 100),
    ];
    let mut rng = Rng(0x5eed);
    for round in 0..1000 {
        let offload = round % 2 == 0;
        let socks = [[1, 1], [8, 8], [0, 3], [4, 0]][rng.below(4)];
        let mut reads = vec![];
        for _ in 0..1 + rng.below(8) {
            let pkt = &seeds[rng.below(seeds.len())];
            let mut r = if offload {
                match rng.below(3) {
                    0 => tso_read(pkt.clone(), 1 + rng.below(3000) as u16),
                    1 => partial_read(pkt.clone()),
                    _ => read(Default::default(), pkt),
                }
            } else {
                pkt.clone()
            };
            for _ in 0..rng.below(6) {
                let i = rng.below(r.len());
                r[i] = rng.next() as u8;
            }
            if rng.below(4) == 0 {
                let n = rng.below(r.len() + 1);
                r.truncate(n);
            }
            reads.push(r);
        }
        let mut tx = TxBatch::new(offload);
        let mut local = LocalCounts::default();
        fill(&mut tx, &reads, &mut local);
        let did = walk_tx(&mut tx, &core, &t, socks, &mut local, Instant::now());
        let mut sent_from = std::collections::BTreeSet::new();
        for (s, ds) in sends(&did) {
            assert!(s.index < socks[s.family.index()].max(1));
            sent_from.extend(ds.iter().map(|d| d.from_read));
        }
        // A short read is dropped before it is kept; every kept read is sent or dropped once.
        let short = reads.len() - tx.len();
        assert_eq!(
            total_drops(&local) as usize,
            short + tx.len() - sent_from.len(),
            "round {round}"
        );
    }
}

/// A buffer received: from whom, its bytes, and its GRO segment size.
type Buf = (IpAddr, Vec<u8>, usize);

fn receive(b: &mut RxBatch, bufs: &[Buf]) {
    let r = b.bufs();
    for (i, (src, bytes, seg)) in bufs.iter().enumerate() {
        let room = &mut r.slots[i].as_mut()[r.offset..];
        let n = bytes.len().min(room.len());
        room[..n].copy_from_slice(&bytes[..n]);
        (r.lens[i], r.srcs[i], r.segs[i]) = (n, SocketAddr::new(*src, 8472), *seg);
    }
    b.received(bufs.len());
}

/// What a receive turn asked for.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    /// The coalescer's writes: (segments, bytes) each.
    Write(Vec<(usize, Vec<u8>)>),
    One(Vec<u8>),
    Refused(IpAddr, DropReason),
}

fn walk_rx(b: &mut RxBatch, core: &Core, t: &Table, local: &mut LocalCounts) -> Vec<Rx> {
    let mut turn = b.turn(core, t);
    let mut did = vec![];
    for _ in 0..100_000 {
        match turn.next(local) {
            RxStep::Write => {
                let (writes, from) = turn.writes();
                assert!(!writes.is_empty());
                let ws = writes
                    .iter()
                    .map(|w| {
                        count_written(local, w.segments, true);
                        let bytes = from.slices(w.parts.clone()).flatten().copied().collect();
                        (w.segments, bytes)
                    })
                    .collect();
                did.push(Rx::Write(ws));
            }
            RxStep::WriteOne { buf, range } => {
                count_written(local, 1, true);
                did.push(Rx::One(turn.packet(buf, range).to_vec()));
            }
            RxStep::Refused { from, reason } => did.push(Rx::Refused(from, reason)),
            RxStep::Done => return did,
        }
    }
    panic!("the turn did not end");
}

/// Node 1's datagram to node 2 carrying `pkt`.
fn dgram(pkt: &[u8]) -> Vec<u8> {
    let mut slot = vec![0u8; SLOT];
    slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    match node(1).encap(&table(1, &[2, 3]), &mut slot, pkt.len(), &mut [0; 128]) {
        TxAction::Send { range, .. } => slot[range].to_vec(),
        other => panic!("{other:?}"),
    }
}

/// One GRO buffer of `dgrams` (all as long as the first, but the last).
fn gro(src: IpAddr, dgrams: &[Vec<u8>]) -> Buf {
    (src, dgrams.concat(), dgrams[0].len())
}

#[test]
fn gro_buffers_are_cut_and_written_one_by_one_without_offloads() {
    let (core, t) = (node(2), table(2, &[1, 3]));
    let pkts: Vec<Vec<u8>> = (0..4)
        .map(|k| udp4(pod(1, 5), pod(2, 7), 1000, if k == 3 { 50 } else { 700 }))
        .collect();
    let mut partial = udp4(pod(1, 5), pod(2, 8), 1001, 300);
    crate::dataplane::testkit::fill_l4_checksum(&mut partial, true);
    let ds: Vec<Vec<u8>> = pkts.iter().map(|p| dgram(p)).collect();
    let one = public(1).into();
    let mut rx = RxBatch::new(false);
    receive(&mut rx, &[gro(one, &ds), (one, dgram(&partial), 0)]);
    let mut local = LocalCounts::default();
    let did = walk_rx(&mut rx, &core, &t, &mut local);
    let mut want: Vec<Rx> = pkts.iter().map(|p| Rx::One(p.clone())).collect();
    let mut completed = partial.clone();
    crate::dataplane::testkit::fill_l4_checksum(&mut completed, false);
    want.push(Rx::One(completed));
    assert_eq!(did, want, "a partial checksum completed in software");
    assert_eq!((local.rx_packets, local.tun_writes), (5, 5));
    assert_eq!(total_drops(&local), 0);
}

#[test]
fn tcp_runs_are_coalesced_on_an_offload_device() {
    let (core, t) = (node(2), table(2, &[1, 3]));
    let seg = |k: u32| tcp4(pod(1, 5), pod(2, 7), 1000, 77 + k * 1000, 1000);
    let ds: Vec<Vec<u8>> = (0..4).map(|k| dgram(&seg(k))).collect();
    let udp = udp4(pod(1, 5), pod(2, 7), 1001, 20);
    let one: IpAddr = public(1).into();
    let mut rx = RxBatch::new(true);
    receive(&mut rx, &[gro(one, &ds), (one, dgram(&udp), 0)]);
    let mut local = LocalCounts::default();
    let did = walk_rx(&mut rx, &core, &t, &mut local);
    let [Rx::Write(ws)] = &did[..] else {
        panic!("{did:?}")
    };
    assert_eq!(ws.len(), 2);
    let (n, w) = &ws[0];
    assert_eq!(*n, 4);
    let h = virtio::Header::parse(w).unwrap();
    assert_eq!((h.gso_type, h.gso_size), (virtio::GSO_TCPV4, 1000));
    let payload: Vec<u8> = (0..4).flat_map(|k| seg(k)[40..].to_vec()).collect();
    assert_eq!(&w[virtio::HEADER_LEN + 40..], &payload[..]);
    assert_eq!((ws[1].0, &ws[1].1[virtio::HEADER_LEN..]), (1, &udp[..]));
    assert_eq!((local.rx_packets, local.tun_writes), (5, 2));
}

#[test]
fn a_full_coalescer_is_written_before_it_takes_more() {
    let (core, t) = (node(2), table(2, &[1, 3]));
    let one: IpAddr = public(1).into();
    // 5200 small UDP packets (they are never joined: two parts each).
    let bufs: Vec<Buf> = (0..4u16)
        .map(|b| {
            let ds: Vec<Vec<u8>> = (0..1300)
                .map(|k| dgram(&udp4(pod(1, 5), pod(2, 7), 1000 + b * 1300 + k, 0)))
                .collect();
            gro(one, &ds)
        })
        .collect();
    let mut rx = RxBatch::new(true);
    receive(&mut rx, &bufs);
    let mut local = LocalCounts::default();
    let did = walk_rx(&mut rx, &core, &t, &mut local);
    assert!(did.len() > 1, "written in more than one go");
    let mut port = 1000u16;
    for step in &did {
        let Rx::Write(ws) = step else {
            panic!("{step:?}")
        };
        for (n, w) in ws {
            assert_eq!(*n, 1);
            let inner = &w[virtio::HEADER_LEN..];
            assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), port, "in order");
            port += 1;
        }
    }
    assert_eq!(port, 1000 + 5200);
    assert_eq!(local.rx_packets, 5200);
}

#[test]
fn strangers_and_spoofed_sources_are_refused_and_counted() {
    let (core, t) = (node(2), table(2, &[1, 3]));
    let good = udp4(pod(1, 5), pod(2, 7), 1000, 100);
    let spoofed = udp4(pod(3, 5), pod(2, 7), 1000, 100);
    let stranger: IpAddr = Ipv4Addr::new(192, 0, 2, 99).into();
    let one: IpAddr = public(1).into();
    for offload in [false, true] {
        let mut rx = RxBatch::new(offload);
        receive(
            &mut rx,
            &[
                gro(stranger, &[dgram(&good), dgram(&good), dgram(&good)]),
                gro(one, &[dgram(&good), dgram(&spoofed), dgram(&good)]),
            ],
        );
        let mut local = LocalCounts::default();
        let did = walk_rx(&mut rx, &core, &t, &mut local);
        assert_eq!(did[0], Rx::Refused(stranger, DropReason::UnknownPeer));
        assert!(did.contains(&Rx::Refused(one, DropReason::SpoofedSource)));
        assert_eq!(drops(&local, DropReason::UnknownPeer), 3, "each segment");
        assert_eq!(drops(&local, DropReason::SpoofedSource), 1);
        assert_eq!(local.rx_packets, 2, "the rest of the buffer is delivered");
    }
}

#[test]
fn any_received_buffer_never_panics() {
    let (core, t) = (node(2), table(2, &[1, 3]));
    let seeds = [
        dgram(&udp4(pod(1, 5), pod(2, 7), 1000, 100)),
        dgram(&tcp4(pod(1, 5), pod(2, 7), 1000, 5, 1000)),
        dgram(&udp6(pod6(1, 5), pod6(2, 7), 1000, 100)),
    ];
    let srcs: [IpAddr; 3] = [
        public(1).into(),
        publics(1)[1],
        Ipv4Addr::new(1, 2, 3, 4).into(),
    ];
    let mut rng = Rng(0xfeed);
    for round in 0..500 {
        let mut bufs = vec![];
        for _ in 0..1 + rng.below(8) {
            let n = 1 + rng.below(4);
            let mut ds: Vec<Vec<u8>> = (0..n)
                .map(|_| seeds[rng.below(seeds.len())].clone())
                .collect();
            for d in &mut ds {
                for _ in 0..rng.below(4) {
                    let i = rng.below(d.len());
                    d[i] = rng.next() as u8;
                }
            }
            let seg = [0, 7, ds[0].len(), usize::MAX][rng.below(4)];
            bufs.push((srcs[rng.below(3)], ds.concat(), seg));
        }
        let mut rx = RxBatch::new(round % 2 == 0);
        receive(&mut rx, &bufs);
        let mut local = LocalCounts::default();
        walk_rx(&mut rx, &core, &t, &mut local);
    }
}
