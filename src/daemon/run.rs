//! The running node: the lease watch feeding the [`Reconciler`], then the
//! loop that keeps the lease renewed, the rules true, and stops on a signal
//! or a successor's hand-over, leaving the device, routes, rules and lease
//! in place for the next start.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{DaemonError, Options, rules};
use crate::clock;
use crate::config::NetConfig;
use crate::dataplane::worker::Dataplane;
use crate::lease::{Lease, LeaseId};
use crate::netfilter::Netfilter;
use crate::node::{Reconciler, Renewal, Step};
use crate::state::NodeState;
use crate::store::{AcquireRequest, LeaseStore, WatchEvent};

/// A node whose dataplane forwards: what the main loop needs.
pub(super) struct Running {
    pub lease: Lease,
    pub dataplane: Dataplane,
    pub rules: Option<Netfilter>,
    pub watcher: tokio::task::JoinHandle<()>,
    pub own_gone: Arc<Notify>,
}

/// The lease watch, started: its task, and what it raises.
pub(super) struct Watch {
    pub watcher: tokio::task::JoinHandle<()>,
    /// Raised by the watcher when this node's own lease leaves the store.
    pub own_gone: Arc<Notify>,
    /// Whether the first view of the peers arrived (the table holds them).
    pub first: bool,
}

/// Starts watching the store's leases ([`watch_leases`]) and waits for the
/// first view of the peers.
pub(super) async fn start_watch(
    store: &Arc<dyn LeaseStore>,
    state: &Arc<NodeState>,
    lease: &Lease,
    config: &NetConfig,
) -> Result<Watch, DaemonError> {
    let events = store.watch().await?;
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let own_gone = Arc::new(Notify::new());
    let watcher = tokio::spawn(watch_leases(
        events,
        state.clone(),
        (lease.id(), lease.public_addr()),
        config.clone(),
        ready_tx,
        own_gone.clone(),
    ));
    let first = ready_rx.recv().await.is_some();
    Ok(Watch {
        watcher,
        own_gone,
        first,
    })
}

/// How a renewal turn ended, for `weftd status`: `None` after no attempt,
/// `Some(None)` renewed, `Some(Some(why))` failed.
type Outcome = Option<Option<String>>;

