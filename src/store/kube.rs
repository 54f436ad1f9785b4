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

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::sync::mpsc;

use super::dial::{self, CertProblem, SeenCert, error_chain};
use super::{AcquireRequest, LeaseStore, StoreError, WatchEvent};
use crate::backend::vxlan::VxlanData;
use crate::lease::{Lease, LeaseAttrs};

/// The default annotation prefix, flannel's.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// Where a pod finds its ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The environment variable that moves [`SERVICE_ACCOUNT_DIR`] (a token
/// projected elsewhere, or a test's files).
pub const SERVICE_ACCOUNT_DIR_ENV: &str = "WEFT_KUBE_SERVICE_ACCOUNT_DIR";

/// Every API call the kube store makes, as (verb, resource) the way RBAC names
/// them. The ClusterRole in `docker/weft.yaml` must grant exactly these (a test
/// checks). Annotations are written through `nodes/status`, as flannel does, so
/// weft needs no write access to node specs.
pub const API_CALLS: &[(&str, &str)] = &[
    ("get", "nodes"),
    ("list", "nodes"),
    ("watch", "nodes"),
    ("patch", "nodes/status"),
    ("get", "pods"),
];

/// How weft reaches the API server and which node it runs on.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// `NODE_NAME` (the DaemonSet sets it from `spec.nodeName`).
    pub node_name: Option<String>,
    /// `POD_NAMESPACE` and `POD_NAME`: used to look up the node when `NODE_NAME` is unset.
    pub pod: Option<(String, String)>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-url`: overrides the server address of whatever config is used.
    pub api_url: Option<String>,
    /// `--kube-annotation-prefix`.
    pub annotation_prefix: String,
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` (in-cluster config).
    pub service_host: Option<String>,
    pub service_port: Option<String>,
    /// The ServiceAccount directory (token, ca.crt, namespace).
    pub service_account_dir: PathBuf,
    /// A full re-list of the nodes this often, as a safety net.
    pub resync: Duration,
    /// How long to wait for a TCP connection to the API server.
    pub connect_timeout: Duration,
    /// Set `NetworkUnavailable=False` once the dataplane is up
    /// (flannel's `--set-node-network-unavailable`, default true).
    pub set_node_network_unavailable: bool,
}

impl KubeSettings {
    /// Settings from the flags, with node name and in-cluster address (and
    /// the ServiceAccount directory, `WEFT_KUBE_SERVICE_ACCOUNT_DIR`) from the environment.
    pub fn from_env(
        kubeconfig: Option<PathBuf>,
        api_url: Option<String>,
        annotation_prefix: String,
    ) -> KubeSettings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        KubeSettings {
            node_name: var("NODE_NAME"),
            pod: var("POD_NAMESPACE").zip(var("POD_NAME")),
            kubeconfig,
            api_url,
            annotation_prefix,
            service_host: var("KUBERNETES_SERVICE_HOST"),
            service_port: var("KUBERNETES_SERVICE_PORT"),
            service_account_dir: PathBuf::from(
                var(SERVICE_ACCOUNT_DIR_ENV).unwrap_or_else(|| SERVICE_ACCOUNT_DIR.into()),
            ),
            resync: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            set_node_network_unavailable: true,
        }
    }
}

