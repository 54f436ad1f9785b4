//! `weftd`'s life cycle: choose the interface, read the network config, acquire
//! a lease, bring up TUN and the packet loops, write subnet.env, then keep the
//! forwarding table in step with the store and the lease renewed until told to stop.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use crate::clock;
use crate::config::{ConfigError, DEFAULT_NET_CONF, NetConfig};
use crate::dataplane::core::{Core, SourceChecks};
use crate::dataplane::worker::{Dataplane, Queue, Underlay6};
use crate::handover::{self, HandoverError};
use crate::iface::{self, IfaceError, IfaceSpec};
use crate::lease::{Lease, LeaseId};
use crate::metrics;
use crate::netfilter::{self, Netfilter, NetfilterError};
use crate::netlink::{self, NetlinkError};
use crate::node::{Reconciler, Renewal, Step};
use crate::state::{NodeInfo, NodeState};
use crate::store::etcd::EtcdSettings;
use crate::store::kube::KubeSettings;
use crate::store::local::LocalStore;
use crate::store::{self, AcquireRequest, LeaseStore, Store, StoreError, WatchEvent};
use crate::subnet_env::{SubnetEnv, SubnetEnvError};
use crate::sys::{self, SysError};
use crate::types::VtepMac;

/// Sending sockets (source ports) a multi-queue node spreads flows over.
const SEND_SOCKETS: usize = 8;

/// Everything `weftd` needs to run (the CLI fills it).
#[derive(Debug, Clone)]
pub struct Options {
    pub iface: IfaceSpec,
    pub net_config_path: Option<PathBuf>,
    pub subnet_file: PathBuf,
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
    pub store_poll: Duration,
    pub tun_name: String,
    pub healthz: Option<SocketAddr>,
    /// Use TUN offloads (TSO on read, GRO on write) when the kernel has them.
    pub offload: bool,
    /// TUN queues, each with its own worker thread and sockets.
    pub queues: usize,
    /// Keep leases in etcd instead of the embedded store.
    pub etcd: Option<EtcdSettings>,
    /// Kubernetes mode (`--kube-subnet-mgr`): leases are the nodes' pod CIDRs.
    pub kube: Option<KubeSettings>,
    /// Masquerade and forward rules.
    pub netfilter: netfilter::Settings,
    /// Whom the receive path believes (`--accept-unknown-peers`, `--accept-foreign-sources`).
    pub source_checks: SourceChecks,
    /// Delete a kernel VXLAN device that holds the VXLAN port (`--replace-kernel-vxlan`).
    pub replace_kernel_vxlan: bool,
    /// The CNI conflist to install once the node forwards (`--cni-conflist`).
    pub cni: Option<crate::cni::install::InstallArgs>,
}

/// net-conf.json's place in Kubernetes mode when `--net-config-path` is not given (flannel's).
pub const KUBE_NET_CONF: &str = "/etc/kube-flannel/net-conf.json";

/// Why weftd stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    SubnetEnv(#[from] SubnetEnvError),
    #[error("cannot install the {what}: {source}")]
    Netfilter {
        what: &'static str,
        source: NetfilterError,
    },
    #[error(
        "the TUN MTU would be {mtu} (underlay {underlay} − {overhead}): too small to carry {family} (at least {min}); raise the MTU of {iface} or Backend.MTU"
    )]
    Mtu {
        mtu: u32,
        underlay: u32,
        /// The VXLAN overhead: 50, or 70 in a dual-stack network.
        overhead: u32,
        /// "IPv4", or "IPv6" in a dual-stack network, which needs 1280.
        family: &'static str,
        min: u16,
        iface: String,
    },
    #[error(
        "the network carries IPv6 (EnableIPv6) but the lease {lease} from {store} has no IPv6 subnet"
    )]
    NoLease6 { store: String, lease: String },
    #[error(
        "the network carries IPv4 (EnableIPv4, the default) but the lease {lease} from {store} has no IPv4 subnet"
    )]
    NoLease4 { store: String, lease: String },
    #[error("the network config enables neither IPv4 nor IPv6: no VXLAN socket to open")]
    NoUnderlay,
    #[error("cannot serve /healthz on {addr}: {source}")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the packet threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot write in {path}: {source} (set {flag} to a writable place)")]
    Unwritable {
        path: PathBuf,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error("--cni-conflist: {0}")]
    Cni(#[from] crate::cni::install::InstallError),
    #[error(
        "this node's lease for {old} was deleted and {old} was taken by another node; it now holds {new}. Exiting so that weftd restarts on {new} (its pods need new addresses)"
    )]
    SubnetChanged { old: LeaseId, new: LeaseId },
    #[error("lease store {0}: the lease watch ended; the store is gone")]
    WatchEnded(String),
    #[error(
        "the kernel VXLAN device {device} (VNI {vni}) holds UDP port {port}, which weftd needs: flanneld made it, and may still run. Stop flanneld, then delete the device (ip link del {device}) or start weftd with --replace-kernel-vxlan, which deletes it. The node keeps its lease, so pods keep their addresses"
    )]
    KernelVxlanHoldsPort {
        device: String,
        vni: String,
        port: u16,
    },
}

