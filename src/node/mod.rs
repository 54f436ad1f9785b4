//! The control plane's core, with no I/O: the node's view of the lease store
//! and its renewal policy, for every store and every backend.
//!
//! [`Reconciler`] takes the node's own subnet and the store's watch events
//! (leases as stored), and returns the forwarding table to publish, the peer
//! changes to log, the leases it ignores (once each, with why: the one
//! warn-once set) and whether the node's own lease left the store. What
//! makes a lease a peer is [`Admission`]'s (`admission.rs`), the one place
//! that judges leases. [`Renewal`] (`renewal.rs`) says when to renew, and
//! what a renewal's outcome means. The daemon (`daemon/run.rs`) only feeds
//! them and carries out what they return; their tests run in memory.
//!
//! # Recovery
//! A [`WatchEvent::Snapshot`] (a re-list after an etcd compaction, a 410 from
//! the API server, a store restored from an older backup) replaces everything
//! the reconciler held, so no stale route survives it. Expiry is the store's:
//! etcd deletes an expired key, the embedded store's poll reports it, a kube
//! node's podCIDR never expires; each arrives as a removal. (The leases the
//! stores report carry the expiration they were listed with, which a renewal
//! does not always update, so the reconciler does not judge them by the
//! clock.) A lease outside the Network, of another backend type or of
//! another VNI, is never routed.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::Ipv4Net;

use crate::config::NetConfig;
use crate::dataplane::counters::PeerSlots;
use crate::dataplane::table::Table;

mod admission;
mod renewal;

use crate::lease::{Lease, LeaseId};
use crate::store::WatchEvent;
pub use admission::{Admission, Skipped};
pub use renewal::{Renewal, Step};

/// A change in the peers the node routes to, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Added {
        subnet: LeaseId,
        via: IpAddr,
    },
    Changed {
        subnet: LeaseId,
        via: IpAddr,
        was: IpAddr,
    },
    Removed {
        subnet: LeaseId,
        was: IpAddr,
    },
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerChange::Added { subnet, via } => write!(f, "peer added: {subnet} via {via}"),
            PeerChange::Changed { subnet, via, was } => {
                write!(f, "peer changed: {subnet} via {via} (was {was})")
            }
            PeerChange::Removed { subnet, was } => {
                write!(f, "peer removed: {subnet} (was via {was})")
            }
        }
    }
}

/// What one watch event changes.
#[derive(Debug)]
pub struct Update {
    /// The forwarding table to publish (it replaces the old one whole).
    pub table: Table,
    pub changes: Vec<PeerChange>,
    /// Leases left out for the first time, with why.
    pub ignored: Vec<(LeaseId, String)>,
    /// The node's own lease was in the store (or this is the first view) and
    /// is not now: acquire it again at once instead of at the next renewal.
    pub own_lost: bool,
    /// The node's own key now names another node (this address): another
    /// agent wrote itself into it. Reported once per taker.
    pub own_taken_by: Option<IpAddr>,
    /// The first view of the store: the node is ready once it is published.
    pub first: bool,
    /// Counter slots given to a peer anew: zero them before publishing.
    pub fresh_slots: Vec<u32>,
}

/// The node's view of the store.
#[derive(Debug)]
pub struct Reconciler {
    own: LeaseId,
    /// What makes a lease a peer.
    admission: Admission,
    leases: BTreeMap<LeaseId, Lease>,
    /// Each routed peer, by lease, with the address that names it.
    published: BTreeMap<LeaseId, IpAddr>,
    warned: HashSet<(LeaseId, String)>,
    had_own: bool,
    /// The node's own public address, to see its key taken over.
    own_addr: Option<IpAddr>,
    /// The last taker reported.
    taken_by: Option<IpAddr>,
    first: bool,
    slots: PeerSlots,
}

impl Reconciler {
    /// The reconciler of the node whose lease is `own` ([`Lease::id`]).
    pub fn new(own: LeaseId, config: &NetConfig) -> Reconciler {
        Reconciler {
            own,
            admission: Admission::new(config),
            leases: BTreeMap::new(),
            published: BTreeMap::new(),
            warned: HashSet::new(),
            had_own: false,
            own_addr: None,
            taken_by: None,
            first: true,
            slots: PeerSlots::default(),
        }
    }

    /// Watches the node's own key for another node's address (`addr` is
    /// this node's, [`Lease::public_addr`]).
    #[must_use]
    pub fn with_own_addr(mut self, addr: IpAddr) -> Reconciler {
        self.own_addr = Some(addr);
        self
    }

