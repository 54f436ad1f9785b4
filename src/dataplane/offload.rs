//! Segmentation and coalescing of TCP/UDP super-packets, with no I/O and no
//! copy of payload: the offload half of the packet path.
//!
//! A TUN device with offloads hands weft 64 KiB super-packets (TSO/USO) and
//! takes coalesced ones back (GRO). Instead of cutting a super-packet into
//! fresh buffers, [`segment`] writes one small header per segment into a
//! header [`Arena`] and describes each VXLAN datagram as two [`Part`]s — its
//! header, then its stretch of the original payload — for one gathered UDP GSO
//! send. On the way in, a [`Coalescer`] joins consecutive TCP segments of one
//! flow into a single TUN write: one rebuilt header in the arena, then the
//! payloads where they were received.
//!
//! Contract: no input panics. A super-packet that cannot be honoured is a
//! [`DropReason`]; a segment that cannot be coalesced is written as it came.

use std::net::SocketAddr;
use std::ops::Range;

use super::counters::DropReason;
use super::{ENCAP_LEN, Part};
use crate::wire::tcp::{self, PROTO_TCP, PROTO_UDP};
use crate::wire::{checksum_finish, checksum_fold, checksum_sum, ipv4, ipv6, virtio};

/// Bytes of per-batch header arena.
pub const ARENA_LEN: usize = 256 * 1024;
pub use crate::gather::MAX_COALESCE;
/// Largest IPv4 packet: a coalesced write stays within it.
const IP_MAX: usize = 65_535;

/// Scratch space for the headers of one batch, reused batch after batch.
#[derive(Debug)]
pub struct Arena {
    buf: Box<[u8]>,
    used: usize,
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new(ARENA_LEN)
    }
}

impl Arena {
    pub fn new(len: usize) -> Arena {
        Arena {
            buf: vec![0; len].into_boxed_slice(),
            used: 0,
        }
    }

    /// Forgets every header: the start of a batch.
    pub fn clear(&mut self) {
        self.used = 0;
    }

    pub fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Reserves `n` bytes; `None` when the arena is full.
    pub fn alloc(&mut self, n: usize) -> Option<Range<usize>> {
        if n > self.room() {
            return None;
        }
        let r = self.used..self.used + n;
        self.used += n;
        Some(r)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    pub fn get_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        &mut self.buf[r]
    }
}

pub use crate::gather::Datagram;

/// Why [`segment`] produced nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// The arena cannot hold this super-packet's headers: send what is
    /// pending, clear the arena, and try again.
    NoRoom,
    /// The super-packet is malformed or of a kind weft does not carry.
    Bad(DropReason),
}

/// Completes a partial checksum (`FLAG_NEEDS_CSUM`) in place: the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the sum over
/// `pkt[csum_start..]` is folded into it and complemented.
///
/// # Errors
/// [`DropReason::TunBadOffload`] when the offsets lie outside `pkt`, or
/// `csum_start` inside its IP header: the sum would overwrite the header
/// (its version, so its family) after the packet was routed by it.
pub fn complete_checksum(h: &virtio::Header, pkt: &mut [u8]) -> Result<(), DropReason> {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > pkt.len() || start > pkt.len() || start < ip_header_len(pkt) {
        return Err(DropReason::TunBadOffload);
    }
    let c = checksum_finish(checksum_sum(&pkt[start..], 0));
    // A UDP checksum that computes to zero is sent as all ones (RFC 768).
    let c = if c == 0 && is_udp(pkt, start) {
        0xffff
    } else {
        c
    };
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The length of `pkt`'s IP header by its first byte (IPv4's IHL, IPv6's
/// fixed header); for anything else, more than any packet holds.
fn ip_header_len(pkt: &[u8]) -> usize {
    match pkt.first().map(|b| b >> 4) {
        // An IHL below 5 is no header: 20 bytes at least.
        Some(4) => (usize::from(pkt[0] & 0x0f) * 4).max(20),
        Some(6) => ipv6::HEADER_LEN,
        _ => usize::MAX,
    }
}

fn is_udp(pkt: &[u8], l4: usize) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => l4 == usize::from(pkt[0] & 0x0f) * 4 && pkt.get(9) == Some(&PROTO_UDP),
        Some(6) => l4 == ipv6::HEADER_LEN && pkt.get(6) == Some(&PROTO_UDP),
        _ => false,
    }
}

