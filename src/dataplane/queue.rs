//! The seam between a worker and the kernel: [`QueueIo`], the I/O one worker
//! does on its TUN queue and UDP sockets, so that a whole turn runs over real
//! descriptors ([`SysQueue`], each method one call into [`crate::sys`] or
//! tun-rs) or in memory ([`super::memqueue::MemQueue`], for tests and the
//! fuzzer), as wireguard-go's `tun/tuntest` and tailscale's fake TUN let
//! their loops run.

use std::io;
use std::net::UdpSocket;
use std::ops::Range;

use super::Gather;
use super::batch::{Family, RecvBufs, SockId};
use super::offload::Datagram;
use super::slot::Slot;
use crate::sys::{self, Mmsg, SendReport};

/// What a worker asks of its TUN queue and its UDP sockets.
pub trait QueueIo {
    /// Reads one packet from the TUN queue into `buf` (after a virtio-net
    /// header, on a device with offloads).
    ///
    /// # Errors
    /// `WouldBlock` when none is queued; whatever the read reports.
    fn tun_recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one packet to the TUN queue.
    ///
    /// # Errors
    /// Whatever the write reports.
    fn tun_send(&mut self, pkt: &[u8]) -> io::Result<usize>;

    /// Writes one packet gathered from `from.parts[parts]` to the TUN queue.
    ///
    /// # Errors
    /// As [`sys::tun_write`].
    fn tun_write(&mut self, from: Gather<'_, Slot>, parts: Range<usize>) -> io::Result<usize>;

    /// How many sending sockets each underlay family has, `[IPv4, IPv6]`.
    fn send_sockets(&self) -> [usize; 2];

    /// Sends `dgrams`, gathered from `from`, from socket `sock`, as
    /// [`Mmsg::send`] does (with UDP GSO when `gso`).
    fn udp_send(
        &mut self,
        sock: SockId,
        from: Gather<'_, Slot>,
        dgrams: &[Datagram],
        gso: bool,
        errors: &mut Vec<io::Error>,
    ) -> SendReport;

    /// Whether the queue receives on this family's underlay.
    fn receives(&self, family: Family) -> bool;

    /// Receives one batch from this family's socket into `bufs`, as
    /// [`Mmsg::recv`] does; `Ok(0)` when nothing is queued.
    ///
    /// # Errors
    /// As [`Mmsg::recv`].
    fn udp_recv(&mut self, family: Family, bufs: RecvBufs<'_>) -> io::Result<usize>;
}

/// A worker's real queue: its TUN queue and sockets, borrowed, and the
/// preallocated `sendmmsg`/`recvmmsg` headers of each direction.
pub struct SysQueue<'q> {
    tun: &'q tun_rs::SyncDevice,
    /// Sending sockets per family, `[IPv4, IPv6]`.
    send: [&'q [UdpSocket]; 2],
    /// The receiving socket of each family.
    recv: [Option<&'q UdpSocket>; 2],
    tx: Mmsg,
    rx: Mmsg,
}

impl<'q> SysQueue<'q> {
    pub fn new(
        tun: &'q tun_rs::SyncDevice,
        send: [&'q [UdpSocket]; 2],
        recv: [Option<&'q UdpSocket>; 2],
    ) -> SysQueue<'q> {
        SysQueue {
            tun,
            send,
            recv,
            tx: Mmsg::new(),
            rx: Mmsg::new(),
        }
    }
}

impl QueueIo for SysQueue<'_> {
    fn tun_recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tun.recv(buf)
    }

    fn tun_send(&mut self, pkt: &[u8]) -> io::Result<usize> {
        self.tun.send(pkt)
    }

    fn tun_write(&mut self, from: Gather<'_, Slot>, parts: Range<usize>) -> io::Result<usize> {
        sys::tun_write(self.tun, from, parts)
    }

    fn send_sockets(&self) -> [usize; 2] {
        [self.send[0].len(), self.send[1].len()]
    }

    fn udp_send(
        &mut self,
        sock: SockId,
        from: Gather<'_, Slot>,
        dgrams: &[Datagram],
        gso: bool,
        errors: &mut Vec<io::Error>,
    ) -> SendReport {
        let s = &self.send[sock.family.index()][sock.index];
        self.tx.send(s, from, dgrams, gso, errors)
    }

    fn receives(&self, family: Family) -> bool {
        self.recv[family.index()].is_some()
    }

    fn udp_recv(&mut self, family: Family, b: RecvBufs<'_>) -> io::Result<usize> {
        match self.recv[family.index()] {
            Some(sock) => self
                .rx
                .recv(sock, b.slots, b.offset, b.lens, b.srcs, b.segs),
            None => Ok(0),
        }
    }
}
