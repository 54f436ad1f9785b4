//! The embedded lease store: one directory that every `weftd` on a host shares.
//!
//! Layout (under the state directory, default `/run/weft`):
//! - `net-conf.json` — the network config, written once by the first node;
//! - `subnets/10.244.3.0-24` — one file per lease, flannel's `Lease` shape:
//!   `{"Subnet":"10.244.3.0/24","Attrs":{flannel's LeaseAttrs},"Expiration":"RFC 3339"}`;
//!   in a dual-stack network `subnets/10.244.3.0-24&fc00:0:0:3::-64`, with
//!   `"IPv6Subnet":"fc00:0:0:3::/64"` beside `"Subnet"`;
//! - `.lock` — a `flock`ed file that serializes acquire, renew and release.
//!
//! Files are replaced atomically (write + rename), so readers never see half a
//! lease; the watcher polls the directory and turns differences into events.
//! A malformed lease file is skipped with a warning naming it, never fatal.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ipnet::{Ipv4Net, Ipv6Net};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AcquireRequest, LeaseStore, StoreError, WatchEvent, choose_subnet, choose_subnet6};
use crate::fsutil::{LockError, lock_exclusive};
use crate::lease::{Lease, LeaseAttrs, LeaseId, parse_subnet_key};

/// The on-disk form of one lease.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `0.0.0.0/0` for an IPv6-only lease, as flannel's empty `IP4Net` reads.
    #[serde(rename = "Subnet")]
    subnet: Ipv4Net,
    #[serde(
        rename = "IPv6Subnet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    ipv6_subnet: Option<Ipv6Net>,
    #[serde(rename = "Attrs")]
    attrs: LeaseAttrs,
    #[serde(rename = "Expiration")]
    expiration: String,
}

/// Every lease file: its name and the lease, or why it is not one.
type Scanned = Vec<(String, Result<Lease, String>)>;

/// A lease store in a directory shared by the `weftd` processes of one host.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    poll: Duration,
}

