//! `weftd`'s life cycle: choose the interface, read the network config, acquire
//! a lease, bring up TUN and the packet loops, write subnet.env, then keep the
//! forwarding table in step with the store and the lease renewed until told to stop.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use crate::config::{ConfigError, DEFAULT_NET_CONF, NetConfig};
use crate::dataplane::core::Core;
use crate::dataplane::counters::Counters;
use crate::dataplane::table::{self, SharedTable, Table};
use crate::dataplane::worker::{Dataplane, Queue};
use crate::iface::{self, IfaceError, IfaceSpec};
use crate::lease::{Lease, LeaseAttrs};
use crate::metrics::{self, Status};
use crate::netfilter::{self, Netfilter, NetfilterError};
use crate::netlink::{self, NetlinkError};
use crate::store::etcd::{EtcdSettings, EtcdStore, Renewed, renew_or_reacquire};
use crate::store::kube::{KubeSettings, KubeStore};
use crate::store::local::LocalStore;
use crate::store::{AcquireRequest, LeaseStore, StoreError, WatchEvent, renew_interval};
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
        "the TUN MTU would be {mtu} (underlay {underlay} − 50): too small to carry IPv4; raise the MTU of {iface} or Backend.MTU"
    )]
    Mtu {
        mtu: u32,
        underlay: u32,
        iface: String,
    },
    #[error("cannot serve /healthz on {addr}: {source}")]
    Healthz {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the packet threads: {0}")]
    Threads(std::io::Error),
    #[error(
        "this node's lease for {old} was deleted and {old} was taken by another node; it now holds {new}. Exiting so that weftd restarts on {new} (its pods need new addresses)"
    )]
    SubnetChanged { old: Ipv4Net, new: Ipv4Net },
    #[error("lease store {0}: the lease watch ended; the store is gone")]
    WatchEnded(String),
}

/// Runs the node on its store (etcd when configured, else the embedded local
/// store) until `shutdown` completes.
///
/// # Errors
/// [`DaemonError`]: each variant names what failed and how to fix it.
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    if let Some(settings) = opts.kube.clone() {
        let store = KubeStore::connect(settings).await?;
        tracing::info!("Kubernetes subnet manager: {}", store.describe());
        let mut opts = opts;
        if opts.net_config_path.is_none() {
            opts.net_config_path = Some(KUBE_NET_CONF.into());
        }
        return run_with_store(opts, Arc::new(store), None, shutdown).await;
    }
    if let Some(settings) = opts.etcd.clone() {
        let store = EtcdStore::connect(settings).await?;
        return run_with_store(opts, Arc::new(store), None, shutdown).await;
    }
    let store = LocalStore::new(&opts.state_dir, opts.store_poll);
    let default_conf = match &opts.net_config_path {
        Some(_) => None,
        None => Some(store.clone()),
    };
    run_with_store(opts, Arc::new(store), default_conf, shutdown).await
}

