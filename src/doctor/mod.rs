//! `weftd doctor`: checks a node end to end with weftd's own flags and
//! environment, changing nothing, and says line by line what is fine, what
//! is not, and what to do. The verdicts are in [`report`]; the overlay probe
//! in [`probe`]; the CNI, Kubernetes and etcd TLS checks in [`cni`],
//! [`kube`] and [`etcd`]; this module gathers the facts.

pub mod cni;
pub mod etcd;
pub mod kube;
pub mod probe;
pub mod report;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::config::{DEFAULT_NET_CONF, NetConfig};
use crate::daemon::{KUBE_NET_CONF, Options};
use crate::iface::{self, ExtIface};
use crate::lease::Lease;
use crate::netlink;
use crate::store::etcd::EtcdStore;
use crate::store::{self, LeaseStore, Store, WatchEvent};
use crate::subnet_env::SubnetEnv;
use crate::types::Family;
use probe::Outcome;
use report::{Check, Report};

/// How long a store gets to answer one question.
pub(crate) const STORE_WAIT: Duration = Duration::from_secs(10);
/// How long a probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_millis(1500);

/// Runs every check that applies to this node, in order.
pub async fn run(opts: &Options, cni_dirs: &cni::CniDirs) -> Report {
    let mut r = Report::default();
    // The interface is checked first, as IPv4 or dual-stack needs it; an
    // IPv6-only network (known once the config is read) re-checks it below.
    let ext = interface(opts, &mut r);
    privileges(opts, &mut r);
    forwarding(Family::V4, &mut r);
    udp_offloads(&mut r);
    cni::check(opts, cni_dirs, &mut r);
    let kube_store = match &opts.kube {
        Some(k) => match kube::server(k, &mut r).await {
            Some(s) => Some(s),
            None => return r,
        },
        None => None,
    };
    if let Some(e) = &opts.etcd {
        if !etcd::tls(e, &mut r).await {
            return r;
        }
    }
    let Some(opened) = connect(opts, &mut r).await else {
        return r;
    };
    let store = opened.shared();
    let etcd = match &opened {
        Store::Etcd(e) => Some(e.as_ref()),
        _ => None,
    };
    let Some(config) = network_config(opts, store.as_ref(), etcd, &mut r).await else {
        return r;
    };
    // A dual-stack network needs the interface's IPv6 address too; an
    // IPv6-only one only that, so the IPv4 lines give way to IPv6 ones.
    let ext = match ext {
        _ if config.ipv4.is_none() => {
            r.checks.retain(|c| {
                !["interface", "public IP", "IPv4 forwarding"].contains(&c.what.as_str())
            });
            forwarding(Family::V6, &mut r);
            interface6(opts, false, &mut r)
        }
        Some(_) if config.ipv6.is_some() => {
            forwarding(Family::V6, &mut r);
            interface6(opts, true, &mut r)
        }
        e => e,
    };
    if let Some(k) = &kube_store {
        kube::node(k, &config, ext.as_ref(), &mut r).await;
    }
    let crate::backend::Backend::Vxlan(vx) = config.backend;
    let running = vxlan_port(vx.port, ext.as_ref(), opts, &mut r);
    if let Some(etcd) = etcd {
        etcd_revision(etcd, vx.port, running, &mut r).await;
    }
    let Some(leases) = leases(store.as_ref(), &mut r).await else {
        return r;
    };
    let Some(ext) = ext else { return r };
    let own = own_lease(&leases, &ext, &config, &mut r);
    if let Some(own) = &own {
        subnet_env(opts, own, &config, &mut r);
    }
    match (own, running) {
        (Some(own), true) => peers(&config, &ext, &own, &leases, &mut r),
        (Some(_), false) => r.push(Check::note(
            "peers",
            "not probed: the probe's answers come back through this node's weftd, which does not run",
        )),
        (None, _) => r.push(Check::note("peers", "not probed: this node holds no lease")),
    }
    r
}

