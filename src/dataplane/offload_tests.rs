//! Tests of segmentation and coalescing: checksums, byte streams, flows, order.
//!
//! Every packet here is built by hand and every checksum is checked against
//! the reference arithmetic below (the textbook RFC 1071 loop over big-endian
//! words), never against the crate's own checksum code. The expected output
//! of segmentation is rebuilt independently, segment by segment; the output of
//! coalescing is cut back into segments and must give back exactly what was
//! pushed, in order.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::dataplane::Gather;

const ACK: u8 = tcp::FLAG_ACK;
const PSH: u8 = tcp::FLAG_PSH;
const FIN: u8 = tcp::FLAG_FIN;
const SYN: u8 = tcp::FLAG_SYN;
const RST: u8 = tcp::FLAG_RST;
const URG: u8 = tcp::FLAG_URG;
const ECE: u8 = tcp::FLAG_ECE;
const CWR: u8 = tcp::FLAG_CWR;
const BAD: Result<usize, SegmentError> = Err(SegmentError::Bad(DropReason::TunBadOffload));

// ---------------------------------------------------------------------------
// Reference arithmetic and byte helpers.

/// The sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), not folded: RFC 1071 written the obvious way.
fn ref_sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|w| (u64::from(w[0]) << 8) | w.get(1).map_or(0, |&b| u64::from(b)))
        .sum()
}

/// End-around carry down to 16 bits.
fn ref_fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 pseudo-header sum for `len` bytes of `proto`.
fn ref_pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    ref_sum(&src) + ref_sum(&dst) + u64::from(proto) + len as u64
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(p: &mut [u8], at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn ihl_of(p: &[u8]) -> usize {
    usize::from(p[0] & 0x0f) * 4
}

/// TCP header length of the IPv4 packet `p`.
fn thl_of(p: &[u8]) -> usize {
    usize::from(p[ihl_of(p) + 12] >> 4) * 4
}

fn src_of(p: &[u8]) -> [u8; 4] {
    [p[12], p[13], p[14], p[15]]
}

fn dst_of(p: &[u8]) -> [u8; 4] {
    [p[16], p[17], p[18], p[19]]
}

fn fill_ip_checksum(p: &mut [u8]) {
    let ihl = ihl_of(p);
    put16(p, 10, 0);
    let c = !ref_fold(ref_sum(&p[..ihl]));
    put16(p, 10, c);
}

fn ip_checksum_ok(p: &[u8]) -> bool {
    ref_fold(ref_sum(&p[..ihl_of(p)])) == 0xffff
}

fn csum_offset(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => panic!("no pseudo-header checksum for protocol {proto}"),
    }
}

/// Pseudo-header plus everything after the IP header (the whole of `p`).
fn l4_sum(p: &[u8]) -> u64 {
    let ihl = ihl_of(p);
    ref_pseudo(src_of(p), dst_of(p), p[9], p.len() - ihl) + ref_sum(&p[ihl..])
}

fn fill_l4_checksum(p: &mut [u8]) {
    let at = ihl_of(p) + csum_offset(p[9]);
    put16(p, at, 0);
    let mut c = !ref_fold(l4_sum(p));
    if p[9] == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(p, at, c);
}

fn l4_checksum_ok(p: &[u8]) -> bool {
    ref_fold(l4_sum(p)) == 0xffff
}

/// Equality of two byte strings that reports where they part, not megabytes.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes, {} expected; first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

/// A small deterministic generator (xorshift64*): no dependence on `rand`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 16) as usize % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 40) as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// Packet builders.

/// A TCP flow's header fields; [`Tcp::packet`] builds a segment of it.
#[derive(Clone, Debug)]
struct Tcp {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent: u16,
    opts: Vec<u8>,
    tos: u8,
    ttl: u8,
    id: u16,
    df: bool,
    ip_opts: Vec<u8>,
}

/// The TCP timestamps option, padded to 12 bytes as Linux sends it.
fn timestamps(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&val.to_be_bytes());
    o.extend_from_slice(&ecr.to_be_bytes());
    o
}

fn flow_a() -> Tcp {
    Tcp {
        src: Ipv4Addr::new(10, 244, 1, 2),
        dst: Ipv4Addr::new(10, 244, 2, 3),
        sport: 40000,
        dport: 5201,
        seq: 0x1000_0000,
        ack: 0x2000_0000,
        flags: ACK,
        window: 502,
        urgent: 0,
        opts: timestamps(1000, 2000),
        tos: 0,
        ttl: 64,
        id: 0x1234,
        df: true,
        ip_opts: vec![],
    }
}

/// Same hosts as `flow_a`, another connection.
fn flow_b() -> Tcp {
    Tcp {
        sport: 40001,
        seq: 0x7000_0000,
        ack: 0x3000_0000,
        id: 0x4321,
        ..flow_a()
    }
}

impl Tcp {
    /// An IPv4 packet of this flow's addresses carrying `l4` as `proto`, with
    /// a valid header checksum.
    fn ip(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let ihl = 20 + self.ip_opts.len();
        assert!(ihl % 4 == 0 && ihl <= 60);
        let mut p = vec![0u8; ihl];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[1] = self.tos;
        put16(&mut p, 2, u16::try_from(ihl + l4.len()).unwrap());
        put16(&mut p, 4, self.id);
        p[6] = if self.df { 0x40 } else { 0 };
        p[8] = self.ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        p[20..].copy_from_slice(&self.ip_opts);
        fill_ip_checksum(&mut p);
        p.extend_from_slice(l4);
        p
    }

    /// A TCP segment carrying `payload`, both checksums valid.
    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let thl = 20 + self.opts.len();
        assert!(thl % 4 == 0 && thl <= 60);
        let mut t = vec![0u8; thl];
        put16(&mut t, 0, self.sport);
        put16(&mut t, 2, self.dport);
        put32(&mut t, 4, self.seq);
        put32(&mut t, 8, self.ack);
        t[12] = ((thl / 4) as u8) << 4;
        t[13] = self.flags;
        put16(&mut t, 14, self.window);
        put16(&mut t, 18, self.urgent);
        t[20..].copy_from_slice(&self.opts);
        t.extend_from_slice(payload);
        let mut p = self.ip(PROTO_TCP, &t);
        fill_l4_checksum(&mut p);
        p
    }

    /// A UDP datagram between this flow's ports, checksum valid.
    fn udp(&self, payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        put16(&mut u, 0, self.sport);
        put16(&mut u, 2, self.dport);
        put16(&mut u, 4, u16::try_from(8 + payload.len()).unwrap());
        u.extend_from_slice(payload);
        let mut p = self.ip(PROTO_UDP, &u);
        fill_l4_checksum(&mut p);
        p
    }

    /// An ICMP echo request.
    fn icmp(&self, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        m.extend_from_slice(payload);
        let c = !ref_fold(ref_sum(&m));
        put16(&mut m, 2, c);
        self.ip(ipv4::PROTO_ICMP, &m)
    }

    /// The next segments of this flow, one per size, with random payloads:
    /// sequence numbers and IP IDs advance as a sender's would.
    fn stream(&mut self, sizes: &[usize], rng: &mut Rng) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .map(|&n| {
                let p = self.packet(&rng.bytes(n));
                self.seq = self.seq.wrapping_add(n as u32);
                self.id = self.id.wrapping_add(1);
                p
            })
            .collect()
    }
}

/// A TSO super-packet as the kernel hands it over: one header, the whole
/// payload, and (CHECKSUM_PARTIAL) the folded pseudo-header sum in the TCP
/// checksum field.
fn tso(t: &Tcp, payload: &[u8]) -> Vec<u8> {
    let mut p = t.packet(payload);
    partial_checksum(&mut p);
    p
}

/// A USO super-packet: UDP length of the whole, partial checksum.
fn uso(t: &Tcp, payload: &[u8]) -> Vec<u8> {
    let mut p = t.udp(payload);
    partial_checksum(&mut p);
    p
}

/// Puts the folded pseudo-header sum where the L4 checksum goes.
fn partial_checksum(p: &mut [u8]) {
    let ihl = ihl_of(p);
    let partial = ref_fold(ref_pseudo(src_of(p), dst_of(p), p[9], p.len() - ihl));
    put16(p, ihl + csum_offset(p[9]), partial);
}

/// The virtio-net header that comes with super-packet `p`.
fn gso_header(p: &[u8], gso_type: u8, mss: u16) -> virtio::Header {
    let ihl = ihl_of(p);
    let l4hl = if p[9] == PROTO_TCP { thl_of(p) } else { 8 };
    virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type,
        hdr_len: (ihl + l4hl) as u16,
        gso_size: mss,
        csum_start: ihl as u16,
        csum_offset: csum_offset(p[9]) as u16,
    }
}

