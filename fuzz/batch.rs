//! The send batch's entry point: a batch of TUN reads (with or without
//! virtio-net headers, super-packets and partial checksums among them) as a
//! worker takes them, walked to its end with `TxBatch`/`TxTurn` over sockets
//! of either family or both, every step's datagrams and answers checked.

use std::cell::RefCell;

use rand::Rng as _;

use weft::dataplane::batch::{Family, TxBatch, TxStep};
use weft::dataplane::core::{Core, flow_hash};
use weft::dataplane::counters::{DropReason, LocalCounts};
use weft::dataplane::{ENCAP_LEN, HEADROOM, Part};
use weft::wire::{checksum_finish, checksum_sum, ipv4, ipv6, tcp, virtio};

use crate::packet::{
    ADDRS, PARAMS, SEG_AT, encap_seeds, inner_packets, ip_packet, node, records, segment_seeds,
    super_packet, tables, unrecords,
};
use crate::{Entry, Outcome, Rng, accepted, mutate, refused};

pub fn entries() -> Vec<Entry> {
    vec![Entry {
        name: "send-batch",
        about: "TxBatch/TxTurn: a batch of TUN reads, any sockets of either family, walked to its end",
        seeds: batch_seeds,
        mutate: batch_mutate,
        run: batch_run,
    }]
}

/// The first byte of an input: bit 0 offloads (reads start with a
/// virtio-net header), bits 1..=3 the IPv4 sockets and 4..=6 the IPv6
/// sockets (0..=7 each; none at all means one IPv4), bit 7 the dense table.
fn config(offload: bool, v4: u8, v6: u8, dense: bool) -> u8 {
    u8::from(offload) | (v4 & 7) << 1 | (v6 & 7) << 4 | u8::from(dense) << 7
}

/// A read of the batch: `[copies - 1 (bits 0..=1)][u16 length][bytes]`.
fn batch(cfg: u8, reads: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![cfg];
    v.extend_from_slice(&unrecords(reads));
    v
}

fn zero_header(pkt: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; virtio::HEADER_LEN];
    v.extend_from_slice(pkt);
    v
}

/// `pkt` under a header asking to complete its TCP/UDP checksum, the
/// pseudo-header sum in the field, as a sender with checksum offload leaves it.
fn partial(pkt: &[u8]) -> Vec<u8> {
    let mut p = pkt.to_vec();
    let (l4, proto) = if p[0] >> 4 == 6 {
        (40, p[6])
    } else {
        (usize::from(p[0] & 0x0f) * 4, p[9])
    };
    let off = if proto == tcp::PROTO_TCP { 16 } else { 6 };
    let sum = if p[0] >> 4 == 6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[8..24]);
        let src = std::net::Ipv6Addr::from(a);
        a.copy_from_slice(&p[24..40]);
        ipv6::pseudo_header_sum(src, a.into(), proto, (p.len() - 40) as u32, 0)
    } else {
        let src = std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        tcp::pseudo_header_sum(src, dst, proto, (p.len() - l4) as u16, 0)
    };
    p[l4 + off..l4 + off + 2].copy_from_slice(&weft::wire::checksum_fold(sum).to_be_bytes());
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: off as u16,
        ..Default::default()
    };
    let mut v = vec![0u8; virtio::HEADER_LEN];
    h.emit(&mut v);
    v.extend_from_slice(&p);
    v
}

/// A `segment` seed (`[virtio header][placement][super-packet]`) as a TUN read.
fn as_read(seed: &[u8]) -> Vec<u8> {
    let mut v = seed[..SEG_AT].to_vec();
    v.extend_from_slice(&seed[SEG_AT + PARAMS..]);
    v
}