/// Where the checksum of `pkt` still has to be computed, when its sender
/// left it partial: a TCP or UDP packet (IPv4 unfragmented, or IPv6 with
/// the L4 header next) whose checksum field holds only its folded
/// pseudo-header sum. A Linux sender with checksum offload writes that and
/// leaves the rest to the NIC; when no NIC lies on the way (kernel VXLAN
/// over veth: flanneld in a kind cluster or a network namespace), the
/// datagram arrives so, and the receiving kernel, which would have kept the
/// packet's "checksum partial" mark, is not the one decapsulating it.
/// Returns `(csum_start, csum_offset)` for a `FLAG_NEEDS_CSUM` write.
///
/// A complete checksum is mistaken for a partial one only when it happens
/// to equal the pseudo-header sum (1 in 65,536 packets, and then the
/// checksum the kernel computes from it is the right one all the same).
pub fn partial_offsets(pkt: &[u8]) -> Option<(usize, usize)> {
    partial_in(pkt).map(|(start, offset, _)| (start, offset))
}

/// [`partial_offsets`], with the packet's length by its IP header.
fn partial_in(pkt: &[u8]) -> Option<(usize, usize, usize)> {
    let (ip, proto, total) = Ip::parse(pkt)?;
    if let Ip::V4 { .. } = ip {
        let v4 = ipv4::Packet::new_unchecked(pkt);
        if v4.more_frags() || v4.frag_offset() != 0 {
            return None;
        }
    }
    let start = ip.header_len();
    let offset = match proto {
        PROTO_TCP => tcp::CHECKSUM_OFFSET,
        PROTO_UDP => 6,
        _ => return None,
    };
    if total > pkt.len() || start + offset + 2 > total {
        return None;
    }
    let at = start + offset;
    let field = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
    // A UDP checksum of zero means "none" (IPv4), never "partial".
    if proto == PROTO_UDP && field == 0 {
        return None;
    }
    (field == checksum_fold(ip.pseudo_sum(proto, total - start))).then_some((start, offset, total))
}

/// Completes the partial checksum [`partial_offsets`] finds in `pkt`, in
/// software (for a TUN device without offloads). Returns whether it did.
pub fn complete_partial(pkt: &mut [u8]) -> bool {
    let Some((start, offset, total)) = partial_in(pkt) else {
        return false;
    };
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        csum_start: start as u16,
        csum_offset: offset as u16,
        ..Default::default()
    };
    complete_checksum(&h, &mut pkt[..total]).is_ok()
}

/// The inner IP header of a super-packet or segment, as offloads need it:
/// its length, the L4 protocol, the packet's length by the header, and the
/// pseudo-header sum of an L4 packet of a given length.
#[derive(Debug, Clone, Copy)]
enum Ip {
    V4 {
        src: std::net::Ipv4Addr,
        dst: std::net::Ipv4Addr,
        hl: usize,
    },
    V6 {
        src: std::net::Ipv6Addr,
        dst: std::net::Ipv6Addr,
    },
}

impl Ip {
    /// `(header, protocol, total length)` of an IPv4 packet, or of an IPv6
    /// one whose next header is the L4 header (no extension headers).
    fn parse(pkt: &[u8]) -> Option<(Ip, u8, usize)> {
        if pkt.first().is_some_and(|b| b >> 4 == 6) {
            let ip = ipv6::Packet::new_checked(pkt).ok()?;
            let v = Ip::V6 {
                src: ip.src(),
                dst: ip.dst(),
            };
            return Some((v, ip.next_header(), ip.total_len()));
        }
        let ip = ipv4::Packet::new_checked(pkt).ok()?;
        let v = Ip::V4 {
            src: ip.src(),
            dst: ip.dst(),
            hl: ip.header_len(),
        };
        Some((v, ip.protocol(), usize::from(ip.total_len())))
    }

    fn header_len(self) -> usize {
        match self {
            Ip::V4 { hl, .. } => hl,
            Ip::V6 { .. } => ipv6::HEADER_LEN,
        }
    }

