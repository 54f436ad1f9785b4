//! A worker's batches as decisions, with no I/O. Sending: which socket each
//! packet read from TUN leaves from (the underlay family, then the flow hash
//! among that family's sockets), checksum completion, encapsulation or
//! segmentation of a super-packet, when the datagrams described so far must
//! go out (the socket changes, the header arena is full, the batch ends),
//! and which ICMP errors are answered, at what rate. Receiving: who sent
//! each datagram, the segments of a GRO buffer, what goes to TUN alone or
//! coalesced, and what a source check refused. Every packet is counted,
//! every drop by its reason.
//!
//! The worker owns a [`TxBatch`] and an [`RxBatch`], allocated once. Each
//! turn it fills one with what the kernel handed over and walks a
//! [`TxTurn`] or [`RxTurn`] over it, doing the I/O each step names, as
//! boringtun's `Tunn` returns actions instead of doing I/O. Steps come per
//! flush, ICMP answer, refusal or lone TUN write, not per packet; tests and
//! the fuzzer walk them in memory.
//!
//! Contract: nothing here allocates per packet, takes a lock, or panics on
//! any input; every turn ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::core::{Core, Route, RxAction, Sender, TxAction, flow_hash};
use super::counters::{DropReason, LocalCounts};
use super::offload::{self, ARENA_LEN, Arena, Coalescer, Datagram, SegmentError, TunWrite};
use super::slot::Slot;
use super::table::Table;
use super::{ENCAP_LEN, Gather, HEADROOM, Part, SLOT};
use crate::wire::virtio::{self, HEADER_LEN as VIRTIO_NET_HDR_LEN};

/// TUN reads one transmit batch takes at most.
pub const TX_READS: usize = 64;
/// A transmit batch stops reading once it holds this many bytes, so a batch
/// of super-packets stays cache-sized.
pub const TX_BATCH_BYTES: usize = 256 * 1024;
/// Parts and datagrams one transmit batch may describe (bounded by the arena:
/// every segment's header lives there).
const TX_PARTS: usize = 2 * (ARENA_LEN / (ENCAP_LEN + 40)) + TX_READS;
/// Receive buffers per batch; with UDP GRO each may hold up to 64 KiB of segments.
pub const RX_BUFFERS: usize = 32;
/// At most this many ICMP unreachables per second per worker.
pub const ICMP_PER_SEC: u32 = 100;
/// Room for an ICMP or ICMPv6 error (the core builds at most this much).
const ANSWER_ROOM: usize = 128;

/// An underlay family: it indexes per-family arrays (`[IPv4, IPv6]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4 = 0,
    V6 = 1,
}

impl Family {
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One of a queue's sending sockets: its family, and its place in that
/// family's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    pub family: Family,
    pub index: usize,
}

/// The socket the packet `pkt` read from TUN leaves from, given how many
/// sending sockets each family has (`socks[0]` IPv4, `socks[1]` IPv6): an
/// IPv6 packet from the IPv6 set when there is one, everything from it on
/// an IPv6-only node (whose IPv4 set is empty), else the IPv4 set; within
/// a set, by the flow hash, so a flow keeps one source port and is never
/// reordered, and receivers (`SO_REUSEPORT`, a NIC's RSS) spread flows.
#[inline]
pub fn socket_for(socks: [usize; 2], pkt: &[u8]) -> SockId {
    let v6 = socks[0] == 0 || (pkt.first().is_some_and(|b| b >> 4 == 6) && socks[1] > 0);
    let family = if v6 { Family::V6 } else { Family::V4 };
    let n = socks[family.index()];
    let index = if n > 1 {
        flow_hash(pkt) as usize % n
    } else {
        0
    };
    SockId { family, index }
}

/// The ICMP answers' rate limit: [`ICMP_PER_SEC`] a second.
#[derive(Debug, Clone, Copy)]
pub struct IcmpLimit {
    budget: u32,
    second: Instant,
}

impl IcmpLimit {
    pub fn new(now: Instant) -> IcmpLimit {
        IcmpLimit {
            budget: ICMP_PER_SEC,
            second: now,
        }
    }

    /// Whether an answer may go at `now`; a second after the budget was
    /// last refilled, it is refilled.
    pub fn allows(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            (self.budget, self.second) = (ICMP_PER_SEC, now);
        }
        self.budget > 0
    }

    /// One answer went.
    pub fn spend(&mut self) {
        self.budget = self.budget.saturating_sub(1);
    }
}

