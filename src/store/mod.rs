//! The lease store seam (flannel's subnet manager): one trait, with the embedded
//! [`local`] store, [`etcd`] and the Kubernetes node store [`kube`] behind it,
//! and [`open`], which opens the one weftd's options configure (for weftd and
//! `weftd doctor` alike); `dial.rs` holds what the etcd and kube stores share
//! to reach their servers.
//!
//! A store hands out leases (acquire, renew, release) and reports everyone's
//! leases as a stream of [`WatchEvent`]s that starts with a full snapshot. A
//! [`WatchEvent::Snapshot`] may come again at any time (after a re-list) and then
//! replaces the whole table, so stale peers cannot survive.

mod dial;
mod diff;
pub mod etcd;
pub mod kube;
pub mod local;

pub use diff::{change, diff};
pub use etcd::EtcdError;
pub use kube::KubeError;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;
use tokio::sync::mpsc;

use crate::config::NetConfig;
use crate::lease::{Lease, LeaseAttrs, LeaseId};
use etcd::EtcdStore;
use kube::KubeStore;
use local::LocalStore;

/// What a node asks the store for.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub config: NetConfig,
    pub attrs: LeaseAttrs,
    /// The subnet of the node's last run (from subnet.env), tried after its own lease.
    pub previous: Option<Ipv4Net>,
    /// The IPv6 subnet of the node's last run (subnet.env's FLANNEL_IPV6_SUBNET),
    /// tried like `previous` when the network is dual-stack.
    pub previous6: Option<Ipv6Net>,
    pub ttl: Duration,
}

/// One change to the set of leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every valid lease; replaces whatever the watcher held before.
    Snapshot(Vec<Lease>),
    /// A lease appeared or its attributes changed.
    Upsert(Lease),
    /// A lease expired or was released.
    Remove(LeaseId),
}

/// Failures of a lease store, naming the store location and what to do: the
/// store-neutral ones here, each store's own inside ([`StoreError::Etcd`],
/// [`StoreError::Kube`]), printed as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease store {store}: {op} failed: {source} ")]
    Io {
        store: String,
        op: String,
        source: std::io::Error,
    },
    #[error(
        "lease store {store}: no free subnet: all {count} subnets of /{len} between SubnetMin {min} and SubnetMax {max} are leased; widen SubnetMin/SubnetMax or the Network, or remove stale leases"
    )]
    NoFreeSubnet {
        store: String,
        count: u32,
        len: u8,
        min: Ipv4Addr,
        max: Ipv4Addr,
    },
    #[error(
        "lease store {store}: no free IPv6 subnet: all {count} subnets of /{len} between IPv6SubnetMin {min} and IPv6SubnetMax {max} are leased; widen IPv6SubnetMin/IPv6SubnetMax or the IPv6Network, or remove stale leases"
    )]
    NoFreeSubnet6 {
        store: String,
        count: u128,
        len: u8,
        min: Ipv6Addr,
        max: Ipv6Addr,
    },
    #[error(
        "lease store {store}: the lease for {subnet} is now held by {holder}; this node lost it (it expired while the node was away, or another node's agent wrote itself into the key). Restart weftd to acquire a new subnet"
    )]
    LeaseLost {
        store: String,
        subnet: LeaseId,
        holder: IpAddr,
    },
    #[error("lease store {store}: network config {key}: {problem}")]
    Config {
        store: String,
        key: String,
        problem: String,
    },
    #[error(
        "{store}: this node's lease key {key} is gone: deleted by an operator, or expired while etcd was unreachable. Acquire again (weftd does, asking for the same subnet first)"
    )]
    LeaseDeleted { store: String, key: String },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl StoreError {
    /// Whether the store did not answer: a transient failure, worth the
    /// retry at boot ([`EtcdError::is_unreachable`],
    /// [`KubeError::is_unreachable`]); any other error will not go away by
    /// waiting.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Etcd(e) => e.is_unreachable(),
            StoreError::Kube(e) => e.is_unreachable(),
            _ => false,
        }
    }
}

