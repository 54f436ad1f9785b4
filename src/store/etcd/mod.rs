//! The etcd lease store: flannel's etcd v3 layout, so weft nodes and flannel
//! nodes can share one network and operators keep their `etcdctl` commands.
//!
//! Layout under the prefix (default `/coreos.com/network`):
//! - `<prefix>/config` — net-conf.json, written by the operator (never by weft);
//! - `<prefix>/subnets/10.244.3.0-24` — one key per lease, flannel's value JSON
//!   `{"PublicIP":"…","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}`,
//!   attached to an etcd lease whose TTL is the lease's (flannel: 24 h); in
//!   a dual-stack network `<prefix>/subnets/10.244.3.0-24&fc00:0:0:3::-64`,
//!   the value with `"PublicIPv6"` and `"BackendV6Data"` too.
//!
//! What this module promises:
//! - a lease key is created only if absent (a transaction on `create_revision == 0`);
//!   a lost race is retried with another subnet. Keys of both forms can
//!   hold the same subnet (etcd cannot compare "no key holds this IPv6
//!   subnet"), so a dual-stack creation lists again afterwards and gives way
//!   when a key created before it holds one of its subnets;
//! - [`EtcdStore::renew`] grants a fresh etcd lease and moves the key onto it
//!   (the key must still hold this node's value); a key deleted by an operator
//!   makes it fail with [`StoreError::LeaseDeleted`], and the watch reports a
//!   [`WatchEvent::Remove`] of the node's own subnet. The policy (documented in
//!   docs/etcd.md): the daemon says so and acquires again, asking for the same
//!   subnet first, rather than exiting as flannel does;
//! - the watch never ends because etcd is unreachable: it re-lists (and sends a
//!   [`WatchEvent::Snapshot`]) after a reconnect, a compaction, a leader loss,
//!   a revision that went backwards (etcd restored from a backup), and
//!   periodically as a safety net, retrying with backoff while etcd is down;
//! - leases are reported as stored: a key not of flannel's form or a value
//!   that is not flannel's lease JSON is skipped with a warning naming the
//!   key; what a lease means to this node (its backend, its halves) is
//!   [`crate::node::Admission`]'s to judge; nothing read from etcd can make
//!   this module panic.
//!
//! Files: `options.rs` (flags, env vars, settings and what is derived from
//! them), this one (the client, its reads and transactions, the [`LeaseStore`]
//! impl), `watch.rs` (the watcher), `diagnose.rs` (why etcd cannot be reached,
//! and what `weftd doctor` asks of it), `error.rs` ([`EtcdError`]).

pub(crate) mod diagnose;
mod error;
mod options;
mod watch;

pub use error::EtcdError;
pub use options::{DEFAULT_ENDPOINT, DEFAULT_PREFIX, EtcdOptions, EtcdSettings};

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

use super::dial::error_chain;
use super::{AcquireRequest, LeaseStore, StoreError, WatchEvent, choose_subnet, choose_subnet6};
use crate::lease::{Lease, LeaseAttrs, LeaseId, parse_subnet_key, subnet_key};
use diagnose::{diagnose, with_hint};
use options::{render_put_config, tls_options};

/// How many creation races `acquire` may lose before it gives up.
const MAX_ACQUIRE_ATTEMPTS: usize = 16;

/// A lease store in etcd, in flannel's layout. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    settings: Arc<EtcdSettings>,
    /// Test hook: a pause between the initial listing and the watch creation.
    watch_start_delay: Arc<Mutex<Duration>>,
    /// The watch's revision and outages, for `weftd status` and the doctor.
    health: Arc<crate::store::WatchHealth>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One key under `<prefix>/subnets/`, parsed as far as it goes.