/// Where the server address came from: decides which diagnosis an
/// unreachable server gets.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The server of `--kubeconfig-file`.
    Kubeconfig(PathBuf),
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`: in a pod, the
    /// `kubernetes` Service's ClusterIP unless the DaemonSet sets them.
    InCluster { host: String, port: String },
    /// `--kube-api-url`, which overrides the address of either config.
    ApiUrl,
}

impl Source {
    /// Where the address came from, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Kubeconfig(p) => format!("the server of --kubeconfig-file {}", p.display()),
            Source::InCluster { host, port } => format!(
                "in-cluster config: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}"
            ),
            Source::ApiUrl => "--kube-api-url".into(),
        }
    }
}

/// The annotation keys under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) backend_type: String,
    pub(crate) backend_data: String,
    pub(crate) managed: String,
    pub(crate) public_ip: String,
    pub(crate) public_ip_overwrite: String,
    pub(crate) backend_v6_data: String,
    pub(crate) public_ipv6: String,
    pub(crate) public_ipv6_overwrite: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        let k = |s: &str| format!("{}/{s}", prefix.trim_end_matches('/'));
        Keys {
            backend_type: k("backend-type"),
            backend_data: k("backend-data"),
            managed: k("kube-subnet-manager"),
            public_ip: k("public-ip"),
            public_ip_overwrite: k("public-ip-overwrite"),
            backend_v6_data: k("backend-v6-data"),
            public_ipv6: k("public-ipv6"),
            public_ipv6_overwrite: k("public-ipv6-overwrite"),
        }
    }
}

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

/// Reads a PEM file into DER certificates.
fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let certs: Vec<Vec<u8>> = dial::pem_certs(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// `--kube-api-url` parsed.
fn api_url(url: &str) -> Result<http::Uri, StoreError> {
    url.parse().map_err(|e| StoreError::KubeConfig {
        from: format!("--kube-api-url {url}"),
        problem: format!("not a URL: {e}"),
    })
}

/// The client config: kubeconfig file, else in-cluster, else `--kube-api-url`
/// alone; `--kube-api-url` overrides the server address in every case (and
/// is then where the address came from). Also says where the CA weft
/// trusts comes from, for messages (`None`: none given, the system's CAs).
async fn client_config(s: &KubeSettings) -> Result<(Config, Source, Option<String>), StoreError> {
    let (mut config, mut source) = if let Some(path) = &s.kubeconfig {
        let bad = |problem: String| StoreError::KubeConfig {
            from: format!("--kubeconfig-file {}", path.display()),
            problem,
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let c = Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
        (c, Source::Kubeconfig(path.clone()))
    } else if let Some(host) = &s.service_host {
        let port = s.service_port.clone().unwrap_or_else(|| "443".into());
        let from = format!(
            "in-cluster: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}, {}",
            s.service_account_dir.display()
        );
        let h = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let url: http::Uri =
            format!("https://{h}:{port}")
                .parse()
                .map_err(|e| StoreError::KubeConfig {
                    from: from.clone(),
                    problem: format!("not a valid server address: {e}"),
                })?;
        let mut c = Config::new(url);
        let ca = s.service_account_dir.join("ca.crt");
        c.root_cert = Some(read_pem_certs(&ca).map_err(|problem| StoreError::KubeConfig {
            from: from.clone(),
            problem: format!(
                "{problem}; is automountServiceAccountToken off for weft's pod? Or pass --kubeconfig-file"
            ),
        })?);
        let token = s.service_account_dir.join("token");
        if token.exists() {
            c.auth_info.token_file = Some(token.display().to_string());
        }
        if let Ok(ns) = std::fs::read_to_string(s.service_account_dir.join("namespace")) {
            c.default_namespace = ns.trim().to_string();
        }
        (
            c,
            Source::InCluster {
                host: host.clone(),
                port,
            },
        )
    } else if let Some(url) = &s.api_url {
        (Config::new(api_url(url)?), Source::ApiUrl)
    } else {
        return Err(StoreError::KubeConfig {
            from: "no --kubeconfig-file, no --kube-api-url, no KUBERNETES_SERVICE_HOST".into(),
            problem: "weft does not know where the API server is: pass --kubeconfig-file (recommended: it works before the pod network exists) or --kube-api-url, or run weft in a pod".into(),
        });
    };
    let ca_from = match (&source, &config.root_cert) {
        (_, None) => None,
        (Source::Kubeconfig(p), Some(_)) => Some(format!(
            "the certificate-authority of --kubeconfig-file {}",
            p.display()
        )),
        (_, Some(_)) => Some(s.service_account_dir.join("ca.crt").display().to_string()),
    };
    if let Some(url) = &s.api_url {
        config.cluster_url = api_url(url)?;
        // The address dialled is this one: an unreachable server is not the
        // in-cluster ClusterIP's deadlock, nor the kubeconfig's server.
        source = Source::ApiUrl;
    }
    config.connect_timeout = Some(s.connect_timeout);
    Ok((config, source, ca_from))
}

impl KubeStore {
    /// Builds the client and finds this node's name (from `NODE_NAME`, else by
    /// reading the pod `POD_NAMESPACE`/`POD_NAME`).
    ///
    /// # Errors
    /// [`StoreError::KubeConfig`] for an unusable config; the API errors of
    /// [`KubeStore::acquire`] when the pod lookup fails;
    /// [`StoreError::KubeNoNodeName`] when neither is set.
    pub async fn connect(s: KubeSettings) -> Result<KubeStore, StoreError> {
        let (config, source, ca_from) = client_config(&s).await?;
        let api = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let root_certs = config.root_cert.clone();
        let client = Client::try_from(config).map_err(|e| StoreError::KubeConfig {
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
                            .await);
                    }
                };
                match p.spec.and_then(|s| s.node_name) {
                    Some(n) => n,
                    None => {
                        return Err(StoreError::KubeRequest {
                            api: inner.api.clone(),
                            op: format!("get pods {ns}/{pod}"),
                            detail: "the pod is not scheduled to a node yet (no spec.nodeName); set NODE_NAME from the downward API instead".into(),
                        });
                    }
                }
            }
            (None, None) => return Err(StoreError::KubeNoNodeName),
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
            Err(e) => Err(self.inner.api_error("get", "nodes", n, e).await),
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

    /// The annotation keys of this store's prefix.
    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Where the server address came from.
    pub(crate) fn source(&self) -> &Source {
        &self.inner.source
    }

    /// Where the CA weft trusts comes from, for messages; `None`: the
    /// system's CAs, which the diagnosis does not load.
    pub(crate) fn ca_from(&self) -> Option<&str> {
        self.inner.ca_from.as_deref()
    }

    /// Dials the API server as weftd's diagnosis of a failed request does
    /// (TCP, then TLS), on a blocking thread.
    pub(crate) async fn dial(&self) -> Dial {
        let d = self.inner.diagnose_input();
        match tokio::task::spawn_blocking(move || dial(&d)).await {
            Ok(r) => r,
            Err(e) => Dial::Unreachable(StoreError::KubeUnreachable {
                api: self.inner.api.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// This node's object.
    ///
    /// # Errors
    /// As [`LeaseStore::acquire`]'s reading of it: no such node, refused, unreachable.
    pub async fn node(&self) -> Result<Node, StoreError> {
        self.inner.get_node().await
    }

    /// Whether the API server lets weft's credentials `verb` `resource`
    /// (as [`API_CALLS`] names them), asked with a SelfSubjectAccessReview;
    /// `pods` in `POD_NAMESPACE` when it is set.
    pub(crate) async fn review(&self, verb: &str, resource: &str) -> Review {
        use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
        let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut attrs = json!({"verb": verb, "resource": res, "group": ""});
        if !sub.is_empty() {
            attrs["subresource"] = json!(sub);
        }
        if res == "pods" {
            if let Some(ns) = &self.inner.pod_namespace {
                attrs["namespace"] = json!(ns);
            }
        }
        let review: SelfSubjectAccessReview = match serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        })) {
            Ok(r) => r,
            Err(e) => return Review::Unavailable(e.to_string()),
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.inner.client.clone());
        match api.create(&kube::api::PostParams::default(), &review).await {
            Ok(r) => match r.status {
                Some(st) => {
                    let reason = st.reason.or(st.evaluation_error).unwrap_or_default();
                    if st.allowed {
                        Review::Allowed { reason }
                    } else {
                        Review::Denied { reason }
                    }
                }
                None => Review::Unavailable("the review came back without a status".into()),
            },
            Err(kube::Error::Api(r)) => {
                Review::Unavailable(format!("{} ({} {})", r.message, r.code, r.reason))
            }
            Err(e) => Review::Unavailable(error_chain(&e)),
        }
    }
}

/// How a SelfSubjectAccessReview came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Review {
    /// Allowed, and the authorizer's reason (which binding), if it gave one.
    Allowed {
        reason: String,
    },
    Denied {
        reason: String,
    },
    /// The review itself was refused or failed: why.
    Unavailable(String),
}

/// The first IPv4 pod CIDR of a node (`spec.podCIDRs`, else `spec.podCIDR`),
/// as text, and parsed when it parses.
fn pod_cidr(node: &Node) -> Option<(String, Option<Ipv4Net>)> {
    let spec = node.spec.as_ref()?;
    let mut all: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
    if all.is_empty() {
        all.extend(spec.pod_cidr.clone());
    }
    all.retain(|c| !c.is_empty());
    let first = all
        .iter()
        .find(|c| !c.contains(':'))
        .or(all.first())?
        .clone();
    let parsed = first.parse::<Ipv4Net>().ok().map(|n| n.trunc());
    Some((first, parsed))
}

/// The IPv6 pod CIDR of a node (the IPv6 entry of `spec.podCIDRs`, else an
/// IPv6 `spec.podCIDR`), as text, and parsed when it parses.
fn pod_cidr6(node: &Node) -> Option<(String, Option<Ipv6Net>)> {
    let spec = node.spec.as_ref()?;
    let mut all: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
    if all.is_empty() {
        all.extend(spec.pod_cidr.clone());
    }
    let text = all.into_iter().find(|c| c.contains(':'))?;
    let parsed = text.parse::<Ipv6Net>().ok().map(|n| n.trunc());
    Some((text, parsed))
}

fn name_of(node: &Node) -> String {
    node.metadata
        .name
        .clone()
        .unwrap_or_else(|| "(unnamed)".into())
}

pub(crate) fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// A node object as a peer lease, as the watch reads every node:
/// `Ok(None)` when the node is not (yet) managed by weft or flannel, `Err`
/// with the reason when its data is malformed. An unusable IPv6 half is
/// left out (the IPv4 half kept). Pure; the fuzzer's entry point.
pub fn peer_from_node(annotation_prefix: &str, node: &Node) -> Result<Option<Lease>, String> {
    Ok(peer_of(&Keys::new(annotation_prefix), node)?.map(|(l, _)| l))
}

/// This node's lease from its own node object and `network`, as
/// [`KubeStore`]'s `acquire` makes it before writing the annotations: the
/// pod CIDR, the public IP from `public-ip-overwrite` if set, and the
/// VtepMAC already annotated; with `network6` (a dual-stack network) also
/// the IPv6 pod CIDR, `public-ipv6-overwrite` and the IPv6 VtepMAC already
/// annotated. Pure; the fuzzer's entry point.
///
/// # Errors
/// [`StoreError::KubeNoPodCidr`], [`StoreError::KubePodCidrOutside`],
/// [`StoreError::KubePodCidrUnusable`] or their IPv6 kin
/// ([`StoreError::KubeNoPodCidr6`], …), naming `node_name`.
pub fn own_lease_from_node(
    annotation_prefix: &str,
    node_name: &str,
    node: &Node,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    attrs: &LeaseAttrs,
) -> Result<Lease, StoreError> {
    own_lease(
        &Keys::new(annotation_prefix),
        node_name,
        node,
        network,
        network6,
        attrs,
    )
}

/// A node as a peer lease as its annotations hold it (see
/// [`peer_from_node`]), with why its IPv6 half was left out, if it was:
/// annotations that do not decode. What the lease means to this node is
/// [`crate::node::Admission`]'s to judge.
fn peer_of(keys: &Keys, node: &Node) -> Result<Option<(Lease, Option<String>)>, String> {
    if annotation(node, &keys.managed) != Some("true") {
        return Ok(None);
    }
    let Some((text, cidr)) = pod_cidr(node) else {
        return Ok(None);
    };
    if cidr.is_none() && pod_cidr6(node).is_some_and(|(t6, _)| t6 == text) {
        // Only an IPv6 pod CIDR: a node of an IPv6-only network.
        return peer_ipv6_only(keys, node).map(Some);
    }
    let subnet = cidr.ok_or_else(|| format!("pod CIDR {text:?} is not an IPv4 network"))?;
    if let Some(why) = crate::lease::node_subnet_problem(&subnet) {
        return Err(format!("pod CIDR {subnet}: {why}"));
    }
    let backend_type = annotation(node, &keys.backend_type)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_type))?;
    let data = annotation(node, &keys.backend_data)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_data))?;
    let backend_data: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        format!(
            "annotation {} is not JSON ({data:?}): {e}",
            keys.backend_data
        )
    })?;
    let ip = annotation(node, &keys.public_ip)
        .ok_or_else(|| format!("annotation {} is missing", keys.public_ip))?;
    let public_ip: Ipv4Addr = ip.parse().map_err(|_| {
        format!(
            "annotation {} = {ip:?} is not an IPv4 address",
            keys.public_ip
        )
    })?;
    let attrs = LeaseAttrs {
        public_ip,
        backend_type: backend_type.to_string(),
        backend_data,
        public_ipv6: None,
        backend_v6_data: None,
    };
    let lease = Lease {
        subnet: Some(subnet),
        ipv6_subnet: None,
        attrs,
        expiration: None,
    };
    peer_ipv6(keys, node, lease).map(Some)
}

/// A peer of an IPv6-only network from its node object: its IPv6 pod CIDR,
/// `public-ipv6` and `backend-v6-data` (no `public-ip` or `backend-data`,
/// which flannel does not write there), or why they are unusable.
fn peer_ipv6_only(keys: &Keys, node: &Node) -> Result<(Lease, Option<String>), String> {
    let backend_type = annotation(node, &keys.backend_type)
        .ok_or_else(|| format!("annotation {} is missing", keys.backend_type))?;
    let lease = Lease {
        subnet: None,
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend_type: backend_type.to_string(),
            backend_data: serde_json::Value::Null,
            public_ipv6: None,
            backend_v6_data: None,
        },
        expiration: None,
    };
    peer_ipv6(keys, node, lease)
}

/// The IPv6 half of a peer from its node object: none when it announces no
/// IPv6 VTEP (an IPv4-only peer), else its IPv6 pod CIDR, `public-ipv6` and
/// `backend-v6-data`, or why they are unusable (the IPv4 half then kept;
/// an error when `lease` has no IPv4 half to keep).
fn peer_ipv6(keys: &Keys, node: &Node, lease: Lease) -> Result<(Lease, Option<String>), String> {
    let present = |k: &str| {
        annotation(node, k)
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "null")
    };
    let unusable = |lease: Lease, why: String| match lease.subnet {
        Some(_) => Ok((lease, Some(why))),
        None => Err(why),
    };
    let data6 = present(&keys.backend_v6_data);
    let ip6 = present(&keys.public_ipv6);
    if data6.is_none() && ip6.is_none() {
        if lease.subnet.is_none() {
            return Err(format!(
                "it has only an IPv6 pod CIDR but announces no IPv6 VTEP (annotations {} and {} are missing)",
                keys.public_ipv6, keys.backend_v6_data
            ));
        }
        return Ok((lease, None));
    }
    let Some((text, cidr6)) = pod_cidr6(node) else {
        return unusable(
            lease,
            "it announces an IPv6 VTEP but has no IPv6 pod CIDR".into(),
        );
    };
    let Some(subnet6) = cidr6 else {
        return unusable(
            lease,
            format!("IPv6 pod CIDR {text:?} is not an IPv6 network"),
        );
    };
    let public_ipv6 = match ip6.map(str::parse::<Ipv6Addr>) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return unusable(
                lease,
                format!(
                    "annotation {} = {:?} is not an IPv6 address",
                    keys.public_ipv6,
                    ip6.unwrap_or_default()
                ),
            );
        }
    };
    let backend_v6_data = match data6.map(serde_json::from_str::<serde_json::Value>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            return unusable(
                lease,
                format!(
                    "annotation {} is not JSON ({:?}): {e}",
                    keys.backend_v6_data,
                    data6.unwrap_or_default()
                ),
            );
        }
    };
    let mut l = lease;
    l.ipv6_subnet = Some(subnet6);
    l.attrs.public_ipv6 = public_ipv6;
    l.attrs.backend_v6_data = backend_v6_data;
    Ok((l, None))
}

/// What `acquire` makes of this node's object (see [`own_lease_from_node`]).
pub(crate) fn own_lease(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network: Option<Ipv4Net>,
    network6: Option<Ipv6Net>,
    attrs: &LeaseAttrs,
) -> Result<Lease, StoreError> {
    let mut attrs = attrs.clone();
    let subnet = match network {
        Some(network) => Some(own_subnet4(keys, node_name, node, network, &mut attrs)?),
        None => {
            // IPv6-only: no IPv4 VTEP, as flannel announces none.
            attrs.public_ip = Ipv4Addr::UNSPECIFIED;
            attrs.backend_data = serde_json::Value::Null;
            None
        }
    };
    let ipv6_subnet = match network6 {
        None => {
            // IPv4 only: no IPv6 VTEP announced, whatever the request held.
            attrs.public_ipv6 = None;
            attrs.backend_v6_data = None;
            None
        }
        Some(n6) => {
            let s6 = own_subnet6(keys, node_name, node, n6, &mut attrs)?;
            Some(s6)
        }
    };
    Ok(Lease {
        subnet,
        ipv6_subnet,
        attrs,
        expiration: None,
    })
}

/// The IPv4 half of this node's lease: its IPv4 pod CIDR inside `network`,
/// and `attrs` with the public IP from `public-ip-overwrite` if set and the
/// VtepMAC already annotated.
fn own_subnet4(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network: Ipv4Net,
    attrs: &mut LeaseAttrs,
) -> Result<Ipv4Net, StoreError> {
    let Some((text, cidr)) = pod_cidr(node) else {
        return Err(StoreError::KubeNoPodCidr {
            node: node_name.to_string(),
            network,
        });
    };
    let subnet = match cidr {
        Some(c) if network.contains(&c) => c,
        _ => {
            return Err(StoreError::KubePodCidrOutside {
                node: node_name.to_string(),
                cidr: text,
                network,
            });
        }
    };
    if let Some(why) = crate::lease::node_subnet_problem(&subnet) {
        return Err(StoreError::KubePodCidrUnusable {
            node: node_name.to_string(),
            cidr: subnet,
            why,
        });
    }
    if let Some(ip) = annotation(node, &keys.public_ip_overwrite) {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) => {
                tracing::info!(
                    "node {}: public IP {ip} from annotation {}",
                    node_name,
                    keys.public_ip_overwrite
                );
                attrs.public_ip = ip;
            }
            Err(_) => tracing::warn!(
                "node {}: ignoring annotation {} = {ip:?}: not an IPv4 address",
                node_name,
                keys.public_ip_overwrite
            ),
        }
    }
    // Keep the VtepMAC this node already announced (a restart must not change it).
    let annotated_mac = annotation(node, &keys.backend_data)
        .and_then(|d| serde_json::from_str::<VxlanData>(d).ok())
        .map(|d| d.vtep_mac);
    let mut data: serde_json::Value = attrs.backend_data.clone();
    if let (Some(mac), Some(obj)) = (annotated_mac, data.as_object_mut()) {
        obj.insert("VtepMAC".into(), json!(mac.to_string()));
    }
    attrs.backend_data = data;
    Ok(subnet)
}

/// The IPv6 half of this node's lease: its IPv6 pod CIDR inside `network6`,
/// and `attrs` with the public IPv6 address from `public-ipv6-overwrite` if
/// set and the IPv6 VtepMAC already annotated.
fn own_subnet6(
    keys: &Keys,
    node_name: &str,
    node: &Node,
    network6: Ipv6Net,
    attrs: &mut LeaseAttrs,
) -> Result<Ipv6Net, StoreError> {
    let Some((text, cidr6)) = pod_cidr6(node) else {
        return Err(StoreError::KubeNoPodCidr6 {
            node: node_name.to_string(),
            network: network6,
        });
    };
    let subnet6 = match cidr6 {
        Some(c) if network6.contains(&c) => c,
        _ => {
            return Err(StoreError::KubePodCidr6Outside {
                node: node_name.to_string(),
                cidr: text,
                network: network6,
            });
        }
    };
    if let Some(why) = crate::lease::node_subnet6_problem(&subnet6) {
        return Err(StoreError::KubePodCidr6Unusable {
            node: node_name.to_string(),
            cidr: subnet6,
            why,
        });
    }
    if let Some(ip) = annotation(node, &keys.public_ipv6_overwrite).filter(|v| !v.is_empty()) {
        match ip.parse::<Ipv6Addr>() {
            Ok(ip) => {
                tracing::info!(
                    "node {node_name}: public IPv6 {ip} from annotation {}",
                    keys.public_ipv6_overwrite
                );
                attrs.public_ipv6 = Some(ip);
            }
            Err(_) => tracing::warn!(
                "node {node_name}: ignoring annotation {} = {ip:?}: not an IPv6 address",
                keys.public_ipv6_overwrite
            ),
        }
    }
    let annotated_mac = annotation(node, &keys.backend_v6_data)
        .and_then(|d| serde_json::from_str::<VxlanData>(d).ok())
        .map(|d| d.vtep_mac);
    if let (Some(mac), Some(obj)) = (
        annotated_mac,
        attrs
            .backend_v6_data
            .as_mut()
            .and_then(|d| d.as_object_mut()),
    ) {
        obj.insert("VtepMAC".into(), json!(mac.to_string()));
    }
    Ok(subnet6)
}

impl Inner {
    fn diagnose_input(&self) -> DiagnoseInput {
        DiagnoseInput {
            api: self.api.clone(),
            source: self.source.clone(),
            root_certs: self.root_certs.clone(),
            timeout: self.connect_timeout,
        }
    }

    /// A node as a peer lease (see [`peer_from_node`]).
    fn peer(&self, node: &Node) -> Result<Option<(Lease, Option<String>)>, String> {
        peer_of(&self.keys, node)
    }

    /// `peer`, logging malformed nodes (by name) and dropping them, and
    /// logging once per node and reason an IPv6 half left out.
    fn peer_logged(&self, node: &Node) -> Option<Lease> {
        match self.peer(node) {
            Ok(None) => None,
            Ok(Some((l, None))) => Some(l),
            Ok(Some((l, Some(why)))) => {
                let name = name_of(node);
                let first = self
                    .warned6
                    .lock()
                    .map(|mut w| w.insert((name.clone(), why.clone())))
                    .unwrap_or(true);
                if first {
                    tracing::warn!(
                        "node {name}: routing only its IPv4 pod CIDR {}: its IPv6 half is unusable: {why}",
                        l.id()
                    );
                }
                Some(l)
            }
            Err(why) => {
                tracing::warn!("skipping node {}: {why}", name_of(node));
                None
            }
        }
    }

    /// Maps a client error to a [`StoreError`] that names what was refused or
    /// why the server cannot be reached.
    async fn api_error(
        &self,
        verb: &str,
        resource: &str,
        name: &str,
        e: kube::Error,
    ) -> StoreError {
        let op = if name.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource} {name}")
        };
        match e {
            kube::Error::Api(r) if r.code == 403 => StoreError::KubeForbidden {
                api: self.api.clone(),
                verb: verb.into(),
                resource: resource.into(),
                detail: r.message,
            },
            kube::Error::Api(r) if r.code == 401 => StoreError::KubeRequest {
                api: self.api.clone(),
                op,
                detail: format!(
                    "unauthorized ({}): the credentials were rejected; check the token or client certificate of the kubeconfig / ServiceAccount",
                    r.message
                ),
            },
            kube::Error::Api(r) => StoreError::KubeRequest {
                api: self.api.clone(),
                op,
                detail: format!("{} ({} {})", r.message, r.code, r.reason),
            },
            other => {
                let detail = error_chain(&other);
                let this = self.diagnose_input();
                match tokio::task::spawn_blocking(move || diagnose(&this, &detail)).await {
                    Ok(e) => e,
                    Err(j) => StoreError::KubeRequest {
                        api: self.api.clone(),
                        op,
                        detail: j.to_string(),
                    },
                }
            }
        }
    }

    async fn get_node(&self) -> Result<Node, StoreError> {
        match self.nodes.get(&self.node_name).await {
            Ok(n) => Ok(n),
            Err(kube::Error::Api(r)) if r.code == 404 => Err(StoreError::KubeRequest {
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

    async fn patch_status(&self, patch: serde_json::Value) -> Result<Node, StoreError> {
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

struct DiagnoseInput {
    api: String,
    source: Source,
    root_certs: Option<Vec<Vec<u8>>>,
    timeout: Duration,
}

/// What dialling the API server found, short of an HTTP request: what
/// [`diagnose`] words as weftd's errors and `weftd doctor` as its lines.
#[derive(Debug)]
pub(crate) enum Dial {
    /// No TCP connection: [`StoreError::KubeDeadlock`] for the in-cluster
    /// address, [`StoreError::KubeUnreachable`] otherwise.
    Unreachable(StoreError),
    /// Connected to `addr`, dialled as `host`.
    Connected {
        addr: SocketAddr,
        host: String,
        /// `None` for `http://`; the certificate the handshake presented, or
        /// why it ended before one.
        tls: Option<Result<SeenCert, String>>,
    },
}