fn interface(opts: &Options, r: &mut Report) -> Option<ExtIface> {
    match iface::select(&opts.iface, false) {
        Ok(e) => {
            r.push(Check::pass(
                "interface",
                format!("{} ({}), public IP {}", e.name, e.addr, e.public_ip),
            ));
            if e.public_ip != e.addr && !is_local(e.public_ip) {
                r.push(Check::note(
                    "public IP",
                    format!(
                        "{} is not an address of this host: right behind 1:1 NAT, where the peers see this node's datagrams from {}; if they do not go through that NAT, they refuse them as from an unknown peer unless they run with --accept-unknown-peers",
                        e.public_ip, e.addr
                    ),
                ));
            }
            Some(e)
        }
        Err(e) => {
            r.push(Check::fail("interface", e.to_string(), ""));
            None
        }
    }
}

/// The interface again, with its IPv6 address (EnableIPv6); with
/// `want_ipv4` false (an IPv6-only network) chosen by IPv6 alone.
fn interface6(opts: &Options, want_ipv4: bool, r: &mut Report) -> Option<ExtIface> {
    match iface::select_for(&opts.iface, want_ipv4, true) {
        Ok(e) => {
            let addr6 = e
                .addr6
                .map_or_else(|| "none".to_string(), |a| a.to_string());
            let public6 = e.public_ipv6.map_or_else(String::new, |a| a.to_string());
            r.push(Check::pass(
                "interface IPv6",
                format!("{}: {addr6}, public IPv6 {public6}", e.name),
            ));
            Some(e)
        }
        Err(e) => {
            r.push(Check::fail("interface IPv6", e.to_string(), ""));
            None
        }
    }
}

fn is_local(ip: Ipv4Addr) -> bool {
    iface::ipv4_interfaces().is_ok_and(|all| all.iter().any(|(_, a)| *a == ip))
}

/// Bit `cap` of the effective capabilities in /proc/self/status.
fn has_cap(cap: u32) -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(bits & (1 << cap) != 0)
}

fn privileges(opts: &Options, r: &mut Report) {
    match has_cap(12) {
        Some(true) => r.push(Check::pass("CAP_NET_ADMIN", "held")),
        Some(false) => r.push(Check::fail(
            "CAP_NET_ADMIN",
            "not held: weftd cannot make its TUN device, routes or rules",
            "run weftd (and doctor) as root, with the NET_ADMIN capability, or in a user namespace that owns its network namespace",
        )),
        None => r.push(Check::note("CAP_NET_ADMIN", "cannot read /proc/self/status")),
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => r.push(Check::pass("/dev/net/tun", "opens for reading and writing")),
        // weftd's own error for it, which names the fix.
        Err(e) => r.push(Check::fail(
            "/dev/net/tun",
            crate::sys::tun_error(&opts.tun_name, false, e).to_string(),
            "",
        )),
    }
}

/// Whether the kernel batches UDP here, on a throwaway loopback socket
/// (weftd probes its own the same way and degrades when refused).
fn udp_offloads(r: &mut Report) {
    const WHAT: &str = "UDP offloads";
    let Ok(s) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        r.push(Check::note(WHAT, "cannot open a UDP socket to probe them"));
        return;
    };
    let (gso, gro) = (
        crate::sys::udp_gso_supported(&s),
        crate::sys::enable_udp_gro(&s),
    );
    if gso && gro {
        r.push(Check::pass(
            WHAT,
            "GSO and GRO: one send per run of segments, coalesced receives",
        ));
    } else {
        let on = |b: bool| if b { "on" } else { "off" };
        r.push(Check::note(
            WHAT,
            format!(
                "GSO {}, GRO {}: weftd forwards without them, one datagram per syscall where one is missing (Linux 4.18 has GSO, 5.0 GRO), at a lower rate. TUN offloads are probed when weftd starts, which logs whether they are on",
                on(gso),
                on(gro)
            ),
        ));
    }
}

/// The forwarding line of `family` (IPv6's on a dual-stack or IPv6-only node).
fn forwarding(family: Family, r: &mut Report) {
    let what = format!("{} forwarding", family.name());
    let (path, name) = family.forwarding_sysctl();
    match std::fs::read_to_string(path).map(|s| s.trim().to_string()) {
        Ok(v) if v == "1" => r.push(Check::pass(what, "on")),
        Ok(_) => r.push(Check::note(
            what,
            "off: weftd turns it on when it starts (pods' traffic crosses the node)",
        )),
        Err(e) => r.push(Check::note(what, format!("cannot read {name}: {e}"))),
    }
}

