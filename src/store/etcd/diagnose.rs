//! Why etcd does not answer: a TCP connect to each endpoint, then a TLS
//! handshake with the configured files that names the certificate at fault;
//! and what to do about etcd's authentication refusals.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::EtcdSettings;
use crate::store::StoreError;
use crate::store::dial::{self, CertProblem, Handshake, HandshakeError, describe_cert};

/// Turns a failed first request into an error that says which endpoint and
/// which certificate: a TCP connect to each endpoint, then a TLS handshake
/// with the configured files for `https://` ones.
pub(super) async fn diagnose(settings: Arc<EtcdSettings>, err: StoreError) -> StoreError {
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

/// Adds what to do to etcd's auth refusals.
pub(super) fn with_hint(s: &EtcdSettings, detail: String) -> String {
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
    let (tcp, _) = dial::connect_first(hostport, &addrs, t).map_err(unreachable)?;
    if !https {
        return Ok(());
    }
    handshake(ep, host, tcp, t, s)
}

/// A TLS handshake with the configured files that records what the server
/// presented, to name it in errors.
fn handshake(
    ep: &str,
    host: &str,
    tcp: TcpStream,
    t: Duration,
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
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &s.cafile {
        let certs = match dial::pem_certs(ca) {
            Ok(certs) => certs,
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
    let verifier =
        dial::verifier(roots).map_err(|e| tls_err(format!("cannot use the CA file: {e}")))?;
    let identity = match (&s.certfile, &s.keyfile) {
        (Some(c), Some(k)) => {
            let chain = dial::pem_certs(c).map_err(|e| {
                tls_err(format!("cannot read --etcd-certfile {}: {e}", c.display()))
            })?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| tls_err(format!("cannot read --etcd-keyfile {}: {e}", k.display())))?;
            Some((chain, key))
        }
        _ => None,
    };
    let Handshake { presented, result } = dial::handshake(tcp, t, host, verifier, identity, true)
        .map_err(|e| match e {
        HandshakeError::Versions(e) | HandshakeError::Connection(e) => tls_err(e.to_string()),
        HandshakeError::ClientCert(e) => tls_err(format!("client certificate/key unusable: {e}")),
        HandshakeError::Name(e) => tls_err(format!("{host:?} is not a valid TLS server name: {e}")),
    })?;
    match (presented, result) {
        (Some((der, Some(err))), _) => {
            let (subject, names, issuer) = describe_cert(&der);
            let why = match dial::cert_problem(&err) {
                CertProblem::Untrusted => format!(
                    "the server certificate (issuer {issuer}) is not signed by the CA in the CA file; give the CA that signed etcd's --cert-file"
                ),
                CertProblem::WrongName => format!(
                    "the server certificate is not valid for {host:?}: connect with one of its names, or reissue it with {host} in its SANs"
                ),
                CertProblem::Expired => "the server certificate has expired; renew it".to_string(),
                CertProblem::Other => err.to_string(),
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