/// The server address as a URI's host (brackets off) and port.
fn host_port(uri: &http::Uri) -> (bool, String, u16) {
    let https = uri.scheme_str() != Some("http");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    (https, host, port)
}

/// TCP to the API server (the in-cluster ClusterIP's silence is the
/// deadlock), then for https a TLS handshake that records the certificate.
fn dial(d: &DiagnoseInput) -> Dial {
    let uri: http::Uri = match d.api.parse() {
        Ok(u) => u,
        Err(e) => {
            return Dial::Unreachable(StoreError::KubeUnreachable {
                api: d.api.clone(),
                detail: format!("not a URL: {e}"),
            });
        }
    };
    let (https, host, port) = host_port(&uri);
    let unreachable = |why: String| match &d.source {
        Source::InCluster { host: h, port: p } => StoreError::KubeDeadlock {
            api: d.api.clone(),
            host: h.clone(),
            port: p.clone(),
            detail: why,
        },
        Source::Kubeconfig(p) => StoreError::KubeUnreachable {
            api: d.api.clone(),
            detail: format!(
                "{why} (the address is the server of --kubeconfig-file {})",
                p.display()
            ),
        },
        Source::ApiUrl => StoreError::KubeUnreachable {
            api: d.api.clone(),
            detail: why,
        },
    };
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Dial::Unreachable(unreachable(format!("cannot resolve {host}: {e}"))),
    };
    let (tcp, addr) = match dial::connect_first(&host, &addrs, d.timeout) {
        Ok(c) => c,
        Err(why) => return Dial::Unreachable(unreachable(why)),
    };
    let tls = https.then(|| tls_probe(d, &host, tcp));
    Dial::Connected { addr, host, tls }
}

