//! [`EtcdError`]: what goes wrong between weft and etcd, each naming the
//! endpoints, key, file or option at fault and the fix.

/// Failures of the etcd store; a [`StoreError::Etcd`](crate::store::StoreError::Etcd).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "{store}: network config key {key} not found (wrong --etcd-prefix, or the config was never written); create it with: {command}"
    )]
    ConfigMissing {
        store: String,
        key: String,
        command: String,
    },
    #[error(
        "etcd {endpoints}: unreachable: {detail}; check that etcd runs there and that --etcd-endpoints is right"
    )]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd {endpoint}: TLS failed with CA file {ca_file}: {problem}")]
    Tls {
        endpoint: String,
        ca_file: String,
        problem: String,
    },
    #[error("{store}: {op} failed: {detail}")]
    Request {
        store: String,
        op: String,
        detail: String,
    },
    #[error("etcd options: {problem}")]
    Options { problem: String },
}

impl EtcdError {
    /// Whether etcd did not answer (down, or not there yet): worth trying
    /// again, unlike TLS, authentication or option errors.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. })
    }
}