/// Counts `failed` datagrams of a send the kernel refused: they were
/// counted sent when they were described, and are drops instead.
pub fn count_unsent(local: &mut LocalCounts, failed: usize) {
    local.tx_packets = local.tx_packets.saturating_sub(failed as u64);
    local.drops[DropReason::UdpSendError as usize] += failed as u64;
}

/// Counts one TUN write of `segments` inner packets, written or not.
pub fn count_written(local: &mut LocalCounts, segments: usize, ok: bool) {
    if ok {
        local.rx_packets += segments as u64;
        local.tun_writes += 1;
    } else {
        local.drops[DropReason::TunWriteError as usize] += segments as u64;
    }
}

/// The TUN → UDP half's buffers, allocated once: the packets read from TUN
/// (each in its own slot, the IP packet at [`HEADROOM`]), the header arena
/// and the datagrams described over them, the ICMP answer, its rate limit.
pub struct TxBatch {
    /// Reads start with a virtio-net header (a TUN device with offloads).
    offload: bool,
    slots: Vec<Slot>,
    lens: [usize; TX_READS],
    n: usize,
    bytes: usize,
    arena: Arena,
    parts: Vec<Part>,
    dgrams: Vec<Datagram>,
    /// The ICMP answer, built after room for a (zero) virtio-net header.
    scratch: [u8; VIRTIO_NET_HDR_LEN + ANSWER_ROOM],
    icmp: IcmpLimit,
}

impl TxBatch {
    /// Buffers for a TUN device whose reads carry a virtio-net header
    /// (`offload`) or not.
    pub fn new(offload: bool) -> TxBatch {
        TxBatch {
            offload,
            slots: (0..TX_READS).map(|_| Slot::new(SLOT)).collect(),
            lens: [0; TX_READS],
            n: 0,
            bytes: 0,
            arena: Arena::default(),
            parts: Vec::with_capacity(TX_PARTS),
            dgrams: Vec::with_capacity(TX_PARTS),
            scratch: [0; VIRTIO_NET_HDR_LEN + ANSWER_ROOM],
            icmp: IcmpLimit::new(Instant::now()),
        }
    }

    /// The virtio-net header's length in a read: it is read into the end
    /// of the headroom, so the IP packet always starts at [`HEADROOM`].
    fn vh(&self) -> usize {
        if self.offload { VIRTIO_NET_HDR_LEN } else { 0 }
    }

    /// Forgets the packets read: the start of a batch.
    pub fn clear(&mut self) {
        self.n = 0;
        self.bytes = 0;
    }

    /// Where the next TUN read goes, or `None` once the batch is full
    /// ([`TX_READS`] reads, or [`TX_BATCH_BYTES`] bytes).
    pub fn room(&mut self) -> Option<&mut [u8]> {
        if self.n >= TX_READS || self.bytes >= TX_BATCH_BYTES {
            return None;
        }
        let vh = self.vh();
        let slot = &mut self.slots[self.n];
        slot.reset();
        Some(&mut slot.as_mut()[HEADROOM - vh..])
    }

    /// Takes the read of `len` bytes into the last [`TxBatch::room`]; one
    /// too short for its virtio-net header is dropped.
    pub fn filled(&mut self, len: usize, local: &mut LocalCounts) {
        let vh = self.vh();
        if self.n >= TX_READS {
            return;
        }
        if len < vh {
            local.drop(DropReason::TunTruncated);
            return;
        }
        // A read is never longer than its room.
        let len = len.min(SLOT - HEADROOM + vh);
        self.lens[self.n] = len - vh;
        self.bytes += len;
        self.n += 1;
        local.tun_reads += 1;
    }

    /// The IP packet of read `j`.
    fn packet(&self, j: usize) -> &[u8] {
        &self.slots[j].as_ref()[HEADROOM..HEADROOM + self.lens[j]]
    }

    /// Read `j`'s virtio-net header (all zero on a device without offloads).
    fn header(&self, j: usize) -> virtio::Header {
        let vh = self.vh();
        if vh == 0 {
            return virtio::Header::default();
        }
        virtio::Header::parse(&self.slots[j].as_ref()[HEADROOM - vh..HEADROOM]).unwrap_or_default()
    }

