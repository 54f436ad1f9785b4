//! What `weftd doctor` asks of the Kubernetes store, as plain results it
//! judges without I/O: where weftd dials the API server and what a dial
//! finds ([`server`]: weftd's own diagnosis of a server that does not
//! answer, TCP then TLS), whether weft's credentials may make each call
//! RBAC must allow ([`review`], a SelfSubjectAccessReview), and this node's
//! object as weftd's acquire reads it ([`own_node`]: the lease, and each
//! annotation beside what weftd would write). What they mean, and the fix,
//! are the doctor's.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;

use super::client::dial;
pub(crate) use super::client::{Dial, Source};
use super::codec::{Keys, annotation, own_annotations, own_lease};
use super::{KubeError, KubeStore};
use crate::config::NetConfig;
use crate::lease::{Lease, LeaseAttrs};
use crate::store::dial::error_chain;
pub(crate) use crate::store::dial::{CertProblem, SeenCert};

/// Where weftd dials the API server, and what dialling it found.
#[derive(Debug)]
pub(crate) struct Server {
    /// The API server's URL.
    pub(crate) api: String,
    /// Where the address came from.
    pub(crate) source: Source,
    /// Where the CA weft trusts comes from, for messages; `None`: the
    /// system's CAs, which the diagnosis does not load.
    pub(crate) ca_from: Option<String>,
    pub(crate) dial: Dial,
}

/// Dials the API server as weftd's diagnosis of a failed request does
/// (TCP, then TLS), on a blocking thread.
pub(crate) async fn server(store: &KubeStore) -> Server {
    let me = &store.inner;
    let d = me.diagnose_input();
    let dial = match tokio::task::spawn_blocking(move || dial(&d)).await {
        Ok(r) => r,
        Err(e) => Dial::Unreachable(KubeError::Unreachable {
            api: me.api.clone(),
            detail: e.to_string(),
        }),
    };
    Server {
        api: me.api.clone(),
        source: me.source.clone(),
        ca_from: me.ca_from.clone(),
        dial,
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

/// Whether the API server lets weft's credentials `verb` `resource`
/// (as [`API_CALLS`](super::API_CALLS) names them), asked with a
/// SelfSubjectAccessReview; `pods` in `POD_NAMESPACE` when it is set.
pub(crate) async fn review(store: &KubeStore, verb: &str, resource: &str) -> Review {
    let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let mut attrs = json!({"verb": verb, "resource": res, "group": ""});
    if !sub.is_empty() {
        attrs["subresource"] = json!(sub);
    }
    if res == "pods" {
        if let Some(ns) = &store.inner.pod_namespace {
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
    let api: Api<SelfSubjectAccessReview> = Api::all(store.inner.client.clone());
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

/// One of this node's annotations: its key, its value on the node, and the
/// value weftd would write (`None`: weftd writes none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Annotation {
    pub(crate) key: String,
    pub(crate) have: Option<String>,
    pub(crate) want: Option<String>,
}

/// This node's object as weftd's acquire reads it: the lease it would take,
/// and the node's flannel annotations beside those weftd would write.
#[derive(Debug, Clone)]
pub(crate) struct OwnNode {
    pub(crate) lease: Lease,
    pub(crate) managed: Annotation,
    pub(crate) backend_type: Annotation,
    pub(crate) backend_data: Annotation,
    pub(crate) public_ip: Annotation,
    pub(crate) public_ip_overwrite: Annotation,
    pub(crate) backend_v6_data: Annotation,
    pub(crate) public_ipv6: Annotation,
    pub(crate) public_ipv6_overwrite: Annotation,
}

/// What weftd's acquire makes of this node's object `node` (named
/// `node_name`, its annotations under `annotation_prefix`) in `config`'s
/// network, announcing `attrs`.
///
/// # Errors
/// As [`own_lease_from_node`](super::own_lease_from_node): no pod CIDR, one
/// outside the Network, or one that cannot be a node subnet.
pub(crate) fn own_node(
    annotation_prefix: &str,
    node_name: &str,
    node: &Node,
    config: &NetConfig,
    attrs: &LeaseAttrs,
) -> Result<OwnNode, KubeError> {
    let keys = Keys::new(annotation_prefix);
    let lease = own_lease(
        &keys,
        node_name,
        node,
        config.network(),
        config.network6(),
        attrs,
    )?;
    let want = own_annotations(&keys, &lease.attrs);
    let a = |key: &String| Annotation {
        key: key.clone(),
        have: annotation(node, key).map(str::to_string),
        want: want.get(key).cloned(),
    };
    Ok(OwnNode {
        managed: a(&keys.managed),
        backend_type: a(&keys.backend_type),
        backend_data: a(&keys.backend_data),
        public_ip: a(&keys.public_ip),
        public_ip_overwrite: a(&keys.public_ip_overwrite),
        backend_v6_data: a(&keys.backend_v6_data),
        public_ipv6: a(&keys.public_ipv6),
        public_ipv6_overwrite: a(&keys.public_ipv6_overwrite),
        lease,
    })
}
