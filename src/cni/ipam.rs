//! weft-cni's own IPAM for built-in mode: addresses of the node subnet, one
//! file per allocated address under `<dataDir>/ipam/<subnet>/` (one store
//! per subnet, so networks sharing a node's subnet never hand out one
//! address twice; each allocation names its network, for GC).
//!
//! Every change happens under an exclusive `flock` on the directory's `lock`
//! file, so concurrent ADDs (separate processes) never hand out the same
//! address. A file `10.244.3.7` holds `containerID\nifname\nnetwork\n`, as
//! host-local's store does (plus the network); `last_reserved` remembers where the next search starts, so a
//! released address is not reused at once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::Flock;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM state {path}: {source} (is dataDir writable by the runtime's user?)")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "node subnet {subnet} has no free address ({used} allocated under {dir}); run GC or a bigger SubnetLen"
    )]
    Exhausted {
        subnet: Ipv4Net,
        used: usize,
        dir: PathBuf,
    },
    #[error(
        "the requested address {ip} is not one of node subnet {subnet}'s host addresses (nor its gateway {gateway}); a pod on this node gets an address of its subnet"
    )]
    NotInSubnet {
        ip: Ipv4Addr,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    },
    #[error("the requested address {ip} is held by {holder} (network {network:?})")]
    Taken {
        ip: Ipv4Addr,
        holder: String,
        network: String,
    },
}

/// One allocation on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
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

/// The addresses of `subnet` that [`Ipam::allocate`] tries, in order: every
/// host address (not the network or broadcast address) once, starting after
/// `last_reserved` (the text of the `last_reserved` file) when that lies in
/// range, else at the first. `None` when the subnet has no host address.
/// Pure; the fuzzer's entry point.
pub fn candidates(
    subnet: Ipv4Net,
    last_reserved: Option<&str>,
) -> Option<impl Iterator<Item = Ipv4Addr>> {
    let lo = u32::from(subnet.network()).saturating_add(1);
    let hi = u32::from(subnet.broadcast()).saturating_sub(1);
    if hi < lo {
        return None;
    }
    let start = last_reserved
        .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|l| (lo..=hi).contains(l))
        .map_or(lo, |l| if l >= hi { lo } else { l + 1 });
    let span = hi - lo + 1;
    Some((0..span).map(move |k| Ipv4Addr::from(rotated(lo, start, span, k))))
}

/// The `k`-th address of the `span` addresses from `lo`, counted from
/// `start` and wrapping to `lo`; computed in 64 bits, as `start - lo + k` can
/// pass `u32::MAX` in a large subnet.
fn rotated(lo: u32, start: u32, span: u32, k: u32) -> u32 {
    let off = (u64::from(start - lo) + u64::from(k)) % u64::from(span);
    lo + u32::try_from(off).unwrap_or(0)
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
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
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
    fn claim(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> Result<bool, IpamError> {
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

    /// Allocates an address of `subnet` (never its network, broadcast or
    /// `gateway` address) for `(container_id, ifname)`: `wanted` when given
    /// (`runtimeConfig.ips`), else the next free one. An allocation that
    /// pair already holds in `subnet` is returned again.
    ///
    /// # Errors
    /// [`IpamError::Exhausted`], [`IpamError::NotInSubnet`] or
    /// [`IpamError::Taken`] for a `wanted` address, or [`IpamError::Io`].
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        container_id: &str,
        ifname: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
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
            if !subnet.contains(&ip)
                || ip == subnet.network()
                || ip == subnet.broadcast()
                || ip == gateway
            {
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
        let Some(order) = candidates(subnet, last.as_deref()) else {
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
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
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

    fn remove_where(&self, pred: impl Fn(&Allocation) -> bool) -> Result<Vec<Ipv4Addr>, IpamError> {
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

    fn net() -> Ipv4Net {
        "10.9.3.0/29".parse().unwrap()
    }
    const GW: Ipv4Addr = Ipv4Addr::new(10, 9, 3, 1);

    #[test]
    fn allocate_release_and_exhaust() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path().join("n"), "n");
        // /29: .1 gateway, .2-.6 usable (5 addresses).
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                ipam.allocate(net(), GW, &format!("c{i}"), "eth0", None)
                    .unwrap(),
            );
        }
        assert!(!got.contains(&GW));
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5);
        let e = ipam.allocate(net(), GW, "c9", "eth0", None).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        // Same pair again: the same address.
        let again = ipam.allocate(net(), GW, "c0", "eth0", None).unwrap();
        assert_eq!(ipam.release("c0", "eth0").unwrap(), vec![again]);
        assert!(ipam.release("c0", "eth0").unwrap().is_empty());
        ipam.allocate(net(), GW, "c9", "eth0", None).unwrap();
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
        let held: Vec<Ipv4Addr> = b.allocations().unwrap().iter().map(|x| x.ip).collect();
        let free = (2..=6)
            .map(|h| Ipv4Addr::new(10, 9, 3, h))
            .find(|ip| !held.contains(ip))
            .unwrap();
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
        for bad in [
            GW,
            Ipv4Addr::new(10, 9, 3, 0),
            Ipv4Addr::new(10, 9, 3, 7),
            Ipv4Addr::new(10, 1, 1, 1),
        ] {
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
        let all: Vec<Ipv4Addr> = candidates(net(), Some("10.9.3.4\n")).unwrap().collect();
        let want: Vec<Ipv4Addr> = [5, 6, 1, 2, 3, 4]
            .iter()
            .map(|h| Ipv4Addr::new(10, 9, 3, *h))
            .collect();
        assert_eq!(all, want);
        // Out of range or garbage: from the first host address.
        for last in [None, Some("10.9.4.1"), Some("nope"), Some("10.9.3.7")] {
            let first = candidates(net(), last).unwrap().next();
            assert_eq!(first, Some(Ipv4Addr::new(10, 9, 3, 1)), "{last:?}");
        }
        for none in ["10.9.3.4/31", "10.9.3.4/32", "255.255.255.255/32"] {
            assert!(candidates(none.parse().unwrap(), None).is_none(), "{none}");
        }
        // In a /0 the rotation passes u32::MAX: computed without overflow.
        let (lo, hi) = (1u32, u32::MAX - 1);
        let span = hi - lo + 1;
        assert_eq!(rotated(lo, 0x8000_0000, span, span - 1), 0x7fff_ffff);
        assert_eq!(rotated(lo, hi, span, 1), lo);
    }

    #[test]
    fn release_on_missing_dir_is_ok() {
        let d = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(d.path().join("none"), "n");
        assert!(ipam.release("x", "eth0").unwrap().is_empty());
        assert!(!ipam.dir().exists());
    }
}