    fn forget_pending(&mut self) {
        self.arena.clear();
        self.parts.clear();
        self.dgrams.clear();
    }

    /// Read `j`, one packet: its checksum completed if its header asks,
    /// then encapsulated in place as one datagram.
    #[inline]
    fn encap(
        &mut self,
        j: usize,
        h: &virtio::Header,
        core: &Core,
        table: &Table,
        local: &mut LocalCounts,
    ) -> Decided {
        let len = self.lens[j];
        let slot = self.slots[j].as_mut();
        if h.flags & virtio::FLAG_NEEDS_CSUM != 0
            && let Err(r) = offload::complete_checksum(h, &mut slot[HEADROOM..HEADROOM + len])
        {
            local.drop(r);
            return Decided::Done;
        }
        match core.encap(table, slot, len, &mut self.scratch[VIRTIO_NET_HDR_LEN..]) {
            TxAction::Send { to, range, slot } => {
                local.tx_packets += 1;
                local.tx_bytes += range.len() as u64;
                local.peers.tx(slot, 1, range.len() as u64);
                let p = self.parts.len();
                self.dgrams.push(Datagram {
                    to,
                    parts: p..p + 1,
                    len: range.len(),
                });
                self.parts.push(Part::Buf(j, range));
            }
            TxAction::Unreachable { len } => return Decided::Unreachable(len),
            TxAction::Drop(r) => local.drop(r),
        }
        Decided::Done
    }

    /// Read `j`, a super-packet: routed once, then cut into datagrams whose
    /// headers go into the arena and whose payloads stay where they were read.
    #[inline]
    fn segment(
        &mut self,
        j: usize,
        h: &virtio::Header,
        core: &Core,
        table: &Table,
        local: &mut LocalCounts,
    ) -> Decided {
        let pkt = &self.slots[j].as_ref()[HEADROOM..HEADROOM + self.lens[j]];
        let (to, prefix, peer) =
            match core.route(table, pkt, &mut self.scratch[VIRTIO_NET_HDR_LEN..]) {
                Route::Peer { to, prefix, slot } => (to, prefix, slot),
                Route::Unreachable { len } => return Decided::Unreachable(len),
                Route::Drop(r) => {
                    local.drop(r);
                    return Decided::Done;
                }
            };
        let before = self.dgrams.len();
        match offload::segment(
            h,
            pkt,
            j,
            HEADROOM,
            &prefix,
            to,
            &mut self.arena,
            &mut self.parts,
            &mut self.dgrams,
        ) {
            Ok(k) => {
                let bytes = self.dgrams[before..]
                    .iter()
                    .map(|d| d.len as u64)
                    .sum::<u64>();
                local.tx_packets += k as u64;
                local.tx_bytes += bytes;
                local.peers.tx(peer, k as u64, bytes);
            }
            Err(SegmentError::NoRoom) if !self.dgrams.is_empty() => return Decided::NoRoom,
            // An empty arena holds any super-packet `segment` accepts; were
            // it not so, this drop (not a retry) ends the loop.
            Err(SegmentError::NoRoom) => local.drop(DropReason::TunBadOffload),
            Err(SegmentError::Bad(r)) => local.drop(r),
        }
        Decided::Done
    }

    /// Packets read in this batch.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Walks the packets read, with `table` loaded once for the whole batch
    /// (a super-packet's segments share it), over a queue with `socks`
    /// sending sockets per family (`[IPv4, IPv6]`; at least one).
    pub fn turn<'a>(
        &'a mut self,
        core: &'a Core,
        table: &'a Table,
        socks: [usize; 2],
    ) -> TxTurn<'a> {
        self.forget_pending();
        TxTurn {
            b: self,
            core,
            table,
            socks,
            j: 0,
            // A node has sockets of one family at least; an IPv6-only
            // node's IPv4 set is empty.
            cur: SockId {
                family: if socks[0] == 0 {
                    Family::V6
                } else {
                    Family::V4
                },
                index: 0,
            },
            placed: false,
            sent: false,
        }
    }
}

/// What became of one read.
enum Decided {
    /// Described as datagrams, or dropped and counted.
    Done,
    /// No route: the ICMP answer of this length is in the scratch buffer.
    Unreachable(usize),
    /// The arena is too full for this super-packet's headers: send what it
    /// holds, then cut it again.
    NoRoom,
}