/// The store weftd would use, reached once (no waiting at boot here).
async fn connect(opts: &Options, r: &mut Report) -> Option<Store> {
    let what = "store";
    let got = match tokio::time::timeout(STORE_WAIT, store::open(opts.store())).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(match (&opts.kube, &opts.etcd) {
            (Some(_), _) => "the API server did not answer in 10 s".to_string(),
            (None, Some(e)) => format!("etcd {} did not answer in 10 s", e.endpoints.join(",")),
            (None, None) => "the store did not answer in 10 s".to_string(),
        }),
    };
    match got {
        Ok(s) => {
            r.push(Check::pass(
                what,
                format!("{} answers", s.shared().describe()),
            ));
            Some(s)
        }
        Err(e) => {
            r.push(Check::fail(what, e, ""));
            None
        }
    }
}

async fn network_config(
    opts: &Options,
    store: &dyn LeaseStore,
    etcd: Option<&EtcdStore>,
    r: &mut Report,
) -> Option<NetConfig> {
    let what = "network config";
    let path = opts
        .net_config_path
        .clone()
        .or_else(|| opts.kube.is_some().then(|| KUBE_NET_CONF.into()));
    let parsed = match &path {
        Some(p) => NetConfig::from_file(p).map_err(|e| (e.to_string(), String::new())),
        None => match tokio::time::timeout(STORE_WAIT, store.network_config()).await {
            Ok(Ok(Some(text))) => NetConfig::parse(&text, &store.describe())
                .map_err(|e| (e.to_string(), String::new())),
            Ok(Ok(None)) if etcd.is_none() => {
                // The embedded store: weftd stores its default on first start.
                NetConfig::parse(DEFAULT_NET_CONF, "the embedded default")
                    .map_err(|e| (e.to_string(), String::new()))
            }
            Ok(Ok(None)) => Err((
                format!("{}: no network config key", store.describe()),
                format!(
                    "write it: {}",
                    etcd.map(|e| e.etcdctl_put_config()).unwrap_or_default()
                ),
            )),
            Ok(Err(e)) => Err((e.to_string(), String::new())),
            Err(_) => Err(("the store did not answer in 10 s".into(), String::new())),
        },
    };
    match parsed {
        Ok(c) => {
            let crate::backend::Backend::Vxlan(vx) = c.backend;
            r.push(Check::pass(
                what,
                format!(
                    "Network {}{}, VNI {}, UDP port {}",
                    c.ipv4.map_or_else(
                        || "none (IPv6-only)".to_string(),
                        |c4| format!("{}, /{} subnets", c4.network, c4.subnet_len)
                    ),
                    c.ipv6
                        .map(|v6| format!(
                            "; IPv6Network {}, /{} subnets",
                            v6.network, v6.subnet_len
                        ))
                        .unwrap_or_default(),
                    vx.vni,
                    vx.port
                ),
            ));
            Some(c)
        }
        Err((e, fix)) => {
            r.push(Check::fail(what, e, fix));
            None
        }
    }
}

/// Who holds the VXLAN port; whether a weftd runs here.
fn vxlan_port(port: u16, ext: Option<&ExtIface>, opts: &Options, r: &mut Report) -> bool {
    let what = format!("UDP port {port}");
    if let Some(tun) = crate::handover::running(port) {
        r.push(Check::pass(
            what,
            format!("a weftd runs here, on TUN {tun}"),
        ));
        return true;
    }
    if let Ok(mut nl) = netlink::connect() {
        if let Ok(devs) = nl.vxlan_devices() {
            if let Some(d) = devs.iter().find(|d| d.port == Some(port)) {
                r.push(Check::fail(
                    what,
                    format!(
                        "held by the kernel VXLAN device {} (flanneld's, or left by it)",
                        d.name
                    ),
                    format!(
                        "stop flanneld, then ip link del {} or start weftd with --replace-kernel-vxlan",
                        d.name
                    ),
                ));
                return false;
            }
        }
    }
    let addr = ext.map_or(Ipv4Addr::UNSPECIFIED, |e| e.addr);
    match std::net::UdpSocket::bind(SocketAddrV4::new(addr, port)) {
        Ok(_) => r.push(Check::note(
            what,
            format!("free: weftd ({}) does not run here", opts.tun_name),
        )),
        Err(e) => r.push(Check::fail(
            what,
            format!("taken by another program: {e}"),
            format!("find it with `ss -ulpn 'sport = :{port}'` and stop it, or set Backend.Port"),
        )),
    }
    false
}