/// Runs the node on `store`. When `seed_default` is given and neither a config
/// file nor a stored config exists, the embedded default config is stored first.
///
/// # Errors
/// As [`run`].
pub async fn run_with_store(
    opts: Options,
    store: Arc<dyn LeaseStore>,
    seed_default: Option<LocalStore>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let ext = iface::select(&opts.iface)?;
    tracing::info!(
        "using interface {} ({}), public IP {}",
        ext.name,
        ext.addr,
        ext.public_ip
    );

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
    tracing::info!(
        "network {} (subnets /{} from {} to {}), VNI {}, UDP port {}",
        config.network,
        config.subnet_len,
        config.subnet_min,
        config.subnet_max,
        config.backend.vni,
        config.backend.port
    );

    let nl = netlink::connect()?;
    let (_, underlay_mtu) = netlink::link(&nl, &ext.name).await?;
    let mtu = config.overlay_mtu(underlay_mtu);
    if mtu < 576 {
        return Err(DaemonError::Mtu {
            mtu,
            underlay: config.backend.mtu.unwrap_or(underlay_mtu),
            iface: ext.name.clone(),
        });
    }

    // A stable VtepMAC: derived from the public IP, so restarts keep it.
    let vtep_mac = VtepMac::derive(&ext.public_ip.octets());
    let previous_env = SubnetEnv::read(&opts.subnet_file).ok();
    let previous = previous_env
        .as_ref()
        .filter(|e| e.network == config.network)
        .map(|e| e.subnet);
    let req = AcquireRequest {
        config: config.clone(),
        attrs: LeaseAttrs::vxlan(ext.public_ip, config.backend.vni, vtep_mac),
        previous,
        ttl: opts.lease_ttl,
    };
    let mut lease = store.acquire(&req).await?;
    // The store may hand back the VtepMAC this node announced before (kube mode
    // reads it from the node's annotation): the dataplane must answer to that one.
    let vtep_mac = lease
        .attrs
        .vxlan_data()
        .map(|d| d.vtep_mac)
        .unwrap_or(vtep_mac);
    tracing::info!(
        "lease acquired: {} (VtepMAC {vtep_mac}, store {})",
        lease.subnet,
        store.describe()
    );

    let router = lease.subnet.network();
    let queues = opts.queues.max(1);
    let tuns = match sys::open_tun(&opts.tun_name, router, mtu as u16, opts.offload, queues) {
        Err(SysError::Tun { name, source }) if opts.offload => {
            tracing::warn!(
                "TUN offloads unavailable on {name} ({source}); running without them (slower)"
            );
            sys::open_tun(&opts.tun_name, router, mtu as u16, false, queues)?
        }
        r => r?,
    };
    tracing::info!(
        "TUN offloads (TSO/GRO through virtio-net headers): {}; queues: {queues}",
        if tuns[0].tcp_gso() { "on" } else { "off" }
    );
    // One receive socket per queue on the VXLAN port. With one queue it also
    // sends (source port = the VXLAN port); with several, packets leave from
    // SEND_SOCKETS sockets on ephemeral ports, picked by inner flow hash, so
    // the receiver's SO_REUSEPORT (or a NIC's RSS) spreads flows over its
    // workers, as the kernel's VXLAN source-port hashing does.
    let listen = SocketAddrV4::new(ext.addr, config.backend.port);
    let rx_socks = (0..queues)
        .map(|_| sys::bind_udp(listen, queues > 1))
        .collect::<Result<Vec<_>, _>>()?;
    let send: Arc<[std::net::UdpSocket]> = if queues > 1 {
        (0..SEND_SOCKETS)
            .map(|_| sys::bind_udp(SocketAddrV4::new(ext.addr, 0), false))
            .collect::<Result<Vec<_>, _>>()?
            .into()
    } else {
        Arc::new([])
    };
    let (tun_index, _) = netlink::link(&nl, &opts.tun_name).await?;
    netlink::replace_route(&nl, config.network, tun_index, &opts.tun_name, router).await?;
    tracing::info!(
        "{} up: {router}/32, MTU {mtu}, route {} dev {}",
        opts.tun_name,
        config.network,
        opts.tun_name
    );

    ensure_forwarding();

    let table = table::shared();
    let counters = Arc::new(Counters::default());
    let core = Core::new(config.backend.vni, vtep_mac, lease.subnet);
    let queues: Vec<Queue> = tuns
        .into_iter()
        .zip(rx_socks)
        .map(|(tun, rx)| Queue {
            tun,
            rx,
            send: send.clone(),
        })
        .collect();
    let dataplane = Dataplane::start(queues, core, table.clone(), counters.clone())
        .map_err(DaemonError::Threads)?;

    let mut rules =
        setup_netfilter(opts.netfilter, &config, lease.subnet, previous_env.as_ref()).await?;

    let env = SubnetEnv {
        network: config.network,
        subnet: lease.subnet,
        mtu,
        ipmasq: opts.netfilter.masquerade,
    };
    env.write(&opts.subnet_file)?;
    tracing::info!("wrote {}", opts.subnet_file.display());

    let status = Arc::new(Status {
        counters: counters.clone(),
        table: table.clone(),
        subnet: lease.subnet,
        ready: false.into(),
    });
    let healthz = match opts.healthz {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Healthz { addr, source })?;
            Some(tokio::spawn(metrics::serve(l, status.clone())))
        }
        None => None,
    };

    let events = store.watch().await?;
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    // Raised by the watcher when this node's own lease leaves the store.
    let own_gone = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch_leases(
        events,
        table.clone(),
        lease.subnet,
        config.clone(),
        ready_tx,
        own_gone.clone(),
    ));
    if ready_rx.recv().await.is_some() {
        status.ready.store(true, Ordering::Relaxed);
        tracing::info!("watching for subnet leases");
        if let Err(e) = store.network_ready(&lease).await {
            tracing::warn!("the dataplane is up but the store was not told: {e}");
        }
    }

    let every = renew_interval(opts.lease_ttl, opts.renew_margin);
    // After a failed renewal, try again soon (but not in a tight loop).
    let retry = (opts.lease_ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let outcome = {
        tokio::pin!(shutdown);
        let mut watcher = watcher;
        let mut next = every;
        let mut resync = tokio::time::interval(opts.netfilter.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = resync.tick(), if rules.is_some() => {
                    rules = resync_netfilter(rules.take()).await;
                }
                r = &mut watcher => break Err(DaemonError::WatchEnded(format!("{} ({r:?})", store.describe()))),
                // The next renewal may be hours away (24 h TTL): a deleted key
                // is acquired again now, or every other node drops this node's
                // route until then.
                _ = own_gone.notified() => {
                    tracing::warn!("this node's lease for {} is gone from {}; renewing now", lease.subnet, store.describe());
                    next = Duration::ZERO;
                }
                _ = tokio::time::sleep(next) => {
                    match renew_or_reacquire(store.as_ref(), &lease, &req).await {
                        Ok(Renewed::Extended(l)) => {
                            tracing::debug!("lease renewed: {} until {:?}", l.subnet, l.expiration);
                            lease = l;
                            next = every;
                        }
                        Ok(Renewed::Reacquired(l)) if l.subnet == lease.subnet => {
                            lease = l;
                            next = every;
                        }
                        Ok(Renewed::Reacquired(l)) => {
                            break Err(DaemonError::SubnetChanged { old: lease.subnet, new: l.subnet });
                        }
                        Err(e @ StoreError::LeaseLost { .. }) => break Err(e.into()),
                        Err(e) => {
                            tracing::warn!("renewing the lease for {} failed, retrying in {retry:?}: {e}", lease.subnet);
                            next = retry;
                        }
                    }
                }
            }
        }
    };
    if let Some(h) = healthz {
        h.abort();
    }
    tracing::info!(
        "stopping: the lease for {} is kept for the next start{}",
        lease.subnet,
        if rules.is_some() {
            ", and the masquerade and forward rules stay in place (weftd uninstall removes them)"
        } else {
            ""
        }
    );
    tokio::task::spawn_blocking(move || dataplane.stop())
        .await
        .ok();
    outcome
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
    let nl = netlink::connect()?;
    if netlink::delete_link(&nl, tun_name).await? {
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
    subnet: Ipv4Net,
    previous: Option<&SubnetEnv>,
) -> Result<Option<Netfilter>, DaemonError> {
    let network = config.network;
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
    if let Some(p) = previous.filter(|p| p.network != network || p.subnet != subnet) {
        tracing::info!(
            "the network or subnet ({network}, {subnet}) differs from the previous run's ({}, {}): replacing weft's rules",
            p.network,
            p.subnet
        );
    }
    let rules = netfilter::Rules {
        network,
        subnet,
        masquerade: settings.masquerade,
        random_fully: settings.random_fully,
        forward: settings.forward,
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
            nf.rules.network,
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

/// Pods' traffic crosses the node: IPv4 forwarding must be on. Turn it on if
/// it is off (as kubelet and Docker do), and say so.
fn ensure_forwarding() {
    const P: &str = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(P) {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write(P, "1") {
            Ok(()) => {
                tracing::info!("enabled IPv4 forwarding ({P} = 1): pods on this node need it")
            }
            Err(e) => tracing::warn!(
                "IPv4 forwarding is off and cannot be enabled ({P}: {e}); pods will not reach other nodes until it is on"
            ),
        },
    }
}

/// Applies store events to the forwarding table; signals `ready` after the first snapshot.
async fn watch_leases(
    mut events: mpsc::Receiver<WatchEvent>,
    table: SharedTable,
    own: Ipv4Net,
    config: NetConfig,
    ready: mpsc::Sender<()>,
    own_gone: Arc<tokio::sync::Notify>,
) {
    let mut leases: BTreeMap<Ipv4Net, Lease> = BTreeMap::new();
    let mut warned: HashSet<(Ipv4Net, String)> = HashSet::new();
    let mut first = true;
    while let Some(ev) = events.recv().await {
        let before: BTreeMap<Ipv4Net, Ipv4Addr> = table
            .load()
            .peers()
            .map(|p| (p.subnet, p.public_ip))
            .collect();
        let had_own = leases.contains_key(&own);
        match ev {
            WatchEvent::Snapshot(all) => {
                leases = all.into_iter().map(|l| (l.subnet, l)).collect();
            }
            WatchEvent::Upsert(l) => {
                leases.insert(l.subnet, l);
            }
            WatchEvent::Remove(s) => {
                leases.remove(&s);
            }
        }
        if (had_own || first) && !leases.contains_key(&own) {
            own_gone.notify_one();
        }
        let (mut t, skipped) = Table::build(
            leases.values(),
            Some(own),
            config.backend.vni,
            config.backend.port,
        );
        for s in skipped {
            if warned.insert((s.subnet, s.why.clone())) {
                tracing::warn!("ignoring the lease for {}: {}", s.subnet, s.why);
            }
        }
        // Leases outside the Network cannot be routed through TUN: leave them out.
        let outside: Vec<Ipv4Net> = t
            .peers()
            .filter(|p| !config.network.contains(&p.subnet))
            .map(|p| p.subnet)
            .collect();
        if !outside.is_empty() {
            let mut kept = Table::default();
            for p in t.peers().filter(|p| config.network.contains(&p.subnet)) {
                kept.insert(*p);
            }
            for s in outside {
                if warned.insert((s, "outside".into())) {
                    tracing::warn!(
                        "ignoring the lease for {s}: it is outside the Network {}",
                        config.network
                    );
                }
            }
            t = kept;
        }
        t.index_dense(config.network);
        let after: BTreeMap<Ipv4Net, Ipv4Addr> =
            t.peers().map(|p| (p.subnet, p.public_ip)).collect();
        for (s, ip) in &after {
            match before.get(s) {
                None => tracing::info!("peer added: {s} via {ip}"),
                Some(old) if old != ip => tracing::info!("peer changed: {s} via {ip} (was {old})"),
                _ => {}
            }
        }
        for (s, ip) in &before {
            if !after.contains_key(s) {
                tracing::info!("peer removed: {s} (was via {ip})");
            }
        }
        table.store(Arc::new(t));
        if first {
            first = false;
            let _ = ready.send(()).await;
        }
    }
}
