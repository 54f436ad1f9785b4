//! Every syscall of the packet path: the TUN device (through tun-rs), the VXLAN
//! UDP socket, and batched `recvmmsg`/`sendmmsg`. The only module allowed `unsafe`.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Protocol, Socket, Type};

use crate::gather::{Datagram, Gather};

/// How many packets one syscall moves at most.
pub const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Failures opening the node's devices, each naming the device or address and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error(
        "cannot open /dev/net/tun for TUN device {name}: permission denied. The device node's mode does not let this user open it (0600 root-only on hosts without udev): make it 0666 as udev does (chmod 0666 /dev/net/tun), or grant this user an ACL (setfacl -m u:$USER:rw /dev/net/tun)"
    )]
    TunAccess { name: String },
    #[error(
        "cannot open /dev/net/tun for TUN device {name}: it does not exist. Load the module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun); in a container, mount it (a hostPath /dev/net/tun)"
    )]
    TunMissing { name: String },
    #[error(
        "cannot create TUN device {name}: operation not permitted. weftd needs CAP_NET_ADMIN over this network namespace: run it as root, in a container with the NET_ADMIN capability, or inside a user namespace that owns its network namespace (unshare --user --map-root-user --net)"
    )]
    TunPermission { name: String },
    #[error("cannot create TUN device {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error(
        "TUN device {name} is held by a program that does not share it (an older weftd, or another tunnel): stop it, delete the device (ip link del {name}) or pass --tun-name to use another one"
    )]
    TunBusy { name: String },
    #[error(
        "TUN device {name} exists with other settings than this weftd's (another kind of device, or offloads set differently); {fix}"
    )]
    TunMismatch { name: String, fix: &'static str },
    #[error(
        "cannot bind the VXLAN UDP socket to {addr}: {source}. Is another VXLAN endpoint (a kernel flannel.1 device, a weftd of another version) using port {port}? Stop it or set Backend.Port"
    )]
    Bind {
        addr: SocketAddr,
        port: u16,
        source: io::Error,
    },
}

