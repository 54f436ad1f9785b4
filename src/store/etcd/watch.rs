//! The watcher behind [`EtcdStore`]'s
//! [`LeaseStore::watch`](crate::store::LeaseStore::watch): a snapshot from a
//! listing, then etcd's watch from the next revision, re-listing after a
//! compaction, a lost connection, a revision that went back, and periodically.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{Entry, EtcdStore};
use crate::lease::{Lease, LeaseId};
use crate::store::dial::error_chain;
use crate::store::{StoreError, WatchEvent, change};

/// How often the watcher checks that etcd answers and that its revision did not
/// go back (one count-only read; HTTP/2 keepalive catches dead connections sooner).
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Retry backoff while etcd is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Lists the leases, sends the first [`WatchEvent::Snapshot`] and spawns the
/// [`Watcher`] task.
pub(super) async fn start(store: &EtcdStore) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
    let (tx, rx) = mpsc::channel(256);
    let (entries, rev) = store.list().await?;
    let mut w = Watcher {
        store: store.clone(),
        tx,
        known: BTreeMap::new(),
        warned: HashSet::new(),
        last_rev: 0,
    };
    if !w.snapshot(entries, rev).await {
        return Ok(rx);
    }
    tokio::spawn(async move { w.run().await });
    Ok(rx)
}

/// The task behind [`EtcdStore`]'s [`LeaseStore::watch`](crate::store::LeaseStore::watch).
struct Watcher {
    store: EtcdStore,
    tx: mpsc::Sender<WatchEvent>,
    /// The valid leases as last reported, by etcd key: a delete names the
    /// key, and the lease reported for it (its IPv6 half perhaps left out)
    /// is the one to remove.
    known: BTreeMap<String, Lease>,
    /// `(key, mod_revision)` of values already warned about.
    warned: HashSet<(String, i64)>,
    /// The highest etcd revision seen.
    last_rev: i64,
}

/// Why the watch phase ended.
enum Resync {
    /// Re-list now (compaction, revision went back, periodic).
    Now,
    /// Re-list after a pause (etcd unreachable, stream broken).
    AfterBackoff,
    /// The receiver is gone.
    Stop,
}

impl Watcher {
    fn warn_skipped(&mut self, key: &str, mod_revision: i64, why: &str) {
        if self.warned.insert((key.to_string(), mod_revision)) {
            tracing::warn!("etcd: skipping lease {key}: {why}");
        }
    }

    /// Replaces the table with `entries` (listed at `rev`) and sends a Snapshot.
    /// `false` when the receiver is gone.
    async fn snapshot(&mut self, entries: Vec<Entry>, rev: i64) -> bool {
        if rev < self.last_rev {
            tracing::warn!(
                "etcd {}: revision went backwards from {} to {rev} (etcd restored from a backup?); replacing the lease table with what etcd holds now",
                self.store.settings.endpoints.join(","),
                self.last_rev
            );
            self.store.health.saw_rewind(self.last_rev, rev);
        }
        self.last_rev = rev;
        self.store.health.saw_revision(rev);
        self.store.health.set_outage(false);
        let mut known = BTreeMap::new();
        for e in entries {
            match e.parsed {
                Ok(l) => {
                    known.insert(e.key, l);
                }
                Err(why) => self.warn_skipped(&e.key, e.mod_revision, &why),
            }
        }
        self.known = known;
        let all: Vec<Lease> = self.known.values().cloned().collect();
        self.tx.send(WatchEvent::Snapshot(all)).await.is_ok()
    }