/// What the worker does next for a transmit batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStep {
    /// Send the datagrams described so far ([`TxTurn::pending`]) from this
    /// socket; the next step forgets them.
    Send(SockId),
    /// No route: write the ICMP error [`TxTurn::answer`]`(len)` back into
    /// TUN if [`TxTurn::may_answer`], then count it with [`TxTurn::answered`].
    Answer(usize),
    /// The batch is done.
    Done,
}

/// One walk over a [`TxBatch`]: call [`TxTurn::next`] until [`TxStep::Done`].
pub struct TxTurn<'a> {
    b: &'a mut TxBatch,
    core: &'a Core,
    table: &'a Table,
    socks: [usize; 2],
    /// The next packet to decide on.
    j: usize,
    /// The socket the pending datagrams leave from.
    cur: SockId,
    /// Packet `j`'s socket is `cur` already: it was chosen before the step
    /// that sent the datagrams before it.
    placed: bool,
    /// The last step handed out the pending datagrams.
    sent: bool,
}

impl TxTurn<'_> {
    /// Decides on packets until there is I/O to do, and says what it is.
    pub fn next(&mut self, local: &mut LocalCounts) -> TxStep {
        if std::mem::take(&mut self.sent) {
            self.b.forget_pending();
        }
        while self.j < self.b.n {
            let j = self.j;
            if !std::mem::take(&mut self.placed) {
                let sock = socket_for(self.socks, self.b.packet(j));
                if sock != self.cur {
                    let prev = std::mem::replace(&mut self.cur, sock);
                    if !self.b.dgrams.is_empty() {
                        self.placed = true;
                        return self.send(prev);
                    }
                }
            }
            let h = self.b.header(j);
            let decided = if h.gso_kind() == virtio::GSO_NONE {
                self.b.encap(j, &h, self.core, self.table, local)
            } else {
                self.b.segment(j, &h, self.core, self.table, local)
            };
            match decided {
                Decided::Done => self.j += 1,
                Decided::Unreachable(len) => {
                    self.j += 1;
                    local.drop(DropReason::NoRoute);
                    return TxStep::Answer(len);
                }
                Decided::NoRoom => {
                    // The same super-packet again, once the arena is empty.
                    self.placed = true;
                    return self.send(self.cur);
                }
            }
        }
        if !self.b.dgrams.is_empty() {
            return self.send(self.cur);
        }
        TxStep::Done
    }

    fn send(&mut self, sock: SockId) -> TxStep {
        self.sent = true;
        TxStep::Send(sock)
    }

    /// The datagrams a [`TxStep::Send`] sends, and where their parts lie.
    pub fn pending(&self) -> (Gather<'_, Slot>, &[Datagram]) {
        let b = &*self.b;
        let from = Gather {
            arena: b.arena.bytes(),
            bufs: &b.slots,
            parts: &b.parts,
        };
        (from, &b.dgrams)
    }

    /// Whether the rate limit lets an ICMP answer go at `now`.
    pub fn may_answer(&mut self, now: Instant) -> bool {
        self.b.icmp.allows(now)
    }

    /// The TUN write of a [`TxStep::Answer`]`(len)`: the ICMP error, after a
    /// zero virtio-net header on a device with offloads.
    pub fn answer(&mut self, len: usize) -> &[u8] {
        let b = &mut *self.b;
        b.scratch[..VIRTIO_NET_HDR_LEN].fill(0);
        let from = VIRTIO_NET_HDR_LEN - b.vh();
        let end = VIRTIO_NET_HDR_LEN + len.min(ANSWER_ROOM);
        &b.scratch[from..end]
    }

    /// Counts an answer written.
    pub fn answered(&mut self, local: &mut LocalCounts) {
        self.b.icmp.spend();
        local.icmp_sent += 1;
    }
}

/// Where one batched receive puts its datagrams: buffer `i` at
/// `slots[i][offset..]`, its length in `lens[i]`, its source in `srcs[i]`,
/// and with UDP GRO the size of each of its segments in `segs[i]` (0 for a
/// single datagram).
pub struct RecvBufs<'a> {
    pub slots: &'a mut [Slot],
    pub offset: usize,
    pub lens: &'a mut [usize],
    pub srcs: &'a mut [SocketAddr],
    pub segs: &'a mut [usize],
}

