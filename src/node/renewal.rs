//! When to renew the node's lease, and what a renewal's outcome means:
//! extended, acquire again (the key was deleted), retry soon (the store did
//! not answer), or stop (the subnet is gone). No I/O; the daemon carries
//! out each [`Step`].

use std::time::Duration;

use crate::lease::{Lease, LeaseId};
use crate::store::{AcquireRequest, StoreError, renew_interval};

/// When to renew the node's lease, and what a renewal's outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// Between renewals ([`renew_interval`]: flannel's margin, or a third of the TTL).
    pub every: Duration,
    /// After a renewal that failed: soon, but not in a tight loop.
    pub retry: Duration,
}

/// What to do after a renewal.
#[derive(Debug)]
pub enum Step {
    /// Keep `lease`; renew again in `next`.
    Keep { lease: Lease, next: Duration },
    /// The lease key was deleted (`why`): acquire with `request` (same subnet first).
    Reacquire {
        request: AcquireRequest,
        why: StoreError,
    },
    /// The store did not answer: keep the lease, try again in `next`.
    Retry { next: Duration, why: StoreError },
    /// The node's subnet changed: exit so that pods get new addresses.
    SubnetChanged { old: LeaseId, new: LeaseId },
    /// Another node holds the subnet now.
    Lost(StoreError),
}

impl Renewal {
    pub fn new(ttl: Duration, margin: Duration) -> Renewal {
        Renewal {
            every: renew_interval(ttl, margin),
            retry: (ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(30)),
        }
    }

    /// The outcome of renewing `held` (as `req` acquired it).
    pub fn renewed(
        &self,
        held: &Lease,
        req: &AcquireRequest,
        outcome: Result<Lease, StoreError>,
    ) -> Step {
        match outcome {
            Ok(lease) => Step::Keep {
                lease,
                next: self.every,
            },
            Err(why @ StoreError::LeaseDeleted { .. }) => Step::Reacquire {
                request: AcquireRequest {
                    previous: held.subnet.or(req.previous),
                    previous6: held.ipv6_subnet.or(req.previous6),
                    ..req.clone()
                },
                why,
            },
            Err(e @ StoreError::LeaseLost { .. }) => Step::Lost(e),
            Err(why) => Step::Retry {
                next: self.retry,
                why,
            },
        }
    }

    /// The outcome of acquiring again after the key was deleted.
    pub fn reacquired(&self, held: &Lease, outcome: Result<Lease, StoreError>) -> Step {
        match outcome {
            Ok(lease) if lease.id() == held.id() => Step::Keep {
                lease,
                next: self.every,
            },
            Ok(lease) => Step::SubnetChanged {
                old: held.id(),
                new: lease.id(),
            },
            Err(e @ StoreError::LeaseLost { .. }) => Step::Lost(e),
            Err(why) => Step::Retry {
                next: self.retry,
                why,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConfig;
    use crate::lease::LeaseAttrs;
    use crate::types::{Vni, VtepMac};

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().ok(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            expiration: None,
        }
    }

    fn own() -> Lease {
        lease("10.244.1.0/24", [192, 0, 2, 1])
    }

    fn config() -> NetConfig {
        NetConfig::parse(crate::config::DEFAULT_NET_CONF, "t").unwrap()
    }

    fn req() -> AcquireRequest {
        AcquireRequest {
            config: config(),
            attrs: own().attrs,
            previous: None,
            previous6: None,
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    #[test]
    fn renew_timing_and_outcomes() {
        let day = Renewal::new(Duration::from_secs(24 * 3600), Duration::from_secs(3600));
        assert_eq!(
            day.every,
            Duration::from_secs(23 * 3600),
            "flannel's margin"
        );
        assert_eq!(day.retry, Duration::from_secs(30));
        let short = Renewal::new(Duration::from_secs(3), Duration::from_secs(3600));
        assert_eq!(
            short.every,
            Duration::from_secs(1),
            "a third of a short TTL"
        );
        assert_eq!(short.retry, Duration::from_millis(300));
        let tiny = Renewal::new(Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(tiny.retry, Duration::from_millis(200), "never a tight loop");

        let held = own();
        assert!(matches!(
            day.renewed(&held, &req(), Ok(held.clone())),
            Step::Keep { next, .. } if next == day.every
        ));
        let deleted = StoreError::LeaseDeleted {
            store: "s".into(),
            key: "k".into(),
        };
        match day.renewed(&held, &req(), Err(deleted)) {
            Step::Reacquire { request, .. } => {
                assert_eq!(request.previous, held.subnet, "same subnet first")
            }
            s => panic!("{s:?}"),
        }
        let down = StoreError::Etcd(crate::store::EtcdError::Unreachable {
            endpoints: "e".into(),
            detail: "d".into(),
        });
        assert!(matches!(
            day.renewed(&held, &req(), Err(down)),
            Step::Retry { next, .. } if next == day.retry
        ));
        let other = lease("10.244.9.0/24", [192, 0, 2, 1]);
        assert!(matches!(
            day.reacquired(&held, Ok(other)),
            Step::SubnetChanged { new, .. } if new.to_string() == "10.244.9.0/24"
        ));
        assert!(matches!(
            day.reacquired(&held, Ok(held.clone())),
            Step::Keep { .. }
        ));
    }
}