/// Whether a TUN error is the kernel refusing the offload request itself
/// (TUNSETOFFLOAD, or IFF_VNET_HDR on a device made without it): then the
/// device works without offloads.
pub fn offload_refused(e: &SysError) -> bool {
    matches!(e, SysError::Tun { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
        || matches!(e, SysError::TunMismatch { .. })
}

/// What a failure to open or make TUN device `name` means, by its errno
/// (`existed`: the device was there before), each with its fix.
pub fn tun_error(name: &str, existed: bool, source: io::Error) -> SysError {
    match source.raw_os_error() {
        Some(libc::EACCES) => SysError::TunAccess { name: name.into() },
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
            SysError::TunMissing { name: name.into() }
        }
        Some(libc::EPERM) => SysError::TunPermission { name: name.into() },
        Some(libc::EBUSY) => SysError::TunBusy { name: name.into() },
        Some(libc::EINVAL) if existed => SysError::TunMismatch {
            name: name.into(),
            fix: "delete it (weftd uninstall, or ip link del) and start again",
        },
        _ => SysError::Tun {
            name: name.into(),
            source,
        },
    }
}

/// Opens (creating, or attaching to when it exists) the persistent,
/// multi-queue TUN device `name` with `mtu`, brings it up, and returns one
/// handle per queue. The kernel spreads flows over the attached queues by
/// flow hash, so one flow stays on one queue. With `offload`, the device
/// carries a virtio-net header (`IFF_VNET_HDR`) and TSO/checksum offloads
/// (`TUNSETOFFLOAD`): reads may return 64 KiB TCP super-packets, and writes
/// may be coalesced ones.
///
/// The device is persistent and always multi-queue, so it outlives weftd:
/// across a restart pods' routes and addresses stay, and a new weftd attaches
/// its queues beside the old one's before the old one leaves. Addresses and
/// routes are the caller's (netlink). `weftd uninstall` deletes the device.
///
/// # Errors
/// [`SysError`] naming the device and the cause: the node's mode (EACCES),
/// a missing node (ENOENT), no CAP_NET_ADMIN (EPERM), a device held by a
/// program that does not share it (EBUSY), other settings (EINVAL).
pub fn open_tun(
    name: &str,
    mtu: u16,
    offload: bool,
    queues: usize,
    ipv6: bool,
) -> Result<Vec<tun_rs::SyncDevice>, SysError> {
    let existed = nix::net::if_::if_nametoindex(name).is_ok();
    let tun_err = |source: io::Error| tun_error(name, existed, source);
    let open = || {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .offload(offload)
            .multi_queue(true)
            .packet_information(false)
            .enable(false)
            .build_sync()
            .map_err(tun_err)
    };
    let dev = open()?;
    dev.persist().map_err(tun_err)?;
    // An IPv4-only overlay keeps the kernel's IPv6 chatter (router
    // solicitations, MLD) off the device before it comes up; a dual-stack
    // one keeps IPv6 but no link-local address, autoconfiguration or router
    // advertisements: the device holds the subnet's address only.
    let conf = |key: &str, v: &str| {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{key}"), v);
    };
    if ipv6 {
        conf("addr_gen_mode", "1");
        conf("accept_ra", "0");
        conf("autoconf", "0");
        conf("disable_ipv6", "0");
    } else {
        conf("disable_ipv6", "1");
    }
    dev.set_mtu(mtu).map_err(tun_err)?;
    dev.enabled(true).map_err(tun_err)?;
    dev.set_nonblocking(true).map_err(tun_err)?;
    let mut all = Vec::with_capacity(queues);
    for _ in 1..queues {
        let q = dev.try_clone().map_err(tun_err)?;
        q.set_nonblocking(true).map_err(tun_err)?;
        all.push(q);
    }
    all.insert(0, dev);
    Ok(all)
}

/// Binds the VXLAN UDP socket at `addr`, non-blocking, with large buffers
/// ([`buffer_sizes`] says what the kernel granted). With `reuseport`, several sockets (one per queue, and those of a new
/// weftd taking over) share the port and the kernel spreads incoming
/// datagrams over them by their addresses and ports.
///
/// # Errors
/// [`SysError::Bind`] naming the address.
pub fn bind_udp(addr: SocketAddr, reuseport: bool) -> Result<UdpSocket, SysError> {
    let err = |source| SysError::Bind {
        addr,
        port: addr.port(),
        source,
    };
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        // IPv6 only: the IPv4 underlay has sockets of its own.
        s.set_only_v6(true).map_err(err)?;
    }
    if reuseport {
        s.set_reuse_port(true).map_err(err)?;
    }
    // Large buffers absorb bursts; the *FORCE variants pass rmem_max as root.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int_fd(s.as_raw_fd(), libc::SOL_SOCKET, force, 4 << 20).is_err() {
            let _ = setsockopt_int_fd(s.as_raw_fd(), libc::SOL_SOCKET, plain, 4 << 20);
        }
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

/// A raw ICMP socket (`weftd doctor` pings through it and reads the echo
/// replies the host receives, the overlay's included), handed out as std's
/// datagram socket for its safe `send_to` / `recv_from`. Needs CAP_NET_RAW.
///
/// # Errors
/// The socket error.
pub fn icmp_raw_socket(read_timeout: Duration) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s.into())
}

/// A raw ICMPv6 socket, as [`icmp_raw_socket`] for IPv6: it reads ICMPv6
/// messages without their IPv6 header, and the kernel fills in the checksum
/// of what it sends.
///
/// # Errors
/// The socket error.
pub fn icmpv6_raw_socket(read_timeout: Duration) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s.into())
}

/// The receive and send buffer sizes the kernel gave `sock` (it reports
/// twice what counts against the limit, as `socket(7)` says).
pub fn buffer_sizes(sock: &UdpSocket) -> (usize, usize) {
    let r = socket2::SockRef::from(sock);
    (
        r.recv_buffer_size().unwrap_or(0),
        r.send_buffer_size().unwrap_or(0),
    )
}

/// Waits until one of `fds` (at most four) is readable or `timeout` passes.
///
/// # Errors
/// Whatever `poll(2)` reports, except EINTR (reported as a timeout).
pub fn wait_readable_any(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<bool> {
    let Some(first) = fds.first() else {
        std::thread::sleep(timeout);
        return Ok(false);
    };
    let mut polled: [PollFd<'_>; 4] = std::array::from_fn(|i| {
        PollFd::new(fds.get(i).copied().unwrap_or(*first), PollFlags::POLLIN)
    });
    let n = fds.len().min(polled.len());
    let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut polled[..n], t) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Segments one UDP GSO send may carry: the kernel's limit is 64 (older
