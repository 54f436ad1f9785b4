//! The node's devices, opened before the lease is taken: the TUN device
//! (its queues), and the VXLAN sockets on each underlay (IPv4, IPv6). A port
//! held by flanneld's kernel VXLAN device is named, or freed on request.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::Arc;

use super::{DaemonError, Options};
use crate::config::NetConfig;
use crate::dataplane::worker::{Queue, Underlay6};
use crate::iface::ExtIface;
use crate::netlink::{self, NetlinkError};
use crate::sys::{self, SysError};

/// Sending sockets (source ports) a multi-queue node spreads flows over.
const SEND_SOCKETS: usize = 8;

/// Where the VXLAN sockets listen: one address per family the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Listen {
    /// The interface's IPv4 address (none on an IPv6-only network).
    pub v4: Option<SocketAddrV4>,
    /// The interface's IPv6 address in a network that carries IPv6.
    pub v6: Option<SocketAddrV6>,
}

impl Listen {
    /// The addresses on `ext` for `port`, for each family `config` carries.
    pub fn of(config: &NetConfig, ext: &ExtIface, port: u16) -> Listen {
        Listen {
            v4: config.ipv4.map(|_| SocketAddrV4::new(ext.addr, port)),
            // The interface's address; with only --public-ipv6 (the node is
            // reached through NAT), any address of this node.
            v6: config
                .ipv6
                .map(|_| SocketAddrV6::new(ext.addr6.unwrap_or(Ipv6Addr::UNSPECIFIED), port, 0, 0)),
        }
    }
}

/// One underlay's sockets: the receivers on the VXLAN port (one per queue)
/// and, with several queues, the senders on ephemeral ports.
type Sockets = (Vec<UdpSocket>, Arc<[UdpSocket]>);

/// The devices of the node, opened before the lease is taken.
pub(super) struct Devices {
    tuns: Vec<tun_rs::SyncDevice>,
    /// The IPv4 underlay's sockets (none on an IPv6-only node).
    rx: Vec<Option<UdpSocket>>,
    send: Arc<[UdpSocket]>,
    /// The same on the IPv6 underlay, on a dual-stack or IPv6-only node.
    v6: Option<Sockets>,
}

/// Opens (or attaches to) the TUN device and binds the VXLAN sockets.
/// Offloads are dropped only when the kernel refuses them; a device left by
/// an earlier weftd with other settings is recreated when no weftd runs.
pub(super) fn open_devices(
    opts: &Options,
    nl: &mut netlink::Netlink,
    listen: Listen,
    mtu: u16,
    predecessor: bool,
) -> Result<Devices, DaemonError> {
    let queues = opts.queues.max(1);
    let tuns = open_tun(opts, nl, queues, mtu, listen.v6.is_some(), predecessor)?;
    // One receive socket per queue on the VXLAN port, shared by SO_REUSEPORT
    // (also with a weftd taking over from this one). With one queue it also
    // sends (source port = the VXLAN port); with several, packets leave from
    // SEND_SOCKETS sockets on ephemeral ports, picked by inner flow hash, so
    // the receiver's SO_REUSEPORT (or a NIC's RSS) spreads flows over its
    // workers, as the kernel's VXLAN source-port hashing does.
    let bind = |nl: &mut netlink::Netlink, l: SocketAddr| {
        bind_underlay(nl, l, queues, opts.replace_kernel_vxlan)
    };
    let v4 = listen.v4.map(|l| bind(nl, l.into())).transpose()?;
    let v6 = listen.v6.map(|l6| bind(nl, l6.into())).transpose()?;
    log_buffers(&listen, v4.as_ref(), v6.as_ref())?;
    let (rx, send) = match v4 {
        Some((rx, send)) => (rx.into_iter().map(Some).collect(), send),
        None => ((0..queues).map(|_| None).collect(), Arc::from(vec![])),
    };
    Ok(Devices { tuns, rx, send, v6 })
}

/// Opens the TUN device's `queues`; one left by an earlier weftd with other
/// settings is recreated (unless a `predecessor` runs on it), and offloads
/// the kernel refuses are dropped.
fn open_tun(
    opts: &Options,
    nl: &mut netlink::Netlink,
    queues: usize,
    mtu: u16,
    ipv6: bool,
    predecessor: bool,
) -> Result<Vec<tun_rs::SyncDevice>, DaemonError> {
    let name = opts.tun_name.as_str();
    let open = || sys::open_tun(name, mtu, opts.offload, queues, ipv6);
    let tuns = match open() {
        Err(SysError::TunMismatch { .. }) if !predecessor => {
            tracing::warn!(
                "TUN device {name} was left by an earlier weftd with other settings; recreating it"
            );
            netlink::delete_link(nl, name)?;
            open()
        }
        r => r,
    };
    let tuns = match tuns {
        Err(e) if opts.offload && sys::offload_refused(&e) => {
            tracing::warn!("TUN offloads refused on {name} ({e}); running without them (slower)");
            sys::open_tun(name, mtu, false, queues, ipv6)?
        }
        r => r?,
    };
    tracing::info!(
        "TUN offloads (TSO/GRO through virtio-net headers): {}; queues: {queues}",
        if tuns[0].tcp_gso() { "on" } else { "off" }
    );
    Ok(tuns)
}