/// What segmentation of `sp` at `mss` must give, rebuilt from scratch as the
/// kernel's TSO/USO would: lengths, IDs, sequence numbers, flags (CWR on the
/// first only, FIN/PSH on the last only) and checksums.
fn expected_segments(sp: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let ihl = ihl_of(sp);
    let is_tcp = sp[9] == PROTO_TCP;
    let hl = ihl + if is_tcp { thl_of(sp) } else { 8 };
    let n = (sp.len() - hl).div_ceil(mss);
    sp[hl..]
        .chunks(mss)
        .enumerate()
        .map(|(k, chunk)| {
            let mut s = sp[..hl].to_vec();
            s.extend_from_slice(chunk);
            let len = u16::try_from(s.len()).unwrap();
            put16(&mut s, 2, len);
            put16(&mut s, 4, be16(sp, 4).wrapping_add(k as u16));
            if is_tcp {
                put32(
                    &mut s,
                    ihl + 4,
                    be32(sp, ihl + 4).wrapping_add((k * mss) as u32),
                );
                let mut f = sp[ihl + 13];
                if k > 0 {
                    f &= !CWR;
                }
                if k + 1 < n {
                    f &= !(FIN | PSH);
                }
                s[ihl + 13] = f;
            } else {
                let udp_len = u16::try_from(s.len() - ihl).unwrap();
                put16(&mut s, ihl + 4, udp_len);
            }
            fill_ip_checksum(&mut s);
            fill_l4_checksum(&mut s);
            s
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Segmentation harness.

/// Where a super-packet lies in its receive buffer.
const AT: usize = 64;

fn prefix() -> [u8; ENCAP_LEN] {
    std::array::from_fn(|i| 0xa0 ^ i as u8)
}

fn peer() -> std::net::SocketAddr {
    std::net::SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 8472))
}

/// What [`segment`] made of one super-packet: its result, each datagram's
/// bytes gathered from its parts, and the arena bytes it used.
struct Cut {
    result: Result<usize, SegmentError>,
    dgrams: Vec<Vec<u8>>,
    arena_used: usize,
}

fn cut(h: &virtio::Header, pkt: &[u8]) -> Cut {
    cut_in(h, pkt, &mut Arena::default())
}

/// Runs [`segment`] on `pkt` placed at `AT` in buffer 1 (between junk, behind
/// a datagram already pending) and checks what every result must satisfy:
/// a refusal leaves parts, datagrams and arena untouched; an acceptance
/// appends two parts per datagram (header in the arena, payload left in
/// buffer 1), payloads tiling the super-packet's payload in order.
fn cut_in(h: &virtio::Header, pkt: &[u8], arena: &mut Arena) -> Cut {
    let mut slot = vec![0x55u8; AT];
    slot.extend_from_slice(pkt);
    slot.extend_from_slice(&[0x77; 9]);
    let bufs = vec![vec![0xeeu8; 16], slot];
    let mut parts = vec![Part::Buf(0, 0..16)];
    let mut dgrams = vec![Datagram {
        to: peer(),
        parts: 0..1,
        len: 16,
    }];
    let (parts0, dgrams0) = (parts.clone(), dgrams.clone());
    let room = arena.room();
    let result = segment(
        h,
        &bufs[1][AT..AT + pkt.len()],
        1,
        AT,
        &prefix(),
        peer(),
        arena,
        &mut parts,
        &mut dgrams,
    );
    assert_eq!(parts[..1], parts0[..], "an earlier part was changed");
    assert_eq!(dgrams[..1], dgrams0[..], "an earlier datagram was changed");
    let Ok(n) = result else {
        assert_eq!(parts, parts0, "{result:?} pushed parts");
        assert_eq!(dgrams, dgrams0, "{result:?} pushed datagrams");
        assert_eq!(arena.room(), room, "{result:?} used arena");
        return Cut {
            result,
            dgrams: vec![],
            arena_used: 0,
        };
    };
    assert!(n > 0);
    assert_eq!(dgrams.len(), 1 + n);
    assert_eq!(parts.len(), 1 + 2 * n);
    let g = Gather {
        arena: arena.bytes(),
        bufs: &bufs,
        parts: &parts,
    };
    let mut next = None;
    let mut out = Vec::with_capacity(n);
    for (i, d) in dgrams[1..].iter().enumerate() {
        assert_eq!(d.to, peer());
        assert_eq!(d.parts, 1 + 2 * i..3 + 2 * i, "datagram {i}: parts");
        let Part::Arena(_) = &parts[d.parts.start] else {
            panic!("datagram {i}: header not in the arena")
        };
        let Part::Buf(1, r) = &parts[d.parts.start + 1] else {
            panic!("datagram {i}: payload not left in its buffer")
        };
        if let Some(at) = next {
            assert_eq!(r.start, at, "datagram {i}: payload not contiguous");
        }
        next = Some(r.end);
        let bytes: Vec<u8> = g.slices(d.parts.clone()).flatten().copied().collect();
        assert_eq!(d.len, bytes.len(), "datagram {i}: len");
        out.push(bytes);
    }
    assert_eq!(
        next,
        Some(AT + ip_len(pkt)),
        "payload not cut to the IP packet's end"
    );
    Cut {
        result,
        dgrams: out,
        arena_used: room - arena.room(),
    }
}

/// Checks a cut of `sp` at `mss` field by field, then byte for byte against
/// [`expected_segments`], then the payload stream as a whole.
#[track_caller]
fn check_cut(sp: &[u8], mss: usize, c: &Cut) {
    let want = expected_segments(sp, mss);
    let n = want.len();
    assert_eq!(c.result, Ok(n), "segment count");
    assert_eq!(c.dgrams.len(), n);
    let ihl = ihl_of(sp);
    let is_tcp = sp[9] == PROTO_TCP;
    let hl = ihl + if is_tcp { thl_of(sp) } else { 8 };
    assert_eq!(c.arena_used, n * (ENCAP_LEN + hl), "arena used");
    let f0 = if is_tcp { sp[ihl + 13] } else { 0 };
    let mut stream = Vec::with_capacity(sp.len());
    for (k, (d, w)) in c.dgrams.iter().zip(&want).enumerate() {
        assert_eq!(d[..ENCAP_LEN], prefix(), "segment {k}: prefix");
        let s = &d[ENCAP_LEN..];
        let payload = if k + 1 < n {
            mss
        } else {
            sp.len() - hl - k * mss
        };
        assert_eq!(s.len(), hl + payload, "segment {k}: length");
        assert_eq!(
            usize::from(be16(s, 2)),
            s.len(),
            "segment {k}: IP total length"
        );
        assert_eq!(
            be16(s, 4),
            be16(sp, 4).wrapping_add(k as u16),
            "segment {k}: IP ID"
        );
        assert!(ip_checksum_ok(s), "segment {k}: IP checksum");
        assert!(l4_checksum_ok(s), "segment {k}: L4 checksum");
        if is_tcp {
            let seq = be32(sp, ihl + 4).wrapping_add((k * mss) as u32);
            assert_eq!(be32(s, ihl + 4), seq, "segment {k}: seq");
            let f = s[ihl + 13];
            assert_eq!(f & CWR != 0, k == 0 && f0 & CWR != 0, "segment {k}: CWR");
            let last = if k + 1 == n { f0 & (FIN | PSH) } else { 0 };
            assert_eq!(f & (FIN | PSH), last, "segment {k}: FIN/PSH");
            assert_eq!(
                f & !(CWR | FIN | PSH),
                f0 & !(CWR | FIN | PSH),
                "segment {k}: flags"
            );
        } else {
            assert_eq!(
                usize::from(be16(s, ihl + 4)),
                s.len() - ihl,
                "segment {k}: UDP length"
            );
            assert_ne!(
                be16(s, ihl + 6),
                0,
                "segment {k}: UDP checksum 0 means none"
            );
        }
        stream.extend_from_slice(&s[hl..]);
        assert_same(s, w, &format!("segment {k}"));
    }
    assert_same(&stream, &sp[hl..], "payload stream");
}

/// What must hold of any accepted input, however odd: each datagram is the
/// prefix and a self-consistent IPv4 packet (length, both checksums), and
/// the payloads put together are the input's.
#[track_caller]
fn check_consistent(pkt: &[u8], c: &Cut) {
    let mut stream = vec![];
    let mut hl = 0;
    for (k, d) in c.dgrams.iter().enumerate() {
        assert_eq!(d[..ENCAP_LEN], prefix());
        let s = &d[ENCAP_LEN..];
        assert_eq!(
            usize::from(be16(s, 2)),
            s.len(),
            "segment {k}: IP total length"
        );
        assert!(ip_checksum_ok(s), "segment {k}: IP checksum");
        assert!(l4_checksum_ok(s), "segment {k}: L4 checksum");
        hl = ihl_of(s) + if s[9] == PROTO_TCP { thl_of(s) } else { 8 };
        // Only length, ID and checksum of the IP header may change.
        assert_eq!(s[..2], pkt[..2]);
        assert_eq!(s[6..10], pkt[6..10]);
        assert_eq!(s[12..ihl_of(s)], pkt[12..ihl_of(s)]);
        stream.extend_from_slice(&s[hl..]);
    }
    assert_same(&stream, &pkt[hl..ip_len(pkt)], "payload stream");
}

/// The IP packet's length by its header (IPv4 total length, or 40 + the
/// IPv6 payload length), bounded by the bytes read: where a super-packet
/// ends (bytes read past it are not sent).
fn ip_len(pkt: &[u8]) -> usize {
    if pkt.first().is_some_and(|b| b >> 4 == 6) && pkt.len() >= 40 {
        return (40 + usize::from(be16(pkt, 4))).min(pkt.len());
    }
    usize::from(be16(pkt, 2)).min(pkt.len())
}

// ---------------------------------------------------------------------------
// Coalescing harness.

/// One TUN write as the kernel reads it.
#[derive(Debug)]
struct Written {
    vh: virtio::Header,
    pkt: Vec<u8>,
    segments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// As it came, flags 0.
    Plain,
    /// As it came, marked checksum-verified.
    Valid,
    /// As it came, its partial checksum marked for the kernel to complete.
    Partial,
    /// This many segments joined.
    Merged(usize),
}

use Kind::{Merged, Partial, Plain, Valid};

fn kinds(ws: &[Written]) -> Vec<Kind> {
    ws.iter()
        .map(|w| match (w.vh.gso_type, w.vh.flags) {
            (virtio::GSO_NONE, 0) => Plain,
            (virtio::GSO_NONE, virtio::FLAG_DATA_VALID) => Valid,
            (virtio::GSO_NONE, virtio::FLAG_NEEDS_CSUM) => Partial,
            (virtio::GSO_TCPV4, _) => Merged(w.segments),
            _ => panic!("unexpected virtio header {:?}", w.vh),
        })
        .collect()
}

/// Each packet in a buffer of its own, between junk: the buffers and ranges.
fn place(pkts: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Range<usize>>) {
    pkts.iter()
        .enumerate()
        .map(|(i, p)| {
            let lead = 3 + i % 5;
            let mut b = vec![i as u8; lead];
            b.extend_from_slice(p);
            b.extend_from_slice(&[0xcc; 4]);
            (b, lead..lead + p.len())
        })
        .unzip()
}

/// Pushes `pkts` in order through a fresh coalescer and reads its writes.
fn coalesce(pkts: &[Vec<u8>]) -> Vec<Written> {
    let (bufs, ranges) = place(pkts);
    let mut co = Coalescer::new();
    for (i, r) in ranges.iter().enumerate() {
        assert!(co.has_room());
        co.push(&bufs[i][r.clone()], i, r.clone());
    }
    co.close();
    collect(&co, &bufs)
}

/// Gathers every write of `co`, checking that the writes use the parts in
/// order, each once, as one header in the arena followed by one stretch of a
/// received buffer per segment (payload is never copied).
fn collect(co: &Coalescer, bufs: &[Vec<u8>]) -> Vec<Written> {
    let (writes, parts, arena) = co.writes();
    let g = Gather { arena, bufs, parts };
    let mut next = 0;
    let out = writes
        .iter()
        .map(|w| {
            assert_eq!(w.parts.start, next, "writes do not tile the parts");
            next = w.parts.end;
            // One received segment each, or one super-packet to be cut.
            assert!(
                w.parts.len() == 1 + w.segments || w.parts.len() == 2,
                "parts of {w:?}"
            );
            let Part::Arena(r) = &parts[w.parts.start] else {
                panic!("{w:?}: no virtio-net header first")
            };
            assert!(r.len() >= virtio::HEADER_LEN);
            for p in &parts[w.parts.start + 1..w.parts.end] {
                assert!(matches!(p, Part::Buf(..)), "{w:?}: payload copied");
            }
            let bytes: Vec<u8> = g.slices(w.parts.clone()).flatten().copied().collect();
            Written {
                vh: virtio::Header::parse(&bytes).unwrap(),
                pkt: bytes[virtio::HEADER_LEN..].to_vec(),
                segments: w.segments,
            }
        })
        .collect();
    assert_eq!(next, parts.len(), "parts no write uses");
    out
}

/// What must hold of every write: a single is unmarked, or marked verified
/// only when its checksums do verify, or marked partial only when its
/// checksum field holds the pseudo-header sum (and completing it then
/// verifies); a merged one carries the virtio header
/// as specified, a consistent IPv4 header, and the folded pseudo-header sum
/// in the TCP checksum field, which completed over the packet verifies.
#[track_caller]
fn check_write(w: &Written) {
    let p = &w.pkt;
    if w.vh.gso_type == virtio::GSO_NONE {
        assert_eq!(w.segments, 1);
        let valid = virtio::Header {
            flags: virtio::FLAG_DATA_VALID,
            ..Default::default()
        };
        if w.vh.flags == virtio::FLAG_NEEDS_CSUM {
            let ihl = ihl_of(p);
            assert!(p[9] == PROTO_TCP || p[9] == PROTO_UDP, "{:?}", w.vh);
            assert_eq!(
                w.vh,
                virtio::Header {
                    flags: virtio::FLAG_NEEDS_CSUM,
                    csum_start: ihl as u16,
                    csum_offset: csum_offset(p[9]) as u16,
                    ..Default::default()
                }
            );
            let l4_len = usize::from(be16(p, 2)) - ihl;
            let pseudo = ref_fold(ref_pseudo(src_of(p), dst_of(p), p[9], l4_len));
            assert_eq!(
                be16(p, ihl + csum_offset(p[9])),
                pseudo,
                "marked partial but is not"
            );
            let mut done = p.clone();
            complete_checksum(&w.vh, &mut done).unwrap();
            assert!(l4_checksum_ok(&done), "completed partial checksum");
            return;
        }
        assert!(
            w.vh == virtio::Header::default() || w.vh == valid,
            "{:?}",
            w.vh
        );
        if w.vh == valid {
            assert_eq!(p[9], PROTO_TCP);
            assert!(
                ip_checksum_ok(p) && l4_checksum_ok(p),
                "marked valid but is not"
            );
        }
        return;
    }
    assert!(w.segments >= 2);
    let (ihl, thl) = (ihl_of(p), thl_of(p));
    let mss = usize::from(w.vh.gso_size);
    assert_eq!(
        w.vh,
        virtio::Header {
            flags: virtio::FLAG_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV4,
            hdr_len: (ihl + thl) as u16,
            gso_size: mss as u16,
            csum_start: ihl as u16,
            csum_offset: 16,
        }
    );
    assert!(p.len() <= 65_535, "coalesced write of {} bytes", p.len());
    assert_eq!(usize::from(be16(p, 2)), p.len(), "IP total length");
    assert!(ip_checksum_ok(p), "IP checksum");
    let payload = p.len() - ihl - thl;
    assert!(mss > 0 && payload > (w.segments - 1) * mss && payload <= w.segments * mss);
    assert_eq!(p[ihl + 13] & !PSH, ACK, "flags of a merged write");
    let partial = ref_fold(ref_pseudo(src_of(p), dst_of(p), PROTO_TCP, p.len() - ihl));
    assert_eq!(
        be16(p, ihl + 16),
        partial,
        "TCP checksum field: pseudo-header sum"
    );
    // What the kernel does with it: the sum over the segment, complemented.
    let mut by_hand = p.clone();
    put16(&mut by_hand, ihl + 16, !ref_fold(ref_sum(&p[ihl..])));
    assert!(l4_checksum_ok(&by_hand), "completed checksum");
    let mut done = p.clone();
    complete_checksum(&w.vh, &mut done).unwrap();
    assert_same(&done, &by_hand, "complete_checksum of a merged write");
}

/// Cuts merged writes back into the segments they were made of (as the
/// kernel's GSO would, IDs counting up) and passes singles through.
fn uncoalesce(ws: &[Written]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for w in ws {
        if w.vh.gso_type == virtio::GSO_NONE {
            out.push(w.pkt.clone());
            continue;
        }
        let p = &w.pkt;
        let (ihl, hl, mss) = (
            ihl_of(p),
            usize::from(w.vh.hdr_len),
            usize::from(w.vh.gso_size),
        );
        let n = (p.len() - hl).div_ceil(mss);
        assert_eq!(n, w.segments);
        for (k, chunk) in p[hl..].chunks(mss).enumerate() {
            let mut s = p[..hl].to_vec();
            s.extend_from_slice(chunk);
            let len = s.len() as u16;
            put16(&mut s, 2, len);
            put16(&mut s, 4, be16(p, 4).wrapping_add(k as u16));
            put32(
                &mut s,
                ihl + 4,
                be32(p, ihl + 4).wrapping_add((k * mss) as u32),
            );
            if k + 1 < n {
                s[ihl + 13] &= !PSH;
            }
            fill_ip_checksum(&mut s);
            fill_l4_checksum(&mut s);
            out.push(s);
        }
    }
    out
}

/// The TCP payload carried per connection, in order (anything that does not
/// parse as TCP/IPv4 is left out): what the receiving sockets would read.
fn streams<'a>(pkts: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for p in pkts {
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != PROTO_TCP {
            continue;
        }
        let ihl = ihl_of(p);
        let end = usize::from(be16(p, 2)).min(p.len());
        if ihl < 20 || ihl + 20 > end || ihl + thl_of(p) > end {
            continue;
        }
        let key = [&p[12..20], &p[ihl..ihl + 4]].concat();
        m.entry(key)
            .or_default()
            .extend_from_slice(&p[ihl + thl_of(p)..end]);
    }
    m
}