/// kernels) and the whole must stay under 64 KiB.
pub const GSO_MAX_SEGMENTS: usize = 44;
/// Bytes of payload one GSO send may carry.
const GSO_MAX_BYTES: usize = 65_000;
/// Control-message room per datagram (one `UDP_SEGMENT`/`UDP_GRO` cmsg).
const CTRL_WORDS: usize = 8;
/// Messages one `sendmmsg`/`recvmmsg` carries at most.
const MAX_MSGS: usize = BATCH;
/// Iovecs one `sendmmsg` gathers at most (a segment takes two).
const MAX_IOVS: usize = 4096;
/// Iovecs one TUN write gathers at most: a header, then the payloads of the
/// most segments the coalescer joins.
pub const MAX_WRITE_PARTS: usize = 1 + crate::gather::MAX_COALESCE;

/// Asks the kernel to coalesce received datagrams of one flow (`UDP_GRO`);
/// [`Mmsg::recv`] then reports each buffer's segment size. False when the
/// kernel has no UDP GRO (before Linux 5.0).
pub fn enable_udp_gro(sock: &UdpSocket) -> bool {
    setsockopt_int_fd(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Whether the kernel takes `UDP_SEGMENT` (UDP GSO, Linux 4.18+) on this socket.
pub fn udp_gso_supported(sock: &UdpSocket) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` live across the call and `len` holds `v`'s size;
    // the fd is a valid open socket borrowed from `sock`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    r == 0
}

fn setsockopt_int_fd(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` lives across the call and its size is passed exactly; `fd` is
    // an open socket the caller borrows for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const v).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What one [`Mmsg::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Datagrams the kernel refused.
    pub failed: usize,
    /// A GSO send was refused (EIO/EINVAL): the caller should stop using GSO.
    pub gso_refused: bool,
}

/// Preallocated headers for `recvmmsg`/`sendmmsg`, so a batch allocates nothing.
pub struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// One address per message, room for either family (an IPv4 address
    /// fills the front of it as a `sockaddr_in`).
    addrs: Vec<libc::sockaddr_in6>,
    /// One control buffer per message, u64 words for cmsg alignment.
    ctrl: Vec<[u64; CTRL_WORDS]>,
    /// Per message: how many items it carries (sending).
    counts: Vec<usize>,
}

// SAFETY: the raw pointers inside are only set during a call that borrows the
// buffers they point to, and are never dereferenced outside such a call.
unsafe impl Send for Mmsg {}

impl Default for Mmsg {
    fn default() -> Self {
        Mmsg::new()
    }
}