/// The UDP → TUN half's buffers, allocated once: the received buffers (one
/// datagram, or with UDP GRO a run of same-size segments back to back),
/// whose inner packets are written to TUN from where they lie: on an
/// offload device through the coalescer (one write per run of one TCP
/// flow), otherwise one write each.
pub struct RxBatch {
    offload: bool,
    inbox: Vec<Slot>,
    lens: [usize; RX_BUFFERS],
    segs: [usize; RX_BUFFERS],
    srcs: [SocketAddr; RX_BUFFERS],
    n: usize,
    co: Coalescer,
}

impl RxBatch {
    /// Where a datagram is received in its slot: decapsulated, its inner
    /// packet starts at [`HEADROOM`].
    pub const OFFSET: usize = HEADROOM - ENCAP_LEN;

    /// Buffers for a TUN device that takes virtio-net framed, coalesced
    /// writes (`offload`) or plain packets.
    pub fn new(offload: bool) -> RxBatch {
        RxBatch {
            offload,
            inbox: (0..RX_BUFFERS).map(|_| Slot::new(SLOT)).collect(),
            lens: [0; RX_BUFFERS],
            segs: [0; RX_BUFFERS],
            srcs: [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)); RX_BUFFERS],
            n: 0,
            co: Coalescer::new(),
        }
    }

    /// The TUN device's MTU: a TCP super-packet longer than it is written
    /// for the kernel to cut ([`Coalescer::set_mtu`]).
    pub fn set_mtu(&mut self, mtu: usize) {
        self.co.set_mtu(mtu);
    }

    /// Empties the batch and hands out its buffers for one receive.
    pub fn bufs(&mut self) -> RecvBufs<'_> {
        self.n = 0;
        self.inbox.iter_mut().for_each(Slot::reset);
        RecvBufs {
            slots: &mut self.inbox,
            offset: Self::OFFSET,
            lens: &mut self.lens,
            srcs: &mut self.srcs,
            segs: &mut self.segs,
        }
    }

    /// Takes the `n` buffers the receive into [`RxBatch::bufs`] filled.
    pub fn received(&mut self, n: usize) {
        self.n = n.min(RX_BUFFERS);
        // A datagram is never longer than its room.
        for len in &mut self.lens[..self.n] {
            *len = (*len).min(SLOT - Self::OFFSET);
        }
    }

    /// Walks the buffers received, with `table` loaded once for the batch.
    pub fn turn<'a>(&'a mut self, core: &'a Core, table: &'a Table) -> RxTurn<'a> {
        RxTurn {
            b: self,
            core,
            table,
            i: 0,
            pos: 0,
            from: None,
            accepted: 0,
            accepted_bytes: 0,
            wrote: false,
            closed: false,
        }
    }
}

/// What the worker does next for a receive batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxStep {
    /// Write the coalescer's finished writes ([`RxTurn::writes`]) to TUN,
    /// each counted with [`count_written`]; the next step forgets them.
    Write,
    /// Write the inner packet [`RxTurn::packet`]`(buf, range)` to TUN alone
    /// (a device without offloads), counted with [`count_written`].
    WriteOne { buf: usize, range: Range<usize> },
    /// A source check refused a datagram or packet from `from` (counted
    /// already): the worker says so, at most so often.
    Refused { from: IpAddr, reason: DropReason },
    /// The batch is done.
    Done,
}

/// One walk over an [`RxBatch`]: call [`RxTurn::next`] until [`RxStep::Done`].
pub struct RxTurn<'a> {
    b: &'a mut RxBatch,
    core: &'a Core,
    table: &'a Table,
    /// The buffer being decapsulated, and where in it.
    i: usize,
    pos: usize,
    /// Buffer `i`'s sender and its counter slot: a GRO buffer is one
    /// sender's, looked up once for all its segments.
    from: Option<(Sender<'a>, u32)>,
    /// The peer's share of buffer `i` so far, counted once per buffer.
    accepted: u64,
    accepted_bytes: u64,
    /// The last step handed out the coalescer's writes.
    wrote: bool,
    /// The coalescer was closed at the end of the batch.
    closed: bool,
}