/// How a store's watch stands, kept by its watcher for `weftd status` and
/// the doctor: the highest revision it has seen (etcd), and since when (unix
/// ms; 0: it is not) the store has failed to answer.
#[derive(Debug, Default)]
pub struct WatchHealth {
    revision: std::sync::atomic::AtomicI64,
    outage_since_ms: std::sync::atomic::AtomicU64,
    rewound: std::sync::Mutex<Option<Rewind>>,
}

/// The store's revision went back (etcd restored from an older backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rewind {
    pub from: i64,
    pub to: i64,
    /// When the watch found it (unix ms).
    pub at_ms: u64,
}

impl WatchHealth {
    /// The watch found the revision gone back from `from` to `to`.
    pub fn saw_rewind(&self, from: i64, to: i64) {
        let at_ms = crate::clock::now_ms();
        *self.rewound.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rewind { from, to, at_ms });
    }

    /// The last time the revision went back, if it did.
    pub fn rewound(&self) -> Option<Rewind> {
        *self.rewound.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn saw_revision(&self, rev: i64) {
        self.revision
            .store(rev, std::sync::atomic::Ordering::Relaxed);
    }

    /// The revision last seen; None before the first listing (or a store without revisions).
    pub fn revision(&self) -> Option<i64> {
        Some(self.revision.load(std::sync::atomic::Ordering::Relaxed)).filter(|r| *r > 0)
    }

    /// The store stopped answering (the first failure counts) or answers again.
    pub fn set_outage(&self, out: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if !out {
            self.outage_since_ms.store(0, Relaxed);
        } else if self.outage_since_ms.load(Relaxed) == 0 {
            // 0 means "answering": a clock before 1970 still marks an outage.
            let now = crate::clock::now_ms();
            self.outage_since_ms.store(now.max(1), Relaxed);
        }
    }

    /// Since when (unix ms) the store has not answered, if it does not.
    pub fn outage_since_ms(&self) -> Option<u64> {
        Some(
            self.outage_since_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|t| *t > 0)
    }
}

/// A place where leases are kept. Implementations: [`local::LocalStore`],
/// [`etcd::EtcdStore`], [`kube::KubeStore`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Where the store lives, for logs and errors (a directory, endpoints, a cluster).
    fn describe(&self) -> String;

    /// The net-conf.json text the store holds, if any.
    async fn network_config(&self) -> Result<Option<String>, StoreError>;

    /// Acquires a lease: this node's own (same public IP) if it has one, else
    /// `req.previous` if still free, else a random free subnet. In a
    /// dual-stack network (`req.config.ipv6`) the lease has an IPv6 subnet
    /// too, chosen alike ([`choose_subnet6`]).
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease, StoreError>;

    /// Extends `lease` by `ttl` and returns it as stored.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError>;

    /// Gives `lease` up so another node may take its subnet.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Streams lease changes, starting with a [`WatchEvent::Snapshot`]. The
    /// stream ends when the receiver is dropped. Leases come as stored (a
    /// key or value the store cannot read is skipped and logged once): what
    /// each means to this node is [`crate::node::Admission`]'s to judge.
    async fn watch(&self) -> Result<mpsc::Receiver<WatchEvent>, StoreError>;

    /// Tells the store that this node's dataplane is up and carries `lease`
    /// (the kube store sets the node condition `NetworkUnavailable=False`).
    async fn network_ready(&self, lease: &Lease) -> Result<(), StoreError> {
        let _ = lease;
        Ok(())
    }

    /// How the watch stands (None: the store keeps no such account).
    fn health(&self) -> Option<Arc<WatchHealth>> {
        None
    }
}

/// The store weftd's options configure, opened (see [`open`]).
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded store in `--state-dir`.
    Local(Arc<LocalStore>),
    /// etcd (`--etcd-endpoints` and the other etcd options).
    Etcd(Arc<EtcdStore>),
    /// The Kubernetes API (`--kube-subnet-mgr`).
    Kube(Arc<KubeStore>),
}

