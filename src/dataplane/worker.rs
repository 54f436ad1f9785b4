//! The packet loops: one OS thread per TUN queue, each moving TUN → core → UDP
//! and UDP → core → TUN.
//!
//! Each turn moves a batch each way: up to
//! [`TX_READS`](super::batch::TX_READS) TUN reads (each possibly a 64 KiB
//! super-packet) with the forwarding table loaded once and one gathered
//! `sendmmsg`, then one `recvmmsg` whose inner packets are coalesced
//! into as few TUN writes as their flows allow; counters are flushed every
//! [`FLUSH_EVERY`] busy turns and before the loop sleeps.
//! Serving both directions from one thread means a reply produced while a
//! request is written (the kernel answers in the writer's context) is picked
//! up without waking another thread. Buffers are allocated when the loop
//! starts and reused; nothing is allocated per packet.
//!
//! What a batch decides lives in [`super::batch`], with no I/O; a turn
//! ([`Worker::turn`]) only does the I/O its steps name, over a [`QueueIo`]:
//! the real queue here, an in-memory one in tests.

use std::io;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::batch::{Family, RxBatch, RxStep, TxBatch, TxStep, count_unsent, count_written};
use super::core::Core;
use super::counters::{Counters, DropReason, LocalCounts};
use super::queue::{QueueIo, SysQueue};
use super::table::SharedTable;
use crate::sys::{self, BATCH};

/// What the kernel offers the worker, probed once at start.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// TUN reads are virtio-net framed and may be TSO super-packets; TUN
    /// writes may be coalesced ones.
    offload: bool,
    /// UDP GSO: a run of segments to one peer goes in one send.
    gso: bool,
}

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
    let mut io = SysQueue::new(
        &q.tun,
        [send, send6],
        [q.rx.as_ref(), q.v6.as_ref().map(|v6| &v6.rx)],
    );
    let mut w = Worker::new(features.offload, features.gso);
    if let Ok(mtu) = q.tun.mtu() {
        w.set_mtu(usize::from(mtu));
    }
    let mut local = LocalCounts::default();
    let mut idle_log = ErrLog::new("waiting for packets");
    let mut turns = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let busy = w.turn(&mut io, &core, table, &mut local);
        turns += 1;
        if busy {
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

/// One worker's state, kept turn after turn: its batches' buffers, whether
/// UDP GSO still works, and its rate-limited logs.
pub struct Worker {
    tx: TxBatch,
    rx: RxBatch,
    /// UDP GSO: a run of segments to one peer goes in one send. Off for good
    /// once the kernel refuses one.
    gso: bool,
    /// A send's errors, reused.
    errors: Vec<io::Error>,
    logs: Logs,
}

/// A worker's logs, each at most once per 10 s.
struct Logs {
    tun_read: ErrLog,
    udp_send: ErrLog,
    udp_recv: ErrLog,
    tun_write: ErrLog,
    unknown: SourceLog,
    spoofed: SourceLog,
}

impl Worker {
    /// A worker for a TUN device with offloads (virtio-net framed reads and
    /// writes, super-packets both ways) or without, and sockets with UDP
    /// GSO or without.
    pub fn new(offload: bool, gso: bool) -> Worker {
        Worker {
            tx: TxBatch::new(offload),
            rx: RxBatch::new(offload),
            gso,
            errors: Vec::with_capacity(BATCH),
            logs: Logs {
                tun_read: ErrLog::new("reading from TUN"),
                udp_send: ErrLog::new("sending VXLAN datagrams"),
                udp_recv: ErrLog::new("receiving VXLAN datagrams"),
                tun_write: ErrLog::new("writing to TUN"),
                unknown: SourceLog::new(DropReason::UnknownPeer),
                spoofed: SourceLog::new(DropReason::SpoofedSource),
            },
        }
    }

    /// The TUN device's MTU (see [`RxBatch::set_mtu`]).
    pub fn set_mtu(&mut self, mtu: usize) {
        self.rx.set_mtu(mtu);
    }

    /// Whether sends still use UDP GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// One turn: a transmit batch, then a receive batch from each family's
    /// socket. Returns whether anything was read or received.
    pub fn turn<Q: QueueIo>(
        &mut self,
        q: &mut Q,
        core: &Core,
        table: &SharedTable,
        local: &mut LocalCounts,
    ) -> bool {
        let t = self.transmit(q, core, table, local);
        let mut r = false;
        for family in [Family::V4, Family::V6] {
            if q.receives(family) {
                r |= self.receive(q, family, core, table, local);
            }
        }
        t || r
    }

    /// Reads what TUN has queued (up to a batch), and sends or answers it
    /// as the batch decides. Returns whether anything was read.
    fn transmit<Q: QueueIo>(
        &mut self,
        q: &mut Q,
        core: &Core,
        table: &SharedTable,
        local: &mut LocalCounts,
    ) -> bool {
        self.tx.clear();
        while let Some(buf) = self.tx.room() {
            match q.tun_recv(buf) {
                Ok(len) => self.tx.filled(len, local),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.logs.tun_read.log(&e);
                    break;
                }
            }
        }
        if self.tx.is_empty() {
            return false;
        }
        let t = table.load();
        let mut turn = self.tx.turn(core, &t, q.send_sockets());
        loop {
            match turn.next(local) {
                TxStep::Send(sock) => {
                    let (from, dgrams) = turn.pending();
                    self.errors.clear();
                    let report = q.udp_send(sock, from, dgrams, self.gso, &mut self.errors);
                    if report.gso_refused {
                        self.gso = false;
                        tracing::warn!(
                            "the kernel refused a UDP GSO send ({:?}); sending one datagram per syscall from now on",
                            self.errors.first()
                        );
                    }
                    if report.failed > 0 {
                        count_unsent(local, report.failed);
                        if let Some(e) = self.errors.first() {
                            self.logs.udp_send.log(e);
                        }
                    }
                }
                TxStep::Answer(len) => {
                    if turn.may_answer(Instant::now()) && q.tun_send(turn.answer(len)).is_ok() {
                        turn.answered(local);
                    }
                }
                TxStep::Done => return true,
            }
        }
    }

    /// Receives one batch of datagrams from `family`'s socket, and writes
    /// to TUN what the batch decides. Returns whether anything arrived.
    fn receive<Q: QueueIo>(
        &mut self,
        q: &mut Q,
        family: Family,
        core: &Core,
        table: &SharedTable,
        local: &mut LocalCounts,
    ) -> bool {
        let n = match q.udp_recv(family, self.rx.bufs()) {
            Ok(n) => n,
            Err(e) => {
                self.logs.udp_recv.log(&e);
                0
            }
        };
        self.rx.received(n);
        let t = table.load();
        let mut turn = self.rx.turn(core, &t);
        loop {
            match turn.next(local) {
                RxStep::Write => {
                    let (writes, from) = turn.writes();
                    for w in writes {
                        let r = q.tun_write(from, w.parts.clone());
                        if let Err(e) = &r {
                            self.logs.tun_write.log(e);
                        }
                        count_written(local, w.segments, r.is_ok());
                    }
                }
                RxStep::WriteOne { buf, range } => {
                    let r = q.tun_send(turn.packet(buf, range));
                    if let Err(e) = &r {
                        self.logs.tun_write.log(e);
                    }
                    count_written(local, 1, r.is_ok());
                }
                RxStep::Refused { from, reason } => match reason {
                    DropReason::SpoofedSource => self.logs.spoofed.log(from),
                    _ => self.logs.unknown.log(from),
                },
                RxStep::Done => return n > 0,
            }
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