/// Every write is well-formed, the per-connection byte streams are those
/// pushed, and cutting the writes back into segments gives exactly the
/// packets pushed, byte for byte and in order.
#[track_caller]
fn assert_delivered(ws: &[Written], pkts: &[Vec<u8>]) {
    for w in ws {
        check_write(w);
    }
    assert_eq!(
        streams(ws.iter().map(|w| &w.pkt[..])),
        streams(pkts.iter().map(|p| &p[..])),
        "byte streams"
    );
    let got = uncoalesce(ws);
    assert_eq!(got.len(), pkts.len(), "packets delivered");
    for (i, (g, p)) in got.iter().zip(pkts).enumerate() {
        assert_same(g, p, &format!("packet {i}"));
    }
}

#[track_caller]
fn deliver(pkts: &[Vec<u8>]) -> Vec<Written> {
    let ws = coalesce(pkts);
    assert_delivered(&ws, pkts);
    ws
}

// ---------------------------------------------------------------------------
// checksum_sum, checksum_fold, checksum_finish.

/// checksum_sum agrees with the reference for every length 0..=300, for
/// random, all-ones and all-zero data, every alignment, and several starting
/// accumulators; and it stays within its bound, so that sums chain.
#[test]
fn checksum_sum_matches_reference() {
    let mut rng = Rng::new(1);
    let random = rng.bytes(304);
    let ones = vec![0xffu8; 304];
    let zeros = vec![0u8; 304];
    for data in [&random, &ones, &zeros] {
        for skew in 0..4 {
            for len in 0..=300 {
                let d = &data[skew..skew + len];
                for acc in [0u32, 1, 0xffff, 0x1_0000, 0x00ff_ff00, 0x7fff_0001] {
                    let s = checksum_sum(d, acc);
                    let want = ref_fold(ref_sum(d) + u64::from(acc));
                    assert_eq!(checksum_fold(s), want, "len {len} skew {skew} acc {acc:#x}");
                    assert_eq!(checksum_finish(s), !want, "len {len} skew {skew}");
                    assert!(
                        s >= acc && s - acc < 3 << 16,
                        "len {len}: {s:#x} from {acc:#x}"
                    );
                }
            }
        }
    }
}

/// Sums chain: the sum of a whole equals the sum of its second part started
/// from the sum of its first, split at any even point.
#[test]
fn checksum_sum_chains() {
    let mut rng = Rng::new(2);
    for len in [0, 1, 2, 3, 7, 64, 101, 300] {
        let d = rng.bytes(len);
        let whole = checksum_fold(checksum_sum(&d, 0x1234));
        for k in (0..=len).step_by(2) {
            let chained = checksum_sum(&d[k..], checksum_sum(&d[..k], 0x1234));
            assert_eq!(checksum_fold(chained), whole, "len {len} split {k}");
        }
        // Three pieces, the middle one of even length.
        if len >= 6 {
            let s = checksum_sum(
                &d[4..],
                checksum_sum(&d[2..4], checksum_sum(&d[..2], 0x1234)),
            );
            assert_eq!(checksum_fold(s), whole);
        }
    }
}

/// Large inputs (the 64-bit accumulation and its folding) against the
/// reference: 64 KiB of ones, of random bytes, and odd lengths near it; and
/// 65537 words of ones or more, whose 64-bit sum needs every fold step.
#[test]
fn checksum_sum_large_inputs() {
    let mut rng = Rng::new(3);
    let random = rng.bytes(300_000);
    let ones = vec![0xffu8; 300_000];
    for data in [&random, &ones] {
        for len in [
            65_535, 65_536, 65_537, 65_539, 262_147, 262_148, 262_152, 300_000,
        ] {
            let d = &data[..len];
            assert_eq!(
                checksum_fold(checksum_sum(d, 0)),
                ref_fold(ref_sum(d)),
                "len {len}"
            );
        }
    }
    // 65537 native words of all ones and one of 0x10000: a 64-bit sum of
    // 0x1_0000_ffff_ffff, which takes all three 16-bit folds to get right.
    let mut d = vec![0xffu8; 65_537 * 4];
    d.extend_from_slice(&0x0001_0000u32.to_ne_bytes());
    assert_eq!(checksum_fold(checksum_sum(&d, 0)), ref_fold(ref_sum(&d)));
}

/// checksum_fold and checksum_finish against the reference fold, edges and
/// random values.
#[test]
fn checksum_fold_and_finish_match_reference() {
    let mut rng = Rng::new(4);
    let edges = [
        0u32,
        1,
        0xfffe,
        0xffff,
        0x1_0000,
        0x1_fffe,
        0x1_ffff,
        0xffff_ffff,
    ];
    for acc in edges
        .into_iter()
        .chain((0..10_000).map(|_| rng.next() as u32))
    {
        assert_eq!(checksum_fold(acc), ref_fold(u64::from(acc)), "{acc:#x}");
        assert_eq!(checksum_finish(acc), !ref_fold(u64::from(acc)), "{acc:#x}");
    }
}

// ---------------------------------------------------------------------------
// TSO segmentation.

/// The headline case: 64000 bytes at mss 1398 with timestamps, PSH|ACK|CWR
/// (ECN), sequence number and IP ID both wrapping along the way: 46
/// segments, every field, checksum and payload byte as the kernel's TSO.
#[test]
fn tso_64000_at_1398() {
    let mut rng = Rng::new(10);
    let t = Tcp {
        flags: ACK | PSH | CWR,
        seq: 0xffff_8000,
        id: 0xfff0,
        ..flow_a()
    };
    let sp = tso(&t, &rng.bytes(64_000));
    let c = cut(
        &gso_header(&sp, virtio::GSO_TCPV4 | virtio::GSO_ECN, 1398),
        &sp,
    );
    assert_eq!(c.result, Ok(46));
    check_cut(&sp, 1398, &c);
    // The last carries 64000 - 45 * 1398 bytes and the PSH.
    let last = &c.dgrams[45][ENCAP_LEN..];
    assert_eq!(last.len(), 52 + 1090);
    assert_eq!(last[33], ACK | PSH);
    assert_eq!(c.dgrams[0][ENCAP_LEN + 33], ACK | CWR);
    assert_eq!(c.dgrams[1][ENCAP_LEN + 33], ACK);
}

/// FIN (with and without PSH and CWR) goes on the last segment only, whether
/// the mss divides the payload (64 x 1000) or not.
#[test]
fn tso_fin_only_on_last() {
    let mut rng = Rng::new(11);
    let payload = rng.bytes(64_000);
    for flags in [ACK | FIN, ACK | FIN | PSH, ACK | FIN | PSH | CWR, ACK | CWR] {
        for mss in [1000u16, 1398] {
            let sp = tso(&Tcp { flags, ..flow_a() }, &payload);
            let c = cut(&gso_header(&sp, virtio::GSO_TCPV4, mss), &sp);
            check_cut(&sp, usize::from(mss), &c);
            let n = c.dgrams.len();
            for (k, d) in c.dgrams.iter().enumerate() {
                assert_eq!(d[ENCAP_LEN + 33] & FIN != 0, flags & FIN != 0 && k + 1 == n);
            }
        }
    }
}

/// Awkward sizes: an mss that does not divide the payload, odd mss (odd
/// chunks, so checksums over odd lengths at odd payload offsets), mss 1 and
/// 2, a payload one byte over a multiple, and payloads no larger than the
/// mss (a single segment that keeps every flag).
#[test]
fn tso_awkward_sizes() {
    let mut rng = Rng::new(12);
    let cases = [
        (64_000, 1397),
        (64_000, 1448),
        (5001, 7),
        (2999, 2),
        (1000, 1),
        (1399, 1398),
        (1398, 1398),
        (100, 1398),
        (1, 1398),
        (1, 1),
        (64_000, 64_000),
        (63_000, 65_535),
    ];
    for (len, mss) in cases {
        let t = Tcp {
            flags: ACK | PSH | FIN | CWR,
            ..flow_a()
        };
        let sp = tso(&t, &rng.bytes(len));
        let c = cut(&gso_header(&sp, virtio::GSO_TCPV4, mss), &sp);
        check_cut(&sp, usize::from(mss), &c);
        assert_eq!(
            c.dgrams.len(),
            len.div_ceil(usize::from(mss)),
            "{len}/{mss}"
        );
        if len <= usize::from(mss) {
            assert_eq!(
                c.dgrams[0][ENCAP_LEN + 33],
                t.flags,
                "{len}/{mss}: single keeps flags"
            );
        }
    }
}

/// Header shapes: IP options (carried into every segment, inside the IP
/// checksum), no TCP options, the largest TCP header, DF clear, a TOS.
#[test]
fn tso_header_shapes() {
    let mut rng = Rng::new(13);
    let payload = rng.bytes(10_000);
    let big_opts = [timestamps(7, 9), vec![1, 1, 5, 26], rng.bytes(24)].concat();
    let shapes = [
        Tcp {
            ip_opts: vec![1, 1, 1, 0],
            ..flow_a()
        },
        Tcp {
            ip_opts: rng.bytes(40),
            opts: vec![],
            ..flow_a()
        },
        Tcp {
            opts: big_opts,
            df: false,
            tos: 0xb8,
            ttl: 1,
            ..flow_a()
        },
        Tcp {
            opts: vec![],
            flags: ACK | PSH | ECE,
            urgent: 5,
            ..flow_a()
        },
    ];
    for t in shapes {
        let sp = tso(&t, &payload);
        for mss in [536u16, 1000, 1397] {
            check_cut(
                &sp,
                usize::from(mss),
                &cut(&gso_header(&sp, virtio::GSO_TCPV4, mss), &sp),
            );
        }
    }
}

/// The super-packet's own TCP checksum field (whatever the kernel left in
/// it) has no bearing on the segments' checksums.
#[test]
fn tso_ignores_incoming_checksum_field() {
    let mut rng = Rng::new(14);
    let sp = tso(&flow_a(), &rng.bytes(5000));
    let h = gso_header(&sp, virtio::GSO_TCPV4, 1000);
    let want = cut(&h, &sp).dgrams;
    for field in [0u16, 0xffff, 0xbeef] {
        let mut odd = sp.clone();
        put16(&mut odd, 36, field);
        let c = cut(&h, &odd);
        assert_eq!(c.dgrams, want, "checksum field {field:#x}");
    }
}