impl Store {
    /// The same store behind the [`LeaseStore`] seam.
    pub fn shared(&self) -> Arc<dyn LeaseStore> {
        match self {
            Store::Local(s) => s.clone(),
            Store::Etcd(s) => s.clone(),
            Store::Kube(s) => s.clone(),
        }
    }

    /// Whether the store answers before the first lease call, as weftd
    /// checks at boot: the Kubernetes store reads this node (connecting
    /// asks the API server nothing when `NODE_NAME` is set); etcd's
    /// connection has read its config key already; the embedded store is a
    /// directory, made on first use.
    ///
    /// # Errors
    /// As [`KubeStore::read_node`].
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Store::Kube(s) => s.read_node().await,
            Store::Local(_) | Store::Etcd(_) => Ok(()),
        }
    }
}

/// Which lease store to open and how, as weftd's options say
/// ([`crate::daemon::Options::store`]): the Kubernetes API's settings with
/// `--kube-subnet-mgr`, etcd's with the etcd options, and the embedded
/// store's directory and poll.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    pub kube: Option<&'a kube::KubeSettings>,
    pub etcd: Option<&'a etcd::EtcdSettings>,
    pub state_dir: &'a std::path::Path,
    pub poll: Duration,
}

/// Opens the store `choice` names, as weftd and `weftd doctor` both do:
/// the Kubernetes API with `--kube-subnet-mgr`, else etcd with the etcd
/// options, else the embedded store in `--state-dir`.
///
/// # Errors
/// As [`KubeStore::connect`] and [`EtcdStore::connect`]; none for the
/// embedded store.
pub async fn open(choice: Choice<'_>) -> Result<Store, StoreError> {
    if let Some(k) = choice.kube {
        return Ok(Store::Kube(Arc::new(KubeStore::connect(k.clone()).await?)));
    }
    if let Some(e) = choice.etcd {
        return Ok(Store::Etcd(Arc::new(EtcdStore::connect(e.clone()).await?)));
    }
    Ok(Store::Local(Arc::new(LocalStore::new(
        choice.state_dir,
        choice.poll,
    ))))
}

/// flannel's choice of subnet, shared by the stores that allocate (local, etcd):
/// `Ok(Ok(existing))` when this node already holds a lease (one of its public
/// IP, or on an IPv6-only network of its public IPv6, leasable in this
/// config), `Ok(Err(subnet))` for a lease to create: a free IPv4 subnet (the
/// previous one if free, else random), or `None` on an IPv6-only network,
/// whose lease has only the IPv6 subnet [`choose_subnet6`] picks.
///
/// # Errors
/// [`StoreError::NoFreeSubnet`] when every subnet in range is taken.
pub fn choose_subnet<'a>(
    store: &str,
    req: &AcquireRequest,
    leases: &'a [Lease],
    rng: &mut impl Rng,
) -> Result<Result<&'a Lease, Option<Ipv4Net>>, StoreError> {
    let Some(cfg) = &req.config.ipv4 else {
        let own = req.config.ipv6.and_then(|cfg6| {
            leases.iter().find(|l| {
                l.subnet.is_none()
                    && req.attrs.public_ipv6.is_some()
                    && l.attrs.public_ipv6 == req.attrs.public_ipv6
                    && l.ipv6_subnet.is_some_and(|s| cfg6.is_leasable(&s))
            })
        });
        return Ok(own.ok_or(None));
    };
    if let Some(own) = leases.iter().find(|l| {
        l.attrs.public_ip == req.attrs.public_ip && l.subnet.is_some_and(|s| cfg.is_leasable(&s))
    }) {
        return Ok(Ok(own));
    }
    let taken = |s: &Ipv4Net| leases.iter().any(|l| l.subnet == Some(*s));
    let count = cfg.subnet_count();
    let nth = |i: u128| u32::try_from(i).ok().and_then(|i| cfg.nth_subnet(i));
    let leasable = |s: &Ipv4Net| cfg.is_leasable(s);
    pick_free(req.previous, leasable, u128::from(count), nth, taken, rng)
        .map(|s| Err(Some(s)))
        .ok_or_else(|| StoreError::NoFreeSubnet {
            store: store.to_string(),
            count,
            len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        })
}