/// Runs the node on its store (etcd when configured, else the embedded local
/// store) until `shutdown` completes.
///
/// # Errors
/// [`DaemonError`]: each variant names what failed and how to fix it.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    tokio::pin!(shutdown);
    // /healthz first, as flanneld's: it answers while weftd waits for its
    // store at boot (a liveness probe must not restart it meanwhile);
    // /readyz says 503 until the dataplane forwards.
    let status = Arc::new(NodeState::default());
    let _healthz = match opts.healthz {
        Some(addr) => {
            let l = metrics::bind(addr).map_err(|source| DaemonError::Healthz { addr, source })?;
            Some(AbortOnDrop(tokio::spawn(metrics::serve(l, status.clone()))))
        }
        None => None,
    };
    let Some(store) = retry_at_boot(&mut shutdown, || async {
        let store = store::open(&opts).await?;
        store.ready().await?;
        Ok(store)
    })
    .await?
    else {
        return Ok(Stopped::Signal);
    };
    let mut opts = opts;
    let mut default_conf = None;
    if let Store::Kube(k) = &store {
        tracing::info!("Kubernetes subnet manager: {}", k.describe());
        if opts.net_config_path.is_none() {
            opts.net_config_path = Some(KUBE_NET_CONF.into());
        }
    }
    if let Store::Local(local) = &store {
        check_writable_dir(&opts.state_dir, "--state-dir")?;
        if opts.net_config_path.is_none() {
            default_conf = Some(LocalStore::clone(local));
        }
    }
    run_with_store(opts, store.shared(), default_conf, status, shutdown).await
}