/// Why the API server did not answer: TCP (with the deadlock explained for the
/// in-cluster ClusterIP), then TLS (naming the certificate's SANs).
fn diagnose(d: &DiagnoseInput, detail: &str) -> StoreError {
    match dial(d) {
        Dial::Unreachable(e) => e,
        Dial::Connected {
            addr,
            host,
            tls: Some(Ok(cert)),
        } if cert.refused.is_some() => tls_error(&d.api, &host, addr, &cert),
        Dial::Connected { .. } => StoreError::KubeUnreachable {
            api: d.api.clone(),
            detail: detail.to_string(),
        },
    }
}

/// A TLS handshake over `tcp` that records the certificate the server
/// presents and the verdict on it, with the CA weft trusts.
fn tls_probe(d: &DiagnoseInput, host: &str, tcp: TcpStream) -> Result<SeenCert, String> {
    let mut roots = RootCertStore::empty();
    for c in d.root_certs.iter().flatten() {
        let _ = roots.add(CertificateDer::from(c.clone()));
    }
    let verifier = dial::verifier(roots).map_err(|e| format!("no usable CA: {e}"))?;
    let hs = dial::handshake(tcp, d.timeout, host, verifier, None, false)
        .map_err(|e| format!("the handshake could not start: {e:?}"))?;
    match SeenCert::of(&hs) {
        Some(c) => Ok(c),
        None => Err(match hs.result {
            Err(e) => format!("the handshake ended before the server presented a certificate: {e}"),
            Ok(()) => "the server presented no certificate".into(),
        }),
    }
}