/// etcd's revision against the one the running weftd last saw.
async fn etcd_revision(etcd: &EtcdStore, port: u16, running: bool, r: &mut Report) {
    let store = if running {
        crate::status::query(Some(port))
            .ok()
            .and_then(|v| v.into_iter().next()?.store)
    } else {
        None
    };
    let seen = store.as_ref().and_then(|s| s.revision);
    let rewound = store.and_then(|s| s.rewound);
    let ago = |t: u64| crate::status::when(crate::clock::now_ms(), Some(t));
    match tokio::time::timeout(STORE_WAIT, etcd.revision()).await {
        Ok(Ok(now)) => r.push(report::revision_check(now, seen, rewound, ago)),
        Ok(Err(e)) => r.push(Check::fail("etcd revision", e.to_string(), "")),
        Err(_) => r.push(Check::fail(
            "etcd revision",
            "etcd did not answer in 10 s",
            "",
        )),
    }
}

/// The store's leases, as one snapshot.
async fn leases(store: &dyn LeaseStore, r: &mut Report) -> Option<Vec<Lease>> {
    let first = async {
        let mut rx = store.watch().await?;
        Ok::<_, crate::store::StoreError>(rx.recv().await)
    };
    match tokio::time::timeout(STORE_WAIT, first).await {
        Ok(Ok(Some(WatchEvent::Snapshot(all)))) => Some(all),
        Ok(Ok(_)) => {
            r.push(Check::fail(
                "leases",
                "the store's watch gave no snapshot",
                "",
            ));
            None
        }
        Ok(Err(e)) => {
            r.push(Check::fail("leases", e.to_string(), ""));
            None
        }
        Err(_) => {
            r.push(Check::fail("leases", "no lease list within 10 s", ""));
            None
        }
    }
}

fn own_lease(
    leases: &[Lease],
    ext: &ExtIface,
    config: &NetConfig,
    r: &mut Report,
) -> Option<Lease> {
    let own = leases
        .iter()
        .find(|l| match (config.network(), l.subnet) {
            (Some(n), Some(s)) => l.attrs.public_ip == ext.public_ip && n.contains(&s),
            (None, None) => ext.public_ipv6.is_some() && l.attrs.public_ipv6 == ext.public_ipv6,
            _ => false,
        })
        .cloned();
    match &own {
        Some(l) => r.push(Check::pass(
            "lease",
            match (l.ipv6_subnet, l.attrs.public_ipv6) {
                (Some(s6), Some(ip6)) if l.subnet.is_none() => {
                    format!("{s6} for public IPv6 {ip6}")
                }
                (Some(s6), Some(ip6)) => format!(
                    "{} for public IP {}, {s6} for public IPv6 {ip6}",
                    l.id(),
                    ext.public_ip
                ),
                _ => format!("{} for public IP {}", l.id(), ext.public_ip),
            },
        )),
        None => r.push(Check::fail(
            "lease",
            match (config.ipv4, ext.public_ipv6) {
                (None, Some(ip6)) => format!("no lease in the store has public IPv6 {ip6}"),
                _ => format!("no lease in the store has public IP {}", ext.public_ip),
            },
            if config.ipv4.is_none() {
                "start weftd on this node; if it runs, check that --iface/--public-ipv6 name the address the others see"
            } else {
                "start weftd on this node; if it runs, check that --iface/--public-ip name the address the others see"
            },
        )),
    }
    own
}