    fn pseudo_sum(self, proto: u8, l4_len: usize) -> u32 {
        match self {
            Ip::V4 { src, dst, .. } => tcp::pseudo_header_sum(src, dst, proto, l4_len as u16, 0),
            Ip::V6 { src, dst } => ipv6::pseudo_header_sum(src, dst, proto, l4_len as u32, 0),
        }
    }
}

/// Cuts the TCP (TSO) or UDP (USO) super-packet `pkt`, over IPv4 or IPv6
/// (without extension headers), which lies at
/// `bufs[buf][at..]`, into `gso_size` segments for `to`. Each segment's
/// header — `prefix` (VXLAN + inner Ethernet), then the inner IPv4 and TCP/UDP
/// headers with their lengths, IP ID, sequence number, flags and checksums
/// fixed for that segment — goes into `arena`; each datagram is pushed onto
/// `dgrams` as that header plus the segment's payload, left in place.
/// Returns how many segments it made.
///
/// TCP flags follow the kernel's TSO: CWR only on the first segment, FIN and
/// PSH only on the last.
///
/// # Errors
/// [`SegmentError::NoRoom`] (nothing pushed) when the arena is too full;
/// [`SegmentError::Bad`] for a malformed super-packet.
#[allow(clippy::too_many_arguments)]
pub fn segment(
    h: &virtio::Header,
    pkt: &[u8],
    buf: usize,
    at: usize,
    prefix: &[u8; ENCAP_LEN],
    to: SocketAddr,
    arena: &mut Arena,
    parts: &mut Vec<Part>,
    dgrams: &mut Vec<Datagram>,
) -> Result<usize, SegmentError> {
    let bad = SegmentError::Bad(DropReason::TunBadOffload);
    let (ip, proto, total) = Ip::parse(pkt).ok_or(bad)?;
    let iphl = ip.header_len();
    let v6 = matches!(ip, Ip::V6 { .. });
    let (l4hl, is_tcp) = match (h.gso_kind(), proto) {
        (virtio::GSO_TCPV4, PROTO_TCP) if !v6 => {
            let t = tcp::Packet::new_checked(&pkt[iphl..]).map_err(|_| bad)?;
            (t.header_len(), true)
        }
        (virtio::GSO_TCPV6, PROTO_TCP) if v6 => {
            let t = tcp::Packet::new_checked(&pkt[iphl..]).map_err(|_| bad)?;
            (t.header_len(), true)
        }
        (virtio::GSO_UDP_L4, PROTO_UDP) if pkt.len() >= iphl + 8 => (8, false),
        _ => return Err(bad),
    };
    let hl = iphl + l4hl;
    let mss = usize::from(h.gso_size);
    // The IP length bounds the packet: bytes read past it are not ours to
    // send, and every segment's 16-bit lengths fit.
    let pkt = &pkt[..total];
    // Every payload part lies in `at..at + pkt.len()`: that must not overflow.
    if at.checked_add(pkt.len()).is_none() {
        return Err(bad);
    }
    let payload = pkt.len().saturating_sub(hl);
    // A segment is one IP packet: no longer than 65 535 bytes (IPv4's total
    // length bounds it already; an IPv6 super-packet of a 65 535-byte
    // payload with a larger gso_size would not).
    if mss == 0 || payload == 0 || hl + mss.min(payload) > IP_MAX {
        return Err(bad);
    }
    let count = payload.div_ceil(mss);
    let need = count * (ENCAP_LEN + hl);
    if need > arena.room() {
        return Err(if need > ARENA_LEN {
            bad
        } else {
            SegmentError::NoRoom
        });
    }
    let id0 = if v6 {
        0
    } else {
        ipv4::Packet::new_unchecked(pkt).ident()
    };
    let (seq0, flags0) = if is_tcp {
        let t = tcp::Packet::new_unchecked(&pkt[iphl..]);
        (t.seq(), t.flags())
    } else {
        (0, 0)
    };
    for k in 0..count {
        let off = hl + k * mss;
        let chunk = &pkt[off..(off + mss).min(pkt.len())];
        let seg_len = hl + chunk.len();
        let r = arena.alloc(ENCAP_LEN + hl).ok_or(SegmentError::NoRoom)?;
        let out = arena.get_mut(r.clone());
        out[..ENCAP_LEN].copy_from_slice(prefix);
        let (_, hdr) = out.split_at_mut(ENCAP_LEN);
        hdr.copy_from_slice(&pkt[..hl]);
        let (iph, l4) = hdr.split_at_mut(iphl);
        if v6 {
            ipv6::Packet::new_unchecked(&mut *iph).set_payload_len((seg_len - iphl) as u16);
        } else {
            let mut ip4 = ipv4::Packet::new_unchecked(&mut *iph);
            ip4.set_total_len(seg_len as u16);
            ip4.set_ident(id0.wrapping_add(k as u16));
            ip4.fill_checksum();
        }
        let l4_len = (l4hl + chunk.len()) as u16;
        if is_tcp {
            let mut t = tcp::Packet::new_unchecked(&mut *l4);
            t.set_seq(seq0.wrapping_add((k * mss) as u32));
            let mut f = flags0;
            if k > 0 {
                f &= !tcp::FLAG_CWR;
            }
            if k + 1 < count {
                f &= !(tcp::FLAG_FIN | tcp::FLAG_PSH);
            }
            t.set_flags(f);
            t.set_checksum(0);
        } else {
            l4[4..6].copy_from_slice(&l4_len.to_be_bytes());
            l4[6..8].copy_from_slice(&[0, 0]);
        }
        let sum = ip.pseudo_sum(proto, usize::from(l4_len));
        let sum = checksum_sum(l4, sum);
        let mut c = checksum_finish(checksum_sum(chunk, sum));
        if !is_tcp && c == 0 {
            c = 0xffff;
        }
        let at_csum = if is_tcp { tcp::CHECKSUM_OFFSET } else { 6 };
        l4[at_csum..at_csum + 2].copy_from_slice(&c.to_be_bytes());
        let first = parts.len();
        parts.push(Part::Arena(r));
        parts.push(Part::Buf(buf, at + off..at + off + chunk.len()));
        dgrams.push(Datagram {
            to,
            parts: first..first + 2,
            len: ENCAP_LEN + seg_len,
        });
    }
    Ok(count)
}

