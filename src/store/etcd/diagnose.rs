//! Why etcd does not answer: a TCP connect to each endpoint, then a TLS
//! handshake with the configured files that names the certificate at fault;
//! and what to do about etcd's authentication refusals. weftd's errors come
//! from here, and so do the plain results `weftd doctor` judges for its TLS
//! lines: [`tls`] (each https endpoint's handshake), [`ca_name`] and
//! [`client_name`] (the files as messages name them).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::{EtcdError, EtcdSettings};
use crate::store::StoreError;
use crate::store::dial::{self, HandshakeError};
pub(crate) use crate::store::dial::{CertProblem, SeenCert};

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
        problems.sort_by_key(|p| !matches!(p, EtcdError::Tls { .. }));
        problems.into_iter().next()
    })
    .await
    .ok()
    .flatten();
    found.map_or(err, StoreError::from)
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

/// An endpoint's scheme (https?), `host:port` and host.
fn split_endpoint<'a>(ep: &'a str, s: &EtcdSettings) -> (bool, &'a str, &'a str) {
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
    (https, hostport, host)
}

/// A TCP connection to `hostport` (etcd's port 2379 when it names none).
fn connect(hostport: &str, t: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match hostport.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => match format!("{hostport}:2379").to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => return Err(format!("cannot resolve {hostport}: {e}")),
        },
    };
    dial::connect_first(hostport, &addrs, t).map(|(tcp, _)| tcp)
}

/// Checks one endpoint: TCP, then (https) a TLS handshake with the configured
/// files. `Ok` when nothing is wrong at these levels.
fn diagnose_endpoint(ep: &str, s: &EtcdSettings, t: Duration) -> Result<(), EtcdError> {
    let (https, hostport, host) = split_endpoint(ep, s);
    let tcp = connect(hostport, t).map_err(|detail| EtcdError::Unreachable {
        endpoints: ep.to_string(),
        detail,
    })?;
    if !https {
        return Ok(());
    }
    tls_result(ep, host, s, handshake(host, tcp, t, s))
}

/// What a TLS handshake with one etcd endpoint showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsOutcome {
    /// The configured files cannot be used (CA, client certificate or key): why.
    Files(String),
    /// The server presented this certificate; its `refused` says whether
    /// the verifier took it.
    Server(SeenCert),
    /// The server's certificate was fine, but etcd refused this client's.
    ClientRefused { cert: SeenCert, error: String },
    /// The handshake ended before the server presented a certificate: why.
    NoCertificate(String),
}

/// One https endpoint that answers TCP, and how TLS with it went: for `weftd doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointTls {
    pub(crate) endpoint: String,
    /// The name dialled (what the certificate must carry).
    pub(crate) host: String,
    pub(crate) outcome: TlsOutcome,
}

/// A TLS handshake with every https endpoint that answers TCP (the others
/// are the store's reachability to report), on a blocking thread.
pub(crate) async fn tls(s: &EtcdSettings) -> Vec<EndpointTls> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || tls_endpoints(&s))
        .await
        .unwrap_or_default()
}

/// [`tls`], blocking.
fn tls_endpoints(s: &EtcdSettings) -> Vec<EndpointTls> {
    let t = s.request_timeout;
    s.endpoints
        .iter()
        .filter_map(|ep| {
            let (https, hostport, host) = split_endpoint(ep, s);
            let tcp = connect(hostport, t).ok().filter(|_| https)?;
            Some(EndpointTls {
                endpoint: ep.clone(),
                host: host.to_string(),
                outcome: handshake(host, tcp, t, s),
            })
        })
        .collect()
}

/// `--etcd-cafile`, or that there is none, for messages.
pub(crate) fn ca_name(s: &EtcdSettings) -> String {
    s.cafile
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no --etcd-cafile)".into())
}

/// `--etcd-certfile`, or that there is none, for messages.
pub(crate) fn client_name(s: &EtcdSettings) -> String {
    s.certfile
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none (no --etcd-certfile)".into())
}