struct Entry {
    key: String,
    mod_revision: i64,
    create_revision: i64,
    lease_id: i64,
    /// The subnets of the key, when the key has flannel's form.
    id: Option<LeaseId>,
    /// The lease as stored, or why the key or value is not flannel's.
    parsed: Result<Lease, String>,
    /// The attributes, when the value is flannel's JSON (whatever the backend).
    attrs: Option<LeaseAttrs>,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (a read of the config key).
    ///
    /// # Errors
    /// [`EtcdError::Options`] for unreadable certificate files or TLS
    /// options with `http://` endpoints; [`EtcdError::Unreachable`] naming
    /// the endpoints when none answers; [`EtcdError::Tls`] naming the
    /// endpoint, the CA file and the certificate names when TLS fails;
    /// [`EtcdError::Request`] for other refusals (authentication).
    pub async fn connect(settings: EtcdSettings) -> Result<EtcdStore, StoreError> {
        let store = EtcdStore::connect_lazy(settings).await?;
        let probe = store
            .call("reading the config key", {
                let mut c = store.client.clone();
                let key = store.config_key();
                async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await;
        match probe {
            Ok(_) => Ok(store),
            Err(e) => Err(diagnose(store.settings.clone(), e).await),
        }
    }

    /// Builds the client without checking that etcd answers: requests made while
    /// etcd is down fail (after the request timeout) and are retried by the watch.
    ///
    /// # Errors
    /// As [`EtcdStore::connect`], except that no request is made (but a user name
    /// is authenticated right away by the client).
    pub async fn connect_lazy(settings: EtcdSettings) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(settings.request_timeout)
            // Above etcd's --grpc-keepalive-min-time (5 s), and no pings without a
            // stream: etcd answers those with GOAWAY (too_many_pings).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        if let Some(u) = &settings.username {
            opts = opts
                .with_user(u.clone(), settings.password.clone().unwrap_or_default())
                // etcd's simple tokens expire (5 min by default): fetch a new one.
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = tls_options(&settings)? {
            opts = opts.with_tls(tls);
        }
        let endpoints = settings.endpoints.clone();
        let timeout = settings.request_timeout;
        let describe = endpoints.join(",");
        let client =
            match tokio::time::timeout(timeout, Client::connect(endpoints, Some(opts))).await {
                Ok(Ok(c)) => c,
                Ok(Err(etcd_client::Error::InvalidArgs(a))) => {
                    return Err(EtcdError::Options {
                        problem: format!("etcd {describe}: {a}"),
                    }
                    .into());
                }
                Ok(Err(e)) => {
                    return Err(EtcdError::Request {
                        store: format!("etcd {describe}"),
                        op: "connecting".into(),
                        detail: with_hint(&settings, error_chain(&e)),
                    }
                    .into());
                }
                Err(_) => {
                    return Err(EtcdError::Unreachable {
                        endpoints: describe,
                        detail: format!("no answer within {timeout:?} while authenticating"),
                    }
                    .into());
                }
            };
        Ok(EtcdStore {
            client,
            settings: Arc::new(settings),
            watch_start_delay: Arc::new(Mutex::new(Duration::ZERO)),
            health: Arc::default(),
        })
    }

    /// The settings the store runs with.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    /// `<prefix>/config`.
    pub fn config_key(&self) -> String {
        format!("{}/config", self.settings.prefix)
    }

    /// `<prefix>/subnets/`.
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.settings.prefix)
    }

    /// `<prefix>/subnets/10.244.3.0-24`.
    pub fn lease_key(&self, subnet: &Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// The key of `lease`: `<prefix>/subnets/10.244.3.0-24`, or
    /// `<prefix>/subnets/10.244.3.0-24&fc00:0:0:3::-64` with an IPv6 subnet.
    pub fn key_of(&self, lease: &Lease) -> String {
        format!("{}{}", self.subnets_prefix(), lease.key())
    }

    /// The `etcdctl put` that creates the config key, with this store's endpoints and TLS files.
    pub fn etcdctl_put_config(&self) -> String {
        render_put_config(&self.settings)
    }

    #[doc(hidden)]
    /// Test hook: pause `d` between the initial listing of a (re-)list and the
    /// creation of the watch, to let a test compact etcd in that gap.
    pub fn set_watch_start_delay(&self, d: Duration) {
        if let Ok(mut g) = self.watch_start_delay.lock() {
            *g = d;
        }
    }

    fn watch_start_delay(&self) -> Duration {
        self.watch_start_delay
            .lock()
            .map(|g| *g)
            .unwrap_or(Duration::ZERO)
    }

    /// Runs one etcd request under the request timeout, mapping its errors.
    async fn call<T>(
        &self,
        op: &str,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let t = self.settings.request_timeout;
        match tokio::time::timeout(t, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(op, e).into()),
            Err(_) => Err(EtcdError::Unreachable {
                endpoints: self.settings.endpoints.join(","),
                detail: format!("no answer within {t:?} while {op}"),
            }
            .into()),
        }
    }

    fn map_err(&self, op: &str, e: etcd_client::Error) -> EtcdError {
        let unreachable = match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            // gRPC codes 14 (unavailable), 4 (deadline exceeded), 1 (canceled),
            // and tonic's "unknown" wrapping a broken connection.
            etcd_client::Error::GRpcStatus(s) => {
                matches!(i32::from(s.code()), 14 | 4 | 1)
                    || (i32::from(s.code()) == 2 && s.message().contains("transport error"))
            }
            _ => false,
        };
        if unreachable {
            EtcdError::Unreachable {
                endpoints: self.settings.endpoints.join(","),
                detail: format!("{op}: {}", error_chain(&e)),
            }
        } else {
            EtcdError::Request {
                store: self.describe(),
                op: op.to_string(),
                detail: with_hint(&self.settings, error_chain(&e)),
            }
        }
    }

    /// Every key under `<prefix>/subnets/` and the revision of the listing.
    async fn list(&self) -> Result<(Vec<Entry>, i64), StoreError> {
        let mut c = self.client.clone();
        let prefix = self.subnets_prefix();
        let resp = self
            .call("listing the leases", async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let entries = resp.kvs().iter().map(|kv| self.entry(kv)).collect();
        Ok((entries, rev))
    }

    fn entry(&self, kv: &KeyValue) -> Entry {
        let mut e = entry_of(&self.subnets_prefix(), kv.key(), kv.value());
        e.mod_revision = kv.mod_revision();
        e.create_revision = kv.create_revision();
        e.lease_id = kv.lease();
        e
    }

    /// Every valid vxlan lease in etcd now (peers carry no expiration: etcd expires them).
    ///
    /// # Errors
    /// [`EtcdError::Unreachable`] or [`EtcdError::Request`].
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let (entries, _) = self.list().await?;
        Ok(entries.into_iter().filter_map(|e| e.parsed.ok()).collect())
    }

    /// The current revision of etcd (a cheap count-only read).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let mut c = self.client.clone();
        let key = self.config_key();
        let resp = self
            .call("reading the revision", async move {
                c.get(key, Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1) + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX);
        let mut c = self.client.clone();
        let r = self
            .call("granting an etcd lease", async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(r.id())
    }

    async fn revoke(&self, id: i64) {
        if id == 0 {
            return;
        }
        let mut c = self.client.clone();
        if let Err(e) = self
            .call(
                "revoking an etcd lease",
                async move { c.lease_revoke(id).await },
            )
            .await
        {
            tracing::debug!("revoking etcd lease {id:x}: {e}");
        }
    }

    /// `attrs` as flannel's lease JSON, the value of `key`.
    fn encode(&self, key: &str, attrs: &LeaseAttrs) -> Result<Vec<u8>, EtcdError> {
        serde_json::to_vec(attrs).map_err(|e| EtcdError::Request {
            store: self.describe(),
            op: format!("encoding the lease {key}"),
            detail: e.to_string(),
        })
    }

    /// Creates `key` if absent: the revision of its creation, or `None` when
    /// someone else has it.
    async fn create(
        &self,
        key: &str,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let key = key.to_string();
        let value = self.encode(&key, attrs)?;
        let id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(id)),
            )]);
        let mut c = self.client.clone();
        let r = self
            .call(&format!("creating {key}"), async move { c.txn(txn).await })
            .await;
        match r {
            Ok(r) if r.succeeded() => Ok(Some(r.header().map_or(0, |h| h.revision()))),
            Ok(_) => {
                self.revoke(id).await;
                Ok(None)
            }
            Err(e) => {
                self.revoke(id).await;
                Err(e)
            }
        }
    }

    /// Replaces this node's key `old` (unmodified since `mod_revision`) with
    /// `new`, absent so far, on a fresh etcd lease of `ttl` with `attrs`, in
    /// one transaction: the revision of the move, or `None` when either
    /// changed meanwhile.
    async fn move_key(
        &self,
        old: &Entry,
        new: &str,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let value = self.encode(new, attrs)?;
        let id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(old.key.clone(), CompareOp::Equal, old.mod_revision),
                Compare::create_revision(new.to_string(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(
                    new.to_string(),
                    value,
                    Some(PutOptions::new().with_lease(id)),
                ),
                TxnOp::delete(old.key.clone(), None),
            ]);
        let mut c = self.client.clone();
        let r = self
            .call(&format!("moving {} to {new}", old.key), async move {
                c.txn(txn).await
            })
            .await;
        match r {
            Ok(r) if r.succeeded() => {
                self.revoke(old.lease_id).await;
                Ok(Some(r.header().map_or(0, |h| h.revision())))
            }
            Ok(_) => {
                self.revoke(id).await;
                Ok(None)
            }
            Err(e) => {
                self.revoke(id).await;
                Err(e)
            }
        }
    }

    /// After creating `key` at `rev` (dual-stack): a key created before it
    /// that holds its IPv4 subnet (when `check4`) or its IPv6 subnet, if any.
    async fn beaten_by(
        &self,
        key: &str,
        rev: i64,
        subnet: Option<Ipv4Net>,
        subnet6: Ipv6Net,
        check4: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let (entries, _) = self.list().await?;
        Ok(entries.into_iter().find(|e| {
            e.key != key
                && e.create_revision < rev
                && e.id.is_some_and(|id| {
                    (check4 && subnet.is_some() && id.v4 == subnet) || id.v6 == Some(subnet6)
                })
        }))
    }

    /// Deletes `key` if it is still as created at `rev` (a creation that
    /// gave way), and its etcd lease.
    async fn withdraw(&self, key: &str, rev: i64) -> Result<(), StoreError> {
        let Some(e) = self.get_entry(key).await? else {
            return Ok(());
        };
        if e.create_revision != rev {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.to_string(),
                CompareOp::Equal,
                e.mod_revision,
            )])
            .and_then([TxnOp::delete(key.to_string(), None)]);
        let mut c = self.client.clone();
        self.call(&format!("deleting {key}"), async move { c.txn(txn).await })
            .await?;
        self.revoke(e.lease_id).await;
        Ok(())
    }

    /// Moves an existing key of this node onto a fresh etcd lease of `ttl` with
    /// `attrs`, if the key was not modified since `mod_revision`.
    async fn rewrite(
        &self,
        key: &str,
        mod_revision: i64,
        old_lease: i64,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = key.to_string();
        let value = self.encode(&key, attrs)?;
        let id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(id)),
            )]);
        let mut c = self.client.clone();
        let r = self
            .call(&format!("renewing {key}"), async move { c.txn(txn).await })
            .await;
        match r {
            Ok(r) if r.succeeded() => {
                if old_lease != id {
                    self.revoke(old_lease).await;
                }
                Ok(true)
            }
            Ok(_) => {
                self.revoke(id).await;
                Ok(false)
            }
            Err(e) => {
                self.revoke(id).await;
                Err(e)
            }
        }
    }

    /// `key` as stored now, if it is.
    async fn get_entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        let mut c = self.client.clone();
        let resp = self
            .call(
                &format!("reading {key}"),
                async move { c.get(key, None).await },
            )
            .await?;
        Ok(resp.kvs().first().map(|kv| self.entry(kv)))
    }
}