/// A task aborted when its owner goes (tokio's handles detach on drop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A store that does not answer at boot ([`StoreError::is_unreachable`]) is
/// tried again, with backoff (1 s doubling to 30 s), as flannel does, until
/// it answers or `shutdown`; other errors (TLS, auth, options) end the start
/// at once. `None` on shutdown.
async fn retry_at_boot<S, F>(
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    mut connect: impl FnMut() -> F,
) -> Result<Option<S>, DaemonError>
where
    F: Future<Output = Result<S, StoreError>>,
{
    let mut wait = Duration::from_secs(1);
    loop {
        match connect().await {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.is_unreachable() => {
                tracing::warn!("{e}; retrying in {}s", wait.as_secs());
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Checks before the lease is taken that `dir` exists (or can be made) and
/// takes files; `flag` is the one that moves it.
fn check_writable_dir(dir: &std::path::Path, flag: &'static str) -> Result<(), DaemonError> {
    let probe = dir.join(format!(".weftd-probe.{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|source| DaemonError::Unwritable {
            path: dir.to_owned(),
            flag,
            source,
        })
}

/// The devices of the node, opened before the lease is taken.
struct Devices {
    tuns: Vec<tun_rs::SyncDevice>,
    /// The IPv4 underlay's sockets (none on an IPv6-only node).
    rx: Vec<Option<std::net::UdpSocket>>,
    send: Arc<[std::net::UdpSocket]>,
    /// The same on the IPv6 underlay, on a dual-stack or IPv6-only node.
    v6: Option<(Vec<std::net::UdpSocket>, Arc<[std::net::UdpSocket]>)>,
}

/// Opens (or attaches to) the TUN device and binds the VXLAN sockets.
/// Offloads are dropped only when the kernel refuses them; a device left by
/// an earlier weftd with other settings is recreated when no weftd runs.
fn open_devices(
    opts: &Options,
    nl: &mut netlink::Netlink,
    listen: Option<SocketAddrV4>,
    listen6: Option<std::net::SocketAddrV6>,
    mtu: u16,
    predecessor: bool,
) -> Result<Devices, DaemonError> {
    let queues = opts.queues.max(1);
    let name = opts.tun_name.as_str();
    let open = || sys::open_tun(name, mtu, opts.offload, queues, listen6.is_some());
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
            sys::open_tun(name, mtu, false, queues, listen6.is_some())?
        }
        r => r?,
    };
    tracing::info!(
        "TUN offloads (TSO/GRO through virtio-net headers): {}; queues: {queues}",
        if tuns[0].tcp_gso() { "on" } else { "off" }
    );
    // One receive socket per queue on the VXLAN port, shared by SO_REUSEPORT
    // (also with a weftd taking over from this one). With one queue it also
    // sends (source port = the VXLAN port); with several, packets leave from
    // SEND_SOCKETS sockets on ephemeral ports, picked by inner flow hash, so
    // the receiver's SO_REUSEPORT (or a NIC's RSS) spreads flows over its
    // workers, as the kernel's VXLAN source-port hashing does.
    let v4 = match listen {
        Some(l) => Some(bind_underlay(
            nl,
            l.into(),
            queues,
            opts.replace_kernel_vxlan,
        )?),
        None => None,
    };
    let v6 = match listen6 {
        Some(l6) => Some(bind_underlay(
            nl,
            l6.into(),
            queues,
            opts.replace_kernel_vxlan,
        )?),
        None => None,
    };
    // The kernel reports twice what it counts against the limit.
    let (first, shown) = match (&v4, &v6, listen, listen6) {
        (Some((rx, _)), _, Some(l), _) => (&rx[0], SocketAddr::from(l)),
        (_, Some((rx, _)), _, Some(l6)) => (&rx[0], SocketAddr::from(l6)),
        _ => return Err(DaemonError::NoUnderlay),
    };
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
    if let (Some(l6), Some(_)) = (listen6, listen) {
        tracing::info!("VXLAN socket {l6}: the IPv6 underlay");
    }
    let (rx, send) = match v4 {
        Some((rx, send)) => (rx.into_iter().map(Some).collect(), send),
        None => ((0..queues).map(|_| None).collect(), Arc::from(vec![])),
    };
    Ok(Devices { tuns, rx, send, v6 })
}

/// Binds one underlay's sockets: `queues` receivers on `listen` (shared by
/// SO_REUSEPORT) and, with several queues, [`SEND_SOCKETS`] senders on
/// ephemeral ports of the same address.
#[allow(clippy::type_complexity)]
fn bind_underlay(
    nl: &mut netlink::Netlink,
    listen: SocketAddr,
    queues: usize,
    replace_kernel_vxlan: bool,
) -> Result<(Vec<std::net::UdpSocket>, Arc<[std::net::UdpSocket]>), DaemonError> {
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
    let send: Arc<[std::net::UdpSocket]> = if queues > 1 {
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

/// Runs the node on `store`. When `seed_default` is given and neither a config
/// file nor a stored config exists, the embedded default config is stored first.
///
/// Everything that can be checked is checked before the lease is taken (the
/// subnet file's directory, the hand-over name, the TUN device, the UDP port);
/// a start that fails after taking it releases it, unless a running weftd
/// (which this one was to take over from) holds it too.
///
/// # Errors
/// As [`run`].
pub async fn run_with_store(
    opts: Options,
    store: Arc<dyn LeaseStore>,
    seed_default: Option<LocalStore>,
    status: Arc<NodeState>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    let config = match &opts.net_config_path {
        Some(p) => NetConfig::from_file(p)?,
        None => {
            if let Some(local) = &seed_default {
                if local.put_config_if_absent(DEFAULT_NET_CONF)? {
                    tracing::info!(
                        "no network config given: stored the embedded default {DEFAULT_NET_CONF}"
                    );
                }
            }
            match store.network_config().await? {
                Some(text) => {
                    NetConfig::parse(&text, &format!("{} (network config)", store.describe()))?
                }
                None => {
                    return Err(StoreError::Config {
                        store: store.describe(),
                        key: "config".into(),
                        problem: "not found; pass --net-config-path or store a net-conf.json"
                            .into(),
                    }
                    .into());
                }
            }
        }
    };
    // The config first: the interface needs an IPv6 address in a dual-stack network.
    if let (None, Some(ip6)) = (config.ipv6, opts.iface.public_ipv6) {
        tracing::warn!(
            "--public-ipv6 {ip6} has no effect: the network config does not enable IPv6 (set \"EnableIPv6\": true and \"IPv6Network\" in net-conf.json for a dual-stack network)"
        );
    }
    let ext = iface::select_for(&opts.iface, config.ipv4.is_some(), config.ipv6.is_some())?;
    if config.ipv4.is_some() {
        tracing::info!(
            "using interface {} ({}), public IP {}",
            ext.name,
            ext.addr,
            ext.public_ip
        );
    } else {
        tracing::info!("using interface {} (an IPv6-only network)", ext.name);
    }
    if let Some(ip6) = ext.public_ipv6 {
        tracing::info!(
            "IPv6: interface address {}, public IPv6 {ip6}",
            ext.addr6
                .map_or_else(|| "none".to_string(), |a| a.to_string())
        );
    }
    if let Some(c4) = config.ipv4 {
        tracing::info!(
            "network {} (subnets /{} from {} to {})",
            c4.network,
            c4.subnet_len,
            c4.subnet_min,
            c4.subnet_max,
        );
    }
    if let Some(c6) = config.ipv6 {
        tracing::info!(
            "IPv6 network {} (subnets /{} from {} to {})",
            c6.network,
            c6.subnet_len,
            c6.subnet_min,
            c6.subnet_max,
        );
    }
    // The userspace VXLAN dataplane: the one backend weft runs
    // (crate::backend).
    let crate::backend::Backend::Vxlan(vx) = config.backend;
    tracing::info!("VNI {}, UDP port {}", vx.vni, vx.port);

    let mut nl = netlink::connect()?;
    let (_, underlay_mtu) = netlink::link(&mut nl, &ext.name)?;
    let mtu = config.overlay_mtu(underlay_mtu);
    // IPv4 needs 576 bytes; IPv6, which the same device carries in a
    // dual-stack network, 1280 (the kernel turns IPv6 off below it).
    let (family, min) = if config.ipv6.is_some() {
        ("IPv6", 1280)
    } else {
        ("IPv4", 576)
    };
    let overhead = config.backend.overhead(config.ipv6.is_some());
    let tun_mtu = u16::try_from(mtu)
        .ok()
        .filter(|m| *m >= min)
        .ok_or(DaemonError::Mtu {
            mtu,
            underlay: config.backend.mtu().unwrap_or(underlay_mtu),
            overhead,
            family,
            min,
            iface: ext.name.clone(),
        })?;

    // Checked before the lease is taken.
    if let Some(dir) = opts.subnet_file.parent() {
        check_writable_dir(dir, "--subnet-file")?;
    }
    if let Some(cni) = &opts.cni {
        crate::cni::install::read_conflist(cni)?;
        check_writable_dir(&cni.conf_dir, "--cni-conf-dir")?;
    }
    let port = vx.port;
    let mut holder = handover::claim(port)?;
    let predecessor = holder.is_none();
    if predecessor {
        handover::check_successor(port, &opts.tun_name)?;
        tracing::info!(
            "a weftd already serves {} and port {port} here: this one attaches beside it and takes over once it forwards",
            opts.tun_name
        );
    }
    let listen = config.ipv4.map(|_| SocketAddrV4::new(ext.addr, port));
    let listen6 = match config.ipv6 {
        None => None,
        // The interface's address; with only --public-ipv6 (the node is
        // reached through NAT), any address of this node.
        Some(_) => Some(std::net::SocketAddrV6::new(
            ext.addr6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
            port,
            0,
            0,
        )),
    };
    let devices = open_devices(&opts, &mut nl, listen, listen6, tun_mtu, predecessor)?;

    let previous_env = SubnetEnv::read(&opts.subnet_file).ok();
    let previous = previous_env
        .as_ref()
        .and_then(|e| e.ipv4.as_ref())
        .filter(|e4| config.network() == Some(e4.network))
        .map(|e4| e4.subnet);
    let previous6 = previous_env
        .as_ref()
        .and_then(|e| e.ipv6.as_ref())
        .filter(|e6| config.ipv6.is_some_and(|c| c.network == e6.network))
        .map(|e6| e6.subnet);
    let attrs = config.backend.own_attrs(
        config.ipv4.map(|_| ext.public_ip),
        config.ipv6.and(ext.public_ipv6),
    );
    let req = AcquireRequest {
        config: config.clone(),
        attrs,
        previous,
        previous6,
        ttl: opts.lease_ttl,
    };
    let lease = store.acquire(&req).await?;
    let started = start(
        &opts,
        &config,
        &store,
        &mut nl,
        devices,
        lease.clone(),
        mtu,
        previous_env.as_ref(),
        &status,
        &ext.name,
    )
    .await;
    let node = match started {
        Ok(n) => n,
        Err(e) => {
            if !predecessor {
                match store.release(&lease).await {
                    Ok(()) => tracing::warn!(
                        "start failed after the lease for {} was taken: released it, so no node routes to a node without a dataplane",
                        lease.id()
                    ),
                    Err(re) => tracing::warn!(
                        "start failed, and releasing the lease for {} failed too: {re}",
                        lease.id()
                    ),
                }
            }
            return Err(e);
        }
    };

    // Take over from the weftd that ran here: it stops once this one forwards.
    if predecessor {
        let took = tokio::task::spawn_blocking(move || {
            let gone = handover::ask_to_stop(port, Duration::from_secs(10));
            (gone, handover::claim_within(port, Duration::from_secs(2)))
        })
        .await
        .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
        match took {
            (Ok(t), Ok(h)) => {
                tracing::info!(
                    "took over from the previous weftd, which let go {} ms after being asked",
                    t.as_millis()
                );
                holder = h;
            }
            (gone, claimed) => {
                tracing::warn!(
                    "the previous weftd did not hand over cleanly ({:?}, {:?}); both forward until it exits",
                    gone.err(),
                    claimed.err()
                );
            }
        }
    }
    let handed_over = Arc::new(tokio::sync::Notify::new());
    let successor = Arc::new(std::sync::Mutex::new(None));
    if let Some(h) = holder {
        let (n, slot) = (handed_over.clone(), successor.clone());
        let st = status.clone();
        h.serve(
            opts.tun_name.clone(),
            move |s| {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(s);
                }
                n.notify_one();
            },
            move || {
                serde_json::to_string(&crate::status::view(&st, clock::now_ms()))
                    .unwrap_or_default()
            },
        );
    }
    node.run(&opts, store, req, &status, shutdown, handed_over)
        .await?;
    let taken = successor.lock().ok().and_then(|mut s| s.take());
    Ok(taken.map_or(Stopped::Signal, Stopped::HandedOver))
}

/// How a node stopped, once its packet threads have.
#[derive(Debug)]
pub enum Stopped {
    /// SIGTERM or SIGINT (or the shutdown future given to [`run`]).
    Signal,
    /// A new weftd took over; [`let_go`] tells it this one is done.
    HandedOver(handover::Successor),
}

/// After a hand-over, once the async runtime has stopped (its `/healthz`
/// listener closed with it): tells the successor that this weftd has let
/// go. In a pod (`POD_NAME` is set, as the DaemonSet sets it), the process
/// then idles until SIGTERM instead of exiting: kubelet restarts a container
/// that exits, and the restarted weftd would take the node back from its
/// successor, which would then exit and be restarted in turn. A rollout
/// with `maxSurge` deletes the old pod once the new one is Ready.
pub fn let_go(successor: handover::Successor) {
    drop(successor);
    let Some(pod) = std::env::var_os("POD_NAME") else {
        return;
    };
    tracing::info!(
        "handed over: pod {} idles until it is deleted (an exited container would be restarted and take the node back)",
        pod.to_string_lossy()
    );
    // The runtime that ran the node is gone; a small one waits for the signal.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        }),
        Err(e) => tracing::warn!("cannot wait for SIGTERM after the hand-over, exiting: {e}"),
    }
}

/// A node whose dataplane forwards: what the main loop needs.
struct Running {
    lease: Lease,
    dataplane: Dataplane,
    rules: Option<Netfilter>,
    watcher: tokio::task::JoinHandle<()>,
    own_gone: Arc<tokio::sync::Notify>,
}

/// The steps after the lease: TUN address and route, the watch, packet
/// threads, rules, subnet.env; ready once the first snapshot is applied.
#[allow(clippy::too_many_arguments)]
async fn start(
    opts: &Options,
    config: &NetConfig,
    store: &Arc<dyn LeaseStore>,
    nl: &mut netlink::Netlink,
    devices: Devices,
    lease: Lease,
    mtu: u32,
    previous_env: Option<&SubnetEnv>,
    status: &Arc<NodeState>,
    interface: &str,
) -> Result<Running, DaemonError> {
    // The store may hand back the VtepMAC this node announced before (kube mode
    // reads it from the node's annotation): the dataplane must answer to that one.
    let vtep_mac = lease
        .attrs
        .vxlan_data()
        .map(|d| d.vtep_mac)
        .unwrap_or_else(|_| VtepMac::derive(&lease.attrs.public_ip.octets()));
    tracing::info!(
        "lease acquired: {} (key {}, store {})",
        lease.id(),
        lease.key(),
        store.describe()
    );
    let (tun_index, _) = netlink::link(nl, &opts.tun_name)?;
    // The IPv4 half: the subnet's `.0` on the device, the Network routed into it.
    let subnet4 = match (config.ipv4, lease.subnet) {
        (Some(c4), Some(s)) => {
            let router = s.network();
            netlink::set_only_address(nl, tun_index, &opts.tun_name, router.into())?;
            netlink::replace_route(
                nl,
                c4.network.into(),
                tun_index,
                &opts.tun_name,
                router.into(),
            )?;
            tracing::info!(
                "{} up: {router}/32, MTU {mtu}, VtepMAC {vtep_mac}, route {} dev {}",
                opts.tun_name,
                c4.network,
                opts.tun_name
            );
            Some(s)
        }
        (Some(_), None) => {
            return Err(DaemonError::NoLease4 {
                store: store.describe(),
                lease: lease.key(),
            });
        }
        _ => None,
    };
    // The IPv6 half, as flannel configures flannel-v6.1: the subnet's first
    // address as a /128, and the IPv6Network routed into the device.
    let subnet6 = match (config.ipv6, lease.ipv6_subnet) {
        (Some(c6), Some(s6)) => {
            let router6 = s6.network();
            netlink::set_only_address(nl, tun_index, &opts.tun_name, router6.into())?;
            netlink::replace_route(
                nl,
                c6.network.into(),
                tun_index,
                &opts.tun_name,
                router6.into(),
            )?;
            tracing::info!(
                "{} IPv6: {router6}/128, route {} dev {}",
                opts.tun_name,
                c6.network,
                opts.tun_name
            );
            Some(s6)
        }
        (Some(_), None) => {
            return Err(DaemonError::NoLease6 {
                store: store.describe(),
                lease: lease.key(),
            });
        }
        _ => None,
    };

    ensure_forwarding(subnet4.is_some(), subnet6.is_some());

    let (table, counters) = (status.table.clone(), status.counters.clone());
    if let Some(s) = subnet4 {
        let _ = status.subnet.set(s);
    }
    if let Some(s6) = subnet6 {
        let _ = status.subnet6.set(s6);
    }
    // The IPv6 VTEP's MAC as the lease announces it (or as derived for it).
    let crate::backend::Backend::Vxlan(vx) = config.backend;
    let mac6 = match (lease.attrs.vxlan_v6_data(), lease.attrs.public_ipv6) {
        (Ok(Some(d)), _) => d.vtep_mac,
        (_, Some(ip6)) => VtepMac::derive(&ip6.octets()),
        _ => vtep_mac,
    };
    let _ = status.node.set(NodeInfo {
        tun: opts.tun_name.clone(),
        mtu,
        interface: interface.to_string(),
        public_ip: subnet4.map(|_| lease.attrs.public_ip),
        public_ipv6: subnet6.and(lease.attrs.public_ipv6),
        vtep_mac: if subnet4.is_some() { vtep_mac } else { mac6 },
        network: config.network(),
        vni: vx.vni.get(),
        port: vx.port,
        store: store.describe(),
    });
    if let Some(h) = store.health() {
        let _ = status.store_health.set(h);
    }
    let mut core = match (subnet4, subnet6) {
        (Some(s), _) => Core::new(vx.vni, vtep_mac, s),
        (None, Some(s6)) => Core::ipv6_only(vx.vni, mac6, s6),
        // The config carries a family, and the lease was checked for it above.
        (None, None) => {
            return Err(DaemonError::NoLease4 {
                store: store.describe(),
                lease: lease.key(),
            });
        }
    };
    core.checks = opts.source_checks;
    if let (Some(s6), Some(_)) = (subnet6, subnet4) {
        core = core.with_ipv6(s6, mac6);
    }
    if subnet6.is_some() {
        tracing::info!("IPv6 VTEP: VtepMAC {mac6}");
    }
    if !opts.source_checks.known_peers || !opts.source_checks.own_sources {
        tracing::warn!(
            "source checks relaxed: VXLAN accepted from {} with inner sources {}",
            if opts.source_checks.known_peers {
                "leased nodes only"
            } else {
                "any address"
            },
            if opts.source_checks.own_sources {
                "inside a peer's subnet"
            } else {
                "from anywhere"
            }
        );
    }
    let queues_n = devices.tuns.len();
    let rx6: Vec<Option<Underlay6>> = match devices.v6 {
        Some((rx, send)) => rx
            .into_iter()
            .map(|rx| {
                Some(Underlay6 {
                    rx,
                    send: send.clone(),
                })
            })
            .collect(),
        None => (0..queues_n).map(|_| None).collect(),
    };
    let queues: Vec<Queue> = devices
        .tuns
        .into_iter()
        .zip(devices.rx)
        .zip(rx6)
        .map(|((tun, rx), v6)| Queue {
            tun,
            rx,
            send: devices.send.clone(),
            v6,
        })
        .collect();
    // Peers first, then the packet threads: a worker with an empty table
    // would refuse every datagram as from an unknown peer and answer every
    // packet with ICMP unreachable. Until then the kernel queues what
    // arrives (TUN queue, socket buffer); after a restart the previous
    // weftd forwards meanwhile, and its rules and subnet.env stay in place.
    let watched = async {
        let events = store.watch().await?;
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        // Raised by the watcher when this node's own lease leaves the store.
        let own_gone = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch_leases(
            events,
            status.clone(),
            (lease.id(), lease.public_addr()),
            config.clone(),
            ready_tx,
            own_gone.clone(),
        ));
        let first = ready_rx.recv().await.is_some();
        Ok::<_, DaemonError>((watcher, own_gone, first))
    }
    .await;
    let (watcher, own_gone, first) = watched?;
    let dataplane = match Dataplane::start(queues, core, table.clone(), counters.clone()) {
        Ok(d) => d,
        Err(e) => {
            watcher.abort();
            return Err(DaemonError::Threads(e));
        }
    };

    let started = async {
        let rules = setup_netfilter(opts.netfilter, config, subnet4, subnet6, previous_env).await?;
        let env = SubnetEnv {
            ipv4: config
                .ipv4
                .zip(subnet4)
                .map(|(c, subnet)| crate::subnet_env::Ipv4Env {
                    network: c.network,
                    subnet,
                }),
            ipv6: config
                .ipv6
                .zip(subnet6)
                .map(|(c, subnet)| crate::subnet_env::Ipv6Env {
                    network: c.network,
                    subnet,
                }),
            mtu,
            ipmasq: opts.netfilter.masquerade,
        };
        env.write(&opts.subnet_file)?;
        tracing::info!("wrote {}", opts.subnet_file.display());
        Ok::<_, DaemonError>(rules)
    }
    .await;
    let rules = match started {
        Ok(x) => x,
        Err(e) => {
            watcher.abort();
            tokio::task::spawn_blocking(move || dataplane.stop())
                .await
                .ok();
            return Err(e);
        }
    };
    status
        .ready
        .store(first, std::sync::atomic::Ordering::Relaxed);
    if first {
        tracing::info!("watching for subnet leases");
        if let Err(e) = store.network_ready(&lease).await {
            tracing::warn!("the dataplane is up but the store was not told: {e}");
        }
        if let Some(cni) = opts.cni.clone() {
            install_cni_config(cni).await;
        }
    }
    Ok(Running {
        lease,
        dataplane,
        rules,
        watcher,
        own_gone,
    })
}

impl Running {
    /// Keeps the lease renewed, the table in step and the rules true until
    /// `shutdown` or a successor's hand-over; then stops the packet threads
    /// and leaves the device, its route, the rules and the lease in place.
    async fn run(
        self,
        opts: &Options,
        store: Arc<dyn LeaseStore>,
        req: AcquireRequest,
        status: &NodeState,
        shutdown: impl Future<Output = ()>,
        handed_over: Arc<tokio::sync::Notify>,
    ) -> Result<(), DaemonError> {
        let Running {
            mut lease,
            dataplane,
            mut rules,
            watcher,
            own_gone,
        } = self;
        let renewal = Renewal::new(opts.lease_ttl, opts.renew_margin);
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("forwarding for {}", lease.id())),
        ]);
        let outcome = {
            tokio::pin!(shutdown);
            let mut watcher = watcher;
            // A deadline, not a sleep re-armed each turn: other branches
            // (the rules' resync, say) must not push the renewal back.
            let mut renew_at = tokio::time::Instant::now() + renewal.every;
            let shown =
                |lease: &Lease, at: tokio::time::Instant, outcome: Option<Option<String>>| {
                    let in_ms = at
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_millis() as u64;
                    status.update(|c| {
                        c.lease_expires_ms = lease.expiration.map(clock::unix_ms);
                        c.renew_at_ms = Some(clock::now_ms() + in_ms);
                        if let Some(o) = outcome {
                            c.last_renewal = Some((clock::now_ms(), o));
                        }
                    });
                };
            shown(&lease, renew_at, None);
            let mut resync = tokio::time::interval(opts.netfilter.resync);
            resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            resync.reset();
            loop {
                tokio::select! {
                    _ = &mut shutdown => break Ok(()),
                    _ = handed_over.notified() => {
                        tracing::info!("a new weftd took over: stopping");
                        break Ok(());
                    }
                    _ = resync.tick(), if rules.is_some() => {
                        rules = resync_netfilter(rules.take()).await;
                    }
                    r = &mut watcher => break Err(DaemonError::WatchEnded(format!("{} ({r:?})", store.describe()))),
                    // The next renewal may be hours away (24 h TTL): a deleted key
                    // is acquired again now, or every other node drops this node's
                    // route until then.
                    _ = own_gone.notified() => {
                        tracing::warn!("this node's lease for {} is gone from {}; renewing now", lease.id(), store.describe());
                        renew_at = tokio::time::Instant::now();
                    }
                    _ = tokio::time::sleep_until(renew_at) => {
                        let now = tokio::time::Instant::now();
                        let mut step = renewal.renewed(&lease, &req, store.renew(&lease, req.ttl).await);
                        if let Step::Reacquire { request, why } = step {
                            tracing::warn!("{why}; acquiring again");
                            step = renewal.reacquired(&lease, store.acquire(&request).await);
                            if let Step::Keep { lease: l, .. } = &step {
                                tracing::info!("lease for {} acquired again", l.id());
                            }
                        }
                        match step {
                            Step::Keep { lease: l, next } => {
                                tracing::debug!("lease renewed: {} until {:?}", l.id(), l.expiration);
                                lease = l;
                                renew_at = now + next;
                                shown(&lease, renew_at, Some(None));
                            }
                            Step::Retry { next, why } => {
                                tracing::warn!("renewing the lease for {} failed, retrying in {next:?}: {why}", lease.id());
                                renew_at = now + next;
                                shown(&lease, renew_at, Some(Some(why.to_string())));
                            }
                            Step::SubnetChanged { old, new } => break Err(DaemonError::SubnetChanged { old, new }),
                            Step::Lost(e) => break Err(e.into()),
                            Step::Reacquire { why, .. } => {
                                // Deleted again at once: try again soon.
                                tracing::warn!("{why}; acquiring again in {:?}", renewal.retry);
                                renew_at = now + renewal.retry;
                                shown(&lease, renew_at, Some(Some(why.to_string())));
                            }
                        }
                    }
                }
            }
        };
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        status
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "stopping: the lease for {} is kept for the next start; {} and its route stay{}",
            lease.id(),
            opts.tun_name,
            if rules.is_some() {
                ", and so do the masquerade and forward rules (weftd uninstall removes them)"
            } else {
                " (weftd uninstall removes them)"
            }
        );
        tokio::task::spawn_blocking(move || dataplane.stop())
            .await
            .ok();
        outcome
    }
}