    async fn sleep_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.tx.closed() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut outage = false;
        let mut first = true;
        loop {
            if !first {
                match self.store.list().await {
                    Ok((entries, rev)) => {
                        if outage {
                            tracing::info!(
                                "etcd {}: reachable again; re-listed the leases at revision {rev}",
                                self.store.settings.endpoints.join(",")
                            );
                            outage = false;
                        }
                        if !self.snapshot(entries, rev).await {
                            return;
                        }
                    }
                    Err(e) => {
                        self.store.health.set_outage(true);
                        if !outage {
                            tracing::warn!("{e}; retrying with backoff, routes are kept meanwhile");
                            outage = true;
                        } else {
                            tracing::debug!("{e}");
                        }
                        if !self.sleep_or_stop(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            first = false;
            let delay = self.store.watch_start_delay();
            if !delay.is_zero() && !self.sleep_or_stop(delay).await {
                return;
            }
            match self.watch_phase(&mut backoff).await {
                Resync::Now => {}
                Resync::AfterBackoff => {
                    if !self.sleep_or_stop(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Resync::Stop => return,
            }
        }
    }

    /// Watches from the revision after the last listing until something calls for a re-list.
    async fn watch_phase(&mut self, backoff: &mut Duration) -> Resync {
        let store = self.store.clone();
        let prefix = store.subnets_prefix();
        // An etcd revision is an i64 that no real store exhausts; a hostile
        // one at i64::MAX makes the watch start there rather than overflow.
        let start = self.last_rev.saturating_add(1);
        let mut c = store.client.clone();
        let p = prefix.clone();
        let stream = store
            .call("creating the watch", async move {
                c.watch(
                    p,
                    Some(WatchOptions::new().with_prefix().with_start_revision(start)),
                )
                .await
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}; re-listing");
                return Resync::AfterBackoff;
            }
        };
        let period = store.settings.relist_interval.max(Duration::from_secs(1));
        let mut relist = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut probe =
            tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Resync::Stop,
                _ = relist.tick() => {
                    tracing::debug!("etcd: periodic re-list of {prefix}");
                    return Resync::Now;
                }
                _ = probe.tick() => match store.revision().await {
                    Ok(r) if r < self.last_rev => return Resync::Now,
                    Ok(_) => {}
                    Err(e) => {
                        self.store.health.set_outage(true);
                        tracing::warn!("{e}; the watch of {prefix} will re-list when etcd answers");
                        return Resync::AfterBackoff;
                    }
                },
                m = stream.message() => match m {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                tracing::warn!(
                                    "etcd: the watch of {prefix} fell behind a compaction (revision {} is compacted, needed {start}); re-listing",
                                    resp.compact_revision()
                                );
                                return Resync::Now;
                            }
                            tracing::warn!(
                                "etcd: the watch of {prefix} was canceled ({}); re-listing",
                                resp.cancel_reason()
                            );
                            return Resync::AfterBackoff;
                        }
                        let hrev = resp.header().map(|h| h.revision()).unwrap_or(0);
                        if hrev != 0 && hrev < self.last_rev {
                            return Resync::Now;
                        }
                        let mut events = vec![];
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            match ev.event_type() {
                                EventType::Delete => {
                                    let e = store.entry(kv);
                                    events.extend(change(&mut self.known, e.key, None));
                                }
                                EventType::Put => {
                                    let e = store.entry(kv);
                                    let now = match e.parsed {
                                        Ok(l) => Some(l),
                                        Err(why) => {
                                            self.warn_skipped(&e.key, e.mod_revision, &why);
                                            None
                                        }
                                    };
                                    events.extend(change(&mut self.known, e.key, now));
                                }
                            }
                        }
                        coalesce(&mut events);
                        self.last_rev = self.last_rev.max(hrev);
                        self.store.health.saw_revision(self.last_rev);
                        *backoff = BACKOFF_MIN;
                        for ev in events {
                            if self.tx.send(ev).await.is_err() {
                                return Resync::Stop;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("etcd: the watch of {prefix} ended; re-listing");
                        return Resync::AfterBackoff;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "etcd {}: the watch of {prefix} broke: {}; re-listing when etcd answers",
                            store.settings.endpoints.join(","),
                            error_chain(&e)
                        );
                        return Resync::AfterBackoff;
                    }
                },
            }
        }
    }
}

/// Orders one batch so that no peer goes missing between its events: a
/// Remove that an Upsert of the same lease follows is dropped (the Upsert
/// replaces it), and the other Removes go after the Upserts. A lease moved
/// to another key (an IPv6 subnet added or dropped) is then routed by its
/// new lease before its old one is removed.
fn coalesce(events: &mut Vec<WatchEvent>) {
    let mut later: HashSet<LeaseId> = HashSet::new();
    let mut keep = vec![true; events.len()];
    for (i, e) in events.iter().enumerate().rev() {
        match e {
            WatchEvent::Upsert(l) => {
                later.insert(l.id());
            }
            WatchEvent::Remove(id) => keep[i] = !later.contains(id),
            WatchEvent::Snapshot(_) => {}
        }
    }
    let mut k = keep.into_iter();
    events.retain(|_| k.next().unwrap_or(true));
    // A stable sort: Upserts (and Snapshots) keep their order, then Removes.
    events.sort_by_key(|e| matches!(e, WatchEvent::Remove(_)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_lease_is_routed_before_its_old_key_goes() {
        let l = crate::lease::Lease {
            subnet: "10.244.3.0/24".parse().ok(),
            ipv6_subnet: Some("fc00:0:0:3::/64".parse().unwrap()),
            attrs: crate::lease::LeaseAttrs::vxlan(
                [192, 0, 2, 1].into(),
                crate::types::Vni::new(1).unwrap(),
                crate::types::VtepMac::derive(&[192, 0, 2, 1]),
            ),
            expiration: None,
        };
        // The node's old key (no IPv6 subnet) is deleted in the batch that
        // puts its dual-stack key: the new lease first, then the old one goes.
        let old = LeaseId::v4("10.244.3.0/24".parse().unwrap());
        let other = LeaseId::v4("10.244.4.0/24".parse().unwrap());
        let mut ev = vec![
            WatchEvent::Remove(old),
            WatchEvent::Upsert(l.clone()),
            WatchEvent::Remove(other),
        ];
        coalesce(&mut ev);
        assert_eq!(
            ev,
            vec![
                WatchEvent::Upsert(l.clone()),
                WatchEvent::Remove(old),
                WatchEvent::Remove(other)
            ]
        );
        // Delete then put of the same key: the put replaces it.
        let mut ev = vec![WatchEvent::Remove(l.id()), WatchEvent::Upsert(l.clone())];
        coalesce(&mut ev);
        assert_eq!(ev, vec![WatchEvent::Upsert(l.clone())]);
        // Put then delete: gone.
        let mut ev = vec![WatchEvent::Upsert(l.clone()), WatchEvent::Remove(l.id())];
        coalesce(&mut ev);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1], WatchEvent::Remove(l.id()));
    }
}
