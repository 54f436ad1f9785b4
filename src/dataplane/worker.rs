//! The packet loops: one OS thread per TUN queue, each moving TUN → core → UDP
//! and UDP → core → TUN.
//!
//! Each turn moves a batch each way: up to [`TX_READS`] TUN reads (each possibly
//! a 64 KiB super-packet) with the forwarding table loaded once and one
//! gathered `sendmmsg`, then one `recvmmsg` whose inner packets are coalesced
//! into as few TUN writes as their flows allow; counters are flushed once.
//! Serving both directions from one thread means a reply produced while a
//! request is written (the kernel answers in the writer's context) is picked
//! up without waking another thread. Buffers are allocated when the loop
//! starts and reused; nothing is allocated per packet.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{Core, Route, RxAction, TxAction, flow_hash};
use super::counters::{Counters, DropReason, LocalCounts};
use super::offload::{self, ARENA_LEN, Arena, Coalescer, Datagram, SegmentError};
use super::slot::Slot;
use super::table::SharedTable;
use super::{ENCAP_LEN, Gather, HEADROOM, Part, SLOT};
use crate::sys::{self, BATCH, Mmsg};
use crate::wire::virtio::{self, HEADER_LEN as VIRTIO_NET_HDR_LEN};

/// What the kernel offers the worker, probed once at start.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// TUN reads are virtio-net framed and may be TSO super-packets; TUN
    /// writes may be coalesced ones.
    offload: bool,
    /// UDP GSO: a run of segments to one peer goes in one send.
    gso: bool,
}

/// Receive buffers per batch; with UDP GRO each may hold up to 64 KiB of segments.
const RX_BUFFERS: usize = 32;
/// How long an idle loop sleeps in `poll` at most (a stop wakes it sooner).
const IDLE_WAKE: Duration = Duration::from_millis(200);
/// Busy turns of the worker loop between two flushes of its counts into
/// the shared counters (and always before it sleeps): a turn under load can
/// carry a datagram or two, and a flush costs a dozen atomic adds and a
/// clock read; with per-peer counts, flushing every turn put one TCP stream
/// below the baseline in three runs of three
/// (docs/performance.md#tried-and-dropped). 32 turns are well under a
/// millisecond.
const FLUSH_EVERY: u32 = 32;
/// At most this many ICMP unreachables per second per node.
const ICMP_PER_SEC: u32 = 100;

/// One TUN queue and its sockets: what one worker thread serves.
pub struct Queue {
    pub tun: tun_rs::SyncDevice,
    /// Receives on the VXLAN port of the IPv4 underlay (and sends, when
    /// `send` is empty); `None` on a node of an IPv6-only network.
    pub rx: Option<UdpSocket>,
    /// Sockets on ports of their own, shared by all workers: a packet leaves
    /// from the one its flow hash picks, so each flow has a stable source
    /// port and receivers (SO_REUSEPORT, a NIC's RSS) spread flows.
    pub send: Arc<[UdpSocket]>,
    /// On a dual-stack node, the same two on the IPv6 underlay: IPv6 pod
    /// traffic goes to peers' IPv6 VTEPs, as flannel's `flannel-v6.1` sends it.
    pub v6: Option<Underlay6>,
}

/// A queue's sockets on the IPv6 underlay.
pub struct Underlay6 {
    pub rx: UdpSocket,
    pub send: Arc<[UdpSocket]>,
}

/// The running packet loops; dropping it does not stop them, [`Dataplane::stop`] does.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    /// Written once on stop: wakes every worker sleeping in `poll`.
    wake: UnixDatagram,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts one worker thread per queue; each serves both directions.
    ///
    /// # Errors
    /// When a thread cannot start.
    pub fn start(
        queues: Vec<Queue>,
        core: Core,
        table: SharedTable,
        counters: Arc<Counters>,
    ) -> io::Result<Dataplane> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = UnixDatagram::pair()?;
        let woken = Arc::new(woken);
        let mut threads = Vec::with_capacity(queues.len());
        for (i, q) in queues.into_iter().enumerate() {
            let offload = q.tun.tcp_gso();
            // The IPv4 underlay's sockets, or on an IPv6-only node the IPv6 one's.
            let first = q
                .send
                .first()
                .or(q.rx.as_ref())
                .or(q.v6.as_ref().map(|v6| v6.send.first().unwrap_or(&v6.rx)));
            let gso = first.is_some_and(crate::sys::udp_gso_supported);
            let mut gro = q.rx.as_ref().is_some_and(crate::sys::enable_udp_gro);
            if let Some(v6) = &q.v6 {
                gro |= crate::sys::enable_udp_gro(&v6.rx);
            }
            if i == 0 {
                tracing::info!(
                    "UDP GSO (one send per run of segments): {}; UDP GRO (coalesced receive): {}",
                    if gso { "on" } else { "off" },
                    if gro { "on" } else { "off" }
                );
            }
            let features = Features { offload, gso };
            let (stop, table, counters) = (stop.clone(), table.clone(), counters.clone());
            let woken = woken.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weft-dp{i}"))
                    .spawn(move || run(&q, core, &table, &counters, &stop, &woken, features))?,
            );
        }
        Ok(Dataplane {
            stop,
            wake,
            threads,
        })
    }

    /// Stops the workers and waits for them: at most one batch each, since
    /// the wake-up reaches those asleep in `poll` at once.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Never read: it stays readable, so every worker's poll returns.
        let _ = self.wake.send(&[1]);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// One worker: alternates a transmit and a receive batch while either side