fn subnet_env(opts: &Options, own: &Lease, config: &NetConfig, r: &mut Report) {
    let what = format!("{}", opts.subnet_file.display());
    match SubnetEnv::read(&opts.subnet_file) {
        Ok(e)
            if e.ipv4.map(|e4| (e4.network, e4.subnet)) == config.network().zip(own.subnet)
                && e.ipv6.map(|e6| (e6.network, e6.subnet))
                    == config.network6().zip(own.ipv6_subnet) =>
        {
            r.push(Check::pass(
                what,
                format!("agrees with the lease ({}, MTU {})", own.id(), e.mtu),
            ));
        }
        Ok(e) => r.push(Check::fail(
            what,
            format!(
                "says subnets {} and {}, but the lease is {}: pods get addresses of another subnet",
                e.ipv4.map_or_else(
                    || "(no IPv4)".to_string(),
                    |e4| format!("{} in {}", e4.subnet, e4.network)
                ),
                e.ipv6.map_or_else(
                    || "(no IPv6)".to_string(),
                    |e6| format!("{} in {}", e6.subnet, e6.network)
                ),
                own.key()
            ),
            "restart weftd so that it rewrites subnet.env, then recreate the pods made since",
        )),
        Err(e) => r.push(Check::fail(
            what,
            e.to_string(),
            "start weftd: it writes subnet.env",
        )),
    }
}

/// Probes every peer through the overlay: reachable, and with full-size
/// packets; when not, whether the VXLAN port or the whole node is silent.
/// In a dual-stack network each peer's IPv6 half is probed too, through its
/// IPv6 VTEP; in an IPv6-only one that half is the only one.
fn peers(config: &NetConfig, ext: &ExtIface, own: &Lease, leases: &[Lease], r: &mut Report) {
    let echoes = match probe::Echoes::open(config.ipv6.is_some()) {
        Ok(s) => s,
        Err(e) => {
            r.push(Check::note(
                "peers",
                format!("not probed: a raw ICMP socket needs CAP_NET_RAW ({e})"),
            ));
            return;
        }
    };
    let mtu = netlink::connect()
        .ok()
        .and_then(|mut nl| netlink::link(&mut nl, &ext.name).ok())
        .map_or(1450, |(_, m)| config.overlay_mtu(m));
    let id = (std::process::id() & 0xffff) as u16;
    // This node's VTEPs: the IPv4 one (subnet and MAC) unless the network is
    // IPv6-only, and the IPv6 one in a dual-stack or IPv6-only network.
    let own4 = config
        .network()
        .and(own.subnet)
        .zip(own.attrs.vxlan_data().ok().map(|d| d.vtep_mac));
    let own6 = config
        .network6()
        .and(own.ipv6_subnet)
        .zip(own.attrs.vxlan_v6_data().ok().flatten());
    let own_id = own.id();
    let peers: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.id() != own_id)
        .filter(|l| match (l.subnet, config.network()) {
            (Some(s), Some(n)) => n.contains(&s),
            // An IPv6-only peer, in an IPv6-only network.
            (None, None) => true,
            _ => false,
        })
        .collect();
    if peers.is_empty() {
        r.push(Check::note("peers", "none in the store yet"));
    }
    for (i, p) in peers.into_iter().enumerate() {
        let seq = (i as u16).wrapping_mul(8);
        if let (Some((own_subnet, own_mac)), Some(p_subnet)) = (own4, p.subnet) {
            let what = format!("peer {} ({})", p_subnet, p.attrs.public_ip);
            match p.attrs.vxlan_data() {
                Ok(d) => {
                    let half = Half {
                        what,
                        to_mac: d.vtep_mac,
                        from_mac: own_mac,
                        from: own_subnet.network().into(),
                        from_underlay: ext.addr.into(),
                        dst: p_subnet.network().into(),
                        public: p.attrs.public_ip.into(),
                        overhead: config.backend.overhead(false),
                    };
                    r.push(probe_half(config, &echoes, &half, mtu, id, seq));
                }
                Err(_) => r.push(Check::note(what, "not a vxlan lease: not probed")),
            }
        }
        let peer6 = p
            .ipv6_subnet
            .zip(p.attrs.public_ipv6)
            .zip(p.attrs.vxlan_v6_data().ok().flatten());
        if let (Some((s6, d6)), Some(((ps6, pip6), pd6))) = (own6, peer6) {
            let half = Half {
                what: format!("peer {ps6} ({pip6})"),
                to_mac: pd6.vtep_mac,
                from_mac: d6.vtep_mac,
                from: s6.network().into(),
                from_underlay: ext
                    .addr6
                    .map_or(std::net::Ipv6Addr::UNSPECIFIED, |a| a)
                    .into(),
                dst: ps6.network().into(),
                public: pip6.into(),
                overhead: config.backend.overhead(true),
            };
            r.push(probe_half(
                config,
                &echoes,
                &half,
                mtu,
                id,
                seq.wrapping_add(4),
            ));
        } else if p.subnet.is_none() {
            r.push(Check::note(
                format!("peer {}", p.id()),
                "its lease has no usable IPv6 VTEP (PublicIPv6 and BackendV6Data): not probed",
            ));
        }
    }
}