/// `--cni-conflist`, once the node forwards: the conflist goes into the
/// runtime's conf dir, and with it the runtime reports the node's network
/// ready (kubelet: the node becomes Ready) only when pods can use it. It
/// stays when weftd stops, so a restart keeps the node Ready.
async fn install_cni_config(cni: crate::cni::install::InstallArgs) {
    let dir = cni.conf_dir.clone();
    match tokio::task::spawn_blocking(move || crate::cni::install::install_conflist(&cni)).await {
        Ok(Ok((path, notes))) => {
            tracing::info!(
                "CNI config {} in place: pods on this node get the network",
                path.display()
            );
            for n in notes {
                tracing::warn!("{n}");
            }
        }
        Ok(Err(e)) => tracing::error!(
            "{e}: the runtime in {} finds no CNI config of weft's, and pods here get no network until it does",
            dir.display()
        ),
        Err(e) => tracing::error!("installing the CNI config failed: {e}"),
    }
}

/// Tells systemd (a `Type=notify` unit: `NOTIFY_SOCKET` is set) how the
/// node stands; nothing without a notify socket.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(
            "cannot notify systemd through NOTIFY_SOCKET={:?}: {e}",
            std::env::var("NOTIFY_SOCKET").unwrap_or_default()
        );
    }
}