/// One TUN write: `parts[parts]` gathered, a virtio-net header first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunWrite {
    pub parts: Range<usize>,
    /// Inner packets it carries (1, or the coalesced segments).
    pub segments: usize,
}

/// A TCP segment that may join a coalesced write.
struct Seg {
    /// Its IP header (the family, addresses and length).
    ip: Ip,
    iphl: usize,
    tcphl: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    id: u16,
    /// Its TCP checksum was left partial by its sender ([`partial_offsets`]).
    partial: bool,
}

/// The write being built: the first segment's headers in the arena.
#[derive(Debug)]
struct Group {
    /// virtio-net header + IP + TCP header, in the arena.
    hdr: Range<usize>,
    ip: Ip,
    iphl: usize,
    tcphl: usize,
    mss: usize,
    payload: usize,
    segments: usize,
    next_seq: u32,
    next_id: u16,
    dont_frag: bool,
    last_flags: u8,
    first_part: usize,
    /// The first segment's checksum is partial: written alone, it says so.
    partial: bool,
}

/// Joins runs of consecutive TCP segments of one flow into single TUN writes
/// (receive-side GRO), without copying payload.
///
/// A segment joins the open write when it continues it exactly: same
/// addresses, ports, IP TOS/TTL/DF, identical TCP header apart from the
/// sequence number (which must be the next expected one), PSH and checksum, no
/// SYN/FIN/RST/URG/ECE/CWR, and a payload no longer than the first's (a
/// shorter one, or PSH, ends the write). Every segment that is coalesced has
/// had its IPv4 and TCP checksums verified, because the kernel trusts a
/// coalesced write's checksum; one that fails is written on its own, unmarked,
/// for the kernel to check and drop. Anything else (UDP, ICMP, fragments, IP
/// options) is written as it came. Order is never changed.
///
/// A TCP or UDP checksum its sender left partial ([`partial_offsets`]: a
/// kernel VXLAN peer whose offloaded checksums no NIC filled in) is not a
/// failed one: such a packet is coalesced, or written alone marked
/// `FLAG_NEEDS_CSUM`, and the kernel treats it as it would have had it
/// decapsulated the datagram itself.
#[derive(Debug)]
pub struct Coalescer {
    arena: Arena,
    parts: Vec<Part>,
    writes: Vec<TunWrite>,
    open: Option<Group>,
    /// Arena range of the fixed, all-zero virtio-net header singles use.
    plain: Range<usize>,
    /// The longest IP packet the TUN device's side forwards as one (its
    /// MTU): a TCP super-packet longer than this is written for the kernel
    /// to cut into segments that fit ([`Coalescer::set_mtu`]).
    max_len: usize,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// Parts a coalescer holds before it asks to be flushed.
const MAX_PARTS: usize = 8192;
/// Arena bytes a coalesced write's header takes at most: virtio-net header,
/// IPv4 without options (the only kind joined), TCP with 40 bytes of options.
const GROUP_HEADER_MAX: usize = virtio::HEADER_LEN + ipv6::HEADER_LEN + 60;

impl Coalescer {
    pub fn new() -> Coalescer {
        let mut c = Coalescer {
            arena: Arena::default(),
            parts: Vec::with_capacity(MAX_PARTS),
            writes: Vec::with_capacity(MAX_PARTS),
            open: None,
            plain: 0..0,
            max_len: IP_MAX,
        };
        c.clear();
        c
    }