/// has traffic, then sleeps in `poll(2)` on both descriptors.
fn run(
    q: &Queue,
    core: Core,
    table: &SharedTable,
    counters: &Counters,
    stop: &AtomicBool,
    wake: &UnixDatagram,
    features: Features,
) {
    let send: &[UdpSocket] = match &q.rx {
        Some(rx) if q.send.is_empty() => std::slice::from_ref(rx),
        _ => &q.send,
    };
    let send6: &[UdpSocket] = match &q.v6 {
        Some(v6) if v6.send.is_empty() => std::slice::from_ref(&v6.rx),
        Some(v6) => &v6.send,
        None => &[],
    };
    let mut tx = Tx::new(features);
    let mut rx = Rx::new(features.offload);
    if let Ok(mtu) = q.tun.mtu() {
        rx.co.set_mtu(usize::from(mtu));
    }
    let mut local = LocalCounts::default();
    let mut idle_log = ErrLog::new("waiting for packets");
    let mut turns = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let t = tx.batch(&q.tun, [send, send6], &core, table, &mut local);
        let mut r = false;
        if let Some(rx4) = &q.rx {
            r |= rx.batch(rx4, &q.tun, &core, table, &mut local);
        }
        if let Some(v6) = &q.v6 {
            r |= rx.batch(&v6.rx, &q.tun, &core, table, &mut local);
        }
        turns += 1;
        if t || r {
            if turns >= FLUSH_EVERY {
                counters.flush(&mut local);
                turns = 0;
            }
            continue;
        }
        counters.flush(&mut local);
        turns = 0;
        let fds = [
            q.tun.as_fd(),
            q.rx.as_ref().map_or(wake.as_fd(), |rx| rx.as_fd()),
            wake.as_fd(),
            q.v6.as_ref().map_or(wake.as_fd(), |v6| v6.rx.as_fd()),
        ];
        if let Err(e) = sys::wait_readable_any(&fds, IDLE_WAKE) {
            idle_log.log(&e);
            std::thread::sleep(IDLE_WAKE);
        }
    }
    counters.flush(&mut local);
}