/// `weftd uninstall`: removes what a stopped weftd leaves in place (its
/// rules in both backends, the TUN device and its route); returns what was
/// removed, one line each.
///
/// # Errors
/// [`DaemonError::Netfilter`] or [`DaemonError::Netlink`] naming what failed.
pub async fn uninstall(tun_name: &str) -> Result<Vec<String>, DaemonError> {
    let mut done = tokio::task::spawn_blocking(netfilter::remove_all)
        .await
        .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?
        .map_err(|source| DaemonError::Netfilter {
            what: "rules (removing them)",
            source,
        })?;
    let mut nl = netlink::connect()?;
    if netlink::delete_link(&mut nl, tun_name)? {
        done.push(format!("TUN device {tun_name} and its route"));
    }
    Ok(done)
}

/// Installs the masquerade and forward rules (replacing weft's own from an
/// earlier run) and says in the log what they mean for pods. None when
/// neither is wanted.
async fn setup_netfilter(
    settings: netfilter::Settings,
    config: &NetConfig,
    subnet: Option<Ipv4Net>,
    subnet6: Option<ipnet::Ipv6Net>,
    previous: Option<&SubnetEnv>,
) -> Result<Option<Netfilter>, DaemonError> {
    let rules4 = config
        .ipv4
        .zip(subnet)
        .map(|(c, subnet)| netfilter::Rules4 {
            network: c.network,
            subnet,
        });
    let rules6 = config
        .ipv6
        .zip(subnet6)
        .map(|(c, subnet)| netfilter::Rules6 {
            network: c.network,
            subnet,
        });
    let network = match (rules4, rules6) {
        (Some(r), _) => r.network.to_string(),
        (None, Some(r6)) => r6.network.to_string(),
        (None, None) => "the Network".to_string(),
    };
    if !settings.masquerade {
        tracing::warn!(
            "IP masquerade is off (no --ip-masq): pods reach pods on every node with their own addresses, \
             but their traffic to anything outside {network} leaves with the pod's address, so replies come back \
             only where the network routes {network} to this node. A delegated CNI bridge masquerades itself \
             (FLANNEL_IPMASQ=false gives it ipMasq: true), NATing pod-to-pod traffic too. Pass --ip-masq, as kube-flannel.yml does"
        );
    }
    if !settings.masquerade && !settings.forward {
        return Ok(None);
    }
    let what = match (settings.masquerade, settings.forward) {
        (true, true) => "masquerade and forward rules",
        (true, false) => "masquerade rules",
        _ => "forward rules",
    };
    let enable = config.enable_nftables;
    let chosen = tokio::task::spawn_blocking(move || netfilter::choose(enable, what))
        .await
        .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
    let (backend, why) = match chosen {
        Ok(b) => b,
        // Forward accepts are a convenience for hosts that drop forwarding;
        // masquerade is what the operator asked for.
        Err(source) if !settings.masquerade => {
            tracing::warn!("forward accept rules not installed: {source}");
            return Ok(None);
        }
        Err(source) => return Err(DaemonError::Netfilter { what, source }),
    };
    if let (Some(p), Some(r4)) = (previous.and_then(|p| p.ipv4), rules4) {
        if p.network != r4.network || p.subnet != r4.subnet {
            tracing::info!(
                "the network or subnet ({}, {}) differs from the previous run's ({}, {}): replacing weft's rules",
                r4.network,
                r4.subnet,
                p.network,
                p.subnet
            );
        }
    }
    let rules = netfilter::Rules {
        ipv4: rules4,
        masquerade: settings.masquerade,
        random_fully: settings.random_fully,
        forward: settings.forward,
        ipv6: rules6,
    };
    let mut nf = Netfilter::new(backend, rules);
    let (nf, applied) = tokio::task::spawn_blocking(move || {
        let r = nf.apply();
        (nf, r)
    })
    .await
    .map_err(|e| DaemonError::Threads(std::io::Error::other(e)))?;
    let applied = applied.map_err(|source| DaemonError::Netfilter { what, source })?;
    log_applied(&nf, &applied);
    tracing::info!(
        "{what} installed with {backend} ({why}); rechecked every {}s",
        settings.resync.as_secs()
    );
    Ok(Some(nf))
}