/// The first of `wanted` that is `leasable` and not `taken`, else a random
/// subnet of the `count` that `nth` numbers, not `taken`: drawn from all
/// free ones when there are few, else sampled (as flannel does) rather
/// than enumerated. None: none free (or none found by sampling). Either
/// family's subnets: [`choose_subnet`]'s and [`choose_subnet6`]'s.
fn pick_free<S: Copy>(
    wanted: impl IntoIterator<Item = S>,
    leasable: impl Fn(&S) -> bool,
    count: u128,
    nth: impl Fn(u128) -> Option<S>,
    taken: impl Fn(&S) -> bool,
    rng: &mut impl Rng,
) -> Option<S> {
    if let Some(s) = wanted.into_iter().find(|s| leasable(s) && !taken(s)) {
        return Some(s);
    }
    if count == 0 {
        return None;
    }
    let free: Vec<S> = if count <= 4096 {
        (0..count).filter_map(&nth).filter(|s| !taken(s)).collect()
    } else {
        (0..1000)
            .filter_map(|_| nth(rng.random_range(0..count)))
            .filter(|s| !taken(s))
            .take(1)
            .collect()
    };
    (!free.is_empty()).then(|| free[rng.random_range(0..free.len())])
}

/// The IPv6 half of flannel's choice, for a dual-stack or IPv6-only network (`None` when
/// `req.config` has no IPv6): the IPv6 subnet of `own` (this node's lease,
/// when [`choose_subnet`] found one) if it is still leasable and nobody
/// else's, else `req.previous6` if free, else a random free one. An own
/// lease without an IPv6 subnet (the network just turned dual-stack) gets one.
///
/// # Errors
/// [`StoreError::NoFreeSubnet6`] when every IPv6 subnet in range is taken.
pub fn choose_subnet6(
    store: &str,
    req: &AcquireRequest,
    own: Option<&Lease>,
    leases: &[Lease],
    rng: &mut impl Rng,
) -> Result<Option<Ipv6Net>, StoreError> {
    let Some(cfg) = &req.config.ipv6 else {
        return Ok(None);
    };
    // Taken by a lease other than `own` (the same key is the same lease).
    let taken = |s: &Ipv6Net| {
        leases
            .iter()
            .filter(|l| own.is_none_or(|o| o.key() != l.key()))
            .any(|l| l.ipv6_subnet == Some(*s))
    };
    let count = cfg.subnet_count();
    let nth = |i: u128| cfg.nth_subnet(i);
    let leasable = |s: &Ipv6Net| cfg.is_leasable(s);
    // This node's own IPv6 subnet first, then its last run's.
    let wanted = [own.and_then(|o| o.ipv6_subnet), req.previous6];
    let wanted = wanted.into_iter().flatten();
    pick_free(wanted, leasable, count, nth, taken, rng)
        .map(Some)
        .ok_or_else(|| StoreError::NoFreeSubnet6 {
            store: store.to_string(),
            count,
            len: cfg.subnet_len,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
        })
}