/// Logs an I/O error at most once per 10 s per loop, with how many were suppressed.
struct ErrLog {
    what: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrLog {
    fn new(what: &'static str) -> ErrLog {
        ErrLog {
            what,
            last: None,
            suppressed: 0,
        }
    }

    fn log(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|l| now.duration_since(l) > Duration::from_secs(10))
        {
            tracing::warn!(
                "{}: {e} ({} more since the last report)",
                self.what,
                self.suppressed
            );
            self.last = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

/// Logs datagrams refused by one source check at most once per 10 s, naming
/// the sender and what to do if the refusal is wrong.
struct SourceLog {
    reason: DropReason,
    last: Option<Instant>,
    suppressed: u64,
}

impl SourceLog {
    fn new(reason: DropReason) -> SourceLog {
        SourceLog {
            reason,
            last: None,
            suppressed: 0,
        }
    }

    fn log(&mut self, from: IpAddr) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) <= Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.last = Some(now);
        if self.reason == DropReason::UnknownPeer {
            tracing::warn!(
                "dropped VXLAN from {from}: no lease in this network has that public IP (unknown_peer; {n} more refused since the last report). If nodes reach each other through NAT, so the source is not the lease's PublicIP, start weftd with --accept-unknown-peers"
            );
        } else {
            tracing::warn!(
                "dropped a packet from {from} whose inner source is outside the subnets that node holds (spoofed_source; {n} more refused since the last report). If that node forwards other networks' traffic without masquerading it, start weftd with --accept-foreign-sources"
            );
        }
    }
}

/// TUN reads one transmit batch takes at most.
const TX_READS: usize = 64;
/// A transmit batch stops reading once it holds this many bytes, so a batch
/// of super-packets stays cache-sized.
const TX_BATCH_BYTES: usize = 256 * 1024;
/// Parts and datagrams one transmit batch may describe (bounded by the arena:
/// every segment's header lives there).
const TX_PARTS: usize = 2 * (ARENA_LEN / (ENCAP_LEN + 40)) + TX_READS;

/// The TUN → UDP half: its buffers, allocated once.
struct Tx {
    features: Features,
    slots: Vec<Slot>,
    lens: [usize; TX_READS],
    arena: Arena,
    parts: Vec<Part>,
    dgrams: Vec<Datagram>,
    errors: Vec<io::Error>,
    /// ICMP answers are built after room for a (zero) virtio-net header.
    scratch: [u8; VIRTIO_NET_HDR_LEN + 128],
    mmsg: Mmsg,
    errlog: ErrLog,
    sendlog: ErrLog,
    icmp_budget: u32,
    icmp_second: Instant,
}

impl Tx {
    fn new(features: Features) -> Tx {
        Tx {
            features,
            slots: (0..TX_READS).map(|_| Slot::new(SLOT)).collect(),
            lens: [0; TX_READS],
            arena: Arena::default(),
            parts: Vec::with_capacity(TX_PARTS),
            dgrams: Vec::with_capacity(TX_PARTS),
            errors: Vec::with_capacity(BATCH),
            scratch: [0; VIRTIO_NET_HDR_LEN + 128],
            mmsg: Mmsg::new(),
            errlog: ErrLog::new("reading from TUN"),
            sendlog: ErrLog::new("sending VXLAN datagrams"),
            icmp_budget: ICMP_PER_SEC,
            icmp_second: Instant::now(),
        }
    }

    /// Reads what TUN has queued (up to a batch), encapsulates or segments
    /// it, and sends it from `socks[0]` (IPv4 underlay) or, for an IPv6
    /// packet, `socks[1]` (IPv6 underlay, empty on an IPv4-only node).
    /// Returns whether anything was read.
    fn batch(
        &mut self,
        tun: &tun_rs::SyncDevice,
        socks: [&[UdpSocket]; 2],
        core: &Core,
        table: &SharedTable,
        local: &mut LocalCounts,
    ) -> bool {
        // With offloads each read starts with a virtio-net header, read into
        // the end of the headroom; the IP packet always starts at HEADROOM.
        let vh = if self.features.offload {
            VIRTIO_NET_HDR_LEN
        } else {
            0
        };
        let (mut n, mut bytes) = (0, 0);
        while n < TX_READS && bytes < TX_BATCH_BYTES {
            let slot = &mut self.slots[n];
            slot.reset();
            match tun.recv(&mut slot.as_mut()[HEADROOM - vh..]) {
                Ok(len) if len < vh => local.drop(DropReason::TunTruncated),
                Ok(len) => {
                    self.lens[n] = len - vh;
                    bytes += len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.errlog.log(&e);
                    break;
                }
            }
        }
        if n == 0 {
            return false;
        }
        local.tun_reads += n as u64;
        // One table load for the whole batch: a super-packet's segments share it.
        let t = table.load();
        self.arena.clear();
        self.parts.clear();
        self.dgrams.clear();
        // The socket the pending datagrams leave from: (family, index). A
        // node has sockets of one family at least; an IPv6-only node's IPv4
        // set is empty (its core routes no IPv4).
        let only6 = socks[0].is_empty();
        let mut cur = (usize::from(only6), 0);
        let mut j = 0;
        while j < n {
            let len = self.lens[j];
            let pkt = &self.slots[j].as_ref()[HEADROOM..HEADROOM + len];
            let fam = usize::from(
                only6 || (pkt.first().is_some_and(|b| b >> 4 == 6) && !socks[1].is_empty()),
            );
            let set = socks[fam];
            let k = if set.len() > 1 {
                flow_hash(pkt) as usize % set.len()
            } else {
                0
            };
            if (fam, k) != cur {
                self.send_pending(&socks[cur.0][cur.1], local);
                cur = (fam, k);
            }
            let sock = &socks[cur.0][cur.1];
            let h = if vh > 0 {
                virtio::Header::parse(&self.slots[j].as_ref()[HEADROOM - vh..HEADROOM])
                    .unwrap_or_default()
            } else {
                virtio::Header::default()
            };
            let mut unreachable = None;
            let scratch = &mut self.scratch[VIRTIO_NET_HDR_LEN..];
            if h.gso_kind() == virtio::GSO_NONE {
                let slot = self.slots[j].as_mut();
                if h.flags & virtio::FLAG_NEEDS_CSUM != 0
                    && let Err(r) =
                        offload::complete_checksum(&h, &mut slot[HEADROOM..HEADROOM + len])
                {
                    local.drop(r);
                    j += 1;
                    continue;
                }
                match core.encap(&t, slot, len, scratch) {
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
                    TxAction::Unreachable { len } => unreachable = Some(len),
                    TxAction::Drop(r) => local.drop(r),
                }
            } else {
                let pkt = &self.slots[j].as_ref()[HEADROOM..HEADROOM + len];
                match core.route(&t, pkt, scratch) {
                    Route::Peer { to, prefix, slot } => {
                        let before = self.dgrams.len();
                        match offload::segment(
                            &h,
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
                                local.peers.tx(slot, k as u64, bytes);
                            }
                            Err(SegmentError::NoRoom) => {
                                self.send_pending(sock, local);
                                continue; // the same super-packet again, with room
                            }
                            Err(SegmentError::Bad(r)) => local.drop(r),
                        }
                    }
                    Route::Unreachable { len } => unreachable = Some(len),
                    Route::Drop(r) => local.drop(r),
                }
            }
            if let Some(len) = unreachable {
                self.answer_unreachable(tun, len, local);
            }
            j += 1;
        }
        drop(t);
        self.send_pending(&socks[cur.0][cur.1], local);
        true
    }