fn log_applied(nf: &Netfilter, applied: &netfilter::Applied) {
    if applied.random_fully_refused {
        tracing::warn!("MASQUERADE --random-fully was refused here; masquerading without it");
    }
    if applied.iptables_forward {
        tracing::info!(
            "iptables' FORWARD chain drops what it does not accept (policy DROP, as Docker, ufw and firewalld set it), \
             which an nftables accept cannot override: the forward accepts for {} are in iptables chain {} too",
            nf.rules
                .ipv4
                .map_or_else(|| "the Network".to_string(), |r| r.network.to_string()),
            netfilter::plan::IPT_FORWARD_CHAIN
        );
    }
}

/// One resync: checks the rules and restores what someone changed or flushed.
async fn resync_netfilter(nf: Option<Netfilter>) -> Option<Netfilter> {
    let mut nf = nf?;
    let (nf, r) = tokio::task::spawn_blocking(move || {
        let r = nf.resync();
        (nf, r)
    })
    .await
    .ok()?;
    match r {
        Ok(None) => {}
        Ok(Some(applied)) => {
            tracing::warn!(
                "weft's {} rules were out of step ({}); restored",
                nf.backend,
                applied.repaired.join("; ")
            );
            log_applied(&nf, &applied);
        }
        Err(e) => tracing::warn!("checking weft's {} rules failed: {e}", nf.backend),
    }
    Some(nf)
}