/// How long to wait between renewals: `ttl - margin` when the margin is shorter
/// than the TTL (flannel's `--subnet-lease-renew-margin`), else a third of the TTL.
pub fn renew_interval(ttl: Duration, margin: Duration) -> Duration {
    if margin < ttl && ttl - margin >= ttl / 3 {
        ttl - margin
    } else {
        ttl / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Vni, VtepMac};
    use clap::Parser as _;

    /// weftd's options from its command line.
    fn options(args: &[&str]) -> Result<crate::daemon::Options, StoreError> {
        crate::cli::Cli::try_parse_from(std::iter::once("weftd").chain(args.iter().copied()))
            .expect("weftd's flags")
            .run
            .options()
    }

    /// The opener opens the store the options name, as weftd and the doctor
    /// both call it: the embedded store by default; etcd with its endpoints,
    /// where one nobody answers on is "unreachable" (the boot retry waits on
    /// it); both stores at once are refused.
    #[tokio::test]
    async fn the_opener_opens_the_store_the_options_name() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_str().unwrap();
        let store = open(options(&["--state-dir", state]).unwrap().store())
            .await
            .unwrap();
        assert!(matches!(&store, Store::Local(l) if l.dir() == dir.path()));
        assert!(store.shared().describe().contains(state));
        store.ready().await.unwrap();

        // Port 1 on loopback: nothing listens.
        let etcd = options(&[
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--state-dir",
            state,
        ])
        .unwrap();
        let e = open(etcd.store()).await.unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");

        let both = options(&[
            "--kube-subnet-mgr",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
        ])
        .unwrap_err();
        assert!(!both.is_unreachable());
        assert!(
            both.to_string().contains("choose one lease store"),
            "{both}"
        );
    }

    fn req(previous: Option<&str>, ip: [u8; 4]) -> AcquireRequest {
        AcquireRequest {
            config: NetConfig::parse(
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0","Backend":{"Type":"vxlan"}}"#,
                "t",
            )
            .unwrap(),
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            previous: previous.map(|p| p.parse().unwrap()),
            previous6: None,
            ttl: Duration::from_secs(60),
        }
    }

    fn lease(s: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: s.parse().ok(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            expiration: None,
        }
    }

    #[test]
    fn own_lease_then_previous_then_random() {
        let mut rng = rand::rng();
        let leases = vec![lease("10.244.1.0/24", [192, 0, 2, 1])];
        let own = choose_subnet("t", &req(None, [192, 0, 2, 1]), &leases, &mut rng).unwrap();
        assert_eq!(own.unwrap().id().to_string(), "10.244.1.0/24");
        let prev = choose_subnet(
            "t",
            &req(Some("10.244.3.0/24"), [192, 0, 2, 2]),
            &leases,
            &mut rng,
        )
        .unwrap();
        assert_eq!(prev.unwrap_err().unwrap().to_string(), "10.244.3.0/24");
        // The previous subnet is taken: a random free one.
        let r = choose_subnet(
            "t",
            &req(Some("10.244.1.0/24"), [192, 0, 2, 2]),
            &leases,
            &mut rng,
        )
        .unwrap();
        let s = r.unwrap_err().unwrap().to_string();
        assert!(s == "10.244.2.0/24" || s == "10.244.3.0/24", "{s}");
    }

    #[test]
    fn full_range_is_an_error_that_says_what_to_do() {
        let mut rng = rand::rng();
        let leases = vec![
            lease("10.244.1.0/24", [192, 0, 2, 1]),
            lease("10.244.2.0/24", [192, 0, 2, 2]),
            lease("10.244.3.0/24", [192, 0, 2, 3]),
        ];
        let e =
            choose_subnet("/run/weft", &req(None, [192, 0, 2, 9]), &leases, &mut rng).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("no free subnet") && m.contains("all 3 subnets") && m.contains("widen"),
            "{m}"
        );
    }

    fn req6(previous6: Option<&str>, ip: [u8; 4]) -> AcquireRequest {
        let mut r = req(None, ip);
        r.config = NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::","IPv6SubnetMax":"fc00:0:0:3::","Backend":{"Type":"vxlan"}}"#,
            "t",
        )
        .unwrap();
        r.previous6 = previous6.map(|p| p.parse().unwrap());
        r
    }

    fn lease6(s: &str, s6: &str, ip: [u8; 4]) -> Lease {
        Lease {
            ipv6_subnet: Some(s6.parse().unwrap()),
            ..lease(s, ip)
        }
    }

    #[test]
    fn ipv6_subnets_own_then_previous_then_random_within_bounds() {
        let mut rng = rand::rng();
        // IPv6 off: no IPv6 subnet, whatever the leases hold.
        let leases = vec![lease6("10.244.1.0/24", "fc00:0:0:1::/64", [192, 0, 2, 1])];
        assert_eq!(
            choose_subnet6("t", &req(None, [192, 0, 2, 1]), None, &leases, &mut rng).unwrap(),
            None
        );
        // Own lease keeps its IPv6 subnet.
        let r = req6(Some("fc00:0:0:3::/64"), [192, 0, 2, 1]);
        let got = choose_subnet6("t", &r, Some(&leases[0]), &leases, &mut rng).unwrap();
        assert_eq!(got.unwrap().to_string(), "fc00:0:0:1::/64");
        // Another node: the previous one when free, never a taken one.
        let r = req6(Some("fc00:0:0:3::/64"), [192, 0, 2, 2]);
        let got = choose_subnet6("t", &r, None, &leases, &mut rng).unwrap();
        assert_eq!(got.unwrap().to_string(), "fc00:0:0:3::/64");
        let r = req6(Some("fc00:0:0:1::/64"), [192, 0, 2, 2]);
        for _ in 0..20 {
            let s = choose_subnet6("t", &r, None, &leases, &mut rng)
                .unwrap()
                .unwrap()
                .to_string();
            assert!(s == "fc00:0:0:2::/64" || s == "fc00:0:0:3::/64", "{s}");
        }
        // A previous subnet outside IPv6SubnetMin..Max is not taken.
        let r = req6(Some("fc00:0:0:9::/64"), [192, 0, 2, 2]);
        let s = choose_subnet6("t", &r, None, &leases, &mut rng)
            .unwrap()
            .unwrap();
        assert_ne!(s.to_string(), "fc00:0:0:9::/64");
    }

    #[test]
    fn an_own_lease_without_ipv6_or_with_an_unleasable_one_gets_one() {
        let mut rng = rand::rng();
        let leases = vec![
            lease("10.244.1.0/24", [192, 0, 2, 1]),
            lease6("10.244.2.0/24", "fc00:0:0:1::/64", [192, 0, 2, 2]),
            lease6("10.244.3.0/24", "fc00:0:0:2::/64", [192, 0, 2, 3]),
        ];
        let r = req6(None, [192, 0, 2, 1]);
        let own = choose_subnet("t", &r, &leases, &mut rng).unwrap().unwrap();
        assert_eq!(own.id().to_string(), "10.244.1.0/24");
        let s6 = choose_subnet6("t", &r, Some(own), &leases, &mut rng).unwrap();
        assert_eq!(s6.unwrap().to_string(), "fc00:0:0:3::/64");
        // An IPv6 subnet no longer in range, or one another lease holds too.
        for bad in ["fc00:0:0:9::/64", "fc00:0:0:2::/64", "fc00:0:0:1::/80"] {
            let mine = lease6("10.244.1.0/24", bad, [192, 0, 2, 1]);
            let mut all = leases.clone();
            all[0] = mine.clone();
            let s6 = choose_subnet6("t", &r, Some(&mine), &all, &mut rng).unwrap();
            assert_eq!(s6.unwrap().to_string(), "fc00:0:0:3::/64", "{bad}");
        }
        // Every IPv6 subnet taken: an error that says what to do.
        let mut all = leases.clone();
        all.push(lease6("10.244.4.0/24", "fc00:0:0:3::/64", [192, 0, 2, 4]));
        let m = choose_subnet6("/run/weft", &r, None, &all, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("no free IPv6 subnet")
                && m.contains("all 3 subnets")
                && m.contains("IPv6SubnetMax"),
            "{m}"
        );
    }

    #[test]
    fn renewal_interval() {
        let h = Duration::from_secs(3600);
        assert_eq!(renew_interval(24 * h, h), 23 * h);
        assert_eq!(
            renew_interval(Duration::from_secs(3), h),
            Duration::from_secs(1)
        );
    }
}
