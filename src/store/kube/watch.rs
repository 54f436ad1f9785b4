//! The node watch behind [`KubeStore`](super::KubeStore)'s
//! [`LeaseStore::watch`](crate::store::LeaseStore::watch): one kube-rs
//! watcher at a time, rebuilt from a fresh list (hence a fresh
//! [`WatchEvent::Snapshot`]) after "too large", repeated errors, the end of
//! its stream, and every resync; each node read as a peer, malformed ones
//! skipped with a log naming them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::Inner;
use super::codec::{name_of, peer_of};
use crate::lease::Lease;
use crate::store::dial::error_chain;
use crate::store::{WatchEvent, change};

impl Inner {
    /// A node as a peer lease (see [`peer_from_node`]).
    fn peer(&self, node: &Node) -> Result<Option<(Lease, Option<String>)>, String> {
        peer_of(&self.keys, node)
    }

    /// `peer`, logging malformed nodes (by name) and dropping them, and
    /// logging once per node and reason an IPv6 half left out.
    fn peer_logged(&self, node: &Node) -> Option<Lease> {
        match self.peer(node) {
            Ok(None) => None,
            Ok(Some((l, None))) => Some(l),
            Ok(Some((l, Some(why)))) => {
                let name = name_of(node);
                let first = self
                    .warned6
                    .lock()
                    .map(|mut w| w.insert((name.clone(), why.clone())))
                    .unwrap_or(true);
                if first {
                    tracing::warn!(
                        "node {name}: routing only its IPv4 pod CIDR {}: its IPv6 half is unusable: {why}",
                        l.id()
                    );
                }
                Some(l)
            }
            Err(why) => {
                tracing::warn!("skipping node {}: {why}", name_of(node));
                None
            }
        }
    }
}

/// Whether a watch error means the API server's resourceVersions went back
/// (an etcd restore): the watch must be rebuilt from a fresh list.
fn too_large(e: &watcher::Error) -> bool {
    let r = match e {
        watcher::Error::WatchError(r) => r,
        watcher::Error::WatchStartFailed(kube::Error::Api(r))
        | watcher::Error::WatchFailed(kube::Error::Api(r))
        | watcher::Error::InitialListFailed(kube::Error::Api(r)) => r,
        _ => return false,
    };
    r.message.contains("Too large resource version")
        || r.reason == "ResourceVersionTooLarge"
        || (r.code == 504 && r.reason == "Timeout")
}

/// The node watch: one kube-rs watcher at a time, rebuilt (fresh list, hence a
/// fresh snapshot) on "too large", on repeated errors, when its stream ends, and
/// every `resync`.
pub(super) async fn watch_nodes(me: Arc<Inner>, tx: mpsc::Sender<WatchEvent>) {
    // Peers by node name.
    let mut current: BTreeMap<String, Lease> = BTreeMap::new();
    let mut errors = 0u32;
    loop {
        let cfg = watcher::Config::default();
        let mut stream = watcher(me.nodes.clone(), cfg).boxed();
        let resync = tokio::time::sleep(me.resync);
        tokio::pin!(resync);
        let mut buffer: Option<BTreeMap<String, Lease>> = None;
        let rebuild_after = loop {
            let ev = tokio::select! {
                _ = &mut resync => {
                    tracing::debug!("periodic full resync of the nodes");
                    break Duration::ZERO;
                }
                _ = tx.closed() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else {
                break Duration::from_millis(200);
            };
            let sent = match ev {
                Ok(ev) => {
                    errors = 0;
                    me.health.set_outage(false);
                    apply(&me, ev, &mut buffer, &mut current)
                }
                Err(e) => {
                    errors += 1;
                    me.health.set_outage(true);
                    if too_large(&e) {
                        tracing::warn!(
                            "Kubernetes API {}: {e}: the API server's resourceVersions went back (an etcd restore?); listing the nodes afresh",
                            me.api
                        );
                        break Duration::from_millis(200);
                    }
                    let wait = Duration::from_millis(200 * u64::from(errors.min(25)));
                    if errors == 1 || errors % 20 == 0 {
                        tracing::warn!(
                            "Kubernetes API {}: watching nodes: {} (retrying)",
                            me.api,
                            error_chain(&e)
                        );
                    }
                    if errors >= 10 {
                        // Something keeps failing on this watch: start over with a list.
                        break wait;
                    }
                    tokio::time::sleep(wait).await;
                    vec![]
                }
            };
            for ev in sent {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        };
        drop(stream);
        tokio::time::sleep(rebuild_after).await;
    }
}

/// Applies one watcher event to the peer table; returns what to tell the daemon.
fn apply(
    me: &Inner,
    ev: watcher::Event<Node>,
    buffer: &mut Option<BTreeMap<String, Lease>>,
    current: &mut BTreeMap<String, Lease>,
) -> Vec<WatchEvent> {
    match ev {
        watcher::Event::Init => {
            *buffer = Some(BTreeMap::new());
            vec![]
        }
        watcher::Event::InitApply(n) => {
            let b = buffer.get_or_insert_with(BTreeMap::new);
            if let Some(l) = me.peer_logged(&n) {
                b.insert(name_of(&n), l);
            }
            vec![]
        }
        watcher::Event::InitDone => {
            *current = buffer.take().unwrap_or_default();
            vec![WatchEvent::Snapshot(current.values().cloned().collect())]
        }
        watcher::Event::Apply(n) => change(current, name_of(&n), me.peer_logged(&n)),
        watcher::Event::Delete(n) => change(current, name_of(&n), None),
    }
}