/// Pods' traffic crosses the node: forwarding must be on for each family
/// the node carries. Turn it on if it is off (as kubelet and Docker do), and
/// say so.
fn ensure_forwarding(ipv4: bool, ipv6: bool) {
    if ipv4 {
        ensure_sysctl(
            "/proc/sys/net/ipv4/ip_forward",
            "IPv4",
            "net.ipv4.ip_forward",
        );
    }
    if ipv6 {
        ensure_sysctl(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "IPv6",
            "net.ipv6.conf.all.forwarding",
        );
    }
}

/// Turns the forwarding switch `p` on (the `family`'s, sysctl `name`), or
/// says why it cannot and where to set it.
fn ensure_sysctl(p: &str, family: &str, name: &str) {
    match std::fs::read_to_string(p) {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write(p, "1") {
            Ok(()) => {
                tracing::info!("enabled {family} forwarding ({p} = 1): pods on this node need it")
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                tracing::warn!(
                    "{family} forwarding is off, and {p} is read-only here ({e}; a rootless or unprivileged container): \
                     pods will not reach other nodes until it is on. Set it where the namespace is made: \
                     docker/podman run --sysctl {name}=1, a pod's securityContext.sysctls, \
                     or sysctl -w {name}=1 in the namespace"
                )
            }
            Err(e) => tracing::warn!(
                "{family} forwarding is off and cannot be enabled ({p}: {e}); pods will not reach other nodes until it is on"
            ),
        },
    }
}

