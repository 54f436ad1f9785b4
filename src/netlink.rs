//! weft's one netlink client, for weftd and weft-cni alike: links, addresses
//! and routes, in the current network namespace or in a pod's (the TUN
//! device's address and route, the underlay's MTU, the CNI's veths, bridge
//! and routes).
//!
//! Messages are built and parsed with `netlink-packet-route` and sent over a
//! blocking `netlink-sys` socket: no async runtime, so a CNI call answers in
//! milliseconds, and weftd's few calls at start take microseconds. A socket stays bound to the namespace it was created in, so
//! [`Netlink::in_netns`] creates one on a short-lived thread that has entered
//! the pod's namespace with `setns` (the calling thread never changes
//! namespace) and hands the socket back.
//!
//! One API for both families: addresses and routes are [`IpNet`]s and
//! [`IpAddr`]s, and a dump takes the [`Family`] to list. What differs by
//! family is decided here, in the message: an IPv4 address gets its
//! broadcast, an IPv6 one skips duplicate address detection; an IPv4 route
//! without a gateway is on-link (scope link), an IPv6 route stays at the
//! universe scope the kernel gives every IPv6 route.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::on_thread_in_netns;
use crate::types::Family;

/// Where an IPv6 address's duplicate address detection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// Usable (detection done, or skipped with `nodad`).
    Done,
    /// Still being checked: the address neither sends nor answers yet.
    Tentative,
    /// Another host on the link has it.
    Failed,
}

/// A link as weft-cni needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// The index of the bridge this link is attached to.
    pub master: Option<u32>,
}

/// A kernel VXLAN device (flanneld's `flannel.1`, say): what holds a UDP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: Option<u32>,
    /// The UDP port it listens on (the kernel's default is 8472 for
    /// devices made without `dstport`, as flannel's are not).
    pub port: Option<u16>,
}

/// A route of the main table (`dst` `0.0.0.0/0` or `::/0` for the default
/// route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A blocking rtnetlink socket bound to one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// Whether `e` says the object already exists (EEXIST).
pub fn is_exists(e: &io::Error) -> bool {
    is_errno(e, libc::EEXIST)
}

/// Whether `e` says the link does not exist (ENODEV).
pub fn is_no_device(e: &io::Error) -> bool {
    is_errno(e, libc::ENODEV)
}

fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn address_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// An address message for `addr` on link `index` (for IPv4 also local =
/// address, as `ip` sends).
fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = address_family(Family::of(addr.addr()));
    m.header.prefix_len = addr.prefix_len();
    m.header.index = index;
    if addr.addr().is_ipv4() {
        m.attributes.push(AddressAttribute::Local(addr.addr()));
    }
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m
}

