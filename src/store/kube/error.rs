//! [`KubeError`]: what goes wrong between weft and the Kubernetes API
//! server or in this node's object, each naming the API server, the address
//! dialled, the node, the CIDR or the verb refused, and the fix.

use ipnet::{Ipv4Net, Ipv6Net};

/// Failures of the Kubernetes store; a [`StoreError::Kube`](crate::store::StoreError::Kube).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes client configuration ({from}): {problem}")]
    Config { from: String, problem: String },
    #[error(
        "Kubernetes API server {api}: unreachable: {detail}; check the server address (--kube-api-url, or the kubeconfig's clusters[].cluster.server) and that the API server runs there"
    )]
    Unreachable { api: String, detail: String },
    #[error(
        "Kubernetes API server {api} (in-cluster config: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}) does not answer: {detail}. In a pod that address is normally the `kubernetes` Service's ClusterIP, which only works once kube-proxy runs, and kube-proxy waits for the pod network that weft provides: this is the CNI-before-kube-proxy deadlock. Fix: reach the API server directly, either with --kubeconfig-file (a kubeconfig with the real server address and CA, mounted into the pod as a file) or by setting KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in the DaemonSet to the API server's real host and port (e.g. 10.0.0.100 and 6443)"
    )]
    Deadlock {
        api: String,
        host: String,
        port: String,
        detail: String,
    },
    #[error("Kubernetes API server {api}: TLS failed when dialling {addr}: {detail}")]
    Tls {
        api: String,
        addr: String,
        /// What failed, then the certificate's subject and names (SANs) and the fix.
        detail: String,
    },
    #[error(
        "Kubernetes API server {api}: forbidden to {verb} {resource}: {detail}. Grant weft's ServiceAccount the verb {verb:?} on {resource:?} (the ClusterRole in docker/weft.yaml does)"
    )]
    Forbidden {
        api: String,
        verb: String,
        resource: String,
        detail: String,
    },
    #[error(
        "node {node} has no pod CIDR (spec.podCIDR / spec.podCIDRs are empty): nobody assigns node subnets in this cluster. Run kube-controller-manager with --allocate-node-cidrs=true --cluster-cidr={network} (with kubeadm: kubeadm init --pod-network-cidr={network}), or set spec.podCIDR on the node"
    )]
    NoPodCidr { node: String, network: Ipv4Net },
    #[error(
        "node {node}'s pod CIDR {cidr} lies outside the Network {network} of net-conf.json; make Network equal kube-controller-manager's --cluster-cidr (kubeadm's --pod-network-cidr)"
    )]
    PodCidrOutside {
        node: String,
        cidr: String,
        network: Ipv4Net,
    },
    #[error(
        "node {node}'s pod CIDR {cidr} cannot be a node subnet: {why}; give kube-controller-manager a --node-cidr-mask-size of 30 or less"
    )]
    PodCidrUnusable {
        node: String,
        cidr: Ipv4Net,
        why: &'static str,
    },
    #[error(
        "node {node} has no IPv6 pod CIDR (spec.podCIDRs holds none) but net-conf.json enables IPv6 with IPv6Network {network}. Run kube-controller-manager dual-stack (--cluster-cidr=<IPv4 Network>,{network}, and --node-cidr-mask-size-ipv6), so that every node gets an IPv6 pod CIDR, or set EnableIPv6 to false"
    )]
    NoPodCidr6 { node: String, network: Ipv6Net },
    #[error(
        "node {node}'s IPv6 pod CIDR {cidr} lies outside the IPv6Network {network} of net-conf.json; make IPv6Network equal the IPv6 half of kube-controller-manager's --cluster-cidr (kubeadm's --pod-network-cidr)"
    )]
    PodCidr6Outside {
        node: String,
        cidr: String,
        network: Ipv6Net,
    },
    #[error(
        "node {node}'s IPv6 pod CIDR {cidr} cannot be a node subnet: {why}; give kube-controller-manager a --node-cidr-mask-size-ipv6 of 126 or less"
    )]
    PodCidr6Unusable {
        node: String,
        cidr: Ipv6Net,
        why: &'static str,
    },
    #[error("Kubernetes API server {api}: {op} failed: {detail}")]
    Request {
        api: String,
        op: String,
        detail: String,
    },
    #[error(
        "cannot tell which node this is: set NODE_NAME (the DaemonSet sets it from spec.nodeName with the downward API), or POD_NAME and POD_NAMESPACE"
    )]
    NoNodeName,
}

impl KubeError {
    /// Whether the API server did not answer: worth trying again, unlike
    /// configuration, TLS, RBAC or pod CIDR errors. The in-cluster
    /// address's deadlock too: kube-proxy may start yet, and the fix (the
    /// API server's real address) restarts the pod anyway; waiting alive
    /// keeps `kubectl exec … weftd doctor` possible, a crash loop would not.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            KubeError::Unreachable { .. } | KubeError::Deadlock { .. }
        )
    }
}