/// One key/value under `subnets_prefix` (`<prefix>/subnets/`), read as the
/// store reads every listing and watch event: no I/O, any bytes.
fn entry_of(subnets_prefix: &str, key: &[u8], value: &[u8]) -> Entry {
    let key = String::from_utf8_lossy(key).into_owned();
    let id = key
        .strip_prefix(subnets_prefix)
        .and_then(|k| parse_subnet_key(k).ok());
    let attrs: Result<LeaseAttrs, String> = serde_json::from_slice(value)
        .map_err(|e| format!("value is not flannel's lease JSON: {e}"));
    let parsed = match (id, &attrs) {
        (None, _) => Err(
            "the key is not of the form <prefix>/subnets/10.244.3.0-24 (or 10.244.3.0-24&fc00:0:0:3::-64, or 0.0.0.0-0&fc00:0:0:3::-64 on an IPv6-only network)"
                .to_string(),
        ),
        (Some(_), Err(e)) => Err(e.clone()),
        (Some(id), Ok(a)) => Ok(Lease {
            subnet: id.v4,
            ipv6_subnet: id.v6,
            attrs: a.clone(),
            expiration: None,
        }),
    };
    Entry {
        key,
        mod_revision: 0,
        create_revision: 0,
        lease_id: 0,
        id,
        parsed,
        attrs: attrs.ok(),
    }
}