impl<'a> RxTurn<'a> {
    /// Decapsulates until there is I/O to do, and says what it is.
    pub fn next(&mut self, local: &mut LocalCounts) -> RxStep {
        if std::mem::take(&mut self.wrote) {
            self.b.co.clear();
        }
        while self.i < self.b.n {
            let (from, peer) = match self.sender(local) {
                Ok(found) => found,
                Err(refused) => return refused,
            };
            if let Some(step) = self.segments(from, peer, local) {
                return step;
            }
            if self.accepted > 0 {
                local.peers.rx(peer, self.accepted, self.accepted_bytes);
            }
            (self.from, self.pos, self.accepted, self.accepted_bytes) = (None, 0, 0, 0);
            self.i += 1;
        }
        if self.b.offload && !std::mem::replace(&mut self.closed, true) {
            self.b.co.close();
            if !self.b.co.writes().0.is_empty() {
                self.wrote = true;
                return RxStep::Write;
            }
            self.b.co.clear();
        }
        RxStep::Done
    }

    /// Buffer `i`'s size per segment: its GRO segment size, or all of it.
    fn segment_size(&self, i: usize) -> usize {
        if self.b.segs[i] > 0 {
            self.b.segs[i]
        } else {
            self.b.lens[i]
        }
    }

    /// Who sent buffer `i`, looked up once for all its segments; a sender
    /// refused is counted once per segment, and the buffer skipped.
    fn sender(&mut self, local: &mut LocalCounts) -> Result<(Sender<'a>, u32), RxStep> {
        if let Some(found) = self.from {
            return Ok(found);
        }
        let i = self.i;
        let src = self.b.srcs[i].ip();
        match self.core.identify(self.table, src) {
            Ok(found) => Ok(*self.from.insert(found)),
            Err(r) => {
                let segments = self.b.lens[i].div_ceil(self.segment_size(i).max(1));
                local.drops[r as usize] += segments as u64;
                self.i += 1;
                Err(RxStep::Refused {
                    from: src,
                    reason: r,
                })
            }
        }
    }

    /// Decapsulates buffer `i`'s segments from `pos` on, until one needs
    /// I/O (then the step) or the buffer ends (then `None`).
    fn segments(&mut self, from: Sender<'_>, peer: u32, local: &mut LocalCounts) -> Option<RxStep> {
        let i = self.i;
        let (total, seg) = (self.b.lens[i], self.segment_size(i));
        while self.pos < total {
            if self.b.offload && !self.b.co.has_room() {
                self.b.co.close();
                self.wrote = true;
                return Some(RxStep::Write);
            }
            let len = seg.min(total - self.pos);
            let start = RxBatch::OFFSET + self.pos;
            self.pos = self.pos.saturating_add(seg);
            match self.core.decap(from, self.b.inbox[i].as_ref(), start, len) {
                RxAction::Deliver(r) => {
                    local.rx_bytes += r.len() as u64;
                    self.accepted += 1;
                    self.accepted_bytes += r.len() as u64;
                    if self.b.offload {
                        self.b.co.push(&self.b.inbox[i].as_ref()[r.clone()], i, r);
                    } else {
                        // No offloads to mark a partial checksum with: complete it here.
                        offload::complete_partial(&mut self.b.inbox[i].as_mut()[r.clone()]);
                        return Some(RxStep::WriteOne { buf: i, range: r });
                    }
                }
                RxAction::Drop(r) => {
                    local.drop(r);
                    local.peers.drop(peer, r);
                    if r == DropReason::SpoofedSource {
                        return Some(RxStep::Refused {
                            from: self.b.srcs[i].ip(),
                            reason: r,
                        });
                    }
                }
            }
        }
        None
    }

    /// The writes of an [`RxStep::Write`], and where their parts lie.
    pub fn writes(&self) -> (&[TunWrite], Gather<'_, Slot>) {
        let (writes, parts, arena) = self.b.co.writes();
        let from = Gather {
            arena,
            bufs: &self.b.inbox,
            parts,
        };
        (writes, from)
    }

    /// The inner packet of an [`RxStep::WriteOne`].
    pub fn packet(&self, buf: usize, range: Range<usize>) -> &[u8] {
        self.b
            .inbox
            .get(buf)
            .and_then(|s| s.as_ref().get(range))
            .unwrap_or(&[])
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
