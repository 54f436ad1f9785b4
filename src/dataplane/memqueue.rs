//! An in-memory TUN queue and UDP sockets ([`MemQueue`]): a worker's whole
//! turn runs over it without root or a kernel, as tailscale's fake TUN and
//! wireguard-go's `tun/tuntest` let their loops run. Packets the kernel
//! would hand the worker are queued in memory; what the worker writes to
//! TUN or sends is kept, gathered into plain bytes; [`MemQueue::carry`]
//! hands one queue's datagrams to another's sockets (one datagram per
//! buffer, or joined as UDP GRO joins them), so two workers run back to
//! back. Faults are injected by count.
//!
//! Test support, for unit tests and the fuzzer: it allocates per packet and
//! is never on the packet path.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::Gather;
use super::batch::{Family, RecvBufs, SockId};
use super::offload::Datagram;
use super::queue::QueueIo;
use super::slot::Slot;
use crate::sys::SendReport;

/// Most segments UDP GRO joins into one buffer.
const GRO_SEGMENTS: usize = 64;
/// Most bytes UDP GRO joins into one buffer.
const GRO_BYTES: usize = 65_535;

/// One datagram a [`MemQueue`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub sock: SockId,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// One buffer a [`MemQueue`]'s socket hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
    /// The size of each segment when UDP GRO joined several, else 0.
    pub segment: usize,
}

/// A TUN queue and a queue's UDP sockets, in memory.
#[derive(Debug, Default)]
pub struct MemQueue {
    /// What TUN hands the worker, one read each (a virtio-net header first
    /// on a device with offloads).
    pub tun_in: VecDeque<Vec<u8>>,
    /// What the worker wrote to TUN, one write each, gathered.
    pub tun_out: Vec<Vec<u8>>,
    /// Sending sockets per family, `[IPv4, IPv6]`.
    pub socks: [usize; 2],
    /// Whether each family has a receiving socket.
    pub recv: [bool; 2],
    /// The datagrams sent, in order.
    pub sent: Vec<Sent>,
    /// How many sends (a real queue's `sendmmsg` batches) were asked for.
    pub sends: usize,
    /// What each family's receiving socket hands over.
    pub udp_in: [VecDeque<Received>; 2],
    /// The next this many datagrams fail to send.
    pub fail_sends: usize,
    /// Every send with UDP GSO of more than one datagram is refused, as a
    /// kernel without UDP GSO refuses it (nothing of it goes).
    pub refuse_gso: bool,
    /// The next this many TUN writes fail.
    pub fail_tun_writes: usize,
}

impl MemQueue {
    /// A queue with `v4` IPv4 and `v6` IPv6 sending sockets, receiving on
    /// each family that has some.
    pub fn new(v4: usize, v6: usize) -> MemQueue {
        MemQueue {
            socks: [v4, v6],
            recv: [v4 > 0, v6 > 0],
            ..MemQueue::default()
        }
    }

    /// Moves everything this queue sent to `to`'s receiving sockets, each as
    /// from `src[family]` (this node's public address of the datagram's
    /// family) and a port per sending socket. Without `gro`, one datagram
    /// per buffer; with it, consecutive datagrams from one socket to one
    /// address of one size (the last may be shorter) are joined, as UDP GRO
    /// joins them.
    pub fn carry(&mut self, to: &mut MemQueue, src: [IpAddr; 2], gro: bool) {
        let mut last: Option<(SockId, SocketAddr)> = None;
        for d in self.sent.drain(..) {
            let fam = usize::from(d.to.is_ipv6());
            let from = SocketAddr::new(src[fam], 40_000 + d.sock.index as u16);
            let q = &mut to.udp_in[fam];
            let joins = gro
                && last == Some((d.sock, d.to))
                && q.back().is_some_and(|b| {
                    let seg = if b.segment > 0 {
                        b.segment
                    } else {
                        b.bytes.len()
                    };
                    b.bytes.len() % seg == 0
                        && d.bytes.len() <= seg
                        && b.bytes.len() / seg < GRO_SEGMENTS
                        && b.bytes.len() + d.bytes.len() <= GRO_BYTES
                });
            match q.back_mut() {
                Some(b) if joins => {
                    if b.segment == 0 {
                        b.segment = b.bytes.len();
                    }
                    b.bytes.extend_from_slice(&d.bytes);
                }
                _ => q.push_back(Received {
                    from,
                    bytes: d.bytes,
                    segment: 0,
                }),
            }
            last = Some((d.sock, d.to));
        }
    }

    fn tun_fault(&mut self) -> io::Result<()> {
        if self.fail_tun_writes > 0 {
            self.fail_tun_writes -= 1;
            return Err(io::Error::other("a TUN write failed (injected)"));
        }
        Ok(())
    }
}

impl QueueIo for MemQueue {
    fn tun_recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self
            .tun_in
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    }

    fn tun_send(&mut self, pkt: &[u8]) -> io::Result<usize> {
        self.tun_fault()?;
        self.tun_out.push(pkt.to_vec());
        Ok(pkt.len())
    }

    fn tun_write(&mut self, from: Gather<'_, Slot>, parts: Range<usize>) -> io::Result<usize> {
        self.tun_fault()?;
        let w: Vec<u8> = from.slices(parts).flatten().copied().collect();
        let n = w.len();
        self.tun_out.push(w);
        Ok(n)
    }

    fn send_sockets(&self) -> [usize; 2] {
        self.socks
    }

    fn udp_send(
        &mut self,
        sock: SockId,
        from: Gather<'_, Slot>,
        dgrams: &[Datagram],
        gso: bool,
        errors: &mut Vec<io::Error>,
    ) -> SendReport {
        self.sends += 1;
        let mut report = SendReport::default();
        if self.refuse_gso && gso && dgrams.len() > 1 {
            errors.push(io::Error::other("UDP GSO refused (injected)"));
            report.gso_refused = true;
            report.failed = dgrams.len();
            return report;
        }
        for d in dgrams {
            if self.fail_sends > 0 {
                self.fail_sends -= 1;
                report.failed += 1;
                errors.push(io::Error::other("a send failed (injected)"));
                continue;
            }
            let bytes: Vec<u8> = from.slices(d.parts.clone()).flatten().copied().collect();
            self.sent.push(Sent {
                sock,
                to: d.to,
                bytes,
            });
        }
        report
    }

    fn receives(&self, family: Family) -> bool {
        self.recv[family.index()]
    }

    fn udp_recv(&mut self, family: Family, b: RecvBufs<'_>) -> io::Result<usize> {
        let q = &mut self.udp_in[family.index()];
        let room = b
            .slots
            .len()
            .min(b.lens.len())
            .min(b.srcs.len())
            .min(b.segs.len());
        let mut n = 0;
        while n < room {
            let Some(r) = q.pop_front() else { break };
            let dst = &mut b.slots[n].as_mut()[b.offset..];
            let len = r.bytes.len().min(dst.len());
            dst[..len].copy_from_slice(&r.bytes[..len]);
            (b.lens[n], b.srcs[n], b.segs[n]) = (len, r.from, r.segment);
            n += 1;
        }
        Ok(n)
    }
}