fn batch_seeds() -> Vec<Vec<u8>> {
    let plain: Vec<Vec<u8>> = inner_packets();
    // The encap entry's packets to unrouted, own-subnet and odd destinations.
    let odd: Vec<Vec<u8>> = encap_seeds()
        .into_iter()
        .map(|s| s[PARAMS..].to_vec())
        .collect();
    let supers: Vec<Vec<u8>> = segment_seeds()
        .iter()
        .skip(1) // the first is placed near usize::MAX, not a read
        .map(|s| as_read(s))
        .collect();
    let rec =
        |ps: &[Vec<u8>]| -> Vec<(u8, Vec<u8>)> { ps.iter().map(|p| (0, p.clone())).collect() };
    let headed =
        |ps: &[Vec<u8>]| -> Vec<(u8, Vec<u8>)> { ps.iter().map(|p| (0, zero_header(p))).collect() };
    let mut v = vec![
        batch(config(false, 7, 7, false), &rec(&plain)),
        batch(config(false, 1, 1, true), &rec(&plain)),
        batch(config(false, 3, 0, false), &rec(&plain)),
        batch(config(false, 0, 3, false), &rec(&plain)),
        batch(config(false, 2, 2, false), &rec(&odd)),
        batch(config(true, 7, 7, false), &headed(&plain)),
        batch(config(true, 1, 1, true), &headed(&odd)),
        batch(config(true, 4, 4, false), &rec(&supers)),
    ];
    // Checksums left partial, beside plain reads and super-packets.
    let mut mixed: Vec<(u8, Vec<u8>)> = plain
        .iter()
        .filter(|p| {
            let proto = if p[0] >> 4 == 6 { p[6] } else { p[9] };
            proto == tcp::PROTO_TCP || proto == tcp::PROTO_UDP
        })
        .map(|p| (0, partial(p)))
        .collect();
    mixed.extend(headed(&plain[..3]));
    mixed.extend(rec(&supers[..3]));
    v.push(batch(config(true, 5, 3, false), &mixed));
    // Three 64 KiB super-packets in 32-byte segments: the arena holds two.
    let big = as_read(&super_packet(tcp::PROTO_TCP, 65_535 - 40, 32, 0, 0));
    v.push(batch(config(true, 1, 1, false), &[(2, big)]));
    // Many flows over many sockets: a send at almost every read.
    let flows: Vec<(u8, Vec<u8>)> = (0..40u8)
        .map(|k| {
            let mut p = ip_packet([10, 244, 1, k], [10, 244, 2, 7], tcp::PROTO_UDP, 20, 0);
            p[20] = k;
            mutate::fix_checksums(&mut p);
            (0, p)
        })
        .collect();
    v.push(batch(config(false, 7, 7, false), &flows));
    v
}

fn batch_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let offload = v.first().is_some_and(|c| c & 1 != 0);
    let mut rs: Vec<(u8, Vec<u8>)> = records(v.get(1..).unwrap_or(&[]))
        .into_iter()
        .map(|(s, p)| (s, p.to_vec()))
        .collect();
    let mut cfg = v.first().copied().unwrap_or(0);
    if rs.is_empty() || rng.random_ratio(1, 12) {
        if rng.random() {
            cfg ^= 1 << rng.random_range(0..8);
            v[0] = cfg;
        } else {
            mutate::bytes(rng, v, seeds, 200_000);
        }
        return;
    }
    let vh = if offload { virtio::HEADER_LEN } else { 0 };
    let i = rng.random_range(0..rs.len());
    match rng.random_range(0..12) {
        0..=2 if offload => {
            let n = rs[i].1.len().saturating_sub(vh);
            mutate::virtio(rng, &mut rs[i].1, 0, n);
        }
        0..=4 => mutate::ip_fields(rng, &mut rs[i].1, vh, ADDRS),
        5..=7 => mutate::reorder(rng, &mut rs, i),
        8 => rs[i].0 = rng.random(),
        9 => {
            let p = &mut rs[i].1;
            let n = rng.random_range(0..=p.len());
            p.truncate(n);
        }
        _ => {
            let p = &mut rs[i].1;
            mutate::bytes(rng, p, &[], 65_600);
        }
    }
    *v = batch(cfg, &rs);
}

thread_local! {
    /// The batches, without and with offloads, and the counts, reused.
    static STATE: RefCell<(TxBatch, TxBatch, LocalCounts)> =
        RefCell::new((TxBatch::new(false), TxBatch::new(true), LocalCounts::default()));
}

/// The socket a packet's flow must leave from, by the rule written out
/// again: an IPv6 packet from the IPv6 sockets when there are some,
/// everything from them when there are no IPv4 ones, else IPv4; then the
/// flow hash among them.
fn expected_socket(socks: [usize; 2], pkt: &[u8]) -> (usize, usize) {
    let fam =
        usize::from(socks[0] == 0 || (pkt.first().is_some_and(|b| b >> 4 == 6) && socks[1] > 0));
    let n = socks[fam];
    (
        fam,
        if n > 1 {
            flow_hash(pkt) as usize % n
        } else {
            0
        },
    )
}

