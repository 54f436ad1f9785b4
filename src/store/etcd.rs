//! The etcd lease store: flannel's etcd v3 layout, so weft nodes and flannel
//! nodes can share one network and operators keep their `etcdctl` commands.
//!
//! Layout under the prefix (default `/coreos.com/network`):
//! - `<prefix>/config` — net-conf.json, written by the operator (never by weft);
//! - `<prefix>/subnets/10.244.3.0-24` — one key per lease, flannel's value JSON
//!   `{"PublicIP":"…","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}`,
//!   attached to an etcd lease whose TTL is the lease's (flannel: 24 h).
//!
//! What this module promises:
//! - a lease key is created only if absent (a transaction on `create_revision == 0`);
//!   a lost race is retried with another subnet;
//! - [`EtcdStore::renew`] grants a fresh etcd lease and moves the key onto it
//!   (the key must still hold this node's value); a key deleted by an operator
//!   makes it fail with [`StoreError::LeaseDeleted`], and the watch reports a
//!   [`WatchEvent::Remove`] of the node's own subnet. The policy (documented in
//!   the README's etcd section): the daemon says so and acquires again, asking for the same
//!   subnet first, rather than exiting as flannel does;
//! - the watch never ends because etcd is unreachable: it re-lists (and sends a
//!   [`WatchEvent::Snapshot`]) after a reconnect, a compaction, a leader loss,
//!   a revision that went backwards (etcd restored from a backup), and
//!   periodically as a safety net, retrying with backoff while etcd is down;
//! - malformed lease values and non-vxlan leases are skipped with a warning
//!   naming the key; nothing read from etcd can make this module panic.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use super::{AcquireRequest, LeaseStore, StoreError, WatchEvent, choose_subnet};
use crate::lease::{Lease, LeaseAttrs, parse_subnet_key, subnet_key};

/// flannel's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// flannel's default etcd endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// How often the watcher checks that etcd answers and that its revision did not
/// go back (one count-only read; HTTP/2 keepalive catches dead connections sooner).
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Retry backoff while etcd is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How many creation races `acquire` may lose before it gives up.
const MAX_ACQUIRE_ATTEMPTS: usize = 16;

/// The etcd options of `weftd`, meant to be `#[command(flatten)]`ed into its CLI.
///
/// Each option reads, in order: the flag, weft's env var (`WEFT_ETCD_…`, through
/// clap), flannel's env var (`FLANNELD_ETCD_…`, through [`EtcdOptions::resolve`]),
/// the default. clap's `env` takes one name, so flannel's is looked up by hand.
#[derive(Clone, Default, clap::Args)]
pub struct EtcdOptions {
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379; env FLANNELD_ETCD_ENDPOINTS too]
    #[arg(
        long = "etcd-endpoints",
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Option<Vec<String>>,
    /// etcd key prefix of the network [default: /coreos.com/network; env FLANNELD_ETCD_PREFIX too]
    #[arg(long = "etcd-prefix", env = "WEFT_ETCD_PREFIX")]
    pub prefix: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate [env FLANNELD_ETCD_CAFILE too]
    #[arg(long = "etcd-cafile", env = "WEFT_ETCD_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-cert auth [env FLANNELD_ETCD_CERTFILE too]
    #[arg(long = "etcd-certfile", env = "WEFT_ETCD_CERTFILE")]
    pub certfile: Option<PathBuf>,
    /// Client key (PEM) of --etcd-certfile [env FLANNELD_ETCD_KEYFILE too]
    #[arg(long = "etcd-keyfile", env = "WEFT_ETCD_KEYFILE")]
    pub keyfile: Option<PathBuf>,
    /// etcd user name [env FLANNELD_ETCD_USERNAME too]
    #[arg(long = "etcd-username", env = "WEFT_ETCD_USERNAME")]
    pub username: Option<String>,
    /// etcd password [env FLANNELD_ETCD_PASSWORD too]
    #[arg(
        long = "etcd-password",
        env = "WEFT_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Full re-list of the leases this often, a safety net beside the watch
    #[arg(long = "etcd-relist-interval", env = "WEFT_ETCD_RELIST_INTERVAL", value_parser = humantime::parse_duration, default_value = "10m")]
    pub relist_interval: Duration,
    /// Time limit of one etcd request
    #[arg(long = "etcd-request-timeout", env = "WEFT_ETCD_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub request_timeout: Duration,
}

