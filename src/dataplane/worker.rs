//! The two packet loops, one OS thread each: TUN → core → UDP and UDP → core → TUN.
//!
//! Each wake-up moves a batch: up to [`BATCH`] packets read, the forwarding table
//! loaded once, one `sendmmsg`/`recvmmsg`, counters flushed once. Buffers are
//! allocated when the loop starts and reused; nothing is allocated per packet.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{Core, Route, RxAction, TxAction};
use super::counters::{Counters, DropReason, LocalCounts};
use super::offload::{self, ARENA_LEN, Arena, Coalescer, Datagram, SegmentError};
use super::slot::Slot;
use super::table::SharedTable;
use super::{ENCAP_LEN, Gather, HEADROOM, Part, SLOT};
use crate::sys::{self, BATCH, Mmsg};
use crate::wire::virtio::{self, HEADER_LEN as VIRTIO_NET_HDR_LEN};

/// What the kernel offers the transmit loop, probed once at start.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// TUN reads are virtio-net framed and may be TSO super-packets.
    offload: bool,
    /// UDP GSO: a run of segments to one peer goes in one send.
    gso: bool,
}

/// Receive buffers per batch; with UDP GRO each may hold up to 64 KiB of segments.
const RX_BUFFERS: usize = 32;
/// How often an idle loop looks at the stop flag.
const IDLE_WAKE: Duration = Duration::from_millis(200);
/// At most this many ICMP unreachables per second per node.
const ICMP_PER_SEC: u32 = 100;

