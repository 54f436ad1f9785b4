//! The two packet loops, one OS thread each: TUN → core → UDP and UDP → core → TUN.
//!
//! Each wake-up moves a batch: up to [`BATCH`] packets read, the forwarding table
//! loaded once, one `sendmmsg`/`recvmmsg`, counters flushed once. Buffers are
//! allocated when the loop starts and reused; nothing is allocated per packet.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{Core, RxAction, TxAction};
use super::counters::{Counters, DropReason, LocalCounts};
use super::slot::Slot;
use super::table::SharedTable;
use super::{ENCAP_LEN, HEADROOM, SLOT};
use crate::sys::{self, BATCH, Mmsg};
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN};

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
                    .spawn(move || udp_to_tun(&sock, &tun_rx, core, &counters, &stop))?,
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
    let mut slots: Vec<Slot> = (0..BATCH).map(|_| Slot::new(SLOT)).collect();
    let mut sizes = [0usize; BATCH];
    // With offloads one read is a super-packet of up to 64 KiB, split into
    // MTU-sized segments across the slots; without, one read is one packet.
    let mut original = vec![
        0u8;
        if offload {
            VIRTIO_NET_HDR_LEN + 65536
        } else {
            0
        }
    ];
    let per_read = if offload { BATCH } else { 1 };
    let mut items: Vec<(SocketAddrV4, usize, Range<usize>)> = Vec::with_capacity(BATCH);
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
        slots.iter_mut().for_each(Slot::reset);
        let mut n = 0;
        while BATCH - n >= per_read {
            match tun.recv_multiple(&mut original, &mut slots[n..], &mut sizes[n..], HEADROOM) {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    errlog.log(&e);
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        // One table load for the whole batch: a super-packet's segments share it.
        let t = table.load();
        items.clear();
        for (i, &len) in sizes[..n].iter().enumerate() {
            match core.encap(
                &t,
                slots[i].as_mut(),
                len,
                &mut scratch[VIRTIO_NET_HDR_LEN..],
            ) {
                TxAction::Send { to, range } => {
                    local.tx_packets += 1;
                    local.tx_bytes += range.len() as u64;
                    items.push((to, i, range));
                }
                TxAction::Unreachable { len } => {
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
                TxAction::Drop(r) => local.drop(r),
            }
        }
        drop(t);
        if !items.is_empty() {
            errors.clear();
            let report = mmsg.send(sock, &slots, &items, gso, &mut errors);
            if report.gso_refused {
                gso = false;
                tracing::warn!(
                    "the kernel refused a UDP GSO send ({:?}); sending one datagram per syscall from now on",
                    errors.first()
                );
            }
            let failed = items.len() - report.sent;
            if failed > 0 {
                local.tx_packets -= failed as u64;
                local.drops[DropReason::UdpSendError as usize] += failed as u64;
                if let Some(e) = errors.first() {
                    sendlog.log(e);
                }
            }
        }
        counters.flush(&mut local);
    }
}

fn udp_to_tun(
    sock: &UdpSocket,
    tun: &tun_rs::SyncDevice,
    core: Core,
    counters: &Counters,
    stop: &AtomicBool,
) {
    // Received buffers: one datagram, or with UDP GRO a run of same-size
    // segments back to back. Decapsulated packets are copied into `out` slots at
    // HEADROOM (room for tun-rs's virtio-net header), which tun-rs then writes,
    // coalescing TCP segments again (GRO) on offload devices.
    let mut inbox: Vec<Slot> = (0..RX_BUFFERS).map(|_| Slot::new(SLOT)).collect();
    let mut out: Vec<Slot> = (0..BATCH).map(|_| Slot::new(SLOT)).collect();
    let mut lens = [0usize; RX_BUFFERS];
    let mut segs = [0usize; RX_BUFFERS];
    let mut srcs = [SocketAddrV4::new(0.into(), 0); RX_BUFFERS];
    let mut gro = GROTable::new();
    let mut mmsg = Mmsg::new();
    let mut local = LocalCounts::default();
    let mut errlog = ErrLog::new("receiving VXLAN datagrams");
    let mut tunlog = ErrLog::new("writing to TUN");
    let off = HEADROOM - ENCAP_LEN;
    let mut flush = |out: &mut [Slot], k: usize, local: &mut LocalCounts| {
        if k == 0 {
            return;
        }
        match tun.send_multiple(&mut gro, &mut out[..k], HEADROOM) {
            Ok(_) => local.rx_packets += k as u64,
            Err(e) => {
                local.drops[DropReason::TunWriteError as usize] += k as u64;
                tunlog.log(&e);
            }
        }
    };
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
            let mut k = 0;
            for i in 0..n {
                let seg = if segs[i] > 0 { segs[i] } else { lens[i] };
                let mut pos = 0;
                while pos < lens[i] {
                    let len = seg.min(lens[i] - pos);
                    match core.decap(inbox[i].as_ref(), off + pos, len) {
                        RxAction::Deliver(r) => {
                            local.rx_bytes += r.len() as u64;
                            let o = &mut out[k];
                            o.set_len(HEADROOM + r.len());
                            o.as_mut()[HEADROOM..].copy_from_slice(&inbox[i].as_ref()[r]);
                            k += 1;
                            if k == out.len() {
                                flush(&mut out, k, &mut local);
                                k = 0;
                            }
                        }
                        RxAction::Drop(r) => local.drop(r),
                    }
                    pos += seg;
                }
            }
            flush(&mut out, k, &mut local);
            counters.flush(&mut local);
            if n < RX_BUFFERS {
                break;
            }
        }
    }
}
