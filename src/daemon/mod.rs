//! `weftd`'s life cycle: choose the interface, read the network config, acquire
//! a lease, bring up TUN and the packet loops, write subnet.env, then keep the
//! forwarding table in step with the store and the lease renewed until told to stop.
//!
//! [`run_with_store`] reads as the start's script; each step lives with its
//! phase, in crate-private modules: `prepare` (before the lease: config,
//! interface, MTU, checks, the request), `devices` (TUN and the VXLAN
//! sockets), `takeover` (the hand-over between weftds), `setup` (after the
//! lease: addresses, routes, forwarding, the core, subnet.env, CNI), `rules`
//! (masquerade and forward), `run` (the lease watch and the renewal loop),
//! `error` ([`DaemonError`]).

mod devices;
mod error;
mod prepare;
mod rules;
mod run;
mod setup;
mod takeover;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::error::DaemonError;
pub use self::takeover::let_go;
use crate::backend::Backend;
use crate::config::NetConfig;
use crate::dataplane::core::SourceChecks;
use crate::handover;
use crate::iface::IfaceSpec;
use crate::lease::Lease;
use crate::metrics;
use crate::netfilter;
use crate::netlink;
use crate::state::NodeState;
use crate::store::etcd::EtcdSettings;
use crate::store::kube::KubeSettings;
use crate::store::local::LocalStore;
use crate::store::{self, LeaseStore, Store, StoreError};
use crate::subnet_env::SubnetEnv;

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

impl Options {
    /// The lease store these options name, for [`store::open`].
    pub fn store(&self) -> store::Choice<'_> {
        store::Choice {
            kube: self.kube.as_ref(),
            etcd: self.etcd.as_ref(),
            state_dir: &self.state_dir,
            poll: self.store_poll,
        }
    }
}

/// net-conf.json's place in Kubernetes mode when `--net-config-path` is not given (flannel's).
pub const KUBE_NET_CONF: &str = "/etc/kube-flannel/net-conf.json";

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
    let state = Arc::new(NodeState::default());
    let _healthz = match opts.healthz {
        Some(addr) => {
            let l = metrics::bind(addr).map_err(|source| DaemonError::Healthz { addr, source })?;
            Some(AbortOnDrop(tokio::spawn(metrics::serve(l, state.clone()))))
        }
        None => None,
    };
    let Some(store) = retry_at_boot(&mut shutdown, || async {
        let store = store::open(opts.store()).await?;
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
        prepare::check_writable_dir(&opts.state_dir, "--state-dir")?;
        if opts.net_config_path.is_none() {
            default_conf = Some(LocalStore::clone(local));
        }
    }
    run_with_store(opts, store.shared(), default_conf, state, shutdown).await
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

/// What every step of a start reads: the options, the network config, the
/// store, the node's live state, and the underlay interface's name.
#[derive(Clone, Copy)]
struct Start<'a> {
    opts: &'a Options,
    config: &'a NetConfig,
    store: &'a Arc<dyn LeaseStore>,
    state: &'a Arc<NodeState>,
    interface: &'a str,
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
    state: Arc<NodeState>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    let config = prepare::load_config(&opts, &*store, seed_default.as_ref()).await?;
    let ext = prepare::choose_interface(&opts, &config)?;
    // The userspace VXLAN dataplane: the one backend weft runs
    // (crate::backend).
    let Backend::Vxlan(vx) = config.backend;
    tracing::info!("VNI {}, UDP port {}", vx.vni, vx.port);
    let mut nl = netlink::connect()?;
    let mtu = prepare::read_mtu(&mut nl, &config, &ext.name)?;
    prepare::check_writable_places(&opts)?;
    let claim = takeover::Claim::port(vx.port, &opts.tun_name)?;
    let listen = devices::Listen::of(&config, &ext, vx.port);
    let devices = devices::open_devices(&opts, &mut nl, listen, mtu.tun, claim.predecessor)?;
    let previous = SubnetEnv::read(&opts.subnet_file).ok();
    let req = prepare::acquire_request(&opts, &config, &ext, previous.as_ref());

    let lease = store.acquire(&req).await?;
    let start = Start {
        opts: &opts,
        config: &config,
        store: &store,
        state: &state,
        interface: &ext.name,
    };
    let up = setup::bring_up(
        &start,
        &mut nl,
        devices,
        lease.clone(),
        mtu.overlay,
        previous.as_ref(),
    )
    .await;
    let node = match up {
        Ok(node) => node,
        Err(e) => {
            if !claim.predecessor {
                release_after_failed_start(&*store, &lease).await;
            }
            return Err(e);
        }
    };
    // Take over from the weftd that ran here: it stops once this one forwards.
    let handed_over = claim.take_over().await?.serve(&opts, &state);
    node.run(
        &opts,
        store,
        req,
        &state,
        shutdown,
        handed_over.notified.clone(),
    )
    .await?;
    Ok(handed_over.stopped())
}

/// A start that failed after taking `lease` releases it, so no node routes
/// to a node without a dataplane.
async fn release_after_failed_start(store: &dyn LeaseStore, lease: &Lease) {
    match store.release(lease).await {
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

/// How a node stopped, once its packet threads have.
#[derive(Debug)]
pub enum Stopped {
    /// SIGTERM or SIGINT (or the shutdown future given to [`run`]).
    Signal,
    /// A new weftd took over; [`let_go`] tells it this one is done.
    HandedOver(handover::Successor),
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