/// A unicast route in the main table: `dst` (no attribute for a /0),
/// through `gw`, preferring source `src`, out of `oif`. Without a gateway
/// an IPv4 route is on-link (scope link); IPv6 routes are all scope universe.
fn route_message(dst: IpNet, gw: Option<IpAddr>, src: Option<IpAddr>, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = address_family(Family::of(dst.addr()));
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = match dst {
        IpNet::V4(_) if gw.is_none() => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    m.header.kind = RouteType::Unicast;
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
    }
    if let Some(g) = gw {
        m.attributes.push(RouteAttribute::Gateway(route_address(g)));
    }
    if let Some(s) = src {
        m.attributes
            .push(RouteAttribute::PrefSource(route_address(s)));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// The socket or bind error.
    pub fn new() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// A socket in the network namespace at `path` (e.g. `/run/netns/pod`).
    ///
    /// # Errors
    /// The open, `setns` or socket error; `NotFound` when the path is gone.
    pub fn in_netns(ns: &File) -> io::Result<Netlink> {
        match on_thread_in_netns(ns, Netlink::new) {
            Ok(Ok(nl)) => nl,
            Ok(Err(errno)) => Err(io::Error::from(errno)),
            Err(_) => Err(io::Error::other("netns thread panicked")),
        }
    }

    /// Opens a netns file, checking that it really is a network namespace.
    ///
    /// # Errors
    /// The open error (`NotFound` when the namespace is gone), or
    /// `InvalidInput` when the path is not a namespace.
    pub fn open_netns(path: &Path) -> io::Result<File> {
        let f = File::open(path)?;
        // A nsfs inode: entering it on a throw-away thread proves it is one.
        on_thread_in_netns(&f, || ())
            .unwrap_or(Err(nix::errno::Errno::EINVAL))
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a network namespace ({e})"),
                )
            })?;
        Ok(f)
    }

    /// Sends `msg` and collects the answers (a dump's, or a request's ACK).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.header.length as usize];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                            None => Ok(out),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
            // A dump ends with DONE, a request with its ACK: read on.
        }
    }

    /// Sends `msg` and waits for its ACK.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).map(|_| ())
    }

    fn to_link(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            master: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) => l.mac = Some(format_mac(b)),
                LinkAttribute::Mtu(v) => l.mtu = Some(*v),
                LinkAttribute::Controller(v) => l.master = Some(*v),
                _ => {}
            }
        }
        l
    }

    /// The link named `name`, or `None`.
    ///
    /// # Errors
    /// Netlink errors other than "no such device".
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), NLM_F_ACK) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Self::to_link(l)),
                _ => None,
            })),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kernel VXLAN devices of this namespace.
    ///
    /// # Errors
    /// The netlink error.
    pub fn vxlan_devices(&mut self) -> io::Result<Vec<VxlanDevice>> {
        let all = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = vec![];
        for r in all {
            let RouteNetlinkMessage::NewLink(m) = r else {
                continue;
            };
            let infos = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            });
            let Some(infos) = infos else { continue };
            if !infos
                .iter()
                .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
            {
                continue;
            }
            let mut d = VxlanDevice {
                name: Self::to_link(&m).name,
                vni: None,
                port: None,
            };
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                    for a in attrs {
                        match a {
                            InfoVxlan::Id(v) => d.vni = Some(*v),
                            InfoVxlan::Port(p) => d.port = Some(*p),
                            _ => {}
                        }
                    }
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Creates a bridge; `Ok(false)` when it already existed.
    ///
    /// # Errors
    /// Netlink errors other than EEXIST.
    pub fn create_bridge(&mut self, name: &str, mac: Option<[u8; 6]>) -> io::Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        // A MAC set at creation stays; without one the bridge takes its
        // lowest port's, and changes as ports come and go.
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `host` here, `peer` directly inside the namespace
    /// `peer_ns`, both with `mtu`.
    ///
    /// # Errors
    /// EEXIST when `host` exists here; other netlink errors (the kernel also
    /// answers EEXIST when `peer` exists in `peer_ns`).
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        mtu: u32,
    ) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Sets the MAC address of a link (down, or one the kernel lets change).
    ///
    /// # Errors
    /// The netlink error.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Sets a link up, and attaches it to `master` when given.
    ///
    /// # Errors
    /// The netlink error.
    pub fn set_up(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(b) = master {
            m.attributes.push(LinkAttribute::Controller(b));
        }
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Turns hairpin mode on for bridge port `index`: the bridge may send a
    /// frame back out of the port it came in on, as a pod reaching itself
    /// through a Service needs (kube-proxy's DNAT turns the packet around at
    /// the bridge when br_netfilter is on). An RTM_NEWLINK on the existing
    /// link, as `ip link set DEV type bridge_slave hairpin on` sends.
    ///
    /// # Errors
    /// The netlink error.
    pub fn set_hairpin(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), 0)
    }

    /// Deletes a link; `Ok(false)` when it did not exist.
    ///
    /// # Errors
    /// Netlink errors other than ENODEV.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        match self.ack(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if is_no_device(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds an address: an IPv4 one with its broadcast (below /31), an
    /// IPv6 one without duplicate address detection (`nodad`), so it is
    /// usable at once. `Ok(false)` when it was already there.
    ///
    /// # Errors
    /// Netlink errors other than EEXIST.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> io::Result<bool> {
        let mut m = address_message(index, addr);
        match addr {
            IpNet::V4(a) if a.prefix_len() < 31 => {
                m.attributes
                    .push(AddressAttribute::Broadcast(a.broadcast()));
            }
            IpNet::V4(_) => {}
            IpNet::V6(_) => {
                m.header.flags = AddressHeaderFlags::Nodad;
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.create(RouteNetlinkMessage::NewAddress(m))
    }

    /// Sends `msg` to create something; `Ok(false)` when it existed.
    fn create(&mut self, msg: RouteNetlinkMessage) -> io::Result<bool> {
        match self.ack(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The addresses of `family` on link `index` (IPv6 link-local ones
    /// included).
    ///
    /// # Errors
    /// The netlink error.
    pub fn addresses(&mut self, index: u32, family: Family) -> io::Result<Vec<IpNet>> {
        Ok(self
            .addresses_dad(index, family)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// The addresses of `family` on link `index`, with where their
    /// duplicate address detection stands (always [`Dad::Done`] for IPv4).
    ///
    /// # Errors
    /// The netlink error.
    pub fn addresses_dad(&mut self, index: u32, family: Family) -> io::Result<Vec<(IpNet, Dad)>> {
        let mut m = AddressMessage::default();
        m.header.family = address_family(family);
        let all = self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in all {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // The header's 8 flag bits, or the IFA_FLAGS attribute's 32.
            let ext = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Flags(f) => Some(*f),
                _ => None,
            });
            let failed = a.header.flags.contains(AddressHeaderFlags::Dadfailed)
                || ext.is_some_and(|f| f.contains(AddressFlags::Dadfailed));
            let tentative = a.header.flags.contains(AddressHeaderFlags::Tentative)
                || ext.is_some_and(|f| f.contains(AddressFlags::Tentative));
            let dad = match (failed, tentative) {
                (true, _) => Dad::Failed,
                (false, true) => Dad::Tentative,
                (false, false) => Dad::Done,
            };
            for at in &a.attributes {
                if let AddressAttribute::Address(ip) = at
                    && Family::of(*ip) == family
                    && let Ok(n) = IpNet::new(*ip, a.header.prefix_len)
                {
                    out.push((n, dad));
                }
            }
        }
        Ok(out)
    }

    /// Removes address `addr` from link `index`.
    ///
    /// # Errors
    /// The netlink error.
    pub fn del_address(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::DelAddress(address_message(index, addr)),
            0,
        )
    }

    /// Adds a route in the main table; `Ok(false)` when it existed.
    ///
    /// # Errors
    /// Netlink errors other than EEXIST.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<bool> {
        let m = route_message(dst, gw, None, oif);
        self.create(RouteNetlinkMessage::NewRoute(m))
    }

    /// Adds or replaces `dst dev <oif> src <src>` in the main table.
    ///
    /// # Errors
    /// The netlink error.
    pub fn replace_route(&mut self, dst: IpNet, oif: u32, src: IpAddr) -> io::Result<()> {
        let m = route_message(dst, None, Some(src), oif);
        self.ack(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// The main table's routes of `family`.
    ///
    /// # Errors
    /// The netlink error.
    pub fn routes(&mut self, family: Family) -> io::Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = address_family(family);
        // A default route carries no destination attribute.
        let default = family.default_route();
        let all = self.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in all {
            let RouteNetlinkMessage::NewRoute(rt) = r else {
                continue;
            };
            if rt.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let len = rt.header.destination_prefix_length;
            let mut r = Route {
                dst: default,
                gw: None,
                oif: None,
            };
            for a in &rt.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        r.dst = ip_of(d)
                            .and_then(|d| IpNet::new(d, len).ok())
                            .unwrap_or(default);
                    }
                    RouteAttribute::Gateway(g) => r.gw = ip_of(g),
                    RouteAttribute::Oif(o) => r.oif = Some(*o),
                    _ => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// Whether `routes` holds a route to `dst` (via `gw` when given).
pub fn has_route(routes: &[Route], dst: IpNet, gw: Option<IpAddr>) -> bool {
    routes
        .iter()
        .any(|r| r.dst == dst.trunc() && gw.is_none_or(|g| r.gw == Some(g)))
}

/// weftd's netlink failures, naming the interface, route or address.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0} (weftd needs CAP_NET_ADMIN)")]
    Connect(io::Error),
    #[error("interface {name} not found: {detail}")]
    NoLink { name: String, detail: String },
    #[error("cannot set address {addr} on {dev}: {detail}")]
    Address {
        addr: IpNet,
        dev: String,
        detail: String,
    },
    #[error("cannot delete interface {name}: {detail}")]
    Delete { name: String, detail: String },
    #[error("cannot list {what}: {detail}")]
    Query { what: String, detail: String },
    #[error(
        "cannot add route {net} dev {dev} src {src}: {detail} (is another route for {net} in the way? `ip route show {net}`)"
    )]
    Route {
        net: IpNet,
        dev: String,
        src: IpAddr,
        detail: String,
    },
}

/// A client in this network namespace.
///
/// # Errors
/// [`NetlinkError::Connect`].
pub fn connect() -> Result<Netlink, NetlinkError> {
    Netlink::new().map_err(NetlinkError::Connect)
}

/// The index and MTU of interface `name`.
///
/// # Errors
/// [`NetlinkError::NoLink`] naming the interface.
pub fn link(nl: &mut Netlink, name: &str) -> Result<(u32, u32), NetlinkError> {
    let no = |detail: String| NetlinkError::NoLink {
        name: name.to_string(),
        detail,
    };
    let l = nl
        .link(name)
        .map_err(|e| no(e.to_string()))?
        .ok_or_else(|| no("no such link".into()))?;
    Ok((l.index, l.mtu.unwrap_or(1500)))
}

/// Adds (or replaces) `net dev <index> src <src>`: the route for the whole
/// overlay (its IPv4 Network, its IPv6Network).
///
/// # Errors
/// [`NetlinkError::Route`] naming the route.
pub fn replace_route(
    nl: &mut Netlink,
    net: IpNet,
    index: u32,
    dev: &str,
    src: IpAddr,
) -> Result<(), NetlinkError> {
    nl.replace_route(net, index, src)
        .map_err(|e| NetlinkError::Route {
            net,
            dev: dev.to_string(),
            src,
            detail: e.to_string(),
        })
}

/// Leaves `addr` (a /32, a /128) as the only address of its family on
/// interface `index`: a device kept from an earlier run may hold another
/// subnet's. IPv6 link-local addresses stay; the IPv6 one is added without
/// duplicate address detection, so it is usable at once.
///
/// # Errors
/// [`NetlinkError::Address`] naming the device and address.
pub fn set_only_address(
    nl: &mut Netlink,
    index: u32,
    dev: &str,
    addr: IpAddr,
) -> Result<(), NetlinkError> {
    let want = IpNet::from(addr);
    let fail = |e: io::Error| NetlinkError::Address {
        addr: want,
        dev: dev.to_string(),
        detail: e.to_string(),
    };
    let have = nl.addresses(index, Family::of(addr)).map_err(fail)?;
    let link_local = |a: &IpNet| matches!(a, IpNet::V6(a) if a.addr().is_unicast_link_local());
    for a in have.iter().filter(|a| **a != want && !link_local(a)) {
        nl.del_address(index, *a).map_err(fail)?;
    }
    if !have.contains(&want) {
        nl.add_address(index, want).map_err(fail)?;
    }
    Ok(())
}

/// Deletes interface `name` (its routes go with it); false when there is none.
///
/// # Errors
/// [`NetlinkError::Delete`] naming the interface.
pub fn delete_link(nl: &mut Netlink, name: &str) -> Result<bool, NetlinkError> {
    nl.delete_link(name).map_err(|e| NetlinkError::Delete {
        name: name.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use ipnet::Ipv6Net;

    use super::*;

    #[test]
    fn has_route_matches_family_destination_and_gateway() {
        let gw: Ipv6Addr = "fc00:0:0:3::1".parse().unwrap();
        let routes = vec![
            Route {
                dst: "fc00::/48".parse().unwrap(),
                gw: Some(IpAddr::V6(gw)),
                oif: Some(2),
            },
            Route {
                dst: IpNet::V6(Ipv6Net::default()),
                gw: Some(IpAddr::V6(gw)),
                oif: Some(2),
            },
        ];
        let net: IpNet = "fc00::/48".parse().unwrap();
        assert!(has_route(&routes, net, Some(IpAddr::V6(gw))));
        assert!(has_route(&routes, net, None));
        assert!(has_route(
            &routes,
            "::/0".parse().unwrap(),
            Some(IpAddr::V6(gw))
        ));
        assert!(!has_route(&routes, net, Some("fc00::9".parse().unwrap())));
        assert!(!has_route(&routes, net, Some("10.0.0.1".parse().unwrap())));
        assert!(!has_route(&routes, "10.0.0.0/8".parse().unwrap(), None));
        assert!(!has_route(&routes, "fc01::/48".parse().unwrap(), None));
    }

    #[test]
    fn has_route_reads_an_ipv4_dump_alike() {
        let gw: IpAddr = "10.1.17.1".parse().unwrap();
        let routes = vec![
            Route {
                dst: "10.1.0.0/16".parse().unwrap(),
                gw: Some(gw),
                oif: Some(2),
            },
            Route {
                dst: "10.1.17.0/24".parse().unwrap(),
                gw: None,
                oif: Some(2),
            },
        ];
        assert!(has_route(&routes, "10.1.0.0/16".parse().unwrap(), Some(gw)));
        assert!(has_route(&routes, "10.1.17.5/24".parse().unwrap(), None));
        assert!(!has_route(
            &routes,
            "10.1.17.0/24".parse().unwrap(),
            Some(gw)
        ));
        assert!(!has_route(&routes, "0.0.0.0/0".parse().unwrap(), None));
        assert!(!has_route(&routes, "fc00::/48".parse().unwrap(), None));
    }
}