/// weftd's error for a certificate the verifier refused: what failed, the
/// certificate's names and, when the host is not among them, the fix.
fn tls_error(api: &str, host: &str, addr: SocketAddr, cert: &SeenCert) -> StoreError {
    let SeenCert {
        subject,
        names,
        issuer,
        refused,
    } = cert;
    let problem = match refused {
        Some((CertProblem::Untrusted, _)) => format!(
            "the server certificate (issuer {issuer}) is not signed by the CA weft trusts (the kubeconfig's certificate-authority-data, or the ServiceAccount's ca.crt)"
        ),
        Some((CertProblem::WrongName, _)) => format!("x509: certificate is not valid for {host}"),
        Some((CertProblem::Expired, _)) => {
            "the server certificate has expired (kubeadm certs renew all renews a kubeadm cluster's)".to_string()
        }
        Some((CertProblem::Other, e)) => e.clone(),
        None => "the server certificate was accepted".to_string(),
    };
    let hint = if cert.names_host(host) {
        String::new()
    } else {
        format!(
            ", not {host}: dial the API server by one of those names (in --kube-api-url, the kubeconfig's server, or KUBERNETES_SERVICE_HOST), or reissue its certificate with {host} in its SANs (kubeadm: apiServer.certSANs)"
        )
    };
    StoreError::KubeTls {
        api: api.to_string(),
        addr: addr.to_string(),
        detail: format!(
            "{problem}. The server's certificate (subject {subject}) carries the names [{}]{hint}",
            names.join(", ")
        ),
    }
}

