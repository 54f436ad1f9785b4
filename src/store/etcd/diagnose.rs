//! Why etcd does not answer: a TCP connect to each endpoint, then a TLS
//! handshake with the configured files that names the certificate at fault;
//! and what to do about etcd's authentication refusals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::EtcdSettings;
use crate::store::StoreError;
use crate::store::tls::{Recorder, describe_cert};

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

/// An error and its sources, joined: tonic's transport errors hide the cause.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
    handshake(ep, host, tcp, s)
}

/// A TLS handshake that records what the server presented, to name it in errors.
fn handshake(ep: &str, host: &str, mut tcp: TcpStream, s: &EtcdSettings) -> Result<(), StoreError> {
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
                .map_err(|e| tls_err(format!("cannot read --etcd-certfile {}: {e}", c.display())))?
                .filter_map(Result::ok)
                .collect();
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| tls_err(format!("cannot read --etcd-keyfile {}: {e}", k.display())))?;
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
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "the server certificate is not valid for {host:?}: connect with one of its names, or reissue it with {host} in its SANs"
                ),
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
                    ..
                }) => "the server certificate has expired; renew it".to_string(),
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