// ---------------------------------------------------------------------------
// USO segmentation.

/// UDP super-packets: each datagram's UDP length, checksum (never 0) and
/// payload, for sizes that divide, do not, are odd, or fit in one.
#[test]
fn uso_segments() {
    let mut rng = Rng::new(20);
    for (len, mss) in [
        (60_000, 1472),
        (5000, 1000),
        (4097, 333),
        (10, 3),
        (100, 200),
        (1, 1),
    ] {
        let sp = uso(&flow_a(), &rng.bytes(len));
        let c = cut(&gso_header(&sp, virtio::GSO_UDP_L4, mss), &sp);
        check_cut(&sp, usize::from(mss), &c);
    }
    // IP options and DF clear.
    let t = Tcp {
        ip_opts: vec![1, 1, 1, 0],
        df: false,
        ..flow_a()
    };
    let sp = uso(&t, &rng.bytes(3000));
    check_cut(
        &sp,
        1400,
        &cut(&gso_header(&sp, virtio::GSO_UDP_L4, 1400), &sp),
    );
}

/// A segment whose UDP checksum computes to zero is sent with 0xffff (zero
/// would mean "no checksum").
#[test]
fn uso_zero_checksum_is_sent_as_ones() {
    let mut rng = Rng::new(21);
    let mss = 1000;
    let mut payload = rng.bytes(3000);
    // Choose bytes 1000..1002 (the start of segment 1) so that segment's
    // checksum computes to zero.
    payload[mss..mss + 2].fill(0);
    let mut s1 = expected_segments(&uso(&flow_a(), &payload), mss).swap_remove(1);
    put16(&mut s1, 26, 0);
    let w = 0xffff - ref_fold(l4_sum(&s1));
    put16(&mut payload, mss, w);
    put16(&mut s1, 28, w);
    assert_eq!(
        !ref_fold(l4_sum(&s1)),
        0,
        "test setup: checksum should compute to 0"
    );
    let sp = uso(&flow_a(), &payload);
    let c = cut(&gso_header(&sp, virtio::GSO_UDP_L4, mss as u16), &sp);
    check_cut(&sp, mss, &c);
    assert_eq!(be16(&c.dgrams[1][ENCAP_LEN..], 26), 0xffff);
}

// ---------------------------------------------------------------------------
// Segmentation: refusals and hostile input.

/// Malformed super-packets and mismatched offload types are refused as
/// TunBadOffload, pushing nothing.
#[test]
fn segment_refuses_malformed() {
    let mut rng = Rng::new(30);
    let tcp_sp = tso(&flow_a(), &rng.bytes(3000));
    let udp_sp = uso(&flow_a(), &rng.bytes(3000));
    let th = gso_header(&tcp_sp, virtio::GSO_TCPV4, 1398);
    let uh = gso_header(&udp_sp, virtio::GSO_UDP_L4, 1398);
    let with = |p: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = p.to_vec();
        f(&mut p);
        p
    };
    let gso = |h: virtio::Header, gso_type: u8| virtio::Header { gso_type, ..h };
    let cases: Vec<(&str, virtio::Header, Vec<u8>)> = vec![
        (
            "TCP gso_size 0",
            virtio::Header { gso_size: 0, ..th },
            tcp_sp.clone(),
        ),
        (
            "UDP gso_size 0",
            virtio::Header { gso_size: 0, ..uh },
            udp_sp.clone(),
        ),
        ("TCPV4 on UDP", gso(uh, virtio::GSO_TCPV4), udp_sp.clone()),
        ("UDP_L4 on TCP", gso(th, virtio::GSO_UDP_L4), tcp_sp.clone()),
        ("TCPV6", gso(th, virtio::GSO_TCPV6), tcp_sp.clone()),
        (
            "TCPV6 | ECN",
            gso(th, virtio::GSO_TCPV6 | virtio::GSO_ECN),
            tcp_sp.clone(),
        ),
        ("UFO", gso(uh, virtio::GSO_UDP), udp_sp.clone()),
        ("GSO none", gso(th, virtio::GSO_NONE), tcp_sp.clone()),
        ("unknown type", gso(th, 0x7f), tcp_sp.clone()),
        ("ICMP", th, flow_a().icmp(&[0; 3000])),
        ("TCP, no payload", th, tso(&flow_a(), &[])),
        ("UDP, no payload", uh, uso(&flow_a(), &[])),
        ("IPv6", th, with(&tcp_sp, &|p| p[0] = 0x65)),
        ("IHL 4", th, with(&tcp_sp, &|p| p[0] = 0x44)),
        (
            "IHL past the length",
            th,
            with(&tcp_sp[..40], &|p| {
                p[0] = 0x4f;
                put16(p, 2, 40);
            }),
        ),
        (
            "IP length past the end",
            th,
            with(&tcp_sp, &|p| {
                let l = be16(p, 2);
                put16(p, 2, l + 1);
            }),
        ),
        (
            "IP length below header",
            th,
            with(&tcp_sp, &|p| put16(p, 2, 19)),
        ),
        ("TCP data offset 4", th, with(&tcp_sp, &|p| p[32] = 0x40)),
        ("TCP data offset 0", th, with(&tcp_sp, &|p| p[32] = 0)),
        (
            "TCP header past the end",
            th,
            with(&tcp_sp[..56], &|p| {
                put16(p, 2, 56);
                p[32] = 0xf0;
            }),
        ),
        (
            "TCP header cut short",
            th,
            with(&tcp_sp[..30], &|p| put16(p, 2, 30)),
        ),
        (
            "UDP header cut short",
            uh,
            with(&udp_sp[..25], &|p| put16(p, 2, 25)),
        ),
        ("empty", th, vec![]),
    ];
    for (name, h, p) in cases {
        assert_eq!(cut(&h, &p).result, BAD, "{name}");
    }
}

/// Every proper prefix of a valid super-packet is refused (its IP length
/// runs past it) and none panics; the whole is accepted.
#[test]
fn segment_refuses_every_prefix() {
    let mut rng = Rng::new(31);
    let mut arena = Arena::default();
    let sps = [
        (tso(&flow_a(), &rng.bytes(1500)), virtio::GSO_TCPV4),
        (uso(&flow_a(), &rng.bytes(1500)), virtio::GSO_UDP_L4),
    ];
    for (sp, gso_type) in sps {
        let h = gso_header(&sp, gso_type, 100);
        for n in 0..sp.len() {
            assert_eq!(cut_in(&h, &sp[..n], &mut arena).result, BAD, "prefix {n}");
        }
        check_cut(&sp, 100, &cut_in(&h, &sp, &mut arena));
    }
}

/// A super-packet said to lie at an offset near `usize::MAX`: the payload
/// ranges `at + off..` would overflow, so it is refused, nothing pushed.
#[test]
fn segment_refuses_an_offset_near_usize_max() {
    let sp = tso(&flow_a(), &Rng::new(33).bytes(3000));
    let h = gso_header(&sp, virtio::GSO_TCPV4, 1000);
    let mut arena = Arena::default();
    for at in [usize::MAX, usize::MAX - sp.len() + 1, usize::MAX - 60] {
        let (mut parts, mut dgrams) = (vec![], vec![]);
        let r = segment(
            &h,
            &sp,
            1,
            at,
            &prefix(),
            peer(),
            &mut arena,
            &mut parts,
            &mut dgrams,
        );
        assert_eq!(r, BAD, "at {at}");
        assert!(parts.is_empty() && dgrams.is_empty() && arena.bytes().is_empty());
    }
    // The last offset at which the payload still fits is cut as usual.
    let (mut parts, mut dgrams) = (vec![], vec![]);
    let at = usize::MAX - sp.len();
    let r = segment(
        &h,
        &sp,
        1,
        at,
        &prefix(),
        peer(),
        &mut arena,
        &mut parts,
        &mut dgrams,
    );
    assert_eq!(r, Ok(3));
    assert_eq!(
        parts.last(),
        Some(&Part::Buf(1, usize::MAX - 1000..usize::MAX))
    );
}

/// A segment said to lie at a range near `usize::MAX` (found by the
/// fuzzer: `range.start + header length` overflowed) is written as it
/// came, never joined; the segments around it still are.
#[test]
fn coalescer_writes_a_range_near_usize_max_as_it_came() {
    let mut f = flow_a();
    let pkts = f.stream(&[1000, 1000, 1000, 1000], &mut Rng::new(34));
    let mut co = Coalescer::new();
    let far = usize::MAX - 3..usize::MAX;
    co.push(&pkts[0], 0, 0..pkts[0].len());
    co.push(&pkts[1], 1, 0..pkts[1].len());
    co.push(&pkts[2], 2, far.clone());
    co.push(&pkts[3], 3, 0..pkts[3].len());
    co.close();
    let (writes, parts, _) = co.writes();
    let segments: Vec<usize> = writes.iter().map(|w| w.segments).collect();
    assert_eq!(segments, [2, 1, 1]);
    assert_eq!(parts[writes[1].parts.clone()][1], Part::Buf(2, far));
}

/// Random bytes, half of them dressed as IPv4/TCP or UDP so they get past
/// the first checks, under random virtio headers: no panic, and whatever is
/// accepted comes out as consistent packets carrying the input's payload.
#[test]
fn segment_random_input() {
    let mut rng = Rng::new(32);
    let mut arena = Arena::default();
    let types = [0, 1, 3, 4, 5, 0x81, 0x85, 0xff];
    for i in 0..6000 {
        let len = rng.below(400);
        let mut p = rng.bytes(len);
        if i % 2 == 0 && len >= 20 {
            p[0] = 0x40 | (5 + rng.below(3) as u8);
            let tl = if rng.below(2) == 0 {
                len
            } else {
                rng.below(len + 1)
            };
            put16(&mut p, 2, tl as u16);
            p[9] = [PROTO_TCP, PROTO_UDP][rng.below(2)];
            let ihl = ihl_of(&p);
            if ihl + 12 < len && rng.below(2) == 0 {
                p[ihl + 12] = ((5 + rng.below(11)) as u8) << 4;
            }
        }
        let h = virtio::Header {
            flags: rng.next() as u8,
            gso_type: types[rng.below(types.len())],
            hdr_len: rng.next() as u16,
            gso_size: [0, 1, 2, 7, 100, 1398, rng.next() as u16][rng.below(7)],
            csum_start: rng.next() as u16,
            csum_offset: rng.next() as u16,
        };
        let c = cut_in(&h, &p, &mut arena);
        if c.result.is_ok() {
            check_consistent(&p, &c);
        }
        arena.clear();
    }
}

/// Valid super-packets with a few header bytes changed at random (and
/// sometimes cut short): no panic, and whatever is accepted is consistent.
#[test]
fn segment_mutated_super_packets() {
    let mut rng = Rng::new(33);
    let mut arena = Arena::default();
    let bases = [
        (tso(&flow_a(), &rng.bytes(2000)), virtio::GSO_TCPV4),
        (uso(&flow_a(), &rng.bytes(2000)), virtio::GSO_UDP_L4),
    ];
    let mut accepted = 0;
    for i in 0..4000 {
        let (base, gso_type) = &bases[i % 2];
        let mut p = base.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(60);
            p[at] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            p.truncate(rng.below(p.len() + 1));
        }
        let mss = [1, 3, 536, 1398, 2000, 65_535][rng.below(6)];
        let c = cut_in(&gso_header(base, *gso_type, mss), &p, &mut arena);
        if c.result.is_ok() {
            accepted += 1;
            check_consistent(&p, &c);
        }
        arena.clear();
    }
    assert!(
        accepted > 100,
        "only {accepted} accepted: the test sees little"
    );
}