/// Feeds store events to the [`Reconciler`] and carries out what it returns:
/// publishes the table, logs peer changes and ignored leases, raises
/// `own_gone`, and signals `ready` after the first view.
async fn watch_leases(
    mut events: mpsc::Receiver<WatchEvent>,
    status: Arc<NodeState>,
    (own, own_addr): (LeaseId, std::net::IpAddr),
    config: NetConfig,
    ready: mpsc::Sender<()>,
    own_gone: Arc<tokio::sync::Notify>,
) {
    let mut rec = Reconciler::new(own, &config).with_own_addr(own_addr);
    while let Some(ev) = events.recv().await {
        let u = rec.apply(ev);
        for (s, why) in &u.ignored {
            tracing::warn!("ignoring the lease for {s}: {why}");
        }
        for c in &u.changes {
            tracing::info!("{c}");
        }
        for slot in &u.fresh_slots {
            status.counters.peers.reset(*slot);
        }
        status.table.store(Arc::new(u.table));
        status.update(|c| c.last_event_ms = Some(clock::now_ms()));
        if u.own_lost {
            own_gone.notify_one();
        }
        if let Some(other) = u.own_taken_by {
            tracing::error!(
                "this node's lease {own} was taken over by {other}: the agent there wrote its own address into this node's key (flanneld v0.28 does so on an IPv6-only etcd network, where it reuses the first lease whose PublicIP is 0.0.0.0; docs/migrating.md). Both nodes now claim {own}, and weftd gives it up at its next renewal: stop the agent on {other}, then restart weftd for a subnet of its own"
            );
        }
        if u.first {
            let _ = ready.send(()).await;
        }
    }
}