    /// The MTU of the TUN device's link. A kernel VXLAN peer over veth
    /// (flanneld in a kind cluster or network namespaces) hands on a TCP
    /// super-packet whole, in one datagram, as its offloads made it; written
    /// as one packet longer than the MTU, the node could not forward it to
    /// the pod. Such a packet becomes a GSO write cut at this MTU.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.max_len = mtu.clamp(ipv6::HEADER_LEN + 60 + 1, IP_MAX);
    }

    /// Empties the coalescer after its writes went out.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.parts.clear();
        self.writes.clear();
        self.open = None;
        // One fixed virtio-net header: "as is" (the kernel checks the packet).
        self.plain = self.arena.alloc(virtio::HEADER_LEN).unwrap_or(0..0);
        virtio::Header::default().emit(self.arena.get_mut(self.plain.clone()));
    }

    /// Whether another packet fits; when not, close, write and clear first.
    pub fn has_room(&self) -> bool {
        self.parts.len() + 2 <= MAX_PARTS && self.arena.room() >= GROUP_HEADER_MAX
    }

    /// Adds the inner IP packet `pkt`, which lies at `bufs[buf][range]`.
    /// Call [`Coalescer::has_room`] first. A range whose end would pass
    /// `usize::MAX` is written as it came.
    pub fn push(&mut self, pkt: &[u8], buf: usize, range: Range<usize>) {
        let fits = range.start.checked_add(pkt.len()).is_some();
        let Some(seg) = tcp_segment(pkt).filter(|_| fits) else {
            self.close();
            self.single(pkt, buf, range);
            return;
        };
        if pkt.len() > self.max_len {
            // A super-packet that arrived whole: a write of its own, cut by
            // the kernel at the MTU.
            self.close();
            if !self.start(&seg, pkt, buf, range.clone()) {
                self.single(pkt, buf, range);
                return;
            }
            if let Some(g) = self.open.as_mut() {
                g.mss = self.max_len - seg.iphl - seg.tcphl;
                g.segments = seg.payload.div_ceil(g.mss);
            }
            self.close();
            return;
        }
        let joins = self
            .open
            .as_ref()
            .is_some_and(|g| self.continues(g, &seg, pkt));
        if !joins {
            self.close();
            if !self.start(&seg, pkt, buf, range.clone()) {
                self.single(pkt, buf, range);
                return;
            }
        } else if let Some(g) = self.open.as_mut() {
            self.parts.push(Part::Buf(
                buf,
                range.start + seg.iphl + seg.tcphl..range.end,
            ));
            g.payload += seg.payload;
            g.segments += 1;
            g.next_seq = g.next_seq.wrapping_add(seg.payload as u32);
            g.next_id = seg.id.wrapping_add(1);
            g.last_flags = seg.flags;
        }
        let ends = self.open.as_ref().is_some_and(|g| {
            seg.flags & tcp::FLAG_PSH != 0
                || seg.payload < g.mss
                || g.segments >= MAX_COALESCE
                || g.payload + g.mss + g.iphl + g.tcphl > IP_MAX
        });
        if ends {
            self.close();
        }
    }

    fn continues(&self, g: &Group, seg: &Seg, pkt: &[u8]) -> bool {
        if seg.iphl != g.iphl || seg.tcphl != g.tcphl || seg.payload > g.mss {
            return false;
        }
        if seg.seq != g.next_seq || (!g.dont_frag && seg.id != g.next_id) {
            return false;
        }
        let first = &self.arena.buf[g.hdr.start + virtio::HEADER_LEN..g.hdr.end];
        let (fi, ft) = first.split_at(g.iphl);
        let (pi, pt) = pkt[..g.iphl + g.tcphl].split_at(g.iphl);
        let ip_same = match g.ip {
            // IPv4: version/IHL, TOS, flags/fragment, TTL, protocol, addresses.
            // (Length, ID and checksum differ by design; the ID was checked above.)
            Ip::V4 { .. } => {
                fi[0..2] == pi[0..2] && fi[6..10] == pi[6..10] && fi[12..20] == pi[12..20]
            }
            // IPv6: version, traffic class, flow label, next header, hop
            // limit, addresses (the payload length differs by design).
            Ip::V6 { .. } => fi[0..4] == pi[0..4] && fi[6..40] == pi[6..40],
        };
        // TCP: ports, ack, data offset, flags but PSH, window, urgent, options.
        let tcp_same = ft[0..4] == pt[0..4]
            && ft[8..13] == pt[8..13]
            && (ft[13] | tcp::FLAG_PSH) == (pt[13] | tcp::FLAG_PSH)
            && ft[14..16] == pt[14..16]
            && ft[18..] == pt[18..];
        ip_same && tcp_same
    }

    fn start(&mut self, seg: &Seg, pkt: &[u8], buf: usize, range: Range<usize>) -> bool {
        let hl = seg.iphl + seg.tcphl;
        let Some(r) = self.arena.alloc(virtio::HEADER_LEN + hl) else {
            return false;
        };
        self.arena.get_mut(r.clone())[virtio::HEADER_LEN..].copy_from_slice(&pkt[..hl]);
        let first_part = self.parts.len();
        self.parts.push(Part::Arena(r.clone()));
        self.parts.push(Part::Buf(buf, range.start + hl..range.end));
        let dont_frag = match seg.ip {
            Ip::V4 { .. } => ipv4::Packet::new_unchecked(pkt).dont_frag(),
            // IPv6 routers never fragment: no IDs to keep in step.
            Ip::V6 { .. } => true,
        };
        self.open = Some(Group {
            hdr: r,
            ip: seg.ip,
            iphl: seg.iphl,
            tcphl: seg.tcphl,
            mss: seg.payload,
            payload: seg.payload,
            segments: 1,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            next_id: seg.id.wrapping_add(1),
            dont_frag,
            last_flags: seg.flags,
            first_part,
            partial: seg.partial,
        });
        true
    }

    /// Writes `pkt` (at `bufs[buf][range]`) on its own: as it came, for the
    /// kernel to check, or, when its sender left its checksum partial,
    /// marked so for the kernel to complete.
    fn single(&mut self, pkt: &[u8], buf: usize, range: Range<usize>) {
        let first = self.parts.len();
        let partial = partial_offsets(pkt).and_then(|(start, offset)| {
            let r = self.arena.alloc(virtio::HEADER_LEN)?;
            virtio::Header {
                flags: virtio::FLAG_NEEDS_CSUM,
                csum_start: start as u16,
                csum_offset: offset as u16,
                ..Default::default()
            }
            .emit(self.arena.get_mut(r.clone()));
            Some(r)
        });
        self.parts
            .push(Part::Arena(partial.unwrap_or_else(|| self.plain.clone())));
        self.parts.push(Part::Buf(buf, range));
        self.writes.push(TunWrite {
            parts: first..first + 2,
            segments: 1,
        });
    }

    /// Finishes the open write, if any.
    pub fn close(&mut self) {
        let Some(g) = self.open.take() else {
            return;
        };
        let hl = g.iphl + g.tcphl;
        let out = self.arena.get_mut(g.hdr.clone());
        let (vh, pkt) = out.split_at_mut(virtio::HEADER_LEN);
        if g.segments == 1 && g.partial {
            // Alone, its checksum left partial by its sender: the kernel completes it.
            virtio::Header {
                flags: virtio::FLAG_NEEDS_CSUM,
                csum_start: g.iphl as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
                ..Default::default()
            }
            .emit(vh);
        } else if g.segments == 1 {
            // Alone: the original headers, checksums already verified.
            virtio::Header {
                flags: virtio::FLAG_DATA_VALID,
                ..Default::default()
            }
            .emit(vh);
        } else {
            let total = hl + g.payload;
            let (iph, th) = pkt.split_at_mut(g.iphl);
            let gso_type = match g.ip {
                Ip::V4 { .. } => {
                    let mut ip = ipv4::Packet::new_unchecked(&mut *iph);
                    ip.set_total_len(total as u16);
                    ip.fill_checksum();
                    virtio::GSO_TCPV4
                }
                Ip::V6 { .. } => {
                    ipv6::Packet::new_unchecked(&mut *iph).set_payload_len((total - g.iphl) as u16);
                    virtio::GSO_TCPV6
                }
            };
            let mut t = tcp::Packet::new_unchecked(&mut *th);
            t.set_flags(t.flags() | (g.last_flags & tcp::FLAG_PSH));
            // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
            let pseudo = g.ip.pseudo_sum(PROTO_TCP, total - g.iphl);
            t.set_checksum(checksum_fold(pseudo));
            virtio::Header {
                flags: virtio::FLAG_NEEDS_CSUM,
                gso_type,
                hdr_len: hl as u16,
                gso_size: g.mss as u16,
                csum_start: g.iphl as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
            }
            .emit(vh);
        }
        self.writes.push(TunWrite {
            parts: g.first_part..self.parts.len(),
            segments: g.segments,
        });
    }

    /// The finished writes (call [`Coalescer::close`] first to include the
    /// open one), with the arena and parts they refer to.
    pub fn writes(&self) -> (&[TunWrite], &[Part], &[u8]) {
        (&self.writes, &self.parts, self.arena.bytes())
    }
}