impl Mmsg {
    pub fn new() -> Mmsg {
        // SAFETY: mmsghdr, iovec and sockaddr_in6 are plain C structs for which
        // all-zero bytes are a valid value.
        let z = || unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() };
        Mmsg {
            hdrs: (0..MAX_MSGS).map(|_| z()).collect(),
            iovs: (0..MAX_IOVS)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: as above.
            addrs: (0..MAX_MSGS)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            ctrl: vec![[0; CTRL_WORDS]; MAX_MSGS],
            counts: vec![0; MAX_MSGS],
        }
    }

    /// Points header `m` at `iovlen` iovecs from `iov`, address `m`, and
    /// `ctrl_len` bytes of control buffer `m`.
    fn link(&mut self, m: usize, iov: usize, iovlen: usize, ctrl_len: usize) {
        let h = &mut self.hdrs[m].msg_hdr;
        h.msg_iov = &raw mut self.iovs[iov];
        h.msg_iovlen = iovlen;
        h.msg_name = (&raw mut self.addrs[m]).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        h.msg_control = if ctrl_len > 0 {
            self.ctrl[m].as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        h.msg_controllen = ctrl_len;
        h.msg_flags = 0;
        self.hdrs[m].msg_len = 0;
    }

    /// Receives up to `slots.len()` (at most [`BATCH`]) datagrams: datagram `i`
    /// lands in `slots[i][offset..]`; its length goes to `lens[i]`, its source
    /// to `srcs[i]`, and, when UDP GRO coalesced several, the size of each
    /// segment to `segs[i]` (0 for a single datagram). Returns how many
    /// buffers arrived (0 if none).
    ///
    /// # Errors
    /// Whatever `recvmmsg(2)` reports except EAGAIN.
    ///
    /// # Panics
    /// When a slot is shorter than `offset` (a caller bug, not packet input).
    pub fn recv<S: AsMut<[u8]>>(
        &mut self,
        sock: &UdpSocket,
        slots: &mut [S],
        offset: usize,
        lens: &mut [usize],
        srcs: &mut [SocketAddr],
        segs: &mut [usize],
    ) -> io::Result<usize> {
        let n = BATCH
            .min(slots.len())
            .min(lens.len())
            .min(srcs.len())
            .min(segs.len());
        for (i, slot) in slots[..n].iter_mut().enumerate() {
            let room = &mut slot.as_mut()[offset..];
            self.iovs[i].iov_base = room.as_mut_ptr().cast();
            self.iovs[i].iov_len = room.len();
            self.link(i, i, 1, CTRL_WORDS * 8);
        }
        // SAFETY: hdrs[..n] point at iovecs, addresses and control buffers
        // owned by self and at the distinct `slots`, all borrowed mutably for
        // this call.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let r = r as usize;
        for i in 0..r {
            lens[i] = self.hdrs[i].msg_len as usize;
            srcs[i] = self.source(i);
            segs[i] = 0;
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen for this
            // message; CMSG_FIRSTHDR/NXTHDR stay inside that buffer and return
            // null at its end.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        segs[i] = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        Ok(r)
    }

    /// Sends every datagram of `dgrams`, each gathered from its parts of
    /// `from`, in as few syscalls as the kernel
    /// allows. With `gso`, runs of same-size datagrams to one peer (the last
    /// may be shorter) go as one UDP GSO send of at most [`GSO_MAX_SEGMENTS`].
    /// A message that fails is skipped (its error pushed onto `errors`) and the
    /// rest still go.
    ///
    /// # Panics
    /// When a part lies outside its buffer (a bug in the code that built it,
    /// never packet input).
    pub fn send<S: AsRef<[u8]>>(
        &mut self,
        sock: &UdpSocket,
        from: Gather<'_, S>,
        dgrams: &[Datagram],
        gso: bool,
        errors: &mut Vec<io::Error>,
    ) -> SendReport {
        let mut report = SendReport::default();
        let mut i = 0;
        while i < dgrams.len() {
            // Build up to MAX_MSGS messages (and MAX_IOVS iovecs), then send them.
            let mut msgs = 0;
            let mut iov = 0;
            while i < dgrams.len() && msgs < MAX_MSGS {
                let d = &dgrams[i];
                let seg = d.len;
                let mut count = 1;
                let mut bytes = seg;
                let mut niov = d.parts.len();
                if gso {
                    while i + count < dgrams.len() && count < GSO_MAX_SEGMENTS {
                        let d2 = &dgrams[i + count];
                        if d2.to != d.to
                            || d2.len > seg
                            || bytes + d2.len > GSO_MAX_BYTES
                            || iov + niov + d2.parts.len() > MAX_IOVS
                        {
                            break;
                        }
                        bytes += d2.len;
                        niov += d2.parts.len();
                        count += 1;
                        if d2.len < seg {
                            break; // a shorter segment ends the run
                        }
                    }
                }
                if iov + niov > MAX_IOVS {
                    break;
                }
                let first_iov = iov;
                for d in &dgrams[i..i + count] {
                    for data in from.slices(d.parts.clone()) {
                        self.iovs[iov] = libc::iovec {
                            iov_base: data.as_ptr().cast_mut().cast(),
                            iov_len: data.len(),
                        };
                        iov += 1;
                    }
                }
                let namelen = self.put_addr(msgs, d.to);
                let ctrl_len = if count > 1 {
                    self.put_segment_cmsg(msgs, seg as u16)
                } else {
                    0
                };
                self.link(msgs, first_iov, iov - first_iov, ctrl_len);
                self.hdrs[msgs].msg_hdr.msg_namelen = namelen;
                self.counts[msgs] = count;
                msgs += 1;
                i += count;
            }
            self.flush(sock, msgs, &mut report, errors);
        }
        report
    }

    /// Writes `to` into address slot `m`; returns its length for `msg_namelen`.
    fn put_addr(&mut self, m: usize, to: SocketAddr) -> libc::socklen_t {
        let slot = &mut self.addrs[m];
        match to {
            SocketAddr::V4(a) => {
                let v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: a sockaddr_in (16 bytes) fits in the sockaddr_in6
                // (28 bytes) slot, which is at least as aligned; it is written
                // unaligned-safe through a raw pointer to its start.
                unsafe { std::ptr::write_unaligned((slot as *mut libc::sockaddr_in6).cast(), v4) };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                *slot = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }

    /// The source address the kernel wrote into slot `m` on receive.
    fn source(&self, m: usize) -> SocketAddr {
        let a = &self.addrs[m];
        if i32::from(a.sin6_family) == libc::AF_INET6 {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                0,
                a.sin6_scope_id,
            ))
        } else {
            // SAFETY: the kernel wrote a sockaddr_in (16 bytes) at the start
            // of the 28-byte slot; it is read unaligned-safe.
            let v4: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned((a as *const libc::sockaddr_in6).cast()) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            ))
        }
    }

    /// Hands messages `0..msgs` to `sendmmsg`, retrying briefly while the
    /// socket buffer is full and skipping a message the kernel refuses.
    fn flush(
        &mut self,
        sock: &UdpSocket,
        msgs: usize,
        report: &mut SendReport,
        errors: &mut Vec<io::Error>,
    ) {
        let mut at = 0;
        let mut waits = 0;
        while at < msgs {
            // SAFETY: hdrs[at..msgs] point at iovecs, addresses and control
            // buffers owned by self and, through the iovecs, at the caller's
            // arena and buffers, which `send` borrows for this call; the kernel
            // only reads them.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(at),
                    (msgs - at) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock && waits < 3 {
                    // Socket buffer full: wait briefly for room, then retry.
                    waits += 1;
                    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(10u8));
                    continue;
                }
                if self.counts[at] > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                {
                    report.gso_refused = true;
                }
                report.failed += self.counts[at];
                errors.push(e);
                at += 1; // skip the message that failed
            } else {
                at += r as usize;
            }
        }
    }

    /// Writes a `UDP_SEGMENT` cmsg carrying `seg` into control buffer `m`;
    /// returns the control length to pass.
    fn put_segment_cmsg(&mut self, m: usize, seg: u16) -> usize {
        let buf = &mut self.ctrl[m];
        // SAFETY: CMSG_SPACE(2) (24 bytes) fits the 64-byte, u64-aligned buffer;
        // the header and data are written inside it through CMSG_* offsets.
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            let mut h: libc::msghdr = MaybeUninit::zeroed().assume_init();
            h.msg_control = buf.as_mut_ptr().cast();
            h.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            space
        }
    }
}