/// A packet longer than any IPv4 packet (a 65536-byte read, whose IP length
/// says less) must not become a segment whose 16-bit length wrapped.
#[test]
fn segment_never_wraps_lengths() {
    let mut rng = Rng::new(34);
    let mut tcp_sp = tso(&flow_a(), &rng.bytes(65_535 - 52));
    let mut udp_sp = uso(&flow_a(), &rng.bytes(65_535 - 28));
    // One byte past the IP length: a 65536-byte read. The extra byte is not
    // part of the packet and is never sent.
    tcp_sp.push(0xab);
    udp_sp.push(0xab);
    for (sp, gso_type, hl) in [
        (tcp_sp, virtio::GSO_TCPV4, 52),
        (udp_sp, virtio::GSO_UDP_L4, 28),
    ] {
        let payload = 65_535 - hl;
        // One segment of the whole 65535-byte packet: every length fits.
        for mss in [65_535, payload] {
            let c = cut(&gso_header(&sp, gso_type, mss as u16), &sp);
            assert_eq!(c.result, Ok(1), "mss {mss}");
            check_consistent(&sp, &c);
        }
        // Two segments.
        for mss in [payload - 1, 40_000] {
            let c = cut(&gso_header(&sp, gso_type, mss as u16), &sp);
            assert_eq!(c.result, Ok(2), "mss {mss}");
            check_consistent(&sp, &c);
        }
    }
}

/// NoRoom when the arena cannot hold every header, with nothing pushed and
/// nothing used (checked in `cut_in`); one byte more and it all fits; a
/// cleared arena takes what a used one refused.
#[test]
fn segment_no_room() {
    let mut rng = Rng::new(35);
    let sp = tso(&flow_a(), &rng.bytes(10_000));
    let h = gso_header(&sp, virtio::GSO_TCPV4, 1000);
    let need = 10 * (ENCAP_LEN + 52);
    for small in [0, 1, ENCAP_LEN + 52, need - 1] {
        let mut a = Arena::new(small);
        assert_eq!(
            cut_in(&h, &sp, &mut a).result,
            Err(SegmentError::NoRoom),
            "{small}"
        );
    }
    let mut a = Arena::new(need);
    check_cut(&sp, 1000, &cut_in(&h, &sp, &mut a));
    assert_eq!(a.room(), 0);
    // Full now: the next super-packet has no room until the arena is cleared.
    assert_eq!(cut_in(&h, &sp, &mut a).result, Err(SegmentError::NoRoom));
    a.clear();
    check_cut(&sp, 1000, &cut_in(&h, &sp, &mut a));
    // Part-used: room for 9 of 10 headers.
    let mut a = Arena::new(need + 100);
    a.alloc(100 + ENCAP_LEN + 52).unwrap();
    assert_eq!(cut_in(&h, &sp, &mut a).result, Err(SegmentError::NoRoom));
}

/// NoRoom means "clear and retry", so it is only given when an empty arena
/// would do; headers that no arena holds are Bad (a retry would loop).
#[test]
fn segment_more_headers_than_an_arena_holds() {
    let mut rng = Rng::new(36);
    let per = ENCAP_LEN + 52;
    let fits = ARENA_LEN / per;
    for count in [fits - 1, fits, fits + 1, 64_000] {
        let sp = tso(&flow_a(), &rng.bytes(count));
        let h = gso_header(&sp, virtio::GSO_TCPV4, 1);
        // A part-used arena: NoRoom or Bad, and NoRoom only if a fresh one works.
        let mut used = Arena::default();
        used.alloc(ARENA_LEN / 2).unwrap();
        let first = cut_in(&h, &sp, &mut used).result;
        let fresh = cut(&h, &sp);
        if count <= fits {
            assert_eq!(first, Err(SegmentError::NoRoom), "{count}");
            check_cut(&sp, 1, &fresh);
        } else {
            assert_eq!(first, BAD, "{count}");
            assert_eq!(fresh.result, BAD, "{count}");
            assert_eq!(cut_in(&h, &sp, &mut Arena::new(64)).result, BAD, "{count}");
        }
    }
}

// ---------------------------------------------------------------------------
// complete_checksum.

/// The form a NEEDS_CSUM packet arrives in: the folded pseudo-header sum in
/// the checksum field, and the virtio header that says where it is.
fn partial(p: &[u8]) -> (virtio::Header, Vec<u8>) {
    let mut q = p.to_vec();
    partial_checksum(&mut q);
    let ihl = ihl_of(p);
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        csum_start: ihl as u16,
        csum_offset: csum_offset(p[9]) as u16,
        ..Default::default()
    };
    (h, q)
}

/// Completing a partial checksum gives back the valid one, for TCP and UDP,
/// odd and even lengths, with and without IP options.
#[test]
fn complete_checksum_tcp_and_udp() {
    let mut rng = Rng::new(40);
    let opts = Tcp {
        ip_opts: vec![1, 1, 1, 0],
        ..flow_a()
    };
    for t in [flow_a(), opts] {
        for len in [0, 1, 2, 3, 1001, 1448, 65_000] {
            let payload = rng.bytes(len);
            for want in [t.packet(&payload), t.udp(&payload)] {
                let (h, mut p) = partial(&want);
                complete_checksum(&h, &mut p).unwrap();
                assert!(l4_checksum_ok(&p), "proto {} len {len}", want[9]);
                assert_same(&p, &want, "completed packet");
            }
        }
    }
}

/// Makes the L4 checksum of `p` compute to zero by choosing the payload's
/// first two bytes, and stores that zero checksum (valid for TCP).
fn force_zero_checksum(p: &mut [u8]) {
    let at = ihl_of(p) + if p[9] == PROTO_TCP { thl_of(p) } else { 8 };
    let c = ihl_of(p) + csum_offset(p[9]);
    put16(p, at, 0);
    put16(p, c, 0);
    let w = 0xffff - ref_fold(l4_sum(p));
    put16(p, at, w);
    assert_eq!(!ref_fold(l4_sum(p)), 0);
}

/// A checksum that computes to zero stays zero for TCP but is sent as 0xffff
/// for UDP (RFC 768), with and without IP options.
#[test]
fn complete_checksum_zero_result() {
    let mut rng = Rng::new(41);
    let opts = Tcp {
        ip_opts: vec![1, 1, 1, 0],
        ..flow_a()
    };
    for t in [flow_a(), opts] {
        let payload = rng.bytes(101);
        let mut tcp_pkt = t.packet(&payload);
        force_zero_checksum(&mut tcp_pkt);
        let (h, mut p) = partial(&tcp_pkt);
        complete_checksum(&h, &mut p).unwrap();
        assert_eq!(be16(&p, ihl_of(&p) + 16), 0, "TCP");
        let mut udp_pkt = t.udp(&payload);
        force_zero_checksum(&mut udp_pkt);
        let (h, mut p) = partial(&udp_pkt);
        complete_checksum(&h, &mut p).unwrap();
        assert_eq!(be16(&p, ihl_of(&p) + 6), 0xffff, "UDP");
        assert!(l4_checksum_ok(&p));
    }
}

/// For any start after the IP header and even offset inside a packet, the
/// completed field makes the sum over `[start..]` plus the value the field
/// held all ones: the operation virtio defines, independent of what the
/// bytes are.
#[test]
fn complete_checksum_any_offsets() {
    let mut rng = Rng::new(42);
    for _ in 0..3000 {
        let len = 22 + rng.below(200);
        let mut p = rng.bytes(len);
        p[0] = 0x45;
        p[9] = PROTO_TCP;
        // Anywhere after the IP header (inside it is refused: below).
        let start = 20 + rng.below(len - 21);
        let offset = 2 * rng.below((len - start) / 2);
        let at = start + offset;
        let held = be16(&p, at);
        let h = virtio::Header {
            flags: virtio::FLAG_NEEDS_CSUM,
            csum_start: start as u16,
            csum_offset: offset as u16,
            ..Default::default()
        };
        let before = p.clone();
        complete_checksum(&h, &mut p).unwrap();
        assert_eq!(p[..at], before[..at]);
        assert_eq!(p[at + 2..], before[at + 2..]);
        assert_eq!(ref_fold(ref_sum(&p[start..]) + u64::from(held)), 0xffff);
    }
}

/// Offsets that put the field (or the start) outside the packet, or the
/// start inside its IP header, are refused and leave it untouched; the last
/// possible position is accepted.
#[test]
fn complete_checksum_offsets_outside() {
    let want = flow_a().packet(&[1, 2, 3, 4, 5, 6, 7]);
    let (h, p) = partial(&want);
    let len = p.len();
    let at = |start: usize, offset: usize| virtio::Header {
        csum_start: start as u16,
        csum_offset: offset as u16,
        ..h
    };
    let outside = [
        at(len + 1, 0),
        at(len, 0),
        at(len - 1, 0),
        at(20, len - 21),
        at(20, len),
        at(0, len - 1),
        at(65_535, 65_535),
        at(0, 65_535),
        // Inside the IP header: the sum would rewrite it (its version, so
        // its family, after the packet was routed by it).
        at(0, 0),
        at(0, 20),
        at(19, 2),
    ];
    for h in outside {
        let mut q = p.clone();
        assert_eq!(
            complete_checksum(&h, &mut q),
            Err(DropReason::TunBadOffload),
            "{h:?}"
        );
        assert_eq!(q, p);
    }
    for h in [at(20, len - 22), at(len - 2, 0), at(20, 0)] {
        let mut q = p.clone();
        assert_eq!(complete_checksum(&h, &mut q), Ok(()), "{h:?}");
    }
    let mut e: [u8; 0] = [];
    assert!(complete_checksum(&virtio::Header::default(), &mut e).is_err());
}

// ---------------------------------------------------------------------------
// Round trip: segmentation, VXLAN, coalescing.

/// The inner packets of a cut, as the receiving side decapsulates them.
fn decap(c: &Cut) -> Vec<Vec<u8>> {
    c.dgrams
        .iter()
        .map(|d| {
            assert_eq!(d[..ENCAP_LEN], prefix());
            d[ENCAP_LEN..].to_vec()
        })
        .collect()
}

/// A 64000-byte super-packet cut into 46 segments and coalesced on the far
/// side comes back as ONE write that is the super-packet itself, byte for
/// byte (its TCP checksum field the partial sum), and that the kernel
/// completes into a valid checksum.
#[test]
fn round_trip_is_one_write_equal_to_the_super_packet() {
    let mut rng = Rng::new(50);
    let t = Tcp {
        flags: ACK | PSH,
        ..flow_a()
    };
    let sp = tso(&t, &rng.bytes(64_000));
    let c = cut(&gso_header(&sp, virtio::GSO_TCPV4, 1398), &sp);
    check_cut(&sp, 1398, &c);
    let ws = deliver(&decap(&c));
    assert_eq!(kinds(&ws), [Merged(46)]);
    let w = &ws[0];
    assert_eq!(
        w.vh,
        virtio::Header {
            flags: virtio::FLAG_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        }
    );
    assert_eq!(be16(&w.pkt, 2), 64_052);
    assert_same(&w.pkt[52..], &sp[52..], "payload");
    assert_same(&w.pkt, &sp, "coalesced write");
    let mut done = w.pkt.clone();
    complete_checksum(&w.vh, &mut done).unwrap();
    assert!(l4_checksum_ok(&done));
    assert_same(&done, &t.packet(&sp[52..]), "completed");
}

/// Round trips of other shapes: CWR keeps the first segment out, FIN the
/// last; runs split at MAX_COALESCE and at 65535 bytes; odd mss with DF
/// clear; a single segment. What is delivered is always what was sent.
#[test]
fn round_trip_variants() {
    let mut rng = Rng::new(51);
    let cases: Vec<(Tcp, usize, u16, Vec<Kind>)> = vec![
        (
            Tcp {
                flags: ACK | PSH | CWR,
                ..flow_a()
            },
            64_000,
            1398,
            vec![Plain, Merged(45)],
        ),
        (
            Tcp {
                flags: ACK | PSH | FIN,
                ..flow_a()
            },
            64_000,
            1398,
            vec![Merged(45), Plain],
        ),
        (
            flow_a(),
            64_000,
            500,
            vec![Merged(62), Merged(62), Merged(4)],
        ),
        (
            Tcp {
                df: false,
                id: 0xffe0,
                seq: 0xffff_ff00,
                ..flow_a()
            },
            64_000,
            1397,
            vec![Merged(46)],
        ),
        (flow_a(), 65_483, 1448, vec![Merged(45), Valid]),
        (flow_a(), 1000, 1398, vec![Valid]),
        (
            Tcp {
                flags: ACK | PSH | FIN,
                ..flow_a()
            },
            1000,
            1398,
            vec![Plain],
        ),
    ];
    for (t, len, mss, want) in cases {
        let sp = tso(&t, &rng.bytes(len));
        let c = cut(&gso_header(&sp, virtio::GSO_TCPV4, mss), &sp);
        check_cut(&sp, usize::from(mss), &c);
        let ws = deliver(&decap(&c));
        assert_eq!(kinds(&ws), want, "{len}/{mss} {t:?}");
    }
}