/// Logs the first underlay's socket buffers (and the IPv6 underlay beside an
/// IPv4 one); [`DaemonError::NoUnderlay`] when there is neither.
fn log_buffers(
    listen: &Listen,
    v4: Option<&Sockets>,
    v6: Option<&Sockets>,
) -> Result<(), DaemonError> {
    let (first, shown) = match (v4, v6, listen.v4, listen.v6) {
        (Some((rx, _)), _, Some(l), _) => (&rx[0], SocketAddr::from(l)),
        (_, Some((rx, _)), _, Some(l6)) => (&rx[0], SocketAddr::from(l6)),
        _ => return Err(DaemonError::NoUnderlay),
    };
    // The kernel reports twice what it counts against the limit.
    let (r, w) = sys::buffer_sizes(first);
    let (r, w) = (r / 2, w / 2);
    tracing::info!(
        "VXLAN socket {shown}: receive buffer {} KiB, send buffer {} KiB{}",
        r / 1024,
        w / 1024,
        if r < (4 << 20) {
            " (4096 KiB asked for; without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max: raise that for fewer drops under bursts)"
        } else {
            ""
        }
    );
    if let (Some(l6), Some(_)) = (listen.v6, listen.v4) {
        tracing::info!("VXLAN socket {l6}: the IPv6 underlay");
    }
    Ok(())
}

/// Binds one underlay's sockets: `queues` receivers on `listen` (shared by
/// SO_REUSEPORT) and, with several queues, [`SEND_SOCKETS`] senders on
/// ephemeral ports of the same address.
fn bind_underlay(
    nl: &mut netlink::Netlink,
    listen: SocketAddr,
    queues: usize,
    replace_kernel_vxlan: bool,
) -> Result<Sockets, DaemonError> {
    let bind = || {
        (0..queues)
            .map(|_| sys::bind_udp(listen, true))
            .collect::<Result<Vec<_>, _>>()
    };
    let rx = match bind() {
        Err(SysError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            free_port_of_kernel_vxlan(nl, listen.port(), replace_kernel_vxlan)?;
            bind()?
        }
        r => r?,
    };
    let send: Arc<[UdpSocket]> = if queues > 1 {
        (0..SEND_SOCKETS)
            .map(|_| sys::bind_udp(SocketAddr::new(listen.ip(), 0), false))
            .collect::<Result<Vec<_>, _>>()?
            .into()
    } else {
        Arc::new([])
    };
    Ok((rx, send))
}

/// When the VXLAN port is taken: names the kernel VXLAN device holding it
/// (flanneld's `flannel.1` on a node moving to weft) with the fix, or, with
/// `--replace-kernel-vxlan`, deletes it (its routes go with it). Without
/// such a device the bind is retried and its own error stands.
fn free_port_of_kernel_vxlan(
    nl: &mut netlink::Netlink,
    port: u16,
    replace: bool,
) -> Result<(), DaemonError> {
    let devices = nl.vxlan_devices().map_err(|e| NetlinkError::Query {
        what: "the VXLAN devices".into(),
        detail: e.to_string(),
    })?;
    for d in devices.into_iter().filter(|d| d.port == Some(port)) {
        let vni = d.vni.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        if !replace {
            return Err(DaemonError::KernelVxlanHoldsPort {
                device: d.name,
                vni,
                port,
            });
        }
        netlink::delete_link(nl, &d.name)?;
        tracing::warn!(
            "deleted the kernel VXLAN device {} (VNI {vni}), which held UDP port {port} (--replace-kernel-vxlan); its routes went with it, and weft's TUN device carries the overlay from now on",
            d.name
        );
    }
    Ok(())
}

impl Devices {
    /// The packet threads' queues: each TUN queue with its receive socket on
    /// each underlay and the shared senders.
    pub fn into_queues(self) -> Vec<Queue> {
        let n = self.tuns.len();
        let rx6: Vec<Option<Underlay6>> = match self.v6 {
            Some((rx, send)) => rx
                .into_iter()
                .map(|rx| {
                    Some(Underlay6 {
                        rx,
                        send: send.clone(),
                    })
                })
                .collect(),
            None => (0..n).map(|_| None).collect(),
        };
        let send = self.send;
        self.tuns
            .into_iter()
            .zip(self.rx)
            .zip(rx6)
            .map(|((tun, rx), v6)| Queue {
                tun,
                rx,
                send: send.clone(),
                v6,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ext(addr6: Option<Ipv6Addr>) -> ExtIface {
        ExtIface {
            name: "eth0".into(),
            addr: Ipv4Addr::new(192, 0, 2, 1),
            public_ip: Ipv4Addr::new(198, 51, 100, 1),
            addr6,
            public_ipv6: addr6,
        }
    }

    fn config(text: &str) -> NetConfig {
        NetConfig::parse(text, "test").unwrap()
    }

    #[test]
    fn listens_on_the_interface_for_each_family_of_the_network() {
        let v4 = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let dual = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let v6only = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let a6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let a4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8472);
        assert_eq!(
            Listen::of(&v4, &ext(Some(a6)), 8472),
            Listen {
                v4: Some(a4),
                v6: None
            }
        );
        assert_eq!(
            Listen::of(&dual, &ext(Some(a6)), 8472),
            Listen {
                v4: Some(a4),
                v6: Some(SocketAddrV6::new(a6, 8472, 0, 0))
            }
        );
        // Reached only through --public-ipv6 (NAT): any address of the node.
        assert_eq!(
            Listen::of(&v6only, &ext(None), 4789).v6,
            Some(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 4789, 0, 0))
        );
        assert_eq!(Listen::of(&v6only, &ext(None), 4789).v4, None);
    }
}