/// The running packet loops; dropping it does not stop them, [`Dataplane::stop`] does.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts both loops on their own threads.
    ///
    /// # Errors
    /// When the TUN handle cannot be duplicated or a thread cannot start.
    pub fn start(
        tun: tun_rs::SyncDevice,
        sock: UdpSocket,
        core: Core,
        table: SharedTable,
        counters: Arc<Counters>,
    ) -> io::Result<Dataplane> {
        let offload = tun.tcp_gso();
        let gso = crate::sys::udp_gso_supported(&sock);
        let gro = crate::sys::enable_udp_gro(&sock);
        tracing::info!(
            "UDP GSO (one send per run of segments): {}; UDP GRO (coalesced receive): {}",
            if gso { "on" } else { "off" },
            if gro { "on" } else { "off" }
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sock = Arc::new(sock);
        // One handle, shared: reads and writes on a TUN fd are independent.
        let tun = Arc::new(tun);
        let tun_rx = tun.clone();
        let mut threads = vec![];
        {
            let (sock, table, counters, stop) =
                (sock.clone(), table.clone(), counters.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("weft-tx".into())
                    .spawn(move || {
                        tun_to_udp(
                            &tun,
                            &sock,
                            core,
                            &table,
                            &counters,
                            &stop,
                            Features { offload, gso },
                        )
                    })?,
            );
        }
        {
            let (counters, stop) = (counters.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("weft-rx".into())
                    .spawn(move || udp_to_tun(&sock, &tun_rx, core, &counters, &stop, offload))?,
            );
        }
        Ok(Dataplane { stop, threads })
    }

    /// Stops both loops and waits for them (at most about [`IDLE_WAKE`]).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
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

/// Waits up to [`IDLE_WAKE`] for `fd` to be readable; false on timeout or error
/// (logged, then a pause so a persistent error cannot spin).
fn wait(fd: &impl std::os::fd::AsFd, errlog: &mut ErrLog) -> bool {
    match sys::wait_readable(fd, IDLE_WAKE) {
        Ok(ready) => ready,
        Err(e) => {
            errlog.log(&e);
            std::thread::sleep(IDLE_WAKE);
            false
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

#[allow(clippy::too_many_arguments)]
fn send_pending(
    mmsg: &mut Mmsg,
    sock: &UdpSocket,
    arena: &Arena,
    slots: &[Slot],
    parts: &[Part],
    dgrams: &[Datagram],
    gso: &mut bool,
    local: &mut LocalCounts,
    errors: &mut Vec<io::Error>,
    sendlog: &mut ErrLog,
) {
    if dgrams.is_empty() {
        return;
    }
    errors.clear();
    let from = Gather {
        arena: arena.bytes(),
        bufs: slots,
        parts,
    };
    let report = mmsg.send(sock, from, dgrams, *gso, errors);
    if report.gso_refused {
        *gso = false;
        tracing::warn!(
            "the kernel refused a UDP GSO send ({:?}); sending one datagram per syscall from now on",
            errors.first()
        );
    }
    if report.failed > 0 {
        local.tx_packets = local.tx_packets.saturating_sub(report.failed as u64);
        local.drops[DropReason::UdpSendError as usize] += report.failed as u64;
        if let Some(e) = errors.first() {
            sendlog.log(e);
        }
    }
}

fn tun_to_udp(
    tun: &tun_rs::SyncDevice,
    sock: &UdpSocket,
    core: Core,
    table: &SharedTable,
    counters: &Counters,
    stop: &AtomicBool,
    features: Features,
) {
    let Features { offload, mut gso } = features;
    // With offloads each read starts with a virtio-net header, read into the
    // end of the headroom; the IP packet always starts at HEADROOM.
    let vh = if offload { virtio::HEADER_LEN } else { 0 };
    let mut slots: Vec<Slot> = (0..TX_READS).map(|_| Slot::new(SLOT)).collect();
    let mut lens = [0usize; TX_READS];
    let mut arena = Arena::default();
    let mut parts: Vec<Part> = Vec::with_capacity(TX_PARTS);
    let mut dgrams: Vec<Datagram> = Vec::with_capacity(TX_PARTS);
    let mut errors: Vec<io::Error> = Vec::with_capacity(BATCH);
    // ICMP answers are built after room for a (zero) virtio-net header.
    let mut scratch = [0u8; VIRTIO_NET_HDR_LEN + 128];
    let icmp_from = if offload { 0 } else { VIRTIO_NET_HDR_LEN };
    let mut mmsg = Mmsg::new();
    let mut local = LocalCounts::default();
    let mut errlog = ErrLog::new("reading from TUN");
    let mut sendlog = ErrLog::new("sending VXLAN datagrams");
    let (mut icmp_budget, mut icmp_second) = (ICMP_PER_SEC, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        if !wait(tun, &mut errlog) {
            continue;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < TX_READS && bytes < TX_BATCH_BYTES {
            let slot = &mut slots[n];
            slot.reset();
            match tun.recv(&mut slot.as_mut()[HEADROOM - vh..]) {
                Ok(len) if len < vh => local.drop(DropReason::TunTruncated),
                Ok(len) => {
                    lens[n] = len - vh;
                    bytes += len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    errlog.log(&e);
                    break;
                }
            }
        }
        if n == 0 {
            counters.flush(&mut local);
            continue;
        }
        local.tun_reads += n as u64;
        // One table load for the whole batch: a super-packet's segments share it.
        let t = table.load();
        arena.clear();
        parts.clear();
        dgrams.clear();
        let mut j = 0;
        while j < n {
            let len = lens[j];
            let h = if offload {
                virtio::Header::parse(&slots[j].as_ref()[HEADROOM - vh..HEADROOM])
                    .unwrap_or_default()
            } else {
                virtio::Header::default()
            };
            let mut unreachable = None;
            if h.gso_kind() == virtio::GSO_NONE {
                let slot = slots[j].as_mut();
                if h.flags & virtio::FLAG_NEEDS_CSUM != 0
                    && let Err(r) =
                        offload::complete_checksum(&h, &mut slot[HEADROOM..HEADROOM + len])
                {
                    local.drop(r);
                    j += 1;
                    continue;
                }
                match core.encap(&t, slot, len, &mut scratch[VIRTIO_NET_HDR_LEN..]) {
                    TxAction::Send { to, range } => {
                        local.tx_packets += 1;
                        local.tx_bytes += range.len() as u64;
                        let p = parts.len();
                        dgrams.push(Datagram {
                            to,
                            parts: p..p + 1,
                            len: range.len(),
                        });
                        parts.push(Part::Buf(j, range));
                    }
                    TxAction::Unreachable { len } => unreachable = Some(len),
                    TxAction::Drop(r) => local.drop(r),
                }
            } else {
                let pkt = &slots[j].as_ref()[HEADROOM..HEADROOM + len];
                match core.route(&t, pkt, &mut scratch[VIRTIO_NET_HDR_LEN..]) {
                    Route::Peer { to, prefix } => {
                        let before = dgrams.len();
                        match offload::segment(
                            &h,
                            pkt,
                            j,
                            HEADROOM,
                            &prefix,
                            to,
                            &mut arena,
                            &mut parts,
                            &mut dgrams,
                        ) {
                            Ok(k) => {
                                local.tx_packets += k as u64;
                                local.tx_bytes +=
                                    dgrams[before..].iter().map(|d| d.len as u64).sum::<u64>();
                            }
                            Err(SegmentError::NoRoom) => {
                                send_pending(
                                    &mut mmsg,
                                    sock,
                                    &arena,
                                    &slots,
                                    &parts,
                                    &dgrams,
                                    &mut gso,
                                    &mut local,
                                    &mut errors,
                                    &mut sendlog,
                                );
                                arena.clear();
                                parts.clear();
                                dgrams.clear();
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
                local.drop(DropReason::NoRoute);
                if icmp_second.elapsed() >= Duration::from_secs(1) {
                    (icmp_budget, icmp_second) = (ICMP_PER_SEC, Instant::now());
                }
                scratch[..VIRTIO_NET_HDR_LEN].fill(0);
                if icmp_budget > 0
                    && tun
                        .send(&scratch[icmp_from..VIRTIO_NET_HDR_LEN + len])
                        .is_ok()
                {
                    icmp_budget -= 1;
                    local.icmp_sent += 1;
                }
            }
            j += 1;
        }
        drop(t);
        send_pending(
            &mut mmsg,
            sock,
            &arena,
            &slots,
            &parts,
            &dgrams,
            &mut gso,
            &mut local,
            &mut errors,
            &mut sendlog,
        );
        counters.flush(&mut local);
    }
}

/// Writes every finished write of `co` to TUN, counts them, and empties it.
fn write_coalesced(
    co: &mut Coalescer,
    tun: &tun_rs::SyncDevice,
    inbox: &[Slot],
    local: &mut LocalCounts,
    tunlog: &mut ErrLog,
) {
    co.close();
    let (writes, parts, arena) = co.writes();
    let from = Gather {
        arena,
        bufs: inbox,
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
                tunlog.log(&e);
            }
        }
    }
    co.clear();
}

fn udp_to_tun(
    sock: &UdpSocket,
    tun: &tun_rs::SyncDevice,
    core: Core,
    counters: &Counters,
    stop: &AtomicBool,
    offload: bool,
) {
    // Received buffers: one datagram, or with UDP GRO a run of same-size
    // segments back to back. Inner packets are written to TUN from where they
    // lie: on an offload device through the coalescer (one write per run of
    // one TCP flow), otherwise one write each.
    let mut inbox: Vec<Slot> = (0..RX_BUFFERS).map(|_| Slot::new(SLOT)).collect();
    let mut lens = [0usize; RX_BUFFERS];
    let mut segs = [0usize; RX_BUFFERS];
    let mut srcs = [SocketAddrV4::new(0.into(), 0); RX_BUFFERS];
    let mut co = Coalescer::new();
    let mut mmsg = Mmsg::new();
    let mut local = LocalCounts::default();
    let mut errlog = ErrLog::new("receiving VXLAN datagrams");
    let mut tunlog = ErrLog::new("writing to TUN");
    let off = HEADROOM - ENCAP_LEN;
    while !stop.load(Ordering::Relaxed) {
        if !wait(sock, &mut errlog) {
            continue;
        }
        // Drain what is queued, a batch at a time, before sleeping again.
        for _ in 0..16 {
            inbox.iter_mut().for_each(Slot::reset);
            let n = match mmsg.recv(sock, &mut inbox, off, &mut lens, &mut srcs, &mut segs) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    errlog.log(&e);
                    break;
                }
            };
            for i in 0..n {
                let seg = if segs[i] > 0 { segs[i] } else { lens[i] };
                let mut pos = 0;
                while pos < lens[i] {
                    let len = seg.min(lens[i] - pos);
                    match core.decap(inbox[i].as_ref(), off + pos, len) {
                        RxAction::Deliver(r) => {
                            local.rx_bytes += r.len() as u64;
                            if offload {
                                if !co.has_room() {
                                    write_coalesced(&mut co, tun, &inbox, &mut local, &mut tunlog);
                                }
                                co.push(&inbox[i].as_ref()[r.clone()], i, r);
                            } else {
                                match tun.send(&inbox[i].as_ref()[r]) {
                                    Ok(_) => {
                                        local.rx_packets += 1;
                                        local.tun_writes += 1;
                                    }
                                    Err(e) => {
                                        local.drop(DropReason::TunWriteError);
                                        tunlog.log(&e);
                                    }
                                }
                            }
                        }
                        RxAction::Drop(r) => local.drop(r),
                    }
                    pos += seg;
                }
            }
            write_coalesced(&mut co, tun, &inbox, &mut local, &mut tunlog);
            counters.flush(&mut local);
            if n < RX_BUFFERS {
                break;
            }
        }
    }
}