    /// Writes the ICMP unreachable built in `scratch` back into TUN, within
    /// the rate limit.
    fn answer_unreachable(
        &mut self,
        tun: &tun_rs::SyncDevice,
        len: usize,
        local: &mut LocalCounts,
    ) {
        local.drop(DropReason::NoRoute);
        if self.icmp_second.elapsed() >= Duration::from_secs(1) {
            (self.icmp_budget, self.icmp_second) = (ICMP_PER_SEC, Instant::now());
        }
        self.scratch[..VIRTIO_NET_HDR_LEN].fill(0);
        let from = if self.features.offload {
            0
        } else {
            VIRTIO_NET_HDR_LEN
        };
        if self.icmp_budget > 0
            && tun
                .send(&self.scratch[from..VIRTIO_NET_HDR_LEN + len])
                .is_ok()
        {
            self.icmp_budget -= 1;
            local.icmp_sent += 1;
        }
    }

    /// Sends the datagrams described so far and empties the batch.
    fn send_pending(&mut self, sock: &UdpSocket, local: &mut LocalCounts) {
        if !self.dgrams.is_empty() {
            self.errors.clear();
            let from = Gather {
                arena: self.arena.bytes(),
                bufs: &self.slots,
                parts: &self.parts,
            };
            let report = self.mmsg.send(
                sock,
                from,
                &self.dgrams,
                self.features.gso,
                &mut self.errors,
            );
            if report.gso_refused {
                self.features.gso = false;
                tracing::warn!(
                    "the kernel refused a UDP GSO send ({:?}); sending one datagram per syscall from now on",
                    self.errors.first()
                );
            }
            if report.failed > 0 {
                local.tx_packets = local.tx_packets.saturating_sub(report.failed as u64);
                local.drops[DropReason::UdpSendError as usize] += report.failed as u64;
                if let Some(e) = self.errors.first() {
                    self.sendlog.log(e);
                }
            }
        }
        self.arena.clear();
        self.parts.clear();
        self.dgrams.clear();
    }
}

/// The UDP → TUN half: its buffers, allocated once.
struct Rx {
    offload: bool,
    /// Received buffers: one datagram, or with UDP GRO a run of same-size
    /// segments back to back. Inner packets are written to TUN from where
    /// they lie: on an offload device through the coalescer (one write per
    /// run of one TCP flow), otherwise one write each.
    inbox: Vec<Slot>,
    lens: [usize; RX_BUFFERS],
    segs: [usize; RX_BUFFERS],
    srcs: [SocketAddr; RX_BUFFERS],
    co: Coalescer,
    mmsg: Mmsg,
    errlog: ErrLog,
    tunlog: ErrLog,
    unknownlog: SourceLog,
    spoofedlog: SourceLog,
}