/// One family's half of a peer, as [`probe_half`] probes it.
struct Half {
    what: String,
    to_mac: crate::types::VtepMac,
    from_mac: crate::types::VtepMac,
    /// This node's subnet address and underlay address of that family.
    from: std::net::IpAddr,
    from_underlay: std::net::IpAddr,
    /// The peer's subnet address and public address.
    dst: std::net::IpAddr,
    public: std::net::IpAddr,
    /// The VXLAN overhead over this family's underlay.
    overhead: u32,
}

/// Probes one half of a peer: a small echo through VXLAN, then one of the
/// overlay MTU; when the small one gets no answer, an underlay ping tells a
/// dropped VXLAN port from a node that is down.
fn probe_half(
    config: &NetConfig,
    echoes: &probe::Echoes,
    h: &Half,
    mtu: u32,
    id: u16,
    seq: u16,
) -> Check {
    let what = h.what.clone();
    let crate::backend::Backend::Vxlan(vx) = config.backend;
    let port = vx.port;
    let to = std::net::SocketAddr::new(h.public, port);
    let probe_of = |total: u16, seq: u16| {
        let dgram = probe::vxlan_echo(vx.vni, h.to_mac, h.from_mac, h.from, h.dst, id, seq, total);
        probe::vxlan_probe(
            echoes,
            h.from_underlay,
            to,
            &dgram,
            (h.dst, id, seq),
            PROBE_WAIT,
        )
    };
    let small = if h.dst.is_ipv6() { 104 } else { 84 };
    match probe_of(small, seq) {
        Ok(Outcome::Answered(rtt)) => {
            let full = u16::try_from(mtu).unwrap_or(1450);
            match probe_of(full, seq.wrapping_add(1)) {
                Ok(Outcome::Answered(_)) => Check::pass(
                    what,
                    format!(
                        "reached through VXLAN ({to}), RTT {:.2} ms; {full}-byte packets (the overlay MTU) too",
                        rtt.as_secs_f64() * 1e3
                    ),
                ),
                _ => Check::fail(
                    what,
                    format!(
                        "small packets reach it through VXLAN ({to}) but {full}-byte ones (the overlay MTU) do not: the path between the nodes carries fewer than {} bytes",
                        u32::from(full) + h.overhead
                    ),
                    format!(
                        "lower the overlay MTU (Backend.MTU in net-conf.json) or raise the underlay's, so that the overlay MTU + {} fits every hop; then restart weftd and recreate the pods",
                        h.overhead
                    ),
                ),
            }
        }
        Ok(Outcome::PortClosed) => Check::fail(
            what,
            format!(
                "nothing listens on {to}: the node answers, but its weftd (or flanneld) does not run"
            ),
            format!("start weftd on {}", h.public),
        ),
        Ok(Outcome::Silent) => {
            let ping = probe::underlay_ping(echoes, h.public, id, seq.wrapping_add(2), PROBE_WAIT);
            if matches!(ping, Ok(Outcome::Answered(_))) {
                let rule = if h.public.is_ipv6() {
                    "ip6tables"
                } else {
                    "iptables"
                };
                Check::fail(
                    what,
                    format!(
                        "{} answers ping, but VXLAN to it on UDP {port} gets no answer: a firewall or security group drops UDP {port} on the way",
                        h.public
                    ),
                    format!(
                        "allow UDP {port} between the nodes (on {}: {rule} -I INPUT -p udp --dport {port} -j ACCEPT, or the cloud's security group)",
                        h.public
                    ),
                )
            } else {
                Check::fail(
                    what,
                    format!(
                        "{} answers neither VXLAN on UDP {port} nor ping: the node is down or unreachable on the underlay",
                        h.public
                    ),
                    "bring the node back, or delete its lease if it is gone for good",
                )
            }
        }
        Err(e) => Check::note(what, format!("not probed: {e}")),
    }
}