/// The annotations this node should carry for `attrs`: with an IPv6 VTEP
/// (PublicIPv6 and BackendV6Data) also `backend-v6-data` and `public-ipv6`.
/// On an IPv6-only network (BackendData `null`) there is no IPv4 VTEP, so
/// `backend-data` and `public-ip` are not written, as flannel leaves them.
pub(crate) fn own_annotations(keys: &Keys, attrs: &LeaseAttrs) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (keys.backend_type.clone(), attrs.backend_type.clone()),
        (keys.managed.clone(), "true".to_string()),
    ]);
    if !attrs.backend_data.is_null() {
        a.insert(keys.backend_data.clone(), attrs.backend_data.to_string());
        a.insert(keys.public_ip.clone(), attrs.public_ip.to_string());
    }
    if let (Some(ip6), Some(d6)) = (attrs.public_ipv6, &attrs.backend_v6_data) {
        a.insert(keys.backend_v6_data.clone(), d6.to_string());
        a.insert(keys.public_ipv6.clone(), ip6.to_string());
    }
    a
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
        tokio::spawn(async move { watch_nodes(me, tx).await });
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

/// Whether a watch error means the API server's resourceVersions went back
/// (an etcd restore): the watch must be rebuilt from a fresh list.
fn too_large(e: &watcher::Error) -> bool {
    let r = match e {
        watcher::Error::WatchError(r) => r,
        watcher::Error::WatchStartFailed(kube::Error::Api(r))
        | watcher::Error::WatchFailed(kube::Error::Api(r))
        | watcher::Error::InitialListFailed(kube::Error::Api(r)) => r,
        _ => return false,
    };
    r.message.contains("Too large resource version")
        || r.reason == "ResourceVersionTooLarge"
        || (r.code == 504 && r.reason == "Timeout")
}

