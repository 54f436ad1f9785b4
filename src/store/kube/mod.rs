//! The Kubernetes lease store (flannel's `--kube-subnet-mgr`): a node's subnet is
//! its `spec.podCIDR(s)`, assigned by kube-controller-manager; weft keeps no
//! store of its own. The VXLAN details travel in node annotations under a
//! prefix (`flannel.alpha.coreos.com` by default), the same ones flannel
//! writes, so weft and flannel nodes can share a cluster. In a dual-stack
//! network the node's IPv6 pod CIDR (the IPv6 entry of `spec.podCIDRs`) is
//! its IPv6 subnet, and the IPv6 VTEP travels in `<prefix>/backend-v6-data`
//! and `<prefix>/public-ipv6`; a node without them is an IPv4-only peer.
//!
//! Promises: every node object is read defensively (a malformed annotation is
//! skipped with a log naming the node, never a panic); every re-list of the
//! node watch (`Init … InitDone`, after a 410 Gone, an API server restart, a
//! resourceVersion "too large" after an etcd restore, or the periodic resync)
//! reaches the daemon as one [`WatchEvent::Snapshot`]; errors name the API
//! server, the address dialled, the certificate's names, the node, or the verb
//! and resource refused, with the fix.
//!
//! Files: `settings.rs` (flags and environment, the calls RBAC must allow),
//! `client.rs` (the client config, API errors, and the dial and TLS
//! diagnosis of a server that does not answer), `codec.rs` (node object ↔
//! lease, pure), `watch.rs` (the node watch), `error.rs` ([`KubeError`]),
//! `diagnose.rs` (what `weftd doctor` asks of the store: the dial, RBAC
//! reviews, this node's object read as weftd reads it), this one (the store:
//! this node's name, its lease and annotations, the [`LeaseStore`] impl).

mod client;
mod codec;
pub(crate) mod diagnose;
mod error;
mod settings;
mod watch;

pub use codec::{own_lease_from_node, peer_from_node};
pub use error::KubeError;
pub use settings::{
    API_CALLS, DEFAULT_ANNOTATION_PREFIX, KubeSettings, SERVICE_ACCOUNT_DIR,
    SERVICE_ACCOUNT_DIR_ENV,
};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use super::{AcquireRequest, LeaseStore, StoreError, WatchEvent};
use crate::lease::Lease;
use client::{Source, client_config};
use codec::{Keys, own_annotations, own_lease};

/// Leases from Kubernetes node objects.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Api<Node>,
    client: Client,
    /// `POD_NAMESPACE`, where weft's own pod is read.
    pod_namespace: Option<String>,
    /// Where the CA weft trusts comes from, for messages; `None`: the
    /// system's CAs (no kubeconfig CA, no ServiceAccount).
    ca_from: Option<String>,
    node_name: String,
    keys: Keys,
    api: String,
    source: Source,
    root_certs: Option<Vec<Vec<u8>>>,
    resync: Duration,
    connect_timeout: Duration,
    set_node_network_unavailable: bool,
    /// The watch's outages, for `weftd status`.
    health: Arc<crate::store::WatchHealth>,
    /// `(node, why)` of IPv6 halves already reported unusable.
    warned6: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KubeStore({})", self.describe())
    }
}

impl KubeStore {
    /// Builds the client and finds this node's name (from `NODE_NAME`, else by
    /// reading the pod `POD_NAMESPACE`/`POD_NAME`).
    ///
    /// # Errors
    /// [`KubeError::Config`] for an unusable config; the API errors of
    /// [`KubeStore::acquire`] when the pod lookup fails;
    /// [`KubeError::NoNodeName`] when neither is set.
    pub async fn connect(s: KubeSettings) -> Result<KubeStore, StoreError> {
        let (config, source, ca_from) = client_config(&s).await?;
        let api = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let root_certs = config.root_cert.clone();
        let client = Client::try_from(config).map_err(|e| KubeError::Config {
            from: api.clone(),
            problem: e.to_string(),
        })?;
        let mut inner = Inner {
            nodes: Api::all(client.clone()),
            client: client.clone(),
            pod_namespace: s.pod.as_ref().map(|(ns, _)| ns.clone()),
            ca_from,
            node_name: String::new(),
            keys: Keys::new(&s.annotation_prefix),
            api,
            source,
            root_certs,
            resync: s.resync,
            connect_timeout: s.connect_timeout,
            set_node_network_unavailable: s.set_node_network_unavailable,
            health: Arc::default(),
            warned6: Mutex::new(HashSet::new()),
        };
        inner.node_name = match (&s.node_name, &s.pod) {
            (Some(n), _) => n.clone(),
            (None, Some((ns, pod))) => {
                let pods: Api<Pod> = Api::namespaced(client, ns);
                let p = match pods.get(pod).await {
                    Ok(p) => p,
                    Err(e) => {
                        return Err(inner
                            .api_error("get", "pods", &format!("{ns}/{pod}"), e)
                            .await
                            .into());
                    }
                };
                match p.spec.and_then(|s| s.node_name) {
                    Some(n) => n,
                    None => {
                        return Err(KubeError::Request {
                            api: inner.api.clone(),
                            op: format!("get pods {ns}/{pod}"),
                            detail: "the pod is not scheduled to a node yet (no spec.nodeName); set NODE_NAME from the downward API instead".into(),
                        }.into());
                    }
                }
            }
            (None, None) => return Err(KubeError::NoNodeName.into()),
        };
        Ok(KubeStore {
            inner: Arc::new(inner),
        })
    }