impl Running {
    /// Keeps the lease renewed, the table in step and the rules true until
    /// `shutdown` or a successor's hand-over; then stops the packet threads
    /// and leaves the device, its route, the rules and the lease in place.
    pub async fn run(
        self,
        opts: &Options,
        store: Arc<dyn LeaseStore>,
        req: AcquireRequest,
        state: &NodeState,
        shutdown: impl Future<Output = ()>,
        handed_over: Arc<Notify>,
    ) -> Result<(), DaemonError> {
        let Running {
            mut lease,
            dataplane,
            mut rules,
            mut watcher,
            own_gone,
        } = self;
        let renewal = Renewal::new(opts.lease_ttl, opts.renew_margin);
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("forwarding for {}", lease.id())),
        ]);
        tokio::pin!(shutdown);
        // A deadline, not a sleep re-armed each turn: other branches
        // (the rules' resync, say) must not push the renewal back.
        let mut renew_at = Instant::now() + renewal.every;
        show_renewal(state, &lease, renew_at, None);
        let mut resync = tokio::time::interval(opts.netfilter.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        let outcome = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = handed_over.notified() => {
                    tracing::info!("a new weftd took over: stopping");
                    break Ok(());
                }
                _ = resync.tick(), if rules.is_some() => {
                    rules = rules::resync_netfilter(rules.take()).await;
                }
                r = &mut watcher => break Err(DaemonError::WatchEnded(format!("{} ({r:?})", store.describe()))),
                // The next renewal may be hours away (24 h TTL): a deleted key
                // is acquired again now, or every other node drops this node's
                // route until then.
                _ = own_gone.notified() => {
                    tracing::warn!("this node's lease for {} is gone from {}; renewing now", lease.id(), store.describe());
                    renew_at = Instant::now();
                }
                _ = tokio::time::sleep_until(renew_at) => {
                    let now = Instant::now();
                    match renew(&*store, &renewal, &req, &mut lease).await {
                        Ok((next, outcome)) => {
                            renew_at = now + next;
                            show_renewal(state, &lease, renew_at, Some(outcome));
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        stop(opts, state, &lease, rules.is_some(), dataplane).await;
        outcome
    }
}

/// One renewal turn: renews `lease` (acquiring it again when the store lost
/// it); the wait until the next turn and why this one failed, if it did.
/// An error when the node must stop (its subnet changed, the lease is lost).
async fn renew(
    store: &dyn LeaseStore,
    renewal: &Renewal,
    req: &AcquireRequest,
    lease: &mut Lease,
) -> Result<(std::time::Duration, Option<String>), DaemonError> {
    let mut step = renewal.renewed(lease, req, store.renew(lease, req.ttl).await);
    if let Step::Reacquire { request, why } = step {
        tracing::warn!("{why}; acquiring again");
        step = renewal.reacquired(lease, store.acquire(&request).await);
        if let Step::Keep { lease: l, .. } = &step {
            tracing::info!("lease for {} acquired again", l.id());
        }
    }
    match step {
        Step::Keep { lease: l, next } => {
            tracing::debug!("lease renewed: {} until {:?}", l.id(), l.expiration);
            *lease = l;
            Ok((next, None))
        }
        Step::Retry { next, why } => {
            tracing::warn!(
                "renewing the lease for {} failed, retrying in {next:?}: {why}",
                lease.id()
            );
            Ok((next, Some(why.to_string())))
        }
        Step::SubnetChanged { old, new } => Err(DaemonError::SubnetChanged { old, new }),
        Step::Lost(e) => Err(e.into()),
        Step::Reacquire { why, .. } => {
            // Deleted again at once: try again soon.
            tracing::warn!("{why}; acquiring again in {:?}", renewal.retry);
            Ok((renewal.retry, Some(why.to_string())))
        }
    }
}

/// Publishes the lease's expiry, the next renewal (at `at`) and, after a
/// turn, its outcome.
fn show_renewal(state: &NodeState, lease: &Lease, at: Instant, outcome: Outcome) {
    let in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64;
    state.update(|c| {
        c.lease_expires_ms = lease.expiration.map(clock::unix_ms);
        c.renew_at_ms = Some(clock::now_ms() + in_ms);
        if let Some(o) = outcome {
            c.last_renewal = Some((clock::now_ms(), o));
        }
    });
}

/// The end of a run: not ready any more, what stays in place said, the
/// packet threads stopped.
async fn stop(opts: &Options, state: &NodeState, lease: &Lease, rules: bool, dataplane: Dataplane) {
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    state
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        "stopping: the lease for {} is kept for the next start; {} and its route stay{}",
        lease.id(),
        opts.tun_name,
        if rules {
            ", and so do the masquerade and forward rules (weftd uninstall removes them)"
        } else {
            " (weftd uninstall removes them)"
        }
    );
    tokio::task::spawn_blocking(move || dataplane.stop())
        .await
        .ok();
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

/// Feeds store events to the [`Reconciler`] and carries out what it returns:
/// publishes the table, logs peer changes and ignored leases, raises
/// `own_gone`, and signals `ready` after the first view.
async fn watch_leases(
    mut events: mpsc::Receiver<WatchEvent>,
    state: Arc<NodeState>,
    (own, own_addr): (LeaseId, std::net::IpAddr),
    config: NetConfig,
    ready: mpsc::Sender<()>,
    own_gone: Arc<Notify>,
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
            state.counters.peers.reset(*slot);
        }
        state.table.store(Arc::new(u.table));
        state.update(|c| c.last_event_ms = Some(clock::now_ms()));
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