/// What the walk saw.
#[derive(Default)]
struct Seen {
    dgrams: u64,
    bytes: u64,
    answers: u64,
    /// Two sends from one socket in a row: the arena was full.
    refills: u64,
}

fn batch_run(input: &[u8]) -> Outcome {
    let cfg = input.first().copied().unwrap_or(0);
    let offload = cfg & 1 != 0;
    let mut socks = [usize::from(cfg >> 1 & 7), usize::from(cfg >> 4 & 7)];
    if socks == [0, 0] {
        socks[0] = 1;
    }
    let t = if cfg & 0x80 != 0 {
        &tables().dense
    } else {
        &tables().hashed
    };
    let core = node(1);
    let vh = if offload { virtio::HEADER_LEN } else { 0 };
    let rs = records(input.get(1..).unwrap_or(&[]));
    STATE.with(|s| {
        let st = &mut *s.borrow_mut();
        let (tx, local) = if offload {
            (&mut st.1, &mut st.2)
        } else {
            (&mut st.0, &mut st.2)
        };
        let drops0 = local.drops;
        let (tx0, txb0, reads0) = (local.tx_packets, local.tx_bytes, local.tun_reads);
        // Fill the batch as the worker does; note each kept read's socket
        // before the turn touches its bytes.
        tx.clear();
        let mut expected = vec![];
        let mut lens = vec![];
        let mut short = 0u64;
        'reads: for (sel, body) in &rs {
            for _ in 0..=(sel & 3) {
                let Some(room) = tx.room() else {
                    break 'reads;
                };
                let n = body.len().min(room.len());
                room[..n].copy_from_slice(&body[..n]);
                let before = tx.len();
                tx.filled(n, local);
                if tx.len() > before {
                    expected.push(expected_socket(socks, &body[vh..n]));
                    lens.push(n - vh);
                } else {
                    short += 1;
                }
            }
        }
        let kept = tx.len();
        ensure!(
            expected.len() == kept,
            "{kept} reads kept, {} seen",
            expected.len()
        );
        ensure!(
            local.tun_reads - reads0 == kept as u64,
            "{} reads counted for {kept}",
            local.tun_reads - reads0
        );
        let mut sent = vec![false; kept];
        let mut seen = Seen::default();
        let mut last: Option<(usize, usize)> = None;
        let mut last_j = 0;
        let mut turn = tx.turn(&core, t, socks);
        let mut steps = 0;
        loop {
            steps += 1;
            ensure!(
                steps <= 4 * kept + 4,
                "the turn does not end ({steps} steps for {kept} reads)"
            );
            match turn.next(local) {
                TxStep::Send(sock) => {
                    let at = (sock.family.index(), sock.index);
                    ensure!(
                        at.1 < socks[at.0],
                        "a send from {sock:?} with sockets {socks:?}"
                    );
                    if last == Some(at) {
                        seen.refills += 1;
                    }
                    last = Some(at);
                    let (from, dgrams) = turn.pending();
                    ensure!(!dgrams.is_empty(), "a send of nothing");
                    for d in dgrams {
                        ensure!(
                            d.parts.start < d.parts.end && d.parts.end <= from.parts.len(),
                            "datagram parts {:?} of {}",
                            d.parts,
                            from.parts.len()
                        );
                        let mut len = 0;
                        let mut read = None;
                        for p in &from.parts[d.parts.clone()] {
                            match p {
                                Part::Arena(r) => ensure!(
                                    r.start <= r.end && r.end <= from.arena.len(),
                                    "arena part {r:?} of {}",
                                    from.arena.len()
                                ),
                                Part::Buf(j, r) => {
                                    ensure!(*j < kept, "a part of read {j} of {kept}");
                                    ensure!(
                                        r.start <= r.end
                                            && r.start >= HEADROOM - ENCAP_LEN
                                            && r.end <= HEADROOM + lens[*j],
                                        "read {j}'s part {r:?}"
                                    );
                                    ensure!(
                                        read.is_none_or(|k| k == *j),
                                        "a datagram of two reads"
                                    );
                                    read = Some(*j);
                                }
                            }
                            len += p.len();
                        }
                        ensure!(len == d.len, "a datagram of {} bytes from {len}", d.len);
                        ensure!(d.len <= ENCAP_LEN + 65_535, "a datagram of {} bytes", d.len);
                        let Some(j) = read else {
                            return Err(crate::Violation("a datagram with no bytes read".into()));
                        };
                        ensure!(j >= last_j, "read {j} sent after read {last_j}");
                        last_j = j;
                        ensure!(
                            expected[j] == at,
                            "read {j} left from {at:?}; its flow's socket is {:?}",
                            expected[j]
                        );
                        if socks[0] > 0 && socks[1] > 0 {
                            ensure!(
                                d.to.is_ipv6() == (sock.family == Family::V6),
                                "to {} from an {:?} socket",
                                d.to,
                                sock.family
                            );
                        }
                        let head: Vec<u8> = from
                            .slices(d.parts.clone())
                            .flatten()
                            .take(8)
                            .copied()
                            .collect();
                        ensure!(
                            head.len() == 8 && head[0] == 0x08 && head[4..7] == [0, 0, 1],
                            "a datagram without the network's VXLAN header: {head:?}"
                        );
                        sent[j] = true;
                        seen.dgrams += 1;
                        seen.bytes += d.len as u64;
                    }
                }
                TxStep::Answer(len) => {
                    seen.answers += 1;
                    let a = turn.answer(len);
                    ensure!(
                        a.len() == vh + len,
                        "an answer of {} bytes for {len}",
                        a.len()
                    );
                    ensure!(
                        a[..vh].iter().all(|b| *b == 0),
                        "an answer's virtio-net header is not zero"
                    );
                    check_answer(&core, &a[vh..])?;
                }
                TxStep::Done => break,
            }
        }
        let drops = local.drops.iter().sum::<u64>() - drops0.iter().sum::<u64>();
        let went = sent.iter().filter(|s| **s).count() as u64;
        ensure!(
            drops == short + kept as u64 - went,
            "{drops} drops for {short} short reads and {} of {kept} kept reads not sent",
            kept as u64 - went
        );
        ensure!(
            local.tx_packets - tx0 == seen.dgrams && local.tx_bytes - txb0 == seen.bytes,
            "counted {} datagrams of {} bytes, sent {} of {}",
            local.tx_packets - tx0,
            local.tx_bytes - txb0,
            seen.dgrams,
            seen.bytes
        );
        ensure!(
            seen.answers
                <= local.drops[DropReason::NoRoute as usize] - drops0[DropReason::NoRoute as usize],
            "{} answers for fewer unrouted packets",
            seen.answers
        );
        if seen.refills > 0 {
            accepted("sent, arena refilled")
        } else if seen.dgrams > 0 {
            accepted("sent")
        } else if seen.answers > 0 {
            accepted("answered")
        } else {
            refused(most_dropped(&local.drops, &drops0))
        }
    })
}