/// A USO super-packet's datagrams are all delivered singly, unchanged.
#[test]
fn round_trip_udp_is_never_merged() {
    let mut rng = Rng::new(52);
    let sp = uso(&flow_a(), &rng.bytes(10_000));
    let c = cut(&gso_header(&sp, virtio::GSO_UDP_L4, 1400), &sp);
    let ws = deliver(&decap(&c));
    assert_eq!(kinds(&ws), [Plain; 8]);
}

// ---------------------------------------------------------------------------
// Coalescing rules.

/// A lone eligible segment goes out unchanged, marked checksum-verified.
#[test]
fn lone_segment_is_marked_valid() {
    let mut rng = Rng::new(60);
    let pkts = flow_a().stream(&[1000], &mut rng);
    let ws = deliver(&pkts);
    assert_eq!(kinds(&ws), [Valid]);
    assert_eq!(ws[0].pkt, pkts[0]);
    let psh = Tcp {
        flags: ACK | PSH,
        ..flow_a()
    }
    .stream(&[10], &mut rng);
    assert_eq!(kinds(&deliver(&psh)), [Valid]);
}

/// Consecutive full segments of one flow become one write.
#[test]
fn consecutive_segments_merge() {
    let mut rng = Rng::new(61);
    let pkts = flow_a().stream(&[1000; 5], &mut rng);
    let ws = deliver(&pkts);
    assert_eq!(kinds(&ws), [Merged(5)]);
    assert_eq!(ws[0].vh.gso_size, 1000);
    assert_eq!(ws[0].pkt.len(), 52 + 5000);
    assert_eq!(ws[0].pkt[33], ACK, "no PSH was pushed");
}

/// Two flows interleaved A1 B1 A2 B2 never merge across flows and keep
/// their order; A1 A2 B1 B2 A3 A4 merge per flow, in order.
#[test]
fn interleaved_flows() {
    let mut rng = Rng::new(62);
    let (mut a, mut b) = (flow_a(), flow_b());
    let sa = a.stream(&[1000; 4], &mut rng);
    let sb = b.stream(&[1000; 2], &mut rng);
    let mixed = vec![sa[0].clone(), sb[0].clone(), sa[1].clone(), sb[1].clone()];
    assert_eq!(kinds(&deliver(&mixed)), [Valid; 4]);
    let runs = vec![
        sa[0].clone(),
        sa[1].clone(),
        sb[0].clone(),
        sb[1].clone(),
        sa[2].clone(),
        sa[3].clone(),
    ];
    let ws = deliver(&runs);
    assert_eq!(kinds(&ws), [Merged(2); 3]);
    assert_eq!(be16(&ws[1].pkt, 20), 40001);
}

/// A second segment that continues the first exactly merges; changed in any
/// one header field that must match, it does not (and both go out unchanged,
/// marked verified).
#[test]
fn one_differing_field_prevents_merge() {
    let mut rng = Rng::new(63);
    let a = flow_a();
    let p1 = rng.bytes(1000);
    let p2 = rng.bytes(1000);
    let first = a.packet(&p1);
    let next = Tcp {
        seq: a.seq + 1000,
        id: a.id + 1,
        ..a.clone()
    };
    assert_eq!(
        kinds(&deliver(&[first.clone(), next.packet(&p2)])),
        [Merged(2)]
    );
    let variants: Vec<(&str, Tcp)> = vec![
        (
            "src",
            Tcp {
                src: Ipv4Addr::new(10, 244, 1, 9),
                ..next.clone()
            },
        ),
        (
            "dst",
            Tcp {
                dst: Ipv4Addr::new(10, 244, 3, 3),
                ..next.clone()
            },
        ),
        (
            "sport",
            Tcp {
                sport: 40002,
                ..next.clone()
            },
        ),
        (
            "dport",
            Tcp {
                dport: 5202,
                ..next.clone()
            },
        ),
        (
            "ack",
            Tcp {
                ack: a.ack + 1,
                ..next.clone()
            },
        ),
        (
            "window",
            Tcp {
                window: 503,
                ..next.clone()
            },
        ),
        (
            "urgent pointer",
            Tcp {
                urgent: 1,
                ..next.clone()
            },
        ),
        (
            "timestamp value",
            Tcp {
                opts: timestamps(1001, 2000),
                ..next.clone()
            },
        ),
        (
            "timestamp echo",
            Tcp {
                opts: timestamps(1000, 2001),
                ..next.clone()
            },
        ),
        (
            "option length",
            Tcp {
                opts: [timestamps(1000, 2000), vec![1; 4]].concat(),
                ..next.clone()
            },
        ),
        (
            "no options",
            Tcp {
                opts: vec![],
                ..next.clone()
            },
        ),
        (
            "TOS",
            Tcp {
                tos: 0x02,
                ..next.clone()
            },
        ),
        (
            "TTL",
            Tcp {
                ttl: 63,
                ..next.clone()
            },
        ),
        (
            "DF",
            Tcp {
                df: false,
                ..next.clone()
            },
        ),
        (
            "seq + 1",
            Tcp {
                seq: next.seq + 1,
                ..next.clone()
            },
        ),
        (
            "seq - 1",
            Tcp {
                seq: next.seq - 1,
                ..next.clone()
            },
        ),
        (
            "retransmission",
            Tcp {
                seq: a.seq,
                ..next.clone()
            },
        ),
    ];
    for (name, v) in variants {
        let pkts = [first.clone(), v.packet(&p2)];
        assert_eq!(kinds(&deliver(&pkts)), [Valid, Valid], "{name}");
    }
    // A longer second segment does not join the first.
    assert_eq!(
        kinds(&deliver(&[first, next.packet(&rng.bytes(1001))])),
        [Valid, Valid]
    );
}

/// Without DF the IP IDs must count up (wrapping) to merge; with DF they
/// may be anything.
#[test]
fn ip_id_rules() {
    let mut rng = Rng::new(64);
    let mut no_df = Tcp {
        df: false,
        id: 0xfffe,
        ..flow_a()
    };
    let pkts = no_df.stream(&[1000; 4], &mut rng);
    assert_eq!(kinds(&deliver(&pkts)), [Merged(4)], "IDs wrap 0xffff -> 0");
    let mut skip = pkts.clone();
    put16(&mut skip[2], 4, 0x4444);
    fill_ip_checksum(&mut skip[2]);
    // 2 breaks the count, and 3 does not follow 2's ID either.
    assert_eq!(kinds(&deliver(&skip)), [Merged(2), Valid, Valid]);
    // DF set, IDs all over the place: merged anyway, streams intact.
    let mut df = flow_a().stream(&[1000; 4], &mut rng);
    for (i, p) in df.iter_mut().enumerate() {
        put16(p, 4, (i as u16).wrapping_mul(0x9e37));
        fill_ip_checksum(p);
    }
    let ws = coalesce(&df);
    assert_eq!(kinds(&ws), [Merged(4)]);
    for w in &ws {
        check_write(w);
    }
    assert_eq!(
        streams(ws.iter().map(|w| &w.pkt[..])),
        streams(df.iter().map(|p| &p[..]))
    );
}

/// Out of order (1, 3, 2): nothing merges across the gap, order is kept as
/// pushed. A lost segment (1, 2, 4, 5) splits the run in two.
#[test]
fn sequence_gaps() {
    let mut rng = Rng::new(65);
    let s = flow_a().stream(&[1000; 5], &mut rng);
    let reordered = [s[0].clone(), s[2].clone(), s[1].clone()];
    assert_eq!(kinds(&deliver(&reordered)), [Valid; 3]);
    let lost = [s[0].clone(), s[1].clone(), s[3].clone(), s[4].clone()];
    assert_eq!(kinds(&deliver(&lost)), [Merged(2), Merged(2)]);
    let dup = [s[0].clone(), s[1].clone(), s[1].clone(), s[2].clone()];
    assert_eq!(kinds(&deliver(&dup)), [Merged(2), Merged(2)]);
}

/// Sequence numbers merge across the 2^32 wrap.
#[test]
fn sequence_wraps() {
    let mut rng = Rng::new(66);
    let mut t = Tcp {
        seq: 0xffff_f800,
        ..flow_a()
    };
    assert_eq!(
        kinds(&deliver(&t.stream(&[1024; 4], &mut rng))),
        [Merged(4)]
    );
}

/// A segment that fails its checksum (payload byte, TCP checksum field, IP
/// header) goes out alone and unmarked, for the kernel to drop; nothing
/// merges across it.
#[test]
fn bad_checksum_goes_alone_unmarked() {
    let mut rng = Rng::new(67);
    let s = flow_a().stream(&[1000; 5], &mut rng);
    type Spoil = fn(&mut Vec<u8>);
    let spoil: [(&str, Spoil); 4] = [
        ("payload byte", |p| p[500] ^= 0x01),
        ("last payload byte", |p| *p.last_mut().unwrap() ^= 0x80),
        ("TCP checksum", |p| p[36] ^= 0x10),
        ("IP header", |p| p[8] -= 1),
    ];
    for (name, f) in spoil {
        let mut pkts = s.clone();
        f(&mut pkts[2]);
        let ws = deliver(&pkts);
        assert_eq!(kinds(&ws), [Merged(2), Plain, Merged(2)], "{name}");
        assert_eq!(ws[1].pkt, pkts[2], "{name}: sent as it came");
    }
}

/// PSH ends a run (carried into the merged header); the next segment starts
/// a new write. PSH on the first segment makes it a single.
#[test]
fn psh_ends_a_run() {
    let mut rng = Rng::new(68);
    let mut a = flow_a();
    let mut pkts = a.stream(&[1000; 2], &mut rng);
    a.flags = ACK | PSH;
    pkts.extend(a.stream(&[1000], &mut rng));
    a.flags = ACK;
    pkts.extend(a.stream(&[1000; 2], &mut rng));
    let ws = deliver(&pkts);
    assert_eq!(kinds(&ws), [Merged(3), Merged(2)]);
    assert_eq!(ws[0].pkt[33], ACK | PSH);
    assert_eq!(ws[1].pkt[33], ACK);
    let mut b = Tcp {
        flags: ACK | PSH,
        ..flow_b()
    };
    let mut pkts = b.stream(&[1000], &mut rng);
    b.flags = ACK;
    pkts.extend(b.stream(&[1000; 2], &mut rng));
    assert_eq!(kinds(&deliver(&pkts)), [Valid, Merged(2)]);
}

/// A shorter segment ends a run (it joins as the last); a first segment
/// shorter than the next does not merge with it.
#[test]
fn short_segment_ends_a_run() {
    let mut rng = Rng::new(69);
    let cases: [(&[usize], &[Kind]); 5] = [
        (&[1000, 1000, 500, 1000, 1000], &[Merged(3), Merged(2)]),
        (&[500, 1000], &[Valid, Valid]),
        (&[1000, 999, 1000], &[Merged(2), Valid]),
        (&[1000, 1], &[Merged(2)]),
        (&[1, 1, 1], &[Merged(3)]),
    ];
    for (sizes, want) in cases {
        let pkts = flow_a().stream(sizes, &mut rng);
        assert_eq!(kinds(&deliver(&pkts)), want, "{sizes:?}");
    }
}

/// SYN, FIN, RST, URG, ECE, CWR or a missing ACK, with payload, and pure
/// ACKs without: written as they came, unmarked, splitting runs.
#[test]
fn control_segments_are_plain_singles() {
    let mut rng = Rng::new(70);
    let s = flow_a().stream(&[1000; 5], &mut rng);
    let third = Tcp {
        seq: flow_a().seq + 2000,
        id: flow_a().id + 2,
        ..flow_a()
    };
    let flags = [
        SYN,
        SYN | ACK,
        FIN | ACK,
        FIN | PSH | ACK,
        RST,
        RST | ACK,
        URG | ACK,
        ECE | ACK,
        CWR | ACK,
        PSH,
        0,
    ];
    for f in flags {
        let mut pkts = s.clone();
        pkts[2] = Tcp {
            flags: f,
            ..third.clone()
        }
        .packet(&rng.bytes(1000));
        assert_eq!(
            kinds(&deliver(&pkts)),
            [Merged(2), Plain, Merged(2)],
            "flags {f:#04x}"
        );
    }
    let mut pkts = s.clone();
    pkts[2] = third.packet(&[]);
    assert_eq!(
        kinds(&deliver(&pkts)),
        [Merged(2), Plain, Merged(2)],
        "pure ACK"
    );
    assert_eq!(kinds(&deliver(&[third.packet(&[])])), [Plain]);
}