/// What the store makes of the etcd key `key` holding `value` under
/// `subnets_prefix`: the key's subnets (when the key has flannel's form) and
/// the peer lease, or why it is skipped. Pure; the fuzzer's entry point.
pub fn parse_lease_kv(
    subnets_prefix: &str,
    key: &[u8],
    value: &[u8],
) -> (Option<LeaseId>, Result<Lease, String>) {
    let e = entry_of(subnets_prefix, key, value);
    (e.id, e.parsed)
}

#[async_trait]
impl LeaseStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.settings.endpoints.join(","))
    }

    /// The config key's text. Never `Ok(None)`: in etcd mode the operator writes
    /// the config, so a missing key is [`EtcdError::ConfigMissing`] with the
    /// `etcdctl put` that creates it.
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        let key = self.config_key();
        let mut c = self.client.clone();
        let k = key.clone();
        let resp = self
            .call(
                &format!("reading {key}"),
                async move { c.get(k, None).await },
            )
            .await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(String::from_utf8_lossy(kv.value()).into_owned())),
            None => Err(EtcdError::ConfigMissing {
                store: self.describe(),
                key,
                command: self.etcdctl_put_config(),
            }
            .into()),
        }
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease, StoreError> {
        let mut lost: Vec<LeaseId> = vec![];
        // The IPv4 subnet to keep when a dual-stack creation gave way over
        // its IPv6 subnet (it was this node's, or it was free).
        let mut keep4: Option<Ipv4Net> = None;
        // Whoever holds a subnet behind a malformed value or a lost race.
        let nobody = || LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend_type: String::new(),
            backend_data: serde_json::Value::Null,
            public_ipv6: None,
            backend_v6_data: None,
        };
        for _ in 0..MAX_ACQUIRE_ATTEMPTS {
            let (entries, _) = self.list().await?;
            // Every key takes its subnets, valid or not: a malformed value still
            // holds the key, and creating over it would fail.
            let mut taken: Vec<Lease> = vec![];
            for e in &entries {
                let Some(id) = e.id else { continue };
                let attrs = e.attrs.clone().unwrap_or_else(nobody);
                taken.push(Lease {
                    subnet: id.v4,
                    ipv6_subnet: id.v6,
                    attrs,
                    expiration: None,
                });
            }
            for id in &lost {
                if !taken.iter().any(|l| l.id() == *id) {
                    taken.push(Lease {
                        subnet: id.v4,
                        ipv6_subnet: id.v6,
                        attrs: nobody(),
                        expiration: None,
                    });
                }
            }
            let mut r = req.clone();
            if keep4.is_some() {
                r.previous = keep4;
            }
            let (choice, subnet6) = {
                let mut rng = rand::rng();
                let choice = choose_subnet(&self.describe(), &r, &taken, &mut rng)?;
                let own = choice.as_ref().ok().copied();
                let subnet6 = choose_subnet6(&self.describe(), &r, own, &taken, &mut rng)?;
                (choice.map(|own| (own.subnet, own.ipv6_subnet)), subnet6)
            };
            let now = SystemTime::now();
            let lease = |subnet| Lease {
                subnet,
                ipv6_subnet: subnet6,
                attrs: req.attrs.clone(),
                expiration: Some(now + req.ttl),
            };
            match choice {
                Ok((own, own6)) => {
                    // This node's lease from an earlier run: take it over with our attrs.
                    let was = LeaseId { v4: own, v6: own6 };
                    let Some(e) = entries.iter().find(|e| e.id == Some(was)) else {
                        continue;
                    };
                    let want = lease(own);
                    let key = self.key_of(&want);
                    if e.key == key {
                        if self
                            .rewrite(&key, e.mod_revision, e.lease_id, &req.attrs, req.ttl)
                            .await?
                        {
                            tracing::info!("etcd: reusing this node's lease {key}");
                            return Ok(want);
                        }
                        continue;
                    }
                    // The key must change: an IPv6 subnet added (the network
                    // turned dual-stack), replaced, or dropped (IPv6 off).
                    let Some(rev) = self.move_key(e, &key, &req.attrs, req.ttl).await? else {
                        continue;
                    };
                    if let Some(s6) = subnet6.filter(|s6| Some(*s6) != own6) {
                        if let Some(w) = self.beaten_by(&key, rev, own, s6, false).await? {
                            tracing::info!(
                                "etcd: {} holds the IPv6 subnet {s6} too, and was first; trying another",
                                w.key
                            );
                            self.withdraw(&key, rev).await?;
                            keep4 = own;
                            continue;
                        }
                    }
                    tracing::info!("etcd: this node's lease {} is now {key}", e.key);
                    return Ok(want);
                }
                Err(free) => {
                    let want = lease(free);
                    let key = self.key_of(&want);
                    let Some(rev) = self.create(&key, &req.attrs, req.ttl).await? else {
                        tracing::info!("etcd: lost the race for {key}; trying another subnet");
                        lost.push(want.id());
                        continue;
                    };
                    if let Some(s6) = subnet6 {
                        if let Some(w) = self.beaten_by(&key, rev, free, s6, true).await? {
                            tracing::info!(
                                "etcd: {} holds a subnet of {key} too, and was first; trying another",
                                w.key
                            );
                            self.withdraw(&key, rev).await?;
                            if free.is_some() && w.id.and_then(|id| id.v4) == free {
                                lost.push(want.id());
                                keep4 = None;
                            } else {
                                keep4 = free;
                            }
                            continue;
                        }
                    }
                    tracing::info!("etcd: created lease {key}");
                    return Ok(want);
                }
            }
        }
        Err(EtcdError::Request {
            store: self.describe(),
            op: "acquiring a lease".into(),
            detail: format!(
                "lost {MAX_ACQUIRE_ATTEMPTS} races for a subnet in a row; too many nodes are starting at once, retry"
            ),
        }.into())
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let key = self.key_of(lease);
        for _ in 0..3 {
            let Some(e) = self.get_entry(&key).await? else {
                return Err(StoreError::LeaseDeleted {
                    store: self.describe(),
                    key,
                });
            };
            if let Some(a) = &e.attrs {
                let ipv6_only = lease.subnet.is_none();
                if a.public_addr(ipv6_only) != lease.public_addr() {
                    return Err(StoreError::LeaseLost {
                        store: self.describe(),
                        subnet: lease.id(),
                        holder: a.public_addr(ipv6_only),
                    });
                }
            }
            if self
                .rewrite(&key, e.mod_revision, e.lease_id, &lease.attrs, ttl)
                .await?
            {
                return Ok(Lease {
                    expiration: Some(SystemTime::now() + ttl),
                    ..lease.clone()
                });
            }
        }
        Err(EtcdError::Request {
            store: self.describe(),
            op: format!("renewing {key}"),
            detail: "the key kept changing under the renewal; is another process writing it?"
                .into(),
        }
        .into())
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let Some(e) = self.get_entry(&self.key_of(lease)).await? else {
            return Ok(());
        };
        if e.attrs.as_ref().map(|a| a.public_ip) != Some(lease.attrs.public_ip) {
            return Ok(());
        }
        let key = e.key.clone();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                e.mod_revision,
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        let mut c = self.client.clone();
        self.call(&format!("deleting {key}"), async move { c.txn(txn).await })
            .await?;
        self.revoke(e.lease_id).await;
        Ok(())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        watch::start(self).await
    }

    fn health(&self) -> Option<Arc<crate::store::WatchHealth>> {
        Some(self.health.clone())
    }
}