/// The reason most of this input's drops had ("nothing" when none).
fn most_dropped(now: &[u64], before: &[u64]) -> &'static str {
    let mut best = ("nothing", 0);
    for r in DropReason::ALL {
        let d = now[r as usize] - before[r as usize];
        if d > best.1 {
            best = (r.name(), d);
        }
    }
    best.0
}

/// An ICMP or ICMPv6 error from this node's subnet address, its checksums
/// valid, ICMPv6 within the minimum MTU.
fn check_answer(core: &Core, a: &[u8]) -> Result<(), crate::Violation> {
    match a.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = ipv4::Packet::new_checked(a);
            ensure!(ip.is_ok(), "the ICMP error is not an IPv4 packet");
            let ip = ip.expect("checked");
            let hl = ip.header_len();
            ensure!(
                ip.checksum_ok()
                    && Some(ip.src()) == core.router
                    && checksum_finish(checksum_sum(&a[hl..], 0)) == 0,
                "ICMP error from {} (header checksum ok: {})",
                ip.src(),
                ip.checksum_ok()
            );
        }
        Some(6) => {
            let ip = ipv6::Packet::new_checked(a);
            ensure!(ip.is_ok(), "the ICMPv6 error is not an IPv6 packet");
            let ip = ip.expect("checked");
            ensure!(
                Some(ip.src()) == core.subnet6.map(|s| s.network()) && a.len() <= 1280,
                "ICMPv6 error from {} of {} bytes",
                ip.src(),
                a.len()
            );
            let sum = ipv6::pseudo_header_sum(
                ip.src(),
                ip.dst(),
                ipv6::PROTO_ICMPV6,
                (a.len() - 40) as u32,
                0,
            );
            ensure!(
                checksum_finish(checksum_sum(&a[40..], sum)) == 0,
                "the ICMPv6 checksum does not verify"
            );
        }
        _ => ensure!(false, "an answer that is not IP"),
    }
    Ok(())
}