/// UDP, ICMP, IP options, fragments, Ethernet padding past the IP length,
/// non-IPv4 and runts: written as they came, unmarked, splitting runs.
#[test]
fn other_packets_are_plain_singles() {
    let mut rng = Rng::new(71);
    let s = flow_a().stream(&[1000; 4], &mut rng);
    let opts = Tcp {
        ip_opts: vec![1, 1, 1, 0],
        ..flow_a()
    };
    let mut mf = s[1].clone();
    mf[6] |= 0x20;
    fill_ip_checksum(&mut mf);
    let mut offset = s[1].clone();
    put16(&mut offset, 6, 0x4001);
    fill_ip_checksum(&mut offset);
    let mut padded = s[1].clone();
    padded.extend_from_slice(&[0; 6]);
    let mut v6 = s[1].clone();
    v6[0] = 0x60;
    let others: Vec<(&str, Vec<u8>)> = vec![
        ("UDP", flow_a().udp(&rng.bytes(1000))),
        ("ICMP", flow_a().icmp(&rng.bytes(56))),
        ("IP options", opts.packet(&rng.bytes(1000))),
        ("more fragments", mf),
        ("fragment offset", offset),
        ("padded", padded),
        ("IPv6", v6),
        ("runt", s[1][..30].to_vec()),
        ("empty", vec![]),
    ];
    for (name, o) in others {
        let pkts = [s[0].clone(), s[1].clone(), o, s[2].clone(), s[3].clone()];
        assert_eq!(
            kinds(&deliver(&pkts)),
            [Merged(2), Plain, Merged(2)],
            "{name}"
        );
    }
}

/// A segment whose IP length stops short of the bytes read (its TCP checksum
/// valid over all of them) is not coalesced: the bytes past the IP length
/// are not its payload and must not join the stream.
#[test]
fn ip_length_short_of_the_read_is_plain() {
    let mut rng = Rng::new(77);
    let mut s = flow_a().stream(&[1000; 4], &mut rng);
    put16(&mut s[1], 2, 1046);
    fill_ip_checksum(&mut s[1]);
    assert!(l4_checksum_ok(&s[1]), "test setup");
    assert_eq!(kinds(&deliver(&s)), [Valid, Plain, Merged(2)]);
}

/// A run stops at MAX_COALESCE segments; the next starts a new write.
#[test]
fn max_coalesce_splits_runs() {
    let mut rng = Rng::new(72);
    let pkts = flow_a().stream(&[100; 130], &mut rng);
    assert_eq!(MAX_COALESCE, 62);
    assert_eq!(kinds(&deliver(&pkts)), [Merged(62), Merged(62), Merged(6)]);
    let pkts = flow_a().stream(&[100; 63], &mut rng);
    assert_eq!(kinds(&deliver(&pkts)), [Merged(62), Valid]);
}

/// A run stops before a write would pass 65535 bytes, and not earlier: with
/// 52 header bytes, 11 x 5953 fills exactly 65535; 11 x 5954 would not fit
/// (10 do). Segments too big to pair go singly.
#[test]
fn ip_limit_splits_runs() {
    let mut rng = Rng::new(73);
    let ws = deliver(&flow_a().stream(&[5953; 12], &mut rng));
    assert_eq!(kinds(&ws), [Merged(11), Valid]);
    assert_eq!(ws[0].pkt.len(), 65_535);
    let ws = deliver(&flow_a().stream(&[5954; 12], &mut rng));
    assert_eq!(kinds(&ws), [Merged(10), Merged(2)]);
    let ws = deliver(&flow_a().stream(&[1448; 100], &mut rng));
    assert_eq!(kinds(&ws), [Merged(45), Merged(45), Merged(10)]);
    let ws = deliver(&flow_a().stream(&[40_000; 2], &mut rng));
    assert_eq!(kinds(&ws), [Valid, Valid]);
}

/// The open write is not among `writes()` until `close`; closing twice adds
/// nothing.
#[test]
fn close_finishes_the_open_write() {
    let mut rng = Rng::new(74);
    let pkts = flow_a().stream(&[1000; 3], &mut rng);
    let (bufs, ranges) = place(&pkts);
    let mut co = Coalescer::new();
    for (i, r) in ranges.iter().enumerate() {
        co.push(&bufs[i][r.clone()], i, r.clone());
    }
    assert!(co.writes().0.is_empty());
    co.close();
    co.close();
    let ws = collect(&co, &bufs);
    assert_eq!(kinds(&ws), [Merged(3)]);
    assert_delivered(&ws, &pkts);
}

/// Batch after batch: pushing while `has_room`, then writing and clearing,
/// every batch is well-formed and together they deliver every packet, in
/// order; `clear` restores the fixed headers.
#[test]
fn batches_until_full() {
    let mut rng = Rng::new(75);
    let (mut a, mut b) = (flow_a(), flow_b());
    let mut pkts = vec![];
    for _ in 0..12_000 {
        let f = if rng.below(3) == 0 { &mut b } else { &mut a };
        pkts.extend(f.stream(&[1 + rng.below(3) * 50], &mut rng));
        if rng.below(50) == 0 {
            pkts.push(flow_a().udp(&[7; 9]));
        }
    }
    let (bufs, ranges) = place(&pkts);
    let mut co = Coalescer::new();
    let (mut ws, mut batches) = (vec![], 0);
    for (i, r) in ranges.iter().enumerate() {
        if !co.has_room() {
            co.close();
            ws.extend(collect(&co, &bufs));
            co.clear();
            batches += 1;
            assert!(co.has_room());
        }
        co.push(&bufs[i][r.clone()], i, r.clone());
    }
    co.close();
    ws.extend(collect(&co, &bufs));
    assert!(batches >= 2, "{batches} batches: never ran out of room");
    assert_delivered(&ws, &pkts);
}

/// Random streams of two flows with random damage (header or payload bytes
/// changed, with or without fixing the checksums; packets cut short and
/// fixed up): whatever merges or not, what is delivered is exactly what was
/// pushed, in order.
#[test]
fn coalesce_random_streams() {
    let mut rng = Rng::new(76);
    let mut merged = 0;
    for _ in 0..300 {
        let mut flows = [
            Tcp {
                df: false,
                ..flow_a()
            },
            Tcp {
                df: false,
                ..flow_b()
            },
        ];
        let mut pkts = vec![];
        for _ in 0..1 + rng.below(40) {
            let f = &mut flows[usize::from(rng.below(4) == 0)];
            let len = if rng.below(4) == 0 {
                1 + rng.below(1400)
            } else {
                1000
            };
            let mut p = f.stream(&[len], &mut rng).remove(0);
            let fix = rng.below(2) == 0;
            match rng.below(12) {
                0 => {
                    let at = rng.below(52);
                    p[at] = rng.next() as u8;
                }
                1 => {
                    let at = 52 + rng.below(len);
                    p[at] = rng.next() as u8;
                }
                2 => {
                    let n = 52 + rng.below(len);
                    p.truncate(n);
                    put16(&mut p, 2, n as u16);
                }
                _ => {}
            }
            if fix && ihl_of(&p) >= 20 && ihl_of(&p) + 20 <= p.len() {
                fill_ip_checksum(&mut p);
                if p[9] == PROTO_TCP {
                    fill_l4_checksum(&mut p);
                }
            }
            pkts.push(p);
        }
        let ws = coalesce(&pkts);
        merged += kinds(&ws).iter().filter(|k| matches!(k, Merged(_))).count();
        for w in &ws {
            check_write(w);
        }
        // A mutation may set DF, under which IDs need not count up: compare
        // such packets without their IDs.
        let mask = |p: &[u8]| {
            let mut p = p.to_vec();
            if p.len() >= 20 && p[6] & 0x40 != 0 {
                p[4..6].fill(0);
                p[10..12].fill(0);
            }
            p
        };
        let got: Vec<Vec<u8>> = uncoalesce(&ws).iter().map(|p| mask(p)).collect();
        let want: Vec<Vec<u8>> = pkts.iter().map(|p| mask(p)).collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_same(g, w, &format!("packet {i}"));
        }
        assert_eq!(
            streams(ws.iter().map(|w| &w.pkt[..])),
            streams(pkts.iter().map(|p| &p[..]))
        );
    }
    assert!(
        merged > 300,
        "only {merged} merged writes: the test sees little"
    );
}

// ---------------------------------------------------------------------------
// IPv6: the same contracts, checked against the same reference arithmetic
// with the IPv6 pseudo-header (RFC 8200 §8.1).

const SRC6: [u8; 16] = [0xfc, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5];
const DST6: [u8; 16] = [0xfc, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];

/// The IPv6 pseudo-header sum for `len` bytes of next header `proto`.
fn ref_pseudo6(p: &[u8], proto: u8, len: usize) -> u64 {
    ref_sum(&p[8..24]) + ref_sum(&p[24..40]) + len as u64 + u64::from(proto)
}

fn l4_checksum6_ok(p: &[u8]) -> bool {
    ref_fold(ref_pseudo6(p, p[6], p.len() - 40) + ref_sum(&p[40..])) == 0xffff
}

fn fill_l4_checksum6(p: &mut [u8]) {
    let at = 40 + csum_offset(p[6]);
    put16(p, at, 0);
    let mut c = !ref_fold(ref_pseudo6(p, p[6], p.len() - 40) + ref_sum(&p[40..]));
    if p[6] == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(p, at, c);
}

/// A TCP/IPv6 packet of `payload` (flow label 0x12345, hop limit 64) with
/// flags `flags` at sequence `seq`, its checksum filled in.
fn tcp6(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 20];
    p[..4].copy_from_slice(&[0x60, 0x01, 0x23, 0x45]);
    put16(&mut p, 4, (20 + payload.len()) as u16);
    p[6] = PROTO_TCP;
    p[7] = 64;
    p[8..24].copy_from_slice(&SRC6);
    p[24..40].copy_from_slice(&DST6);
    put16(&mut p, 40, 40000);
    put16(&mut p, 42, 5201);
    put32(&mut p, 44, seq);
    put32(&mut p, 48, 0x0102_0304);
    p[52] = 5 << 4;
    p[53] = flags;
    put16(&mut p, 54, 512);
    p.extend_from_slice(payload);
    fill_l4_checksum6(&mut p);
    p
}

fn udp6(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    put16(&mut p, 4, (8 + payload.len()) as u16);
    p[6] = PROTO_UDP;
    p[7] = 64;
    p[8..24].copy_from_slice(&SRC6);
    p[24..40].copy_from_slice(&DST6);
    put16(&mut p, 40, 40000);
    put16(&mut p, 42, 6000);
    put16(&mut p, 44, (8 + payload.len()) as u16);
    p.extend_from_slice(payload);
    p
}

/// A super-packet as the kernel hands it over with CHECKSUM_PARTIAL: the
/// folded pseudo-header sum in the L4 checksum field, and its virtio header.
fn super6(mut p: Vec<u8>, gso_type: u8, mss: u16) -> (virtio::Header, Vec<u8>) {
    let proto = p[6];
    let at = 40 + csum_offset(proto);
    let partial = ref_fold(ref_pseudo6(&p, proto, p.len() - 40));
    put16(&mut p, at, partial);
    let l4hl = if proto == PROTO_TCP { 20 } else { 8 };
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type,
        hdr_len: (40 + l4hl) as u16,
        gso_size: mss,
        csum_start: 40,
        csum_offset: csum_offset(proto) as u16,
    };
    (h, p)
}

/// What the kernel's TSO6/USO6 makes of `sp` at `mss`, rebuilt from scratch.
fn expected_segments6(sp: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let is_tcp = sp[6] == PROTO_TCP;
    let hl = 40 + if is_tcp { 20 } else { 8 };
    let n = (sp.len() - hl).div_ceil(mss);
    sp[hl..]
        .chunks(mss)
        .enumerate()
        .map(|(k, chunk)| {
            let mut s = sp[..hl].to_vec();
            s.extend_from_slice(chunk);
            let plen = (s.len() - 40) as u16;
            put16(&mut s, 4, plen);
            if is_tcp {
                put32(&mut s, 44, be32(sp, 44).wrapping_add((k * mss) as u32));
                let mut f = sp[53];
                if k > 0 {
                    f &= !CWR;
                }
                if k + 1 < n {
                    f &= !(FIN | PSH);
                }
                s[53] = f;
            } else {
                put16(&mut s, 44, plen);
            }
            fill_l4_checksum6(&mut s);
            s
        })
        .collect()
}