impl LocalStore {
    /// A store in `dir` (created on first use), polled for changes every `poll`.
    pub fn new(dir: impl Into<PathBuf>, poll: Duration) -> LocalStore {
        LocalStore {
            dir: dir.into(),
            poll,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, op: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        let op = op.into();
        move |source| StoreError::Io {
            store: self.dir.display().to_string(),
            op,
            source,
        }
    }

    fn subnets_dir(&self) -> PathBuf {
        self.dir.join("subnets")
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        std::fs::create_dir_all(self.subnets_dir())
            .map_err(self.io(format!("creating {}", self.subnets_dir().display())))?;
        let p = self.dir.join(".lock");
        lock_exclusive(&p).map_err(|e| match e {
            LockError::Open(e) => self.io(format!("opening {}", p.display()))(e),
            LockError::Lock(e) => self.io(format!("locking {}", p.display()))(e),
        })
    }

    /// Writes `contents` to `path` atomically.
    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<(), StoreError> {
        crate::fsutil::write_atomic(path, contents)
            .map_err(self.io(format!("writing {}", path.display())))
    }

    /// Every lease file, valid or not: `(key, Ok(lease) | Err(why))`.
    fn scan(&self) -> Result<Scanned, StoreError> {
        let dir = self.subnets_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.io(format!("listing {}", dir.display()))(e)),
        };
        let mut out = vec![];
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp.") {
                continue;
            }
            let parsed = std::fs::read(ent.path())
                .map_err(|e| e.to_string())
                .and_then(|b| parse_record(&name, &b));
            out.push((name, parsed));
        }
        Ok(out)
    }

    /// The leases that have not expired at `now`, as stored.
    fn valid_leases(&self, now: SystemTime) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .scan()?
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .filter(|l| !l.expired_at(now))
            .collect())
    }

    fn store_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let body = render_record(lease);
        self.write_file(&self.subnets_dir().join(lease.key()), &body)
    }

    /// Writes `text` as the network config unless one is stored already (create-if-absent).
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the file.
    pub fn put_config_if_absent(&self, text: &str) -> Result<bool, StoreError> {
        let _l = self.lock()?;
        let p = self.dir.join("net-conf.json");
        if p.exists() {
            return Ok(false);
        }
        self.write_file(&p, text.as_bytes())?;
        Ok(true)
    }

    /// Stores a lease written by someone else (a kernel-VXLAN flannel node, a test).
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the file.
    pub fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let _l = self.lock()?;
        self.store_lease(lease)
    }

    /// Every unexpired lease, now.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be read.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.valid_leases(SystemTime::now())
    }

    fn acquire_blocking(&self, req: &AcquireRequest) -> Result<Lease, StoreError> {
        let _l = self.lock()?;
        let now = SystemTime::now();
        // Expired leases are garbage: remove them so their subnets are free.
        let mut leases = vec![];
        for (key, r) in self.scan()? {
            match r {
                Ok(l) if l.expired_at(now) => {
                    let _ = std::fs::remove_file(self.subnets_dir().join(&key));
                }
                Ok(l) => leases.push(l),
                Err(_) => {}
            }
        }
        let mut rng = rand::rng();
        let own = choose_subnet(&self.describe(), req, &leases, &mut rng)?;
        let (subnet, own) = match own {
            Ok(own) => (own.subnet, Some(own)),
            Err(free) => (free, None),
        };
        let ipv6_subnet = choose_subnet6(&self.describe(), req, own, &leases, &mut rng)?;
        let lease = Lease {
            subnet,
            ipv6_subnet,
            attrs: req.attrs.clone(),
            expiration: Some(now + req.ttl),
        };
        self.store_lease(&lease)?;
        // The own lease under another key (the network turned dual-stack, or
        // its IPv6 subnet changed): the new file replaces it.
        if let Some(old) = own.filter(|o| o.key() != lease.key()) {
            let p = self.subnets_dir().join(old.key());
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.io(format!("removing {}", p.display()))(e));
                }
                _ => {}
            }
            tracing::info!(
                "{}: this node's lease {} is now {}",
                self.describe(),
                old.key(),
                lease.key()
            );
        }
        Ok(lease)
    }

    fn renew_blocking(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let _l = self.lock()?;
        let now = SystemTime::now();
        let key = lease.key();
        if let Some((_, Ok(cur))) = self.scan()?.into_iter().find(|(k, _)| *k == key) {
            if cur.public_addr() != lease.public_addr() && !cur.expired_at(now) {
                return Err(StoreError::LeaseLost {
                    store: self.describe(),
                    subnet: lease.id(),
                    holder: cur.public_addr(),
                });
            }
        }
        let renewed = Lease {
            expiration: Some(now + ttl),
            ..lease.clone()
        };
        self.store_lease(&renewed)?;
        Ok(renewed)
    }

    fn release_blocking(&self, lease: &Lease) -> Result<(), StoreError> {
        let _l = self.lock()?;
        let key = lease.key();
        if let Some((_, Ok(cur))) = self.scan()?.into_iter().find(|(k, _)| *k == key) {
            if cur.public_addr() == lease.public_addr() {
                let p = self.subnets_dir().join(&key);
                std::fs::remove_file(&p).map_err(self.io(format!("removing {}", p.display())))?;
            }
        }
        Ok(())
    }
}

/// The file a lease is stored as (flannel's `Lease` shape); a lease without
/// an expiration is written as expiring now.
pub fn render_record(lease: &Lease) -> Vec<u8> {
    let rec = Record {
        subnet: lease.subnet.unwrap_or_default(),
        ipv6_subnet: lease.ipv6_subnet,
        attrs: lease.attrs.clone(),
        expiration: humantime::format_rfc3339_nanos(lease.expiration.unwrap_or(SystemTime::now()))
            .to_string(),
    };
    serde_json::to_vec(&rec).expect("a lease record always serializes")
}