impl Rx {
    fn new(offload: bool) -> Rx {
        Rx {
            offload,
            inbox: (0..RX_BUFFERS).map(|_| Slot::new(SLOT)).collect(),
            lens: [0; RX_BUFFERS],
            segs: [0; RX_BUFFERS],
            srcs: [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)); RX_BUFFERS],
            co: Coalescer::new(),
            mmsg: Mmsg::new(),
            errlog: ErrLog::new("receiving VXLAN datagrams"),
            tunlog: ErrLog::new("writing to TUN"),
            unknownlog: SourceLog::new(DropReason::UnknownPeer),
            spoofedlog: SourceLog::new(DropReason::SpoofedSource),
        }
    }

    /// Receives one batch of datagrams, decapsulates them and writes the
    /// inner packets to TUN. Returns whether anything arrived.
    fn batch(
        &mut self,
        sock: &UdpSocket,
        tun: &tun_rs::SyncDevice,
        core: &Core,
        table: &SharedTable,
        local: &mut LocalCounts,
    ) -> bool {
        let off = HEADROOM - ENCAP_LEN;
        self.inbox.iter_mut().for_each(Slot::reset);
        let n = match self.mmsg.recv(
            sock,
            &mut self.inbox,
            off,
            &mut self.lens,
            &mut self.srcs,
            &mut self.segs,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.errlog.log(&e);
                0
            }
        };
        let table = table.load();
        for i in 0..n {
            let seg = if self.segs[i] > 0 {
                self.segs[i]
            } else {
                self.lens[i]
            };
            let src = self.srcs[i].ip();
            // One GRO datagram is one sender's: looked up once for all its segments.
            let (from, peer) = match core.identify(&table, src) {
                Ok(found) => found,
                Err(r) => {
                    let segments = self.lens[i].div_ceil(seg.max(1)) as u64;
                    local.drops[r as usize] += segments;
                    self.unknownlog.log(src);
                    continue;
                }
            };
            let mut pos = 0;
            // The peer's share, counted once per datagram (a GRO run is one sender's).
            let (mut accepted, mut accepted_bytes) = (0u64, 0u64);
            while pos < self.lens[i] {
                let len = seg.min(self.lens[i] - pos);
                match core.decap(from, self.inbox[i].as_ref(), off + pos, len) {
                    RxAction::Deliver(r) => {
                        local.rx_bytes += r.len() as u64;
                        accepted += 1;
                        accepted_bytes += r.len() as u64;
                        if self.offload {
                            if !self.co.has_room() {
                                self.write_coalesced(tun, local);
                            }
                            self.co.push(&self.inbox[i].as_ref()[r.clone()], i, r);
                        } else {
                            // No offloads to mark a partial checksum with: complete it here.
                            let pkt = &mut self.inbox[i].as_mut()[r];
                            offload::complete_partial(pkt);
                            match tun.send(pkt) {
                                Ok(_) => {
                                    local.rx_packets += 1;
                                    local.tun_writes += 1;
                                }
                                Err(e) => {
                                    local.drop(DropReason::TunWriteError);
                                    self.tunlog.log(&e);
                                }
                            }
                        }
                    }
                    RxAction::Drop(r) => {
                        local.drop(r);
                        local.peers.drop(peer, r);
                        if r == DropReason::SpoofedSource {
                            self.spoofedlog.log(src);
                        }
                    }
                }
                pos += seg;
            }
            if accepted > 0 {
                local.peers.rx(peer, accepted, accepted_bytes);
            }
        }
        self.write_coalesced(tun, local);
        n > 0
    }

    /// Writes every finished write of the coalescer to TUN, counts them, and
    /// empties it.
    fn write_coalesced(&mut self, tun: &tun_rs::SyncDevice, local: &mut LocalCounts) {
        self.co.close();
        let (writes, parts, arena) = self.co.writes();
        let from = Gather {
            arena,
            bufs: &self.inbox,
            parts,
        };
        for w in writes {
            match sys::tun_write(tun, from, w.parts.clone()) {
                Ok(_) => {
                    local.rx_packets += w.segments as u64;
                    local.tun_writes += 1;
                }
                Err(e) => {
                    local.drops[DropReason::TunWriteError as usize] += w.segments as u64;
                    self.tunlog.log(&e);
                }
            }
        }
        self.co.clear();
    }
}