    /// Applies one store event.
    pub fn apply(&mut self, ev: WatchEvent) -> Update {
        match ev {
            WatchEvent::Snapshot(all) => {
                self.leases = all.into_iter().map(|l| (l.id(), l)).collect();
            }
            WatchEvent::Upsert(l) => {
                self.leases.insert(l.id(), l);
            }
            WatchEvent::Remove(id) => {
                self.leases.remove(&id);
            }
        }
        let has_own = self.leases.contains_key(&self.own);
        let own_lost = (self.had_own || self.first) && !has_own;
        self.had_own = has_own;
        let taker = self
            .leases
            .get(&self.own)
            .map(Lease::public_addr)
            .filter(|a| self.own_addr.is_some_and(|own| own != *a));
        let own_taken_by = taker.filter(|t| self.taken_by != Some(*t));
        self.taken_by = taker;

        let (mut table, skipped) = self.admission.table(self.leases.values(), Some(self.own));
        let mut ignored = vec![];
        for s in skipped {
            if self.warned.insert((s.subnet, s.why.clone())) {
                ignored.push((s.subnet, s.why));
            }
        }
        if let Some(n) = self.admission.network {
            table.index_dense(n);
        }
        let (slots, fresh_slots) = self.slots.assign(table.peer_names());
        table.set_slots(&slots);

        let by_v4: BTreeMap<Ipv4Net, LeaseId> = self
            .leases
            .keys()
            .filter_map(|id| Some((id.v4?, *id)))
            .collect();
        let after: BTreeMap<LeaseId, IpAddr> = table
            .peers()
            .map(|p| {
                let id = by_v4
                    .get(&p.subnet)
                    .copied()
                    .unwrap_or(LeaseId::v4(p.subnet));
                (id, IpAddr::V4(p.public_ip))
            })
            .chain(table.peers6_only().map(|p6| {
                (
                    LeaseId {
                        v4: None,
                        v6: Some(p6.subnet),
                    },
                    IpAddr::V6(p6.public_ip),
                )
            }))
            .collect();
        let mut changes = vec![];
        for (s, ip) in &after {
            match self.published.get(s) {
                None => changes.push(PeerChange::Added {
                    subnet: *s,
                    via: *ip,
                }),
                Some(was) if was != ip => changes.push(PeerChange::Changed {
                    subnet: *s,
                    via: *ip,
                    was: *was,
                }),
                _ => {}
            }
        }
        for (s, was) in &self.published {
            if !after.contains_key(s) {
                changes.push(PeerChange::Removed {
                    subnet: *s,
                    was: *was,
                });
            }
        }
        self.published = after;
        let first = std::mem::replace(&mut self.first, false);
        Update {
            table,
            changes,
            ignored,
            own_lost,
            own_taken_by,
            first,
            fresh_slots,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::types::{Vni, VtepMac};
    use std::time::SystemTime;

    fn config() -> NetConfig {
        NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "t",
        )
        .unwrap()
    }

    fn lease(subnet: &str, ip: [u8; 4], expiration: Option<SystemTime>) -> Lease {
        Lease {
            subnet: subnet.parse().ok(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            expiration,
        }
    }

    fn own() -> Lease {
        lease("10.244.1.0/24", [192, 0, 2, 1], None)
    }

    fn peers(u: &Update) -> Vec<String> {
        u.table.peers().map(|p| p.subnet.to_string()).collect()
    }

    /// Another node's agent writes itself into this node's key (flanneld
    /// v0.28 on an IPv6-only etcd network): reported once per taker, not
    /// while the key is this node's, and again when taken anew.
    #[test]
    fn own_key_taken_over_by_another_node_is_reported_once() {
        let me = own();
        let mut r = Reconciler::new(me.id(), &config()).with_own_addr(me.public_addr());
        assert_eq!(
            r.apply(WatchEvent::Snapshot(vec![me.clone()])).own_taken_by,
            None
        );
        let taken = lease("10.244.1.0/24", [192, 0, 2, 9], None);
        let u = r.apply(WatchEvent::Upsert(taken.clone()));
        assert_eq!(u.own_taken_by, Some([192, 0, 2, 9].into()));
        assert!(
            !u.own_lost && peers(&u).is_empty(),
            "still this node's subnet, not a peer"
        );
        assert_eq!(
            r.apply(WatchEvent::Upsert(taken.clone())).own_taken_by,
            None
        );
        assert_eq!(r.apply(WatchEvent::Upsert(me)).own_taken_by, None);
        let u = r.apply(WatchEvent::Upsert(taken));
        assert_eq!(u.own_taken_by, Some([192, 0, 2, 9].into()));
        // Without its own address a reconciler reports nothing.
        let mut r = Reconciler::new(own().id(), &config());
        let u = r.apply(WatchEvent::Snapshot(vec![lease(
            "10.244.1.0/24",
            [192, 0, 2, 9],
            None,
        )]));
        assert_eq!(u.own_taken_by, None);
    }

    #[test]
    fn each_peer_keeps_its_counter_slot_and_new_slots_are_reported_for_zeroing() {
        let mut r = Reconciler::new(own().id(), &config());
        let b = lease("10.244.2.0/24", [192, 0, 2, 2], None);
        let c = lease("10.244.3.0/24", [192, 0, 2, 3], None);
        let u = r.apply(WatchEvent::Snapshot(vec![own(), b.clone()]));
        let slot_b = u.table.lookup([10, 244, 2, 1].into()).unwrap().slot;
        assert_ne!(slot_b, 0);
        assert_eq!(u.fresh_slots, [slot_b]);
        assert_eq!(u.table.sender([192, 0, 2, 2].into()).unwrap().slot, slot_b);
        let u = r.apply(WatchEvent::Upsert(c));
        let slot_c = u.table.lookup([10, 244, 3, 1].into()).unwrap().slot;
        assert_eq!(u.table.lookup([10, 244, 2, 1].into()).unwrap().slot, slot_b);
        assert_eq!(u.fresh_slots, [slot_c]);
        assert_ne!(slot_b, slot_c);
        let u = r.apply(WatchEvent::Remove(b.id()));
        assert!(u.fresh_slots.is_empty());
        // It comes back: a slot again, zeroed before use.
        let u = r.apply(WatchEvent::Upsert(b));
        assert_eq!(u.fresh_slots.len(), 1);
    }

    #[test]
    fn snapshot_then_changes_are_reported_and_published() {
        let mut r = Reconciler::new(own().id(), &config());
        let b = lease("10.244.2.0/24", [192, 0, 2, 2], None);
        let u = r.apply(WatchEvent::Snapshot(vec![own(), b.clone()]));
        assert!(u.first && !u.own_lost);
        assert_eq!(peers(&u), ["10.244.2.0/24"], "own lease is not a peer");
        assert_eq!(
            u.changes,
            [PeerChange::Added {
                subnet: b.id(),
                via: [192, 0, 2, 2].into()
            }]
        );
        assert!(u.table.lookup([10, 244, 2, 9].into()).is_some());
        // The peer moves to another address.
        let moved = lease("10.244.2.0/24", [192, 0, 2, 9], None);
        let u = r.apply(WatchEvent::Upsert(moved));
        assert!(!u.first);
        assert_eq!(
            u.changes[0].to_string(),
            "peer changed: 10.244.2.0/24 via 192.0.2.9 (was 192.0.2.2)"
        );
        let u = r.apply(WatchEvent::Remove(b.id()));
        assert_eq!(
            u.changes[0].to_string(),
            "peer removed: 10.244.2.0/24 (was via 192.0.2.9)"
        );
        assert!(peers(&u).is_empty());
    }

    #[test]
    fn own_lease_deleted_or_missing_at_first_is_lost() {
        let mut r = Reconciler::new(own().id(), &config());
        let u = r.apply(WatchEvent::Snapshot(vec![]));
        assert!(u.own_lost, "not in the first view");
        let u = r.apply(WatchEvent::Upsert(own()));
        assert!(!u.own_lost);
        let u = r.apply(WatchEvent::Remove(own().id()));
        assert!(u.own_lost, "deleted under the node");
        let u = r.apply(WatchEvent::Remove(own().id()));
        assert!(!u.own_lost, "said once, until it is back");
        // Expired (the store reports it gone in a re-list) counts as lost too.
        let mut r = Reconciler::new(own().id(), &config());
        assert!(!r.apply(WatchEvent::Snapshot(vec![own()])).own_lost);
        assert!(r.apply(WatchEvent::Snapshot(vec![])).own_lost);
    }

    #[test]
    fn a_store_restored_to_an_older_state_replaces_the_table() {
        let mut r = Reconciler::new(own().id(), &config());
        let (b, c, d) = (
            lease("10.244.2.0/24", [192, 0, 2, 2], None),
            lease("10.244.3.0/24", [192, 0, 2, 3], None),
            lease("10.244.4.0/24", [192, 0, 2, 4], None),
        );
        r.apply(WatchEvent::Snapshot(vec![own(), b.clone(), c.clone()]));
        r.apply(WatchEvent::Upsert(d));
        // The backup knew b only: c and d go, in one re-list.
        let u = r.apply(WatchEvent::Snapshot(vec![own(), b]));
        assert_eq!(peers(&u), ["10.244.2.0/24"]);
        let removed: Vec<String> = u.changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            removed,
            [
                "peer removed: 10.244.3.0/24 (was via 192.0.2.3)",
                "peer removed: 10.244.4.0/24 (was via 192.0.2.4)"
            ]
        );
        assert!(!u.own_lost);
    }

    #[test]
    fn leases_outside_the_network_or_of_another_vni_are_ignored_once() {
        let mut r = Reconciler::new(own().id(), &config());
        let outside = lease("10.99.0.0/24", [192, 0, 2, 7], None);
        let mut other_vni = lease("10.244.8.0/24", [192, 0, 2, 8], None);
        other_vni.attrs = LeaseAttrs::vxlan(
            [192, 0, 2, 8].into(),
            Vni::new(7).unwrap(),
            VtepMac::derive(&[192, 0, 2, 8]),
        );
        let u = r.apply(WatchEvent::Snapshot(vec![
            own(),
            outside.clone(),
            other_vni,
        ]));
        assert!(peers(&u).is_empty());
        let why: Vec<String> = u.ignored.iter().map(|(s, w)| format!("{s}: {w}")).collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why.iter()
                .any(|w| w.contains("10.99.0.0/24: it is outside the Network 10.244.0.0/16"))
        );
        assert!(
            why.iter()
                .any(|w| w.contains("10.244.8.0/24") && w.contains("VNI 7"))
        );
        let u = r.apply(WatchEvent::Upsert(outside));
        assert!(u.ignored.is_empty(), "warned once");
    }
}