/// Reads the lease file `name` (its key: `10.244.3.0-24`,
/// `10.244.3.0-24&fc00:0:0:3::-64`, or `0.0.0.0-0&fc00:0:0:3::-64`) holding `bytes`:
/// the lease, or why the file is skipped. Pure; the fuzzer's entry point.
///
/// # Errors
/// The reason, naming what is wrong (key, JSON, subnet, expiration).
pub fn parse_record(name: &str, bytes: &[u8]) -> Result<Lease, String> {
    let id = parse_subnet_key(name).map_err(|e| e.to_string())?;
    let key_subnet6 = id.v6;
    let rec: Record =
        serde_json::from_slice(bytes).map_err(|e| format!("not a lease record: {e}"))?;
    if rec.subnet != id.v4.unwrap_or_default() {
        return Err(format!(
            "holds subnet {} but is named for {}",
            rec.subnet,
            id.v4.unwrap_or_default()
        ));
    }
    if rec.ipv6_subnet.is_some() && rec.ipv6_subnet != key_subnet6 {
        return Err(format!(
            "holds IPv6 subnet {} but is named for {}",
            rec.ipv6_subnet
                .map_or("none".to_string(), |s| s.to_string()),
            key_subnet6.map_or("none".to_string(), |s| s.to_string())
        ));
    }
    let expiration = humantime::parse_rfc3339(&rec.expiration)
        .map_err(|e| format!("Expiration {:?}: {e}", rec.expiration))?;
    Ok(Lease {
        subnet: id.v4,
        ipv6_subnet: key_subnet6,
        attrs: rec.attrs,
        expiration: Some(expiration),
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("store task panicked")
}

#[async_trait]
impl LeaseStore for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.dir.display())
    }

    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        let p = self.dir.join("net-conf.json");
        match tokio::fs::read_to_string(&p).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(format!("reading {}", p.display()))(e)),
        }
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease, StoreError> {
        let (s, r) = (self.clone(), req.clone());
        blocking(move || s.acquire_blocking(&r)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let (s, l) = (self.clone(), lease.clone());
        blocking(move || s.renew_blocking(&l, ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let (s, l) = (self.clone(), lease.clone());
        blocking(move || s.release_blocking(&l)).await
    }

    async fn watch(&self) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let (tx, rx) = mpsc::channel(64);
        let s = self.clone();
        let first = {
            let s = s.clone();
            blocking(move || s.valid_leases(SystemTime::now())).await?
        };
        let mut known: BTreeMap<LeaseId, Lease> =
            first.iter().map(|l| (l.id(), l.clone())).collect();
        if tx.send(WatchEvent::Snapshot(first)).await.is_err() {
            return Ok(rx);
        }
        tokio::spawn(async move {
            let mut warned: HashSet<(String, String)> = HashSet::new();
            let mut tick = tokio::time::interval(s.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                let s2 = s.clone();
                let scanned = match blocking(move || s2.scan()).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("{e}");
                        continue;
                    }
                };
                let now = SystemTime::now();
                let mut cur = BTreeMap::new();
                for (key, r) in scanned {
                    match r {
                        Ok(l) if !l.expired_at(now) => {
                            cur.insert(l.id(), l);
                        }
                        Ok(_) => {}
                        Err(why) => {
                            if warned.insert((key.clone(), why.clone())) {
                                tracing::warn!(
                                    "skipping lease file {}: {why}",
                                    s.subnets_dir().join(&key).display()
                                );
                            }
                        }
                    }
                }
                let events = super::diff(&known, &cur);
                known = cur;
                for ev in events {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConfig;
    use crate::types::{Vni, VtepMac};

    fn req(ip: [u8; 4], ttl: Duration) -> AcquireRequest {
        AcquireRequest {
            config: NetConfig::parse(
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
                "t",
            )
            .unwrap(),
            attrs: LeaseAttrs::vxlan(ip.into(), Vni::new(1).unwrap(), VtepMac::derive(&ip)),
            previous: None,
            previous6: None,
            ttl,
        }
    }

    #[tokio::test]
    async fn acquire_reuse_renew_release_and_watch() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), Duration::from_millis(20));
        let a = store
            .acquire(&req([192, 0, 2, 1], Duration::from_secs(60)))
            .await
            .unwrap();
        let b = store
            .acquire(&req([192, 0, 2, 2], Duration::from_secs(60)))
            .await
            .unwrap();
        assert_ne!(a.subnet, b.subnet);
        // A restart of node 1 gets its subnet back.
        let a2 = store
            .acquire(&req([192, 0, 2, 1], Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(a.subnet, a2.subnet);

        let mut w = store.watch().await.unwrap();
        match w.recv().await.unwrap() {
            WatchEvent::Snapshot(v) => assert_eq!(v.len(), 2),
            e => panic!("first event must be a snapshot, got {e:?}"),
        }
        let c = store
            .acquire(&req([192, 0, 2, 3], Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(w.recv().await.unwrap(), WatchEvent::Upsert(c.clone()));
        // Not renewed: it expires and disappears from the watch.
        assert_eq!(w.recv().await.unwrap(), WatchEvent::Remove(c.id()));

        let r = store.renew(&b, Duration::from_secs(120)).await.unwrap();
        assert!(r.expiration > b.expiration);
        store.release(&b).await.unwrap();
        assert_eq!(w.recv().await.unwrap(), WatchEvent::Remove(b.id()));
        assert_eq!(store.leases().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn lost_lease_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), Duration::from_millis(20));
        let a = store
            .acquire(&req([192, 0, 2, 1], Duration::from_millis(50)))
            .await
            .unwrap();
        std::fs::write(dir.path().join("subnets/10.244.77.0-24"), b"{not json").unwrap();
        std::fs::write(dir.path().join("subnets/garbage"), b"{}").unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Node 2 takes the expired subnet of node 1 (it is its previous one).
        let mut r2 = req([192, 0, 2, 2], Duration::from_secs(60));
        r2.previous = a.subnet;
        let b = store.acquire(&r2).await.unwrap();
        assert_eq!(b.subnet, a.subnet);
        let e = store
            .renew(&a, Duration::from_secs(60))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("192.0.2.2") && e.contains("Restart weftd"),
            "{e}"
        );
        assert_eq!(store.leases().unwrap(), vec![b]);
    }

    const NET6: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;

    fn req6(ip: [u8; 4]) -> AcquireRequest {
        let mut r = req(ip, Duration::from_secs(60));
        r.config = NetConfig::parse(NET6, "t").unwrap();
        let ip6 = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip[3]));
        r.attrs = r
            .attrs
            .with_ipv6(ip6, Vni::new(1).unwrap(), VtepMac::derive(&ip6.octets()));
        r
    }

    #[tokio::test]
    async fn dual_stack_leases_upgrade_and_peers_with_a_bad_ipv6_half() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), Duration::from_millis(20));
        // IPv4 only: the key and the file as before.
        let a = store
            .acquire(&req([192, 0, 2, 1], Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(a.ipv6_subnet, None);
        let body = std::fs::read_to_string(dir.path().join("subnets").join(a.key())).unwrap();
        assert!(
            body.contains(r#""PublicIPv6":null"#)
                && !body.contains("IPv6Subnet")
                && !body.contains("BackendV6Data")
                && !a.key().contains('&'),
            "{body}"
        );
        // The network turns dual-stack: the same IPv4 subnet, an IPv6 one added,
        // the file renamed to the dual key.
        let a6 = store.acquire(&req6([192, 0, 2, 1])).await.unwrap();
        assert_eq!(a6.subnet, a.subnet);
        let s6 = a6.ipv6_subnet.expect("an IPv6 subnet");
        assert_eq!(s6.prefix_len(), 64);
        assert!("fc00::/48".parse::<Ipv6Net>().unwrap().contains(&s6));
        assert!(!dir.path().join("subnets").join(a.key()).exists());
        let body = std::fs::read_to_string(dir.path().join("subnets").join(a6.key())).unwrap();
        assert!(
            a6.key().contains('&')
                && body.contains(&format!(r#""IPv6Subnet":"{s6}""#))
                && body.contains(r#""PublicIPv6":"fd00::1""#)
                && body.contains(r#""BackendV6Data":{"VNI":1,"VtepMAC":"#),
            "{body}"
        );
        // Renew and reuse keep the key; another node gets another IPv6 subnet.
        let r = store.renew(&a6, Duration::from_secs(60)).await.unwrap();
        assert_eq!(r.key(), a6.key());
        let again = store.acquire(&req6([192, 0, 2, 1])).await.unwrap();
        assert_eq!(again.key(), a6.key());
        let b = store.acquire(&req6([192, 0, 2, 2])).await.unwrap();
        assert_ne!(b.ipv6_subnet, a6.ipv6_subnet);
        assert_eq!(store.leases().unwrap().len(), 2);

        // A peer whose IPv6 half is outside the IPv6Network: reported as
        // stored; the reconciler routes its IPv4 half alone.
        let bad = Lease {
            subnet: "10.244.99.0/24".parse().ok(),
            ipv6_subnet: Some("fd99:0:0:1::/64".parse().unwrap()),
            ..b.clone()
        };
        let mut w = store.watch().await.unwrap();
        let _ = w.recv().await.unwrap();
        store.put_lease(&bad).unwrap();
        match w.recv().await.unwrap() {
            WatchEvent::Upsert(l) => {
                assert_eq!(l, bad);
                let admission = crate::node::Admission::new(&req6([192, 0, 2, 1]).config);
                let (t, skipped) = admission.table([&l], None);
                assert_eq!((t.len(), t.peers6().count()), (1, 0));
                assert!(
                    skipped[0].why.contains("outside the IPv6Network fc00::/48"),
                    "{skipped:?}"
                );
            }
            e => panic!("expected the peer's IPv4 half, got {e:?}"),
        }
        store.release(&b).await.unwrap();
        assert_eq!(w.recv().await.unwrap(), WatchEvent::Remove(b.id()));
    }

    #[test]
    fn records_with_hostile_ipv6_data_never_panic_nor_lose_the_ipv4_half() {
        let ok = r#"{"Subnet":"10.244.3.0/24","IPv6Subnet":"fc00:0:0:3::/64","Attrs":{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}},"Expiration":"2030-01-01T00:00:00Z"}"#;
        let l = parse_record("10.244.3.0-24&fc00:0:0:3::-64", ok.as_bytes()).unwrap();
        assert_eq!(l.ipv6_subnet, Some("fc00:0:0:3::/64".parse().unwrap()));
        let back = parse_record(&l.key(), &render_record(&l)).unwrap();
        assert_eq!(back, l);
        // The record and its name disagree on the IPv6 subnet.
        let e = parse_record("10.244.3.0-24&fc00:0:0:4::-64", ok.as_bytes()).unwrap_err();
        assert!(e.contains("IPv6 subnet"), "{e}");
        for name in [
            "10.244.3.0-24&",
            "10.244.3.0-24&zz-64",
            "10.244.3.0-24&fc00::-200",
        ] {
            assert!(parse_record(name, ok.as_bytes()).is_err(), "{name}");
        }
        // Garbage in the IPv6 attributes: the lease is read as stored (the
        // reconciler routes its IPv4 half alone, crate::node::Admission).
        let bad = ok.replace(
            r#""BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}"#,
            r#""BackendV6Data":[1,2,3]"#,
        );
        let l = parse_record("10.244.3.0-24&fc00:0:0:3::-64", bad.as_bytes()).unwrap();
        assert_eq!(l.ipv6_subnet, "fc00:0:0:3::/64".parse().ok());
        assert_eq!(l.attrs.backend_v6_data, Some(serde_json::json!([1, 2, 3])));
        assert!(l.attrs.vxlan_data().is_ok());
    }

    #[tokio::test]
    async fn concurrent_acquires_get_distinct_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = vec![];
        for i in 0..20u8 {
            let store = LocalStore::new(dir.path(), Duration::from_millis(20));
            tasks.push(tokio::spawn(async move {
                store
                    .acquire(&req([192, 0, 2, i + 1], Duration::from_secs(60)))
                    .await
                    .unwrap()
                    .subnet
            }));
        }
        let mut got = HashSet::new();
        for t in tasks {
            assert!(got.insert(t.await.unwrap()));
        }
        assert_eq!(got.len(), 20);
    }
}