/// The segment's header facts when `pkt` is a TCP segment with payload that
/// may be coalesced: over IPv4 without options or fragmentation, or over
/// IPv6 without extension headers; only ACK (and PSH) set, and valid IP and
/// TCP checksums.
fn tcp_segment(pkt: &[u8]) -> Option<Seg> {
    let (ip, id) = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        let ip = ipv6::Packet::new_checked(pkt).ok()?;
        if ip.next_header() != PROTO_TCP || ip.total_len() != pkt.len() {
            return None;
        }
        let v = Ip::V6 {
            src: ip.src(),
            dst: ip.dst(),
        };
        (v, 0)
    } else {
        let ip = ipv4::Packet::new_checked(pkt).ok()?;
        if ip.header_len() != ipv4::MIN_HEADER_LEN
            || ip.protocol() != PROTO_TCP
            || usize::from(ip.total_len()) != pkt.len()
            || ip.more_frags()
            || ip.frag_offset() != 0
            || !ip.checksum_ok()
        {
            return None;
        }
        let v = Ip::V4 {
            src: ip.src(),
            dst: ip.dst(),
            hl: ip.header_len(),
        };
        (v, ip.ident())
    };
    let iphl = ip.header_len();
    let t = tcp::Packet::new_checked(&pkt[iphl..]).ok()?;
    let tcphl = t.header_len();
    let payload = pkt.len() - iphl - tcphl;
    let flags = t.flags();
    if payload == 0 || flags & !tcp::FLAG_PSH != tcp::FLAG_ACK {
        return None;
    }
    let l4 = &pkt[iphl..];
    let pseudo = ip.pseudo_sum(PROTO_TCP, l4.len());
    let at = tcp::CHECKSUM_OFFSET;
    let partial = u16::from_be_bytes([l4[at], l4[at + 1]]) == checksum_fold(pseudo);
    if !partial && checksum_finish(checksum_sum(l4, pseudo)) != 0 {
        return None;
    }
    Some(Seg {
        partial,
        ip,
        iphl,
        tcphl,
        payload,
        seq: t.seq(),
        flags,
        id,
    })
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;
