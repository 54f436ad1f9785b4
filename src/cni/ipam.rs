//! weft-cni's own IPAM for built-in mode: addresses of the node subnets, one
//! file per allocated address under `<dataDir>/ipam/<subnet>/` (one store
//! per subnet, so networks sharing a node's subnet never hand out one
//! address twice; each allocation names its network, for GC). A dual-stack
//! node has two stores, its IPv4 subnet's and its IPv6 subnet's
//! (`10.244.3.0-24`, `fc00:0:0:3::-64`), each served by the same code.
//!
//! Every change happens under an exclusive `flock` on the directory's `lock`
//! file, so concurrent ADDs (separate processes) never hand out the same
//! address. A file `10.244.3.7` (or `fc00:0:0:3::7`) holds
//! `containerID\nifname\nnetwork\n`, as host-local's store does (plus the
//! network); `last_reserved` remembers where the next search starts, so a
//! released address is not reused at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use nix::fcntl::Flock;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM state {path}: {source} (is dataDir writable by the runtime's user?)")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "node subnet {subnet}{} has no free address ({used} allocated under {dir}); run GC or a bigger {}",
        if subnet.addr().is_ipv4() { "" } else { " (FLANNEL_IPV6_SUBNET)" },
        if subnet.addr().is_ipv4() { "SubnetLen" } else { "IPv6 subnet (a smaller IPv6SubnetLen in net-conf.json)" }
    )]
    Exhausted {
        subnet: IpNet,
        used: usize,
        dir: PathBuf,
    },
    #[error(
        "the requested address {ip} is not one of node subnet {subnet}'s host addresses (nor its gateway {gateway}); a pod on this node gets an address of its subnet"
    )]
    NotInSubnet {
        ip: IpAddr,
        subnet: IpNet,
        gateway: IpAddr,
    },
    #[error("the requested address {ip} is held by {holder} (network {network:?})")]
    Taken {
        ip: IpAddr,
        holder: String,
        network: String,
    },
}

/// One allocation on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
    /// The network that allocated it; empty in files written before
    /// allocations named theirs (their directory was named after it).
    pub network: String,
}

/// The allocation store of one subnet, as network `network` uses it.
pub struct Ipam {
    dir: PathBuf,
    network: String,
}

/// The first and last host address of `subnet`, as numbers: every address
/// but the network address, and (IPv4) the broadcast address; the last
/// IPv6 address is a host's, as host-local has it. `None` when there is none.
/// Pure.
pub fn host_bounds(subnet: IpNet) -> Option<(u128, u128)> {
    let (lo, hi) = match subnet.trunc() {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())).checked_add(1)?,
            u128::from(u32::from(n.broadcast())).checked_sub(1)?,
        ),
        IpNet::V6(n) => (
            u128::from(n.network()).checked_add(1)?,
            u128::from(n.broadcast()),
        ),
    };
    (lo <= hi).then_some((lo, hi))
}

/// The address of `subnet`'s family numbered `v`.
fn addr_of(subnet: IpNet, v: u128) -> IpAddr {
    match subnet {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(0))),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The addresses of `subnet` that [`Ipam::allocate`] tries, in order: every
/// host address ([`host_bounds`]) once, starting after `last_reserved` (the
/// text of the `last_reserved` file) when that is an address of the range,
/// else at the first. `None` when the subnet has no host address.
/// Pure, for either family.
pub fn host_candidates(
    subnet: IpNet,
    last_reserved: Option<&str>,
) -> Option<impl Iterator<Item = IpAddr>> {
    let (lo, hi) = host_bounds(subnet)?;
    let start = last_reserved
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .filter(|a| a.is_ipv4() == subnet.addr().is_ipv4())
        .map(number)
        .filter(|l| (lo..=hi).contains(l))
        .map_or(lo, |l| if l >= hi { lo } else { l + 1 });
    // hi - lo + 1 fits: lo is at least 1.
    let span = hi - lo + 1;
    Some((0..span).map(move |k| addr_of(subnet, rotated(lo, start, span, k))))
}

/// [`host_candidates`] of an IPv4 subnet. Pure; the fuzzer's entry point.
pub fn candidates(
    subnet: Ipv4Net,
    last_reserved: Option<&str>,
) -> Option<impl Iterator<Item = Ipv4Addr>> {
    host_candidates(IpNet::V4(subnet), last_reserved).map(|it| {
        it.filter_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    })
}