/// Writes one packet to the TUN device `fd`, gathered from `from.parts[range]`
/// (at most [`MAX_WRITE_PARTS`]) in one `writev`.
/// On an offload device the first part is the virtio-net header.
///
/// # Errors
/// Whatever `writev(2)` reports; `InvalidInput` for more than
/// [`MAX_WRITE_PARTS`] parts, rather than writing a truncated packet.
///
/// # Panics
/// When a part lies outside its buffer (a bug in the code that built it).
pub fn tun_write<S: AsRef<[u8]>>(
    fd: &impl AsRawFd,
    from: Gather<'_, S>,
    range: std::ops::Range<usize>,
) -> io::Result<usize> {
    if range.len() > MAX_WRITE_PARTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a TUN write of {} parts (at most {MAX_WRITE_PARTS})",
                range.len()
            ),
        ));
    }
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_WRITE_PARTS];
    let mut n = 0;
    for (iov, data) in iovs.iter_mut().zip(from.slices(range)) {
        n += 1;
        iov.iov_base = data.as_ptr().cast_mut().cast();
        iov.iov_len = data.len();
    }
    // SAFETY: iovs[..n] point into `from`'s arena and buffers, borrowed for this call;
    // the kernel only reads them. The fd is open for the borrow of `fd`.
    let r = unsafe { libc::writev(fd.as_raw_fd(), iovs.as_ptr(), n as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