/// [`EtcdOptions`] with every fallback applied.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Without a trailing slash.
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub relist_interval: Duration,
    pub request_timeout: Duration,
}

/// The password never reaches a log.
fn redact(p: &Option<String>) -> Option<&'static str> {
    p.as_ref().map(|_| "(redacted)")
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("relist_interval", &self.relist_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("relist_interval", &self.relist_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdSettings {
    /// Settings for `endpoints` with every other option at its default.
    pub fn new(endpoints: Vec<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: DEFAULT_PREFIX.into(),
            cafile: None,
            certfile: None,
            keyfile: None,
            username: None,
            password: None,
            relist_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdOptions {
    /// Applies flannel's `FLANNELD_ETCD_*` env vars and the defaults.
    ///
    /// # Errors
    /// [`StoreError::EtcdOptions`] for an empty endpoint list or a prefix that is not absolute.
    pub fn resolve(&self) -> Result<EtcdSettings, StoreError> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// [`EtcdOptions::resolve`] with `env` as the environment (for tests).
    ///
    /// # Errors
    /// As [`EtcdOptions::resolve`].
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EtcdSettings, StoreError> {
        let flannel = |name: &str| env(&format!("FLANNELD_ETCD_{name}")).filter(|v| !v.is_empty());
        let endpoints: Vec<String> = match &self.endpoints {
            Some(v) => v.clone(),
            None => match flannel("ENDPOINTS") {
                Some(v) => v.split(',').map(str::to_string).collect(),
                None => vec![DEFAULT_ENDPOINT.to_string()],
            },
        };
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(StoreError::EtcdOptions {
                problem: "--etcd-endpoints is empty; give at least one, e.g. http://127.0.0.1:2379"
                    .into(),
            });
        }
        let prefix = self
            .prefix
            .clone()
            .or_else(|| flannel("PREFIX"))
            .unwrap_or_else(|| DEFAULT_PREFIX.into());
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(StoreError::EtcdOptions {
                problem: format!(
                    "--etcd-prefix {prefix:?} must start with '/', e.g. {DEFAULT_PREFIX}"
                ),
            });
        }
        let path = |v: &Option<PathBuf>, name: &str| {
            v.clone().or_else(|| flannel(name).map(PathBuf::from))
        };
        Ok(EtcdSettings {
            endpoints,
            prefix,
            cafile: path(&self.cafile, "CAFILE"),
            certfile: path(&self.certfile, "CERTFILE"),
            keyfile: path(&self.keyfile, "KEYFILE"),
            username: self.username.clone().or_else(|| flannel("USERNAME")),
            password: self.password.clone().or_else(|| flannel("PASSWORD")),
            relist_interval: self.relist_interval,
            request_timeout: self.request_timeout,
        })
    }
}

/// A lease store in etcd, in flannel's layout. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    settings: Arc<EtcdSettings>,
    /// Test hook: a pause between the initial listing and the watch creation.
    watch_start_delay: Arc<Mutex<Duration>>,
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
    lease_id: i64,
    /// The subnet of the key, when the key has flannel's form.
    subnet: Option<Ipv4Net>,
    /// The lease, or why it cannot be used as a VXLAN peer.
    parsed: Result<Lease, String>,
    /// The attributes, when the value is flannel's JSON (whatever the backend).
    attrs: Option<LeaseAttrs>,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (a read of the config key).
    ///
    /// # Errors
    /// [`StoreError::EtcdOptions`] for unreadable certificate files or TLS
    /// options with `http://` endpoints; [`StoreError::EtcdUnreachable`] naming
    /// the endpoints when none answers; [`StoreError::EtcdTls`] naming the
    /// endpoint, the CA file and the certificate names when TLS fails;
    /// [`StoreError::EtcdRequest`] for other refusals (authentication).
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
            Err(e) => Err(store.diagnose(e).await),
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
                    return Err(StoreError::EtcdOptions {
                        problem: format!("etcd {describe}: {a}"),
                    });
                }
                Ok(Err(e)) => {
                    return Err(StoreError::EtcdRequest {
                        store: format!("etcd {describe}"),
                        op: "connecting".into(),
                        detail: with_hint(&settings, error_chain(&e)),
                    });
                }
                Err(_) => {
                    return Err(StoreError::EtcdUnreachable {
                        endpoints: describe,
                        detail: format!("no answer within {timeout:?} while authenticating"),
                    });
                }
            };
        Ok(EtcdStore {
            client,
            settings: Arc::new(settings),
            watch_start_delay: Arc::new(Mutex::new(Duration::ZERO)),
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
            Ok(Err(e)) => Err(self.map_err(op, e)),
            Err(_) => Err(StoreError::EtcdUnreachable {
                endpoints: self.settings.endpoints.join(","),
                detail: format!("no answer within {t:?} while {op}"),
            }),
        }
    }

    fn map_err(&self, op: &str, e: etcd_client::Error) -> StoreError {
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
            StoreError::EtcdUnreachable {
                endpoints: self.settings.endpoints.join(","),
                detail: format!("{op}: {}", error_chain(&e)),
            }
        } else {
            StoreError::EtcdRequest {
                store: self.describe(),
                op: op.to_string(),
                detail: with_hint(&self.settings, error_chain(&e)),
            }
        }
    }

    /// Turns a failed first request into an error that says which endpoint and
    /// which certificate: a TCP connect to each endpoint, then a TLS handshake
    /// with the configured files for `https://` ones.
    async fn diagnose(&self, err: StoreError) -> StoreError {
        let settings = self.settings.clone();
        let t = settings.request_timeout;
        let found = tokio::task::spawn_blocking(move || {
            let mut problems = vec![];
            for ep in &settings.endpoints {
                match diagnose_endpoint(ep, &settings, t) {
                    Ok(()) => return None,
                    Err(p) => problems.push(p),
                }
            }
            // Report TLS problems first: they are what the operator must fix.
            problems.sort_by_key(|p| !matches!(p, StoreError::EtcdTls { .. }));
            problems.into_iter().next()
        })
        .await
        .ok()
        .flatten();
        found.unwrap_or(err)
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
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let subnet = key
            .strip_prefix(&self.subnets_prefix())
            .and_then(|k| parse_subnet_key(k).ok());
        let attrs: Result<LeaseAttrs, String> = serde_json::from_slice(kv.value())
            .map_err(|e| format!("value is not flannel's lease JSON: {e}"));
        let parsed = match (subnet, &attrs) {
            (None, _) => {
                Err("the key is not of the form <prefix>/subnets/10.244.3.0-24".to_string())
            }
            (Some(_), Err(e)) => Err(e.clone()),
            (Some(s), Ok(a)) => a
                .vxlan_data()
                .map(|_| Lease {
                    subnet: s,
                    attrs: a.clone(),
                    expiration: None,
                })
                .map_err(|e| e.to_string()),
        };
        Entry {
            key,
            mod_revision: kv.mod_revision(),
            lease_id: kv.lease(),
            subnet,
            parsed,
            attrs: attrs.ok(),
        }
    }

    /// Every valid vxlan lease in etcd now (peers carry no expiration: etcd expires them).
    ///
    /// # Errors
    /// [`StoreError::EtcdUnreachable`] or [`StoreError::EtcdRequest`].
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let (entries, _) = self.list().await?;
        Ok(entries.into_iter().filter_map(|e| e.parsed.ok()).collect())
    }

    /// The current revision of etcd (a cheap count-only read).
    async fn revision(&self) -> Result<i64, StoreError> {
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

    /// Creates `subnet`'s key if absent; `Ok(false)` when someone else has it.
    async fn create(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.lease_key(&subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::EtcdRequest {
            store: self.describe(),
            op: format!("encoding the lease {key}"),
            detail: e.to_string(),
        })?;
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
            Ok(r) if r.succeeded() => Ok(true),
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

    /// Moves an existing key of this node onto a fresh etcd lease of `ttl` with
    /// `attrs`, if the key was not modified since `mod_revision`.
    async fn rewrite(
        &self,
        subnet: Ipv4Net,
        mod_revision: i64,
        old_lease: i64,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.lease_key(&subnet);
        let value = serde_json::to_vec(attrs).map_err(|e| StoreError::EtcdRequest {
            store: self.describe(),
            op: format!("encoding the lease {key}"),
            detail: e.to_string(),
        })?;
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

    /// The key of `subnet` as stored now, if any.
    async fn get_entry(&self, subnet: &Ipv4Net) -> Result<Option<Entry>, StoreError> {
        let key = self.lease_key(subnet);
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

#[async_trait]
impl LeaseStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.settings.endpoints.join(","))
    }

    /// The config key's text. Never `Ok(None)`: in etcd mode the operator writes
    /// the config, so a missing key is [`StoreError::EtcdConfigMissing`] with the
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
            None => Err(StoreError::EtcdConfigMissing {
                store: self.describe(),
                key,
                command: self.etcdctl_put_config(),
            }),
        }
    }

    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease, StoreError> {
        let mut lost: Vec<Ipv4Net> = vec![];
        for _ in 0..MAX_ACQUIRE_ATTEMPTS {
            let (entries, _) = self.list().await?;
            // Every key takes its subnet, valid or not: a malformed value still
            // holds the key, and creating over it would fail.
            let mut taken: Vec<Lease> = vec![];
            for e in &entries {
                let Some(subnet) = e.subnet else { continue };
                let attrs = e.attrs.clone().unwrap_or_else(|| LeaseAttrs {
                    public_ip: Ipv4Addr::UNSPECIFIED,
                    backend_type: String::new(),
                    backend_data: serde_json::Value::Null,
                });
                taken.push(Lease {
                    subnet,
                    attrs,
                    expiration: None,
                });
            }
            for s in &lost {
                if !taken.iter().any(|l| l.subnet == *s) {
                    taken.push(Lease {
                        subnet: *s,
                        attrs: LeaseAttrs {
                            public_ip: Ipv4Addr::UNSPECIFIED,
                            backend_type: String::new(),
                            backend_data: serde_json::Value::Null,
                        },
                        expiration: None,
                    });
                }
            }
            let choice = {
                let mut rng = rand::rng();
                choose_subnet(&self.describe(), req, &taken, &mut rng)?.map(|own| own.subnet)
            };
            let now = SystemTime::now();
            let lease = |subnet| Lease {
                subnet,
                attrs: req.attrs.clone(),
                expiration: Some(now + req.ttl),
            };
            match choice {
                Ok(own) => {
                    // This node's lease from an earlier run: take it over with our attrs.
                    let Some(e) = entries.iter().find(|e| e.subnet == Some(own)) else {
                        continue;
                    };
                    if self
                        .rewrite(own, e.mod_revision, e.lease_id, &req.attrs, req.ttl)
                        .await?
                    {
                        tracing::info!("etcd: reusing this node's lease {}", e.key);
                        return Ok(lease(own));
                    }
                }
                Err(free) => {
                    if self.create(free, &req.attrs, req.ttl).await? {
                        tracing::info!("etcd: created lease {}", self.lease_key(&free));
                        return Ok(lease(free));
                    }
                    tracing::info!(
                        "etcd: lost the race for {}; trying another subnet",
                        self.lease_key(&free)
                    );
                    lost.push(free);
                }
            }
        }
        Err(StoreError::EtcdRequest {
            store: self.describe(),
            op: "acquiring a lease".into(),
            detail: format!(
                "lost {MAX_ACQUIRE_ATTEMPTS} races for a subnet in a row; too many nodes are starting at once, retry"
            ),
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        for _ in 0..3 {
            let Some(e) = self.get_entry(&lease.subnet).await? else {
                return Err(StoreError::LeaseDeleted {
                    store: self.describe(),
                    key: self.lease_key(&lease.subnet),
                });
            };
            if let Some(a) = &e.attrs {
                if a.public_ip != lease.attrs.public_ip {
                    return Err(StoreError::LeaseLost {
                        store: self.describe(),
                        subnet: lease.subnet,
                        holder: a.public_ip,
                    });
                }
            }
            if self
                .rewrite(lease.subnet, e.mod_revision, e.lease_id, &lease.attrs, ttl)
                .await?
            {
                return Ok(Lease {
                    expiration: Some(SystemTime::now() + ttl),
                    ..lease.clone()
                });
            }
        }
        Err(StoreError::EtcdRequest {
            store: self.describe(),
            op: format!("renewing {}", self.lease_key(&lease.subnet)),
            detail: "the key kept changing under the renewal; is another process writing it?"
                .into(),
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let Some(e) = self.get_entry(&lease.subnet).await? else {
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
        let (tx, rx) = mpsc::channel(256);
        let (entries, rev) = self.list().await?;
        let mut w = Watcher {
            store: self.clone(),
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
}

/// What [`renew_or_reacquire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// The lease was extended in place.
    Extended(Lease),
    /// The lease key was gone ([`StoreError::LeaseDeleted`]); a lease was
    /// acquired again, the same subnet first. Its subnet may differ.
    Reacquired(Lease),
}

/// weft's policy for a lease key deleted under a running node: say so and
/// acquire again, asking for the same subnet first (flannel exits instead).
///
/// # Errors
/// What [`LeaseStore::renew`] returns other than [`StoreError::LeaseDeleted`]
/// (etcd unreachable: retry later; [`StoreError::LeaseLost`]: another node
/// holds the subnet), or what [`LeaseStore::acquire`] returns.
pub async fn renew_or_reacquire(
    store: &dyn LeaseStore,
    lease: &Lease,
    req: &AcquireRequest,
) -> Result<Renewed, StoreError> {
    match store.renew(lease, req.ttl).await {
        Ok(l) => Ok(Renewed::Extended(l)),
        Err(e @ StoreError::LeaseDeleted { .. }) => {
            tracing::warn!("{e}; acquiring again");
            let again = AcquireRequest {
                previous: Some(lease.subnet),
                ..req.clone()
            };
            let l = store.acquire(&again).await?;
            if l.subnet == lease.subnet {
                tracing::info!("lease for {} acquired again", l.subnet);
            } else {
                tracing::warn!(
                    "lease for {} was taken by another node; this node now has {}: its pods need new addresses",
                    lease.subnet,
                    l.subnet
                );
            }
            Ok(Renewed::Reacquired(l))
        }
        Err(e) => Err(e),
    }
}

/// The task behind [`EtcdStore::watch`].
struct Watcher {
    store: EtcdStore,
    tx: mpsc::Sender<WatchEvent>,
    /// The valid leases as last reported.
    known: BTreeMap<Ipv4Net, Lease>,
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
        }
        self.last_rev = rev;
        let mut known = BTreeMap::new();
        for e in entries {
            match e.parsed {
                Ok(l) => {
                    known.insert(l.subnet, l);
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
        let start = self.last_rev + 1;
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
                                    if let Some(s) = e.subnet {
                                        if self.known.remove(&s).is_some() {
                                            events.push(WatchEvent::Remove(s));
                                        }
                                    }
                                }
                                EventType::Put => {
                                    let e = store.entry(kv);
                                    match e.parsed {
                                        Ok(l) => {
                                            if self.known.get(&l.subnet) != Some(&l) {
                                                self.known.insert(l.subnet, l.clone());
                                                events.push(WatchEvent::Upsert(l));
                                            }
                                        }
                                        Err(why) => {
                                            self.warn_skipped(&e.key, e.mod_revision, &why);
                                            if let Some(s) = e.subnet {
                                                if self.known.remove(&s).is_some() {
                                                    events.push(WatchEvent::Remove(s));
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        self.last_rev = self.last_rev.max(hrev);
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

/// The `etcdctl put` that creates `<prefix>/config` with a sample net-conf.json.
fn render_put_config(s: &EtcdSettings) -> String {
    let mut cmd = format!(
        "ETCDCTL_API=3 etcdctl --endpoints={}",
        s.endpoints.join(",")
    );
    for (flag, file) in [
        ("--cacert", &s.cafile),
        ("--cert", &s.certfile),
        ("--key", &s.keyfile),
    ] {
        if let Some(f) = file {
            cmd.push_str(&format!(" {flag}={}", f.display()));
        }
    }
    cmd.push_str(&format!(
        " put {}/config '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'",
        s.prefix
    ));
    cmd
}

/// Adds what to do to etcd's auth refusals.
fn with_hint(s: &EtcdSettings, detail: String) -> String {
    let user = s.username.as_deref().unwrap_or("(none)");
    if detail.contains("authentication failed") || detail.contains("invalid auth token") {
        format!("{detail}; check --etcd-username ({user}) and --etcd-password")
    } else if detail.contains("permission denied") {
        format!(
            "{detail}; user {user} needs readwrite on {p}/: etcdctl role grant-permission <role> --prefix=true readwrite {p}/",
            p = s.prefix
        )
    } else if detail.contains("user name is empty") || detail.contains("user name not found") {
        format!("{detail}; etcd has auth enabled: give --etcd-username and --etcd-password")
    } else {
        detail
    }
}

/// An error and its sources, joined: tonic's transport errors hide the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn read_file(what: &str, flag: &str, p: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(p).map_err(|e| StoreError::EtcdOptions {
        problem: format!("cannot read the {what} {} ({flag}): {e}", p.display()),
    })
}

/// The client's TLS options from the settings; `None` without any TLS file.
fn tls_options(s: &EtcdSettings) -> Result<Option<TlsOptions>, StoreError> {
    let https = s.endpoints.iter().any(|e| e.starts_with("https://"));
    if s.cafile.is_none() && s.certfile.is_none() && s.keyfile.is_none() {
        if https {
            return Err(StoreError::EtcdOptions {
                problem: format!(
                    "etcd {}: https endpoints need --etcd-cafile (the CA that signed etcd's server certificate)",
                    s.endpoints.join(",")
                ),
            });
        }
        return Ok(None);
    }
    if let Some(plain) = s.endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(StoreError::EtcdOptions {
            problem: format!(
                "etcd endpoint {plain} is plain http but TLS files are given; use https://"
            ),
        });
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &s.cafile {
        tls = tls.ca_certificate(Certificate::from_pem(read_file(
            "CA file",
            "--etcd-cafile",
            ca,
        )?));
    }
    match (&s.certfile, &s.keyfile) {
        (Some(c), Some(k)) => {
            let cert = read_file("client certificate", "--etcd-certfile", c)?;
            let key = read_file("client key", "--etcd-keyfile", k)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::EtcdOptions {
                problem: "--etcd-certfile and --etcd-keyfile go together; give both or neither"
                    .into(),
            });
        }
    }
    Ok(Some(tls))
}

/// Checks one endpoint: TCP, then (https) a TLS handshake with the configured
/// files. `Ok` when nothing is wrong at these levels.
fn diagnose_endpoint(ep: &str, s: &EtcdSettings, t: Duration) -> Result<(), StoreError> {
    let (https, rest) = if let Some(r) = ep.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = ep.strip_prefix("http://") {
        (false, r)
    } else {
        (s.cafile.is_some(), ep)
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    };
    let unreachable = |detail: String| StoreError::EtcdUnreachable {
        endpoints: ep.to_string(),
        detail,
    };
    let addrs: Vec<SocketAddr> = match hostport.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => match format!("{hostport}:2379").to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(unreachable(format!("cannot resolve {hostport}: {e}"))),
        },
    };
    let mut tcp = None;
    let mut failures = vec![];
    for a in &addrs {
        match TcpStream::connect_timeout(a, t) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => failures.push(format!("TCP connect to {a}: {e}")),
        }
    }
    let Some(tcp) = tcp else {
        if failures.is_empty() {
            failures.push(format!("{hostport} resolves to no address"));
        }
        return Err(unreachable(failures.join("; ")));
    };
    if !https {
        return Ok(());
    }
    let _ = tcp.set_read_timeout(Some(t));
    let _ = tcp.set_write_timeout(Some(t));
    tls_check::handshake(ep, host, tcp, s)
}

/// A TLS handshake that records what the server presented, to name it in errors.
pub(crate) mod tls_check {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    use super::{EtcdSettings, StoreError};
    use crate::store::tls::Recorder;
    pub(crate) use crate::store::tls::describe_cert;

    pub(super) fn handshake(
        ep: &str,
        host: &str,
        mut tcp: TcpStream,
        s: &EtcdSettings,
    ) -> Result<(), StoreError> {
        let ca_name = s
            .cafile
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no --etcd-cafile)".into());
        let tls_err = |problem: String| StoreError::EtcdTls {
            endpoint: ep.to_string(),
            ca_file: ca_name.clone(),
            problem,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &s.cafile {
            let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(ca) {
                Ok(it) => it.filter_map(Result::ok).collect(),
                Err(e) => return Err(tls_err(format!("cannot read the CA file: {e}"))),
            };
            if certs.is_empty() {
                return Err(tls_err("the CA file holds no PEM certificate".into()));
            }
            for c in certs {
                if let Err(e) = roots.add(c) {
                    return Err(tls_err(format!(
                        "the CA file holds an unusable certificate: {e}"
                    )));
                }
            }
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_err(format!("cannot use the CA file: {e}")))?;
        let rec = Arc::new(Recorder::new(inner));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(rec.clone());
        let config = match (&s.certfile, &s.keyfile) {
            (Some(c), Some(k)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                    .map_err(|e| {
                        tls_err(format!("cannot read --etcd-certfile {}: {e}", c.display()))
                    })?
                    .filter_map(Result::ok)
                    .collect();
                let key = PrivateKeyDer::from_pem_file(k).map_err(|e| {
                    tls_err(format!("cannot read --etcd-keyfile {}: {e}", k.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_err(format!("client certificate/key unusable: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| tls_err(format!("{host:?} is not a valid TLS server name: {e}")))?;
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| tls_err(e.to_string()))?;
        let mut result = Ok(());
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                result = Err(e);
                break;
            }
        }
        // TLS 1.3 reports a rejected client certificate only after the handshake.
        if result.is_ok() {
            let _ = conn.writer().write_all(b"");
            let _ = conn.complete_io(&mut tcp);
            let mut buf = [0u8; 1];
            if let Err(e) = conn.reader().read(&mut buf) {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    let _ = conn.complete_io(&mut tcp);
                }
            }
            if let Err(e) = conn.complete_io(&mut tcp) {
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
                {
                    result = Err(e);
                }
            }
        }
        let seen = rec.seen.lock().ok().and_then(|g| g.clone());
        match (seen, result) {
            (Some((der, Some(err))), _) => {
                let (subject, names, issuer) = describe_cert(&der);
                let why = match &err {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
                        format!(
                            "the server certificate (issuer {issuer}) is not signed by the CA in the CA file; give the CA that signed etcd's --cert-file"
                        )
                    }
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName,
                    )
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. },
                    ) => format!(
                        "the server certificate is not valid for {host:?}: connect with one of its names, or reissue it with {host} in its SANs"
                    ),
                    rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ExpiredContext { .. },
                    ) => "the server certificate has expired; renew it".to_string(),
                    other => other.to_string(),
                };
                Err(tls_err(format!(
                    "{why} (expected name {host}; presented subject {subject}, names [{}])",
                    names.join(", ")
                )))
            }
            (Some((der, None)), Err(e)) => {
                let (subject, names, _) = describe_cert(&der);
                let client = s
                    .certfile
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none (no --etcd-certfile)".into());
                Err(tls_err(format!(
                    "the server certificate (subject {subject}, names [{}]) is fine, but etcd refused this client's certificate {client}: {e}; give a client certificate signed by etcd's --trusted-ca-file",
                    names.join(", ")
                )))
            }
            (None, Err(e)) => Err(tls_err(format!(
                "TLS handshake failed before the server presented a certificate: {e} (is the endpoint really https?)"
            ))),
            (_, Ok(())) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdOptions,
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let mut s = EtcdSettings::new(vec![DEFAULT_ENDPOINT.into()]);
        s.password = Some("hunter2".into());
        let o = EtcdOptions {
            password: Some("hunter2".into()),
            ..EtcdOptions::default()
        };
        for d in [format!("{s:?}"), format!("{o:?}")] {
            assert!(!d.contains("hunter2") && d.contains("redacted"), "{d}");
        }
    }

    #[test]
    fn defaults_are_flannels() {
        let o = Cli::try_parse_from(["weftd"]).unwrap().etcd;
        let s = o.resolve_with(env(&[])).unwrap();
        assert_eq!(s.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(s.prefix, "/coreos.com/network");
        assert_eq!(s.cafile, None);
    }

    #[test]
    fn flag_beats_flannel_env_which_beats_default() {
        let flannel = env(&[
            (
                "FLANNELD_ETCD_ENDPOINTS",
                "https://10.0.0.5:2379,https://10.0.0.6:2379",
            ),
            ("FLANNELD_ETCD_PREFIX", "/kubernetes/network/"),
            ("FLANNELD_ETCD_CAFILE", "/etc/etcd/ca.pem"),
            ("FLANNELD_ETCD_CERTFILE", "/etc/flannel/flanneld.pem"),
            ("FLANNELD_ETCD_KEYFILE", "/etc/flannel/flanneld-key.pem"),
            ("FLANNELD_ETCD_USERNAME", "flannel"),
            ("FLANNELD_ETCD_PASSWORD", "secret"),
        ]);
        let o = Cli::try_parse_from(["weftd"]).unwrap().etcd;
        let s = o.resolve_with(&flannel).unwrap();
        assert_eq!(
            s.endpoints,
            vec!["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
        );
        assert_eq!(s.prefix, "/kubernetes/network");
        assert_eq!(s.cafile, Some(PathBuf::from("/etc/etcd/ca.pem")));
        assert_eq!(s.certfile, Some(PathBuf::from("/etc/flannel/flanneld.pem")));
        assert_eq!(
            s.keyfile,
            Some(PathBuf::from("/etc/flannel/flanneld-key.pem"))
        );
        assert_eq!(s.username.as_deref(), Some("flannel"));
        assert_eq!(s.password.as_deref(), Some("secret"));

        let o = Cli::try_parse_from([
            "weftd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379,http://127.0.0.2:2379",
            "--etcd-prefix",
            "/weft",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-relist-interval",
            "30s",
        ])
        .unwrap()
        .etcd;
        let s = o.resolve_with(&flannel).unwrap();
        assert_eq!(
            s.endpoints,
            vec!["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(s.prefix, "/weft");
        assert_eq!(s.cafile, Some(PathBuf::from("/ca.pem")));
        // Not given as flags: still flannel's env.
        assert_eq!(s.certfile, Some(PathBuf::from("/etc/flannel/flanneld.pem")));
        assert_eq!(s.relist_interval, Duration::from_secs(30));
    }

    #[test]
    fn every_option_has_a_weft_env_var() {
        let cmd = Cli::command();
        let mut seen = 0;
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            let want = format!("WEFT_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(
                a.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "--{long}"
            );
            seen += 1;
        }
        assert_eq!(seen, 9);
    }

    #[test]
    fn bad_options_are_explained() {
        let o = EtcdOptions {
            prefix: Some("coreos.com/network".into()),
            ..Cli::try_parse_from(["weftd"]).unwrap().etcd
        };
        let e = o.resolve_with(env(&[])).unwrap_err().to_string();
        assert!(e.contains("must start with '/'"), "{e}");
        let o = EtcdOptions {
            endpoints: Some(vec![" ".into()]),
            ..Cli::try_parse_from(["weftd"]).unwrap().etcd
        };
        assert!(o.resolve_with(env(&[])).is_err());
        let mut s = EtcdSettings::new(vec!["http://127.0.0.1:2379".into()]);
        s.cafile = Some("/nonexistent/ca.pem".into());
        let e = tls_options(&s).unwrap_err().to_string();
        assert!(e.contains("plain http"), "{e}");
        s.endpoints = vec!["https://127.0.0.1:2379".into()];
        let e = tls_options(&s).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("--etcd-cafile"),
            "{e}"
        );
    }

    /// Runs in a child process with real env vars (set by the parent below):
    /// setting env vars in-process would need `unsafe`.
    #[test]
    fn env_child() {
        if std::env::var("WEFT_TEST_ENV_CHILD").is_err() {
            return;
        }
        let s = Cli::try_parse_from(["weftd"])
            .unwrap()
            .etcd
            .resolve()
            .unwrap();
        // WEFT_ beats FLANNELD_; FLANNELD_ fills what WEFT_ leaves.
        assert_eq!(
            s.endpoints,
            vec!["http://192.0.2.1:2379", "http://192.0.2.2:2379"]
        );
        assert_eq!(s.prefix, "/flannel/prefix");
        assert_eq!(s.keyfile, Some(PathBuf::from("/weft/key.pem")));
        println!("env child ok");
    }

    #[test]
    fn weft_and_flannel_env_vars_are_read() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "store::etcd::tests::env_child", "--nocapture"])
            .env("WEFT_TEST_ENV_CHILD", "1")
            .env(
                "WEFT_ETCD_ENDPOINTS",
                "http://192.0.2.1:2379,http://192.0.2.2:2379",
            )
            .env("FLANNELD_ETCD_ENDPOINTS", "http://198.51.100.1:2379")
            .env("FLANNELD_ETCD_PREFIX", "/flannel/prefix")
            .env("WEFT_ETCD_KEYFILE", "/weft/key.pem")
            .env("FLANNELD_ETCD_KEYFILE", "/flannel/key.pem")
            .env_remove("WEFT_ETCD_PREFIX")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("env child ok"),
            "{text}"
        );
    }

    #[test]
    fn etcdctl_command_in_the_missing_config_error() {
        let mut s = EtcdSettings::new(vec!["https://10.0.0.5:2379".into()]);
        s.prefix = "/kubernetes/network".into();
        s.cafile = Some("/etc/etcd/ca.pem".into());
        // The command only: no client is needed to render it.
        let cmd = render_put_config(&s);
        assert_eq!(
            cmd,
            r#"ETCDCTL_API=3 etcdctl --endpoints=https://10.0.0.5:2379 --cacert=/etc/etcd/ca.pem put /kubernetes/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'"#
        );
    }

    #[test]
    fn certificate_names_are_read() {
        // No certificate at hand without I/O: garbage is described, not a panic.
        let (subject, names, _) = tls_check::describe_cert(b"not a certificate");
        assert!(subject.contains("unparsable") && names.is_empty());
    }
}
