//! The one diff of leases every store shares: two views of the store as the
//! events that turn the first into the second ([`diff`], for a store that
//! polls), and one key's new value as the events it makes ([`change`], for a
//! store that watches keys: etcd's keys, the API server's nodes).

use std::collections::BTreeMap;

use crate::lease::{Lease, LeaseId};
use crate::store::WatchEvent;

/// The events that turn `before` into `after`: an Upsert for each lease
/// that is new or whose attributes changed, then a Remove for each lease
/// gone. Upserts come first, so that a lease moved to another key (an IPv6
/// subnet added or dropped) is routed by its new key before its old one
/// goes. A change of expiration alone is no event: peers are not judged by
/// it ([`crate::node`]).
pub fn diff(
    before: &BTreeMap<LeaseId, Lease>,
    after: &BTreeMap<LeaseId, Lease>,
) -> Vec<WatchEvent> {
    let upserts = after
        .iter()
        .filter(|(id, l)| before.get(id).is_none_or(|b| b.attrs != l.attrs))
        .map(|(_, l)| WatchEvent::Upsert(l.clone()));
    let removes = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .map(|id| WatchEvent::Remove(*id));
    upserts.chain(removes).collect()
}

/// Records `now` as the lease under `key` in `known` (`None`: the key is
/// gone, or holds no lease) and returns the events that make: none when the
/// lease is unchanged; an Upsert of the new lease, then a Remove of the old
/// one when the key now names other subnets (an IPv6 subnet added or
/// dropped), so that the node is never unrouted between the two; a Remove
/// when the key's lease is gone.
pub fn change<K: Ord>(
    known: &mut BTreeMap<K, Lease>,
    key: K,
    now: Option<Lease>,
) -> Vec<WatchEvent> {
    match now {
        None => known
            .remove(&key)
            .map(|old| vec![WatchEvent::Remove(old.id())])
            .unwrap_or_default(),
        Some(l) if known.get(&key) == Some(&l) => vec![],
        Some(l) => {
            let old = known.insert(key, l.clone());
            let mut out = vec![WatchEvent::Upsert(l.clone())];
            out.extend(
                old.filter(|o| o.id() != l.id())
                    .map(|o| WatchEvent::Remove(o.id())),
            );
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::types::{Vni, VtepMac};

    fn lease(s: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: s.parse().ok(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            expiration: None,
        }
    }

    fn set(ls: &[Lease]) -> BTreeMap<LeaseId, Lease> {
        ls.iter().map(|l| (l.id(), l.clone())).collect()
    }

    #[test]
    fn new_and_changed_leases_come_before_the_removed() {
        let (a, b, c) = (
            lease("10.244.1.0/24", [192, 0, 2, 1]),
            lease("10.244.2.0/24", [192, 0, 2, 2]),
            lease("10.244.3.0/24", [192, 0, 2, 3]),
        );
        let moved = lease("10.244.2.0/24", [192, 0, 2, 9]);
        let mut renewed = c.clone();
        renewed.expiration = Some(std::time::SystemTime::UNIX_EPOCH);
        let d = lease("10.244.4.0/24", [192, 0, 2, 4]);
        let ev = diff(
            &set(&[a.clone(), b, c]),
            &set(&[moved.clone(), renewed, d.clone()]),
        );
        assert_eq!(
            ev,
            vec![
                WatchEvent::Upsert(moved),
                WatchEvent::Upsert(d),
                WatchEvent::Remove(a.id()),
            ],
            "a renewal alone (expiration) is no event"
        );
        assert!(diff(&set(std::slice::from_ref(&a)), &set(&[a])).is_empty());
    }

    #[test]
    fn one_keys_change_routes_the_new_lease_before_the_old_goes() {
        let mut known = BTreeMap::new();
        let a = lease("10.244.1.0/24", [192, 0, 2, 1]);
        assert_eq!(
            change(&mut known, "n1", Some(a.clone())),
            [WatchEvent::Upsert(a.clone())]
        );
        assert!(
            change(&mut known, "n1", Some(a.clone())).is_empty(),
            "unchanged"
        );
        // The key now names a dual-stack lease: new first, then the old id.
        let mut a6 = a.clone();
        a6.ipv6_subnet = "fc00:0:0:1::/64".parse().ok();
        assert_eq!(
            change(&mut known, "n1", Some(a6.clone())),
            [WatchEvent::Upsert(a6.clone()), WatchEvent::Remove(a.id())]
        );
        assert_eq!(
            change(&mut known, "n1", None),
            [WatchEvent::Remove(a6.id())]
        );
        assert!(change(&mut known, "n1", None).is_empty());
        assert!(known.is_empty());
    }
}