#[test]
fn tso6_segments_match_the_reference() {
    let mut rng = Rng::new(0x7e57_0006);
    for (len, mss, flags) in [
        (64_000usize, 1370u16, ACK | PSH),
        (1370, 1370, ACK),
        (1371, 1370, ACK | FIN | PSH | CWR),
        (9000, 1000, ACK | CWR),
        (1, 1370, ACK | PSH),
    ] {
        let payload = rng.bytes(len);
        let (h, sp) = super6(tcp6(0xffff_f000, flags, &payload), virtio::GSO_TCPV6, mss);
        let c = cut(&h, &sp);
        let want = expected_segments6(&sp, usize::from(mss));
        assert_eq!(c.result, Ok(want.len()), "{len} at {mss}");
        assert_eq!(c.dgrams.len(), want.len());
        for (k, (d, w)) in c.dgrams.iter().zip(&want).enumerate() {
            assert_eq!(&d[..ENCAP_LEN], &prefix()[..], "segment {k}: VXLAN prefix");
            assert_same(&d[ENCAP_LEN..], w, &format!("TSO6 {len}@{mss} segment {k}"));
            assert!(l4_checksum6_ok(&d[ENCAP_LEN..]), "segment {k} checksum");
            assert_eq!(
                &d[ENCAP_LEN..ENCAP_LEN + 4],
                &[0x60, 0x01, 0x23, 0x45],
                "flow label kept"
            );
        }
    }
}

#[test]
fn uso6_segments_match_the_reference() {
    let mut rng = Rng::new(0x7e57_0016);
    for (len, mss) in [(8000usize, 1382u16), (1382, 1382), (1383, 1382), (3, 1382)] {
        let payload = rng.bytes(len);
        let (h, sp) = super6(udp6(&payload), virtio::GSO_UDP_L4, mss);
        let c = cut(&h, &sp);
        let want = expected_segments6(&sp, usize::from(mss));
        assert_eq!(c.result, Ok(want.len()));
        for (k, (d, w)) in c.dgrams.iter().zip(&want).enumerate() {
            assert_same(&d[ENCAP_LEN..], w, &format!("USO6 {len}@{mss} segment {k}"));
        }
    }
}

/// The family must match the segmentation type, and an IPv6 super-packet
/// with an extension header (not TCP or UDP right after the header) or a
/// payload length past the buffer is refused, never cut wrong.
#[test]
fn segment6_refuses_what_it_cannot_honour() {
    let (h, sp) = super6(tcp6(1, ACK, &[7; 3000]), virtio::GSO_TCPV6, 1370);
    let v4 = virtio::Header {
        gso_type: virtio::GSO_TCPV4,
        ..h
    };
    assert_eq!(cut(&v4, &sp).result, BAD, "TCPV4 type on an IPv6 packet");
    let mut ext = sp.clone();
    ext[6] = 0; // hop-by-hop options
    assert_eq!(cut(&h, &ext).result, BAD);
    let mut long = sp.clone();
    put16(&mut long, 4, 4000);
    assert_eq!(cut(&h, &long).result, BAD);
    for n in 0..sp.len().min(200) {
        let _ = cut(&h, &sp[..n]);
    }
    // An IPv6 payload of 65 535 bytes with a gso_size past it would make one
    // segment longer than any IP packet: refused (found by the fuzzer).
    let (h, big) = super6(
        tcp6(1, ACK, &vec![7; 65_535 - 20]),
        virtio::GSO_TCPV6,
        65_535,
    );
    assert_eq!(cut(&h, &big).result, BAD);
    let h = virtio::Header {
        gso_size: 1370,
        ..h
    };
    assert_eq!(cut(&h, &big).result, Ok((65_535usize - 20).div_ceil(1370)));
    // A v4 super-packet declared TCPV6 is refused too.
    let t = flow_a();
    let v4sp = tso(&t, &[1; 3000]);
    let h4 = gso_header(&v4sp, virtio::GSO_TCPV6, 1000);
    assert_eq!(cut(&h4, &v4sp).result, BAD);
}

/// Consecutive TCP/IPv6 segments of one flow become one GSO_TCPV6 write:
/// payload length of the whole, the folded IPv6 pseudo-header sum in the
/// checksum field (which completed over the write verifies), and the
/// payloads in order; a segment with a bad checksum, or of another flow
/// label, is written on its own.
#[test]
fn tcp6_segments_coalesce_into_one_gso_write() {
    let mut rng = Rng::new(0x7e57_0026);
    let mss = 1370;
    let mut seq = 1000u32;
    let mut pkts = vec![];
    for _ in 0..10 {
        let payload = rng.bytes(mss);
        pkts.push(tcp6(seq, ACK, &payload));
        seq = seq.wrapping_add(mss as u32);
    }
    let ws = coalesce(&pkts);
    assert_eq!(
        ws.len(),
        1,
        "{:?}",
        ws.iter().map(|w| w.vh).collect::<Vec<_>>()
    );
    let w = &ws[0];
    assert_eq!(w.segments, 10);
    assert_eq!(
        w.vh,
        virtio::Header {
            flags: virtio::FLAG_NEEDS_CSUM,
            gso_type: virtio::GSO_TCPV6,
            hdr_len: 60,
            gso_size: mss as u16,
            csum_start: 40,
            csum_offset: 16,
        }
    );
    let p = &w.pkt;
    assert_eq!(usize::from(be16(p, 4)), p.len() - 40);
    assert_eq!(
        be16(p, 56),
        ref_fold(ref_pseudo6(p, PROTO_TCP, p.len() - 40))
    );
    let mut done = p.clone();
    fill_l4_checksum6(&mut done);
    assert!(l4_checksum6_ok(&done));
    let joined: Vec<u8> = pkts.iter().flat_map(|s| s[60..].to_vec()).collect();
    assert_same(&p[60..], &joined, "coalesced payload");
    assert_eq!(&p[..4], &pkts[0][..4]);

    // A corrupted checksum ends the run and goes alone, unmarked; another
    // flow label does not join either.
    let mut bad = pkts.clone();
    bad[3][70] ^= 1;
    bad[6][3] ^= 1;
    fill_l4_checksum6(&mut bad[6]);
    let ws = coalesce(&bad);
    let kinds: Vec<(u8, u8, usize)> = ws
        .iter()
        .map(|w| (w.vh.gso_type, w.vh.flags, w.segments))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (virtio::GSO_TCPV6, virtio::FLAG_NEEDS_CSUM, 3),
            (virtio::GSO_NONE, 0, 1),
            (virtio::GSO_TCPV6, virtio::FLAG_NEEDS_CSUM, 2),
            (virtio::GSO_NONE, virtio::FLAG_DATA_VALID, 1),
            (virtio::GSO_TCPV6, virtio::FLAG_NEEDS_CSUM, 3),
        ],
        "{kinds:?}"
    );
    // UDP over IPv6 is written as it came.
    let ws = coalesce(&[udp6(&[1; 100]), udp6(&[2; 100])]);
    assert!(
        ws.iter()
            .all(|w| w.vh == virtio::Header::default() && w.segments == 1)
    );
}

/// `complete_checksum` on IPv6: a partial TCP or UDP checksum completes to
/// the reference, and a UDP checksum of zero goes out as all ones.
#[test]
fn complete_checksum6_matches_the_reference() {
    for mut p in [tcp6(5, ACK | PSH, &[9; 333]), udp6(&[3; 77])] {
        let (h, mut partial) = super6(p.clone(), virtio::GSO_NONE, 0);
        complete_checksum(&h, &mut partial).unwrap();
        if p[6] == PROTO_UDP {
            fill_l4_checksum6(&mut p);
        }
        assert_same(&partial, &p, "completed checksum");
        assert!(l4_checksum6_ok(&partial));
    }
}

// ---------------------------------------------------------------------------
// Checksums a kernel VXLAN sender left partial (no NIC on the way: veth).

/// A kernel VXLAN peer over veth (flanneld in a kind cluster) sends its
/// handshakes, ACKs and UDP with the pseudo-header sum where the checksum
/// goes: each is written alone, marked for the kernel to complete, and
/// completing it gives the valid checksum. A checksum that is merely wrong
/// is still written unmarked, for the kernel to drop; ICMP is never marked.
#[test]
fn coalescer_marks_checksums_a_sender_left_partial() {
    let syn_ack = Tcp {
        flags: SYN | ACK,
        ..flow_a()
    };
    let mut handshake = syn_ack.packet(&[]);
    partial_checksum(&mut handshake);
    let mut ack = flow_a().packet(&[]);
    partial_checksum(&mut ack);
    let mut udp = flow_b().udp(b"dns?");
    partial_checksum(&mut udp);
    let mut wrong = flow_b().packet(&[]);
    let at = ihl_of(&wrong) + 16;
    let c = be16(&wrong, at);
    put16(&mut wrong, at, c ^ 0x0101);
    let icmp = flow_a().icmp(b"ping");
    let ws = coalesce(&[handshake.clone(), ack, udp.clone(), wrong, icmp]);
    assert_eq!(kinds(&ws), [Partial, Partial, Partial, Plain, Plain]);
    for w in &ws {
        check_write(w);
    }
    assert_eq!(ws[2].vh.csum_offset, 6, "UDP's checksum field");
    // Without offloads the worker completes it in software instead.
    for mut p in [handshake, udp] {
        assert!(!l4_checksum_ok(&p));
        assert!(complete_partial(&mut p));
        assert!(l4_checksum_ok(&p) && ip_checksum_ok(&p));
        assert!(
            !complete_partial(&mut p),
            "a complete checksum is left alone"
        );
    }
}

/// Data segments with partial checksums join as verified ones do; one
/// alone is marked partial, not verified.
#[test]
fn coalescer_joins_segments_a_sender_left_partial() {
    let mut rng = Rng::new(77);
    let mut f = flow_a();
    let sent = f.stream(&[1448, 1448, 1448, 1448], &mut rng);
    let mut run = sent.clone();
    for p in &mut run {
        partial_checksum(p);
        assert!(!l4_checksum_ok(p));
    }
    let ws = coalesce(&run);
    assert_eq!(kinds(&ws), [Merged(4)]);
    // Cut back (checksums completed, as the kernel's GSO does): what was sent.
    assert_delivered(&ws, &sent);
    let mut lone = f.stream(&[700], &mut rng);
    partial_checksum(&mut lone[0]);
    let ws = coalesce(&lone);
    assert_eq!(kinds(&ws), [Partial]);
    check_write(&ws[0]);
}

/// A TCP super-packet a kernel VXLAN peer over veth handed on whole (one
/// datagram, its checksum partial, as flanneld's flannel.1 sends with its
/// offloads on), longer than the TUN device's MTU: it closes the open write
/// and becomes a GSO write of its own, cut at the MTU into the segments the
/// sender's NIC would have made. Within the MTU nothing changes.
#[test]
fn coalescer_cuts_a_super_packet_that_arrived_whole_at_the_mtu() {
    let mut rng = Rng::new(79);
    let mtu = 1450;
    let mut f = flow_a();
    let before = f.stream(&[1000, 1000], &mut rng);
    let hl = 20 + 20 + f.opts.len();
    let cap = mtu - hl;
    let payload = rng.bytes(2 * cap + 500);
    let whole = tso(&f, &payload);
    let mut sent = before.clone();
    for chunk in payload.chunks(cap) {
        sent.push(f.packet(chunk));
        f.seq = f.seq.wrapping_add(chunk.len() as u32);
        f.id = f.id.wrapping_add(1);
    }
    let mut pkts = before.clone();
    pkts.push(whole.clone());
    let (bufs, ranges) = place(&pkts);
    let mut co = Coalescer::new();
    co.set_mtu(mtu);
    for (i, r) in ranges.iter().enumerate() {
        co.push(&bufs[i][r.clone()], i, r.clone());
    }
    co.close();
    let ws = collect(&co, &bufs);
    assert_eq!(kinds(&ws), [Merged(2), Merged(3)]);
    assert_eq!(usize::from(ws[1].vh.gso_size), cap);
    assert_delivered(&ws, &sent);
    // Without an MTU, or within it, it is one packet as before.
    let ws = coalesce(&[whole]);
    assert_eq!(kinds(&ws), [Partial]);
}