/// A TLS handshake with the configured files that records what the server
/// presented, to name it in errors.
fn handshake(host: &str, tcp: TcpStream, t: Duration, s: &EtcdSettings) -> TlsOutcome {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &s.cafile {
        let certs = match dial::pem_certs(ca) {
            Ok(certs) => certs,
            Err(e) => return TlsOutcome::Files(format!("cannot read the CA file: {e}")),
        };
        if certs.is_empty() {
            return TlsOutcome::Files("the CA file holds no PEM certificate".into());
        }
        for c in certs {
            if let Err(e) = roots.add(c) {
                return TlsOutcome::Files(format!(
                    "the CA file holds an unusable certificate: {e}"
                ));
            }
        }
    }
    let verifier = match dial::verifier(roots) {
        Ok(v) => v,
        Err(e) => return TlsOutcome::Files(format!("cannot use the CA file: {e}")),
    };
    let identity = match (&s.certfile, &s.keyfile) {
        (Some(c), Some(k)) => {
            let chain = match dial::pem_certs(c) {
                Ok(chain) => chain,
                Err(e) => {
                    return TlsOutcome::Files(format!(
                        "cannot read --etcd-certfile {}: {e}",
                        c.display()
                    ));
                }
            };
            let key = match PrivateKeyDer::from_pem_file(k) {
                Ok(key) => key,
                Err(e) => {
                    return TlsOutcome::Files(format!(
                        "cannot read --etcd-keyfile {}: {e}",
                        k.display()
                    ));
                }
            };
            Some((chain, key))
        }
        _ => None,
    };
    let hs = match dial::handshake(tcp, t, host, verifier, identity, true) {
        Ok(hs) => hs,
        Err(e) => {
            return TlsOutcome::Files(match e {
                HandshakeError::Versions(e) | HandshakeError::Connection(e) => e.to_string(),
                HandshakeError::ClientCert(e) => format!("client certificate/key unusable: {e}"),
                HandshakeError::Name(e) => {
                    format!("{host:?} is not a valid TLS server name: {e}")
                }
            });
        }
    };
    match (SeenCert::of(&hs), hs.result) {
        (Some(cert), Err(e)) if cert.refused.is_none() => TlsOutcome::ClientRefused {
            cert,
            error: e.to_string(),
        },
        (Some(cert), _) => TlsOutcome::Server(cert),
        (None, Err(e)) => TlsOutcome::NoCertificate(e.to_string()),
        (None, Ok(())) => TlsOutcome::NoCertificate("the server presented no certificate".into()),
    }
}

/// weftd's error for a handshake's outcome; `Ok` when TLS is fine.
fn tls_result(ep: &str, host: &str, s: &EtcdSettings, o: TlsOutcome) -> Result<(), EtcdError> {
    let tls_err = |problem: String| EtcdError::Tls {
        endpoint: ep.to_string(),
        ca_file: ca_name(s),
        problem,
    };
    match o {
        TlsOutcome::Files(why) => Err(tls_err(why)),
        TlsOutcome::Server(SeenCert { refused: None, .. }) => Ok(()),
        TlsOutcome::Server(SeenCert {
            subject,
            names,
            issuer,
            refused: Some((problem, err)),
        }) => {
            let why = match problem {
                CertProblem::Untrusted => format!(
                    "the server certificate (issuer {issuer}) is not signed by the CA in the CA file; give the CA that signed etcd's --cert-file"
                ),
                CertProblem::WrongName => format!(
                    "the server certificate is not valid for {host:?}: connect with one of its names, or reissue it with {host} in its SANs"
                ),
                CertProblem::Expired => "the server certificate has expired; renew it".to_string(),
                CertProblem::Other => err,
            };
            Err(tls_err(format!(
                "{why} (expected name {host}; presented subject {subject}, names [{}])",
                names.join(", ")
            )))
        }
        TlsOutcome::ClientRefused { cert, error } => Err(tls_err(format!(
            "the server certificate (subject {}, names [{}]) is fine, but etcd refused this client's certificate {}: {error}; give a client certificate signed by etcd's --trusted-ca-file",
            cert.subject,
            cert.names.join(", "),
            client_name(s)
        ))),
        TlsOutcome::NoCertificate(e) => Err(tls_err(format!(
            "TLS handshake failed before the server presented a certificate: {e} (is the endpoint really https?)"
        ))),
    }
}