    /// Reads this node from the API server: whether it answers, before the
    /// first lease call (weftd retries this at boot, so an API server that
    /// does not answer yet, as in the CNI-before-kube-proxy deadlock, is
    /// waited for with the pod alive and not Ready, instead of a crash loop).
    ///
    /// # Errors
    /// The API errors of [`KubeStore::acquire`].
    pub async fn read_node(&self) -> Result<(), StoreError> {
        let n = &self.inner.node_name;
        match self.inner.nodes.get(n).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.inner.api_error("get", "nodes", n, e).await.into()),
        }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// The API server's URL.
    pub fn api(&self) -> &str {
        &self.inner.api
    }

    /// The prefix of this node's annotations (`--kube-annotation-prefix`).
    pub fn annotation_prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// This node's object.
    ///
    /// # Errors
    /// As [`LeaseStore::acquire`]'s reading of it: no such node, refused, unreachable.
    pub async fn node(&self) -> Result<Node, StoreError> {
        Ok(self.inner.get_node().await?)
    }
}

impl Inner {
    async fn get_node(&self) -> Result<Node, KubeError> {
        match self.nodes.get(&self.node_name).await {
            Ok(n) => Ok(n),
            Err(kube::Error::Api(r)) if r.code == 404 => Err(KubeError::Request {
                api: self.api.clone(),
                op: format!("get nodes {}", self.node_name),
                detail: format!(
                    "there is no node {:?} ({}); NODE_NAME must be the node's name as `kubectl get nodes` shows it",
                    self.node_name, r.message
                ),
            }),
            Err(e) => Err(self.api_error("get", "nodes", &self.node_name, e).await),
        }
    }

    async fn patch_status(&self, patch: serde_json::Value) -> Result<Node, KubeError> {
        match self
            .nodes
            .patch_status(
                &self.node_name,
                // Named in the node's managedFields as flanneld's writes
                // are named "flanneld" (without it, "unknown").
                &PatchParams {
                    field_manager: Some("weftd".into()),
                    ..PatchParams::default()
                },
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(n) => Ok(n),
            Err(e) => Err(self
                .api_error("patch", "nodes/status", &self.node_name, e)
                .await),
        }
    }
}

#[async_trait]
impl LeaseStore for KubeStore {
    fn describe(&self) -> String {
        format!(
            "Kubernetes API {} (node {})",
            self.inner.api, self.inner.node_name
        )
    }

    /// Kubernetes mode reads net-conf.json from `--net-config-path` (the ConfigMap).
    async fn network_config(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// The node's pod CIDR as the lease (dual-stack: both of its pod CIDRs).
    /// Writes this node's annotations (only when they differ), keeping the
    /// VtepMACs already annotated so that they survive restarts, and the
    /// public IP from `public-ip-overwrite` (`public-ipv6-overwrite`) if set.
    async fn acquire(&self, req: &AcquireRequest) -> Result<Lease, StoreError> {
        let me = &self.inner;
        let node = me.get_node().await?;
        let lease = own_lease(
            &me.keys,
            &me.node_name,
            &node,
            req.config.network(),
            req.config.network6(),
            &req.attrs,
        )?;
        let want = own_annotations(&me.keys, &lease.attrs);
        let have = node.metadata.annotations.clone().unwrap_or_default();
        if want.iter().any(|(k, v)| have.get(k) != Some(v)) {
            me.patch_status(json!({"metadata": {"annotations": want}}))
                .await?;
            tracing::info!(
                "node {}: annotations {}/… written",
                me.node_name,
                me.keys.backend_type.rsplit_once('/').map_or("", |p| p.0)
            );
        }
        Ok(lease)
    }

    /// Pod CIDRs do not expire: nothing to renew.
    async fn renew(&self, lease: &Lease, _ttl: Duration) -> Result<Lease, StoreError> {
        Ok(lease.clone())
    }

    /// The annotations stay: a restarted weft reuses them (same VtepMAC), and
    /// peers drop this node when its node object is deleted.
    async fn release(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.inner.clone();
        tokio::spawn(async move { watch::watch_nodes(me, tx).await });
        Ok(rx)
    }

    /// `NetworkUnavailable=False` on the node, through `nodes/status` (as flannel does).
    async fn network_ready(&self, _lease: &Lease) -> Result<(), StoreError> {
        if !self.inner.set_node_network_unavailable {
            tracing::info!(
                "node {}: NetworkUnavailable left as it is (--set-node-network-unavailable=false)",
                self.inner.node_name
            );
            return Ok(());
        }
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.inner
            .patch_status(json!({"status": {"conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "WeftIsUp",
                "message": "weft is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]}}))
            .await?;
        tracing::info!("node {}: NetworkUnavailable=False", self.inner.node_name);
        Ok(())
    }

    fn health(&self) -> Option<Arc<crate::store::WatchHealth>> {
        Some(self.inner.health.clone())
    }
}
