//! How weft reaches the API server and which node it is: [`KubeSettings`]
//! from weftd's flags and the environment (`NODE_NAME`, `POD_NAME`,
//! `KUBERNETES_SERVICE_HOST`, the ServiceAccount directory), and
//! [`API_CALLS`], every call the store makes as RBAC names it.

use std::path::PathBuf;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_calls_name_rbac_resources() {
        for (verb, res) in API_CALLS {
            assert!(["get", "list", "watch", "patch"].contains(verb), "{verb}");
            assert!(["nodes", "nodes/status", "pods"].contains(res), "{res}");
        }
    }
}