/// The `k`-th (`k < span`) of the `span` addresses from `lo`, counted from
/// `start` (`lo <= start < lo + span`) and wrapping to `lo`; never
/// overflows, even in an IPv6 /1.
fn rotated(lo: u128, start: u128, span: u128, k: u128) -> u128 {
    let before_wrap = span.saturating_sub(start.saturating_sub(lo));
    if k < before_wrap {
        start.saturating_add(k)
    } else {
        lo.saturating_add(k - before_wrap)
    }
}

const LOCK: &str = "lock";
const LAST: &str = "last_reserved";

impl Ipam {
    pub fn new(dir: PathBuf, network: &str) -> Ipam {
        Ipam {
            dir,
            network: network.to_string(),
        }
    }

    /// The network an allocation belongs to: the one it names, else (an
    /// older file) the one its directory is named after.
    fn owner<'a>(&'a self, a: &'a Allocation) -> &'a str {
        if a.network.is_empty() {
            self.dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        } else {
            &a.network
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> IpamError + use<> {
        let path = path.to_owned();
        move |source| IpamError::Io { path, source }
    }

    fn lock(&self) -> Result<Flock<File>, IpamError> {
        fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let p = self.dir.join(LOCK);
        crate::fsutil::lock_exclusive(&p).map_err(|e| IpamError::Io {
            path: p,
            source: e.into_io(),
        })
    }

    /// Every allocation on disk (call with the lock held, or accept a snapshot).
    ///
    /// # Errors
    /// [`IpamError::Io`] naming the file.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(self.io(&self.dir))?;
            let Some(ip) = ent
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let text = match fs::read_to_string(ent.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&ent.path())(e)),
            };
            let mut lines = text.lines();
            out.push(Allocation {
                ip,
                container_id: lines.next().unwrap_or_default().trim().to_string(),
                ifname: lines.next().unwrap_or_default().trim().to_string(),
                network: lines.next().unwrap_or_default().trim().to_string(),
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// Claims the file of address `ip` for `(container_id, ifname)`; false
    /// when another holds it.
    fn claim(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool, IpamError> {
        let p = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(self.io(&p)(e)),
        };
        f.write_all(format!("{container_id}\n{ifname}\n{}\n", self.network).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| {
                let _ = fs::remove_file(&p);
                self.io(&p)(e)
            })?;
        Ok(true)
    }

    /// Allocates an address of `subnet` (either family; never its network,
    /// IPv4 broadcast or `gateway` address) for `(container_id, ifname)`:
    /// `wanted` when given (`runtimeConfig.ips`), else the next free one. An
    /// allocation that pair already holds in `subnet` is returned again.
    ///
    /// # Errors
    /// [`IpamError::Exhausted`], [`IpamError::NotInSubnet`] or
    /// [`IpamError::Taken`] for a `wanted` address, or [`IpamError::Io`].
    pub fn allocate(
        &self,
        subnet: IpNet,
        gateway: IpAddr,
        container_id: &str,
        ifname: &str,
        wanted: Option<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let subnet = subnet.trunc();
        let _lock = self.lock()?;
        let current = self.allocations()?;
        if let Some(a) = current.iter().find(|a| {
            a.container_id == container_id
                && a.ifname == ifname
                && subnet.contains(&a.ip)
                && wanted.is_none_or(|w| w == a.ip)
        }) {
            return Ok(a.ip);
        }
        if let Some(ip) = wanted {
            let host = host_bounds(subnet).is_some_and(|(lo, hi)| {
                ip.is_ipv4() == subnet.addr().is_ipv4() && (lo..=hi).contains(&number(ip))
            });
            if !host || ip == gateway {
                return Err(IpamError::NotInSubnet {
                    ip,
                    subnet,
                    gateway,
                });
            }
            if self.claim(ip, container_id, ifname)? {
                return Ok(ip);
            }
            let holder = current.iter().find(|a| a.ip == ip);
            return Err(IpamError::Taken {
                ip,
                holder: holder.map_or_else(
                    || "another attachment".into(),
                    |a| format!("{}/{}", a.container_id, a.ifname),
                ),
                network: holder
                    .map(|a| self.owner(a).to_string())
                    .unwrap_or_default(),
            });
        }
        let last_path = self.dir.join(LAST);
        let last = fs::read_to_string(&last_path).ok();
        let Some(order) = host_candidates(subnet, last.as_deref()) else {
            return Err(IpamError::Exhausted {
                subnet,
                used: current.len(),
                dir: self.dir.clone(),
            });
        };
        for cand in order {
            if cand == gateway || !self.claim(cand, container_id, ifname)? {
                continue;
            }
            fs::write(&last_path, cand.to_string()).map_err(self.io(&last_path))?;
            return Ok(cand);
        }
        Err(IpamError::Exhausted {
            subnet,
            used: current.len(),
            dir: self.dir.clone(),
        })
    }

    /// Releases every address `(container_id, ifname)` holds; returns them.
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        self.remove_where(|a| a.container_id == container_id && a.ifname == ifname)
    }

    /// Releases every allocation of this network whose `(containerID,
    /// ifname)` is not in `valid` (other networks' are theirs to collect);
    /// returns them.
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<Allocation>, IpamError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let stale: Vec<Allocation> = self
            .allocations()?
            .into_iter()
            .filter(|a| {
                self.owner(a) == self.network
                    && !valid
                        .iter()
                        .any(|(c, i)| *c == a.container_id && *i == a.ifname)
            })
            .collect();
        for a in &stale {
            let p = self.dir.join(a.ip.to_string());
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&p)(e)),
            }
        }
        Ok(stale)
    }

    fn remove_where(&self, pred: impl Fn(&Allocation) -> bool) -> Result<Vec<IpAddr>, IpamError> {
        let mut out = Vec::new();
        for a in self.allocations()?.into_iter().filter(|a| pred(a)) {
            let p = self.dir.join(a.ip.to_string());
            match fs::remove_file(&p) {
                Ok(()) => out.push(a.ip),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&p)(e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> IpNet {
        "10.9.3.0/29".parse().unwrap()
    }
    const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 3, 1));
    fn v4(h: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 9, 3, h))
    }
    /// A /125: ::0 is the network address, ::1 the gateway, ::2 to ::7
    /// (the last one included, as host-local has it) the pods'.
    fn net6() -> IpNet {
        "fc00:0:0:3::/125".parse().unwrap()
    }
    fn v6(h: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 3, 0, 0, 0, h))
    }

    /// Fills `subnet` (`usable` addresses besides `gw`), checks that none is
    /// handed out twice or outside the host range, then exhaustion, the same
    /// pair getting its address again, release, and reuse.
    fn allocate_release_and_exhaust_in(subnet: IpNet, gw: IpAddr, usable: usize) {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path().join("n"), "n");
        let mut got = Vec::new();
        for i in 0..usable {
            got.push(
                ipam.allocate(subnet, gw, &format!("c{i}"), "eth0", None)
                    .unwrap(),
            );
        }
        assert!(!got.contains(&gw), "{got:?}");
        assert!(
            got.iter()
                .all(|a| subnet.contains(a) && *a != subnet.network())
        );
        got.sort();
        got.dedup();
        assert_eq!(got.len(), usable, "{subnet}: {got:?}");
        let e = ipam.allocate(subnet, gw, "c9", "eth0", None).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains(&subnet.to_string()), "{e}");
        // Same pair again: the same address.
        let again = ipam.allocate(subnet, gw, "c0", "eth0", None).unwrap();
        assert_eq!(ipam.release("c0", "eth0").unwrap(), vec![again]);
        assert!(ipam.release("c0", "eth0").unwrap().is_empty());
        // The only free address is the released one: reused.
        assert_eq!(
            ipam.allocate(subnet, gw, "c9", "eth0", None).unwrap(),
            again
        );
    }

    #[test]
    fn allocate_release_and_exhaust() {
        // /29: .1 gateway, .2-.6 usable (5 addresses).
        allocate_release_and_exhaust_in(net(), GW, 5);
    }

    #[test]
    fn allocate_release_and_exhaust_ipv6() {
        allocate_release_and_exhaust_in(net6(), v6(1), 6);
        let e = IpamError::Exhausted {
            subnet: net6(),
            used: 6,
            dir: "/d".into(),
        };
        assert!(
            e.to_string().contains("FLANNEL_IPV6_SUBNET")
                && e.to_string().contains("IPv6SubnetLen"),
            "{e}"
        );
    }

    /// The two families of a dual-stack node: two stores, each allocating
    /// from its own subnet; one pair holds one address in each, and release
    /// frees both; a released address is not reused at once.
    #[test]
    fn per_family_stores_and_reuse_after_release() {
        let d = tempfile::tempdir().unwrap();
        let s4 = Ipam::new(d.path().join("10.9.3.0-29"), "n");
        let s6 = Ipam::new(d.path().join("fc00:0:0:3::-125"), "n");
        let a4 = s4.allocate(net(), GW, "pod", "eth0", None).unwrap();
        let a6 = s6.allocate(net6(), v6(1), "pod", "eth0", None).unwrap();
        assert_eq!((a4, a6), (v4(2), v6(2)));
        assert_eq!(s6.allocations().unwrap()[0].ip, v6(2));
        assert_eq!(s4.allocations().unwrap()[0].ip, v4(2));
        assert_eq!(
            fs::read_to_string(s6.dir().join("fc00:0:0:3::2")).unwrap(),
            "pod\neth0\nn\n"
        );
        assert_eq!(s4.release("pod", "eth0").unwrap(), vec![v4(2)]);
        assert_eq!(s6.release("pod", "eth0").unwrap(), vec![v6(2)]);
        // Next search starts after the last reserved: ::3, not ::2 again.
        assert_eq!(
            s6.allocate(net6(), v6(1), "next", "eth0", None).unwrap(),
            v6(3)
        );
        assert_eq!(s4.allocate(net(), GW, "next", "eth0", None).unwrap(), v4(3));
        // A wanted IPv6 address, then one of the other family, the
        // gateway, the network address, one outside: refused by why.
        assert_eq!(
            s6.allocate(net6(), v6(1), "w", "eth0", Some(v6(7)))
                .unwrap(),
            v6(7)
        );
        for bad in [v6(1), v6(0), v6(8), v4(2), "fc00::5".parse().unwrap()] {
            let e = s6
                .allocate(net6(), v6(1), "z", "eth0", Some(bad))
                .unwrap_err();
            assert!(matches!(e, IpamError::NotInSubnet { .. }), "{bad}: {e}");
        }
        let e = s6
            .allocate(net6(), v6(1), "z", "eth0", Some(v6(7)))
            .unwrap_err();
        assert!(
            matches!(e, IpamError::Taken { .. }) && e.to_string().contains("w/eth0"),
            "{e}"
        );
        let stale = s6.gc(&[("next".into(), "eth0".into())]).unwrap();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].ip, v6(7));
    }

    /// Two networks on one subnet share one store: never one address twice;
    /// each GCs only its own; a wanted address is given, or refused by why.
    #[test]
    fn networks_share_a_subnet_store_and_wanted_addresses() {
        let d = tempfile::tempdir().unwrap();
        let a = Ipam::new(d.path().join("s"), "net-a");
        let b = Ipam::new(d.path().join("s"), "net-b");
        let mut got = vec![];
        for i in 0..5 {
            let ipam = if i % 2 == 0 { &a } else { &b };
            got.push(
                ipam.allocate(net(), GW, &format!("c{i}"), "eth0", None)
                    .unwrap(),
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5, "{got:?}");
        let stale = a.gc(&[]).unwrap();
        assert_eq!(stale.len(), 3, "net-a's own: {stale:?}");
        assert_eq!(b.allocations().unwrap().len(), 2, "net-b's stay");
        let held: Vec<IpAddr> = b.allocations().unwrap().iter().map(|x| x.ip).collect();
        let free = (2..=6).map(v4).find(|ip| !held.contains(ip)).unwrap();
        assert_eq!(
            a.allocate(net(), GW, "x", "eth0", Some(free)).unwrap(),
            free
        );
        assert_eq!(
            a.allocate(net(), GW, "x", "eth0", Some(free)).unwrap(),
            free,
            "again"
        );
        let taken = b
            .allocations()
            .unwrap()
            .into_iter()
            .find(|x| x.network == "net-b")
            .unwrap()
            .ip;
        let e = a.allocate(net(), GW, "y", "eth0", Some(taken)).unwrap_err();
        assert!(matches!(e, IpamError::Taken { .. }), "{e}");
        assert!(e.to_string().contains("net-b"), "{e}");
        for bad in [GW, v4(0), v4(7), IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1))] {
            let e = a.allocate(net(), GW, "z", "eth0", Some(bad)).unwrap_err();
            assert!(matches!(e, IpamError::NotInSubnet { .. }), "{bad}: {e}");
        }
        // An older file (no network line) belongs to the network its directory is named after.
        let old = Ipam::new(d.path().join("legacy"), "legacy");
        fs::create_dir_all(d.path().join("legacy")).unwrap();
        fs::write(d.path().join("legacy/10.9.3.3"), "c\neth0\n").unwrap();
        assert_eq!(
            Ipam::new(d.path().join("legacy"), "other")
                .gc(&[])
                .unwrap()
                .len(),
            0
        );
        assert_eq!(old.gc(&[]).unwrap().len(), 1);
    }

    #[test]
    fn gc_keeps_only_valid() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path().join("n"), "n");
        for c in ["a", "b", "c"] {
            ipam.allocate(net(), GW, c, "eth0", None).unwrap();
        }
        let stale = ipam.gc(&[("b".into(), "eth0".into())]).unwrap();
        assert_eq!(stale.len(), 2);
        let left = ipam.allocations().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "b");
    }

    #[test]
    fn candidates_cover_every_host_address_once_from_after_the_last() {
        let n4: Ipv4Net = "10.9.3.0/29".parse().unwrap();
        let all: Vec<Ipv4Addr> = candidates(n4, Some("10.9.3.4\n")).unwrap().collect();
        let want: Vec<Ipv4Addr> = [5, 6, 1, 2, 3, 4]
            .iter()
            .map(|h| Ipv4Addr::new(10, 9, 3, *h))
            .collect();
        assert_eq!(all, want);
        // Out of range or garbage: from the first host address.
        for last in [None, Some("10.9.4.1"), Some("nope"), Some("10.9.3.7")] {
            let first = candidates(n4, last).unwrap().next();
            assert_eq!(first, Some(Ipv4Addr::new(10, 9, 3, 1)), "{last:?}");
        }
        for none in ["10.9.3.4/31", "10.9.3.4/32", "255.255.255.255/32"] {
            assert!(candidates(none.parse().unwrap(), None).is_none(), "{none}");
        }
        // In a /0 the rotation passes u32::MAX: computed without overflow.
        let (lo, hi) = (1u128, u128::from(u32::MAX - 1));
        let span = hi - lo + 1;
        assert_eq!(rotated(lo, 0x8000_0000, span, span - 1), 0x7fff_ffff);
        assert_eq!(rotated(lo, hi, span, 1), lo);
    }

    /// IPv6: never the network address, the last one included; after the
    /// last reserved, wrapping; a last_reserved of the other family, out of
    /// range or garbage starts at the first. Hostile subnets and positions
    /// never panic.
    #[test]
    fn ipv6_candidates_bounds_and_hostile_input() {
        let all: Vec<IpAddr> = host_candidates(net6(), Some("fc00:0:0:3::5"))
            .unwrap()
            .collect();
        assert_eq!(all, [6, 7, 1, 2, 3, 4, 5].map(v6).to_vec());
        for last in [
            None,
            Some("10.9.3.4"),
            Some("fc00:0:0:4::1"),
            Some("fc00:0:0:3::7"),
            Some("::"),
            Some("\u{0}garbage"),
        ] {
            let first = host_candidates(net6(), last).unwrap().next();
            assert_eq!(first, Some(v6(1)), "{last:?}");
        }
        for none in [
            "fc00::1/128",
            "::/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ] {
            assert!(
                host_candidates(none.parse().unwrap(), None).is_none(),
                "{none}"
            );
        }
        // A /127 has one host address (the last): candidates, but the
        // gateway takes it and nothing is left.
        let n127: IpNet = "fc00::/127".parse().unwrap();
        assert_eq!(
            host_candidates(n127, None).unwrap().collect::<Vec<_>>(),
            vec!["fc00::1".parse::<IpAddr>().unwrap()]
        );
        // Whole-space and top-of-space subnets: bounded, no overflow.
        for huge in ["::/0", "8000::/1", "ffff:ffff:ffff:ffff::/64"] {
            let n: IpNet = huge.parse().unwrap();
            let (lo, hi) = host_bounds(n).unwrap();
            assert!(
                lo > u128::from(match n {
                    IpNet::V6(n) => n.network(),
                    IpNet::V4(_) => unreachable!(),
                })
            );
            for last in [
                None,
                Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                Some("::1"),
            ] {
                let first: Vec<IpAddr> = host_candidates(n, last).unwrap().take(3).collect();
                assert_eq!(first.len(), 3, "{huge} {last:?}");
                assert!(first.iter().all(|a| n.contains(a)), "{huge}: {first:?}");
            }
            assert_eq!(rotated(lo, hi, hi - lo + 1, 1), lo);
        }
        // A store directory holding junk next to real allocations.
        let d = tempfile::tempdir().unwrap();
        let s6 = Ipam::new(d.path().join("s"), "n");
        s6.allocate(net6(), v6(1), "a", "eth0", None).unwrap();
        fs::write(s6.dir().join("not-an-address"), "x").unwrap();
        fs::write(s6.dir().join(LAST), "fc00:0:0:3::9999").unwrap();
        fs::create_dir_all(s6.dir().join("fc00:0:0:3::4")).unwrap_or_default();
        let r = s6.allocate(net6(), v6(1), "b", "eth0", None);
        assert!(r.is_ok() || matches!(r, Err(IpamError::Io { .. })), "{r:?}");
    }

    #[test]
    fn release_on_missing_dir_is_ok() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path().join("none"), "n");
        assert!(ipam.release("x", "eth0").unwrap().is_empty());
        assert!(!ipam.dir().exists());
    }
}