/// The node watch: one kube-rs watcher at a time, rebuilt (fresh list, hence a
/// fresh snapshot) on "too large", on repeated errors, when its stream ends, and
/// every `resync`.
async fn watch_nodes(me: Arc<Inner>, tx: mpsc::Sender<WatchEvent>) {
    // Peers by node name.
    let mut current: BTreeMap<String, Lease> = BTreeMap::new();
    let mut errors = 0u32;
    loop {
        let cfg = watcher::Config::default();
        let mut stream = watcher(me.nodes.clone(), cfg).boxed();
        let resync = tokio::time::sleep(me.resync);
        tokio::pin!(resync);
        let mut buffer: Option<BTreeMap<String, Lease>> = None;
        let rebuild_after = loop {
            let ev = tokio::select! {
                _ = &mut resync => {
                    tracing::debug!("periodic full resync of the nodes");
                    break Duration::ZERO;
                }
                _ = tx.closed() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else {
                break Duration::from_millis(200);
            };
            let sent = match ev {
                Ok(ev) => {
                    errors = 0;
                    me.health.set_outage(false);
                    apply(&me, ev, &mut buffer, &mut current)
                }
                Err(e) => {
                    errors += 1;
                    me.health.set_outage(true);
                    if too_large(&e) {
                        tracing::warn!(
                            "Kubernetes API {}: {e}: the API server's resourceVersions went back (an etcd restore?); listing the nodes afresh",
                            me.api
                        );
                        break Duration::from_millis(200);
                    }
                    let wait = Duration::from_millis(200 * u64::from(errors.min(25)));
                    if errors == 1 || errors % 20 == 0 {
                        tracing::warn!(
                            "Kubernetes API {}: watching nodes: {} (retrying)",
                            me.api,
                            error_chain(&e)
                        );
                    }
                    if errors >= 10 {
                        // Something keeps failing on this watch: start over with a list.
                        break wait;
                    }
                    tokio::time::sleep(wait).await;
                    vec![]
                }
            };
            for ev in sent {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        };
        drop(stream);
        tokio::time::sleep(rebuild_after).await;
    }
}

/// Applies one watcher event to the peer table; returns what to tell the daemon.
fn apply(
    me: &Inner,
    ev: watcher::Event<Node>,
    buffer: &mut Option<BTreeMap<String, Lease>>,
    current: &mut BTreeMap<String, Lease>,
) -> Vec<WatchEvent> {
    match ev {
        watcher::Event::Init => {
            *buffer = Some(BTreeMap::new());
            vec![]
        }
        watcher::Event::InitApply(n) => {
            let b = buffer.get_or_insert_with(BTreeMap::new);
            if let Some(l) = me.peer_logged(&n) {
                b.insert(name_of(&n), l);
            }
            vec![]
        }
        watcher::Event::InitDone => {
            *current = buffer.take().unwrap_or_default();
            vec![WatchEvent::Snapshot(current.values().cloned().collect())]
        }
        watcher::Event::Apply(n) => {
            let name = name_of(&n);
            match me.peer_logged(&n) {
                Some(l) => {
                    let mut out = vec![];
                    let moved = match current.get(&name) {
                        Some(old) if *old == l => return vec![],
                        Some(old) if old.id() != l.id() => Some(old.id()),
                        _ => None,
                    };
                    current.insert(name, l.clone());
                    // The new lease is routed before the old one goes.
                    out.push(WatchEvent::Upsert(l));
                    out.extend(moved.map(WatchEvent::Remove));
                    out
                }
                None => current
                    .remove(&name)
                    .map(|old| vec![WatchEvent::Remove(old.id())])
                    .unwrap_or_default(),
            }
        }
        watcher::Event::Delete(n) => current
            .remove(&name_of(&n))
            .map(|old| vec![WatchEvent::Remove(old.id())])
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_cidrs_prefer_the_ipv4_entry_of_podcidrs() {
        let n = node(json!({"metadata": {"name": "a"}, "spec": {
            "podCIDR": "fd00::/64", "podCIDRs": ["fd00::/64", "10.244.1.0/24"]}}));
        assert_eq!(
            pod_cidr(&n).unwrap().1,
            Some("10.244.1.0/24".parse().unwrap())
        );
        let n = node(json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.244.2.0/24"}}));
        assert_eq!(
            pod_cidr(&n).unwrap().1,
            Some("10.244.2.0/24".parse().unwrap())
        );
        let n = node(json!({"metadata": {"name": "a"}, "spec": {}}));
        assert!(pod_cidr(&n).is_none());
    }

    #[test]
    fn annotation_keys_follow_the_prefix() {
        let k = Keys::new("flannel.alpha.coreos.com");
        assert_eq!(k.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            k.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        let attrs = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 1),
            crate::types::Vni::new(1).unwrap(),
            "62:fc:03:83:1b:2b".parse().unwrap(),
        );
        let a = own_annotations(&Keys::new("example.com/"), &attrs);
        assert_eq!(
            a["example.com/backend-data"],
            r#"{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}"#
        );
        assert_eq!(a["example.com/kube-subnet-manager"], "true");
        assert_eq!(a["example.com/public-ip"], "192.0.2.1");
    }

    fn dual_attrs() -> LeaseAttrs {
        let vni = crate::types::Vni::new(1).unwrap();
        LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 0, 2, 1),
            vni,
            "62:fc:03:83:1b:2b".parse().unwrap(),
        )
        .with_ipv6(
            "fd00::1".parse().unwrap(),
            vni,
            "8a:2e:0c:11:3d:4f".parse().unwrap(),
        )
    }

    #[test]
    fn own_lease_takes_both_pod_cidrs_and_the_ipv6_overwrite() {
        let keys = Keys::new(DEFAULT_ANNOTATION_PREFIX);
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let net6: Ipv6Net = "fc00::/48".parse().unwrap();
        let n = node(json!({"metadata": {"name": "a", "annotations": {
            "flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8::7",
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}"#,
        }}, "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fc00:0:0:1::/64"]}}));
        let l = own_lease(&keys, "a", &n, Some(net), Some(net6), &dual_attrs()).unwrap();
        assert_eq!(l.id().to_string(), "10.244.1.0/24");
        assert_eq!(l.ipv6_subnet, Some("fc00:0:0:1::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(
            l.attrs
                .vxlan_v6_data()
                .unwrap()
                .unwrap()
                .vtep_mac
                .to_string(),
            "02:00:00:00:00:66"
        );
        let a = own_annotations(&keys, &l.attrs);
        assert_eq!(
            a["flannel.alpha.coreos.com/backend-v6-data"],
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}"#
        );
        assert_eq!(a["flannel.alpha.coreos.com/public-ipv6"], "2001:db8::7");
        // IPv4 only: no IPv6 subnet and no IPv6 annotations, whatever the request held.
        let l4 = own_lease(&keys, "a", &n, Some(net), None, &dual_attrs()).unwrap();
        assert_eq!((l4.ipv6_subnet, l4.attrs.public_ipv6), (None, None));
        let a = own_annotations(&keys, &l4.attrs);
        assert!(a.keys().all(|k| !k.contains("v6")), "{a:?}");
        // The refusals name the node, the CIDR and the fix.
        let only4 =
            node(json!({"metadata": {"name": "a"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}));
        let m = own_lease(&keys, "a", &only4, Some(net), Some(net6), &dual_attrs())
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("node a has no IPv6 pod CIDR") && m.contains("EnableIPv6"),
            "{m}"
        );
        for (cidr, want) in [
            ("fd99::/64", "lies outside the IPv6Network fc00::/48"),
            ("fc00:0:0:1::zz/64", "lies outside"),
            ("fc00::/128", "--node-cidr-mask-size-ipv6"),
        ] {
            let n = node(
                json!({"metadata": {"name": "b"}, "spec": {"podCIDRs": ["10.244.1.0/24", cidr]}}),
            );
            let m = own_lease(&keys, "b", &n, Some(net), Some(net6), &dual_attrs())
                .unwrap_err()
                .to_string();
            assert!(m.contains("node b") && m.contains(want), "{cidr}: {m}");
        }
    }

    #[test]
    fn peers_with_ipv6_annotations_and_hostile_ones() {
        let keys = Keys::new(DEFAULT_ANNOTATION_PREFIX);
        let net6: Ipv6Net = "fc00::/48".parse().unwrap();
        let peer = |cidrs: serde_json::Value, extra: serde_json::Value| {
            let mut ann = json!({
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": r#"{"VNI":1,"VtepMAC":"62:fc:03:83:1b:2b"}"#,
                "flannel.alpha.coreos.com/public-ip": "192.0.2.2",
            });
            for (k, v) in extra.as_object().unwrap() {
                ann[k] = v.clone();
            }
            node(
                json!({"metadata": {"name": "p", "annotations": ann}, "spec": {"podCIDRs": cidrs}}),
            )
        };
        let v6 = json!({
            "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#,
            "flannel.alpha.coreos.com/public-ipv6": "fd00::2",
        });
        let (l, why) = peer_of(
            &keys,
            &peer(json!(["10.244.2.0/24", "fc00:0:0:2::/64"]), v6.clone()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(why, None);
        assert_eq!(l.ipv6_subnet, Some("fc00:0:0:2::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            l.attrs
                .vxlan_v6_data()
                .unwrap()
                .unwrap()
                .vtep_mac
                .to_string(),
            "8a:2e:0c:11:3d:4f"
        );
        // No IPv6 annotations: an IPv4-only peer, nothing to report.
        let (l, why) = peer_of(
            &keys,
            &peer(json!(["10.244.2.0/24", "fc00:0:0:2::/64"]), json!({})),
        )
        .unwrap()
        .unwrap();
        assert_eq!((l.ipv6_subnet, why), (None, None));
        // Hostile IPv6 data: the IPv4 half stays, the reason names the
        // problem: the codec's (annotations that do not decode) or the
        // reconciler's (crate::node::Admission, for the lease as annotated).
        let admission = crate::node::Admission {
            network: "10.244.0.0/16".parse().ok(),
            network6: Some(net6),
            backend: crate::backend::Backend::Vxlan(crate::backend::Vxlan::flannel_default()),
        };
        let hostile = [
            (
                json!(["10.244.2.0/24", "fd99::/64"]),
                v6.clone(),
                "outside the IPv6Network",
            ),
            (json!(["10.244.2.0/24"]), v6.clone(), "no IPv6 pod CIDR"),
            (
                json!(["10.244.2.0/24", "fc00::zz/64"]),
                v6.clone(),
                "not an IPv6 network",
            ),
            (
                json!(["10.244.2.0/24", "fc00::/128"]),
                v6.clone(),
                "/127 or /128",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "192.0.2.9",
                       "flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#}),
                "not an IPv6 address",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "fd00::2",
                       "flannel.alpha.coreos.com/backend-v6-data": "{not json"}),
                "is not JSON",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/public-ipv6": "fd00::2",
                       "flannel.alpha.coreos.com/backend-v6-data": r#"{"VtepMAC":"nope"}"#}),
                "BackendV6Data",
            ),
            (
                json!(["10.244.2.0/24", "fc00:0:0:2::/64"]),
                json!({"flannel.alpha.coreos.com/backend-v6-data": r#"{"VNI":1,"VtepMAC":"8a:2e:0c:11:3d:4f"}"#}),
                "no PublicIPv6",
            ),
        ];
        for (cidrs, extra, want) in hostile {
            let (l, why) = peer_of(&keys, &peer(cidrs.clone(), extra))
                .unwrap()
                .unwrap();
            let (t, skipped) = admission.table([&l], None);
            let why = why
                .or_else(|| skipped.first().map(|s| s.why.clone()))
                .unwrap_or_default();
            assert!(why.contains(want), "{cidrs}: {why}");
            assert_eq!(l.id().to_string().split('&').next(), Some("10.244.2.0/24"));
            assert_eq!((t.len(), t.peers6().count()), (1, 0), "{cidrs}: {why}");
            assert!(t.lookup([10, 244, 2, 9].into()).is_some());
        }
    }

    #[test]
    fn api_calls_name_rbac_resources() {
        for (verb, res) in API_CALLS {
            assert!(["get", "list", "watch", "patch"].contains(verb), "{verb}");
            assert!(["nodes", "nodes/status", "pods"].contains(res), "{res}");
        }
    }
}
