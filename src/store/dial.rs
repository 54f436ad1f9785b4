//! Reaching a store's server and explaining why it fails, shared by the etcd
//! and Kubernetes stores: an error with its sources ([`error_chain`]), a TCP
//! dial of each resolved address ([`connect_first`]), a TLS handshake that
//! records the certificate the server presented and the verifier's verdict
//! ([`handshake`]), what that verdict means ([`cert_problem`]), and a
//! description of the certificate (subject, DNS and IP names, issuer) for
//! error messages ([`describe_cert`]). Each store words its own errors.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// An error and its sources, joined: tonic's and hyper's transport errors hide
/// the cause in a source.
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

/// Dials `addrs` in turn, each with `timeout`: the first connection and its
/// address, or why every dial failed (`TCP connect to <addr>: <error>`, joined
/// with `; `), or `<name> resolves to no address` when there was none.
pub(super) fn connect_first(
    name: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let mut failures = vec![];
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => failures.push(format!("TCP connect to {a}: {e}")),
        }
    }
    if failures.is_empty() {
        failures.push(format!("{name} resolves to no address"));
    }
    Err(failures.join("; "))
}

/// The certificates of a PEM file (blocks that are not certificates skipped).
pub(super) fn pem_certs(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    Ok(CertificateDer::pem_file_iter(path)?
        .filter_map(Result::ok)
        .collect())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// webpki's verifier for `roots`.
///
/// # Errors
/// Without any root ([`VerifierBuilderError::NoRootAnchors`]), among others.
pub(super) fn verifier(
    roots: RootCertStore,
) -> Result<Arc<WebPkiServerVerifier>, VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()
}

/// What a recorded [`handshake`] saw.
pub(super) struct Handshake {
    /// The server's end-entity certificate (DER) and the verifier's verdict
    /// (`None`: accepted), when the server presented one.
    pub(super) presented: Option<(Vec<u8>, Option<rustls::Error>)>,
    /// How the handshake ended on the wire.
    pub(super) result: io::Result<()>,
}

/// Why [`handshake`] could not start.
#[derive(Debug)]
pub(super) enum HandshakeError {
    /// The provider supports no safe protocol version.
    Versions(rustls::Error),
    /// The client certificate or key cannot be used.
    ClientCert(rustls::Error),
    /// The host is not a valid TLS server name.
    Name(InvalidDnsNameError),
    /// The connection cannot be set up.
    Connection(rustls::Error),
}

/// A TLS handshake over `tcp` (read and write timeouts set to `timeout`) with
/// `host` as the server name, verified by `verifier` and recorded so errors can
/// name the certificate; the client presents `identity` (chain and key) if
/// given. With `await_client_verdict`, a completed handshake is followed by a
/// read, because TLS 1.3 reports a rejected client certificate only then.
///
/// # Errors
/// [`HandshakeError`] when the handshake cannot start; how it went is in
/// [`Handshake`].
pub(super) fn handshake(
    mut tcp: TcpStream,
    timeout: Duration,
    host: &str,
    verifier: Arc<WebPkiServerVerifier>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    await_client_verdict: bool,
) -> Result<Handshake, HandshakeError> {
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let rec = Arc::new(Recorder::new(verifier));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(HandshakeError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(rec.clone());
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(HandshakeError::ClientCert)?,
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_string()).map_err(HandshakeError::Name)?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(HandshakeError::Connection)?;
    let mut result = Ok(());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            result = Err(e);
            break;
        }
    }
    // TLS 1.3 reports a rejected client certificate only after the handshake.
    if await_client_verdict && result.is_ok() {
        let _ = conn.writer().write_all(b"");
        let _ = conn.complete_io(&mut tcp);
        let mut buf = [0u8; 1];
        if let Err(e) = conn.reader().read(&mut buf) {
            if e.kind() != io::ErrorKind::WouldBlock {
                let _ = conn.complete_io(&mut tcp);
            }
        }
        if let Err(e) = conn.complete_io(&mut tcp) {
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut {
                result = Err(e);
            }
        }
    }
    let presented = rec.seen.lock().ok().and_then(|g| g.clone());
    Ok(Handshake { presented, result })
}

/// What is wrong with a server certificate, as far as the fix goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertProblem {
    /// Not signed by a trusted CA (unknown issuer, bad signature).
    Untrusted,
    /// Not valid for the name dialled.
    WrongName,
    /// Expired.
    Expired,
    /// Anything else: the error says it.
    Other,
}

/// The [`CertProblem`] of a verifier's verdict.
pub(super) fn cert_problem(e: &rustls::Error) -> CertProblem {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            CertProblem::Untrusted
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => CertProblem::WrongName,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            CertProblem::Expired
        }
        _ => CertProblem::Other,
    }
}

/// Verifies like webpki, and keeps the presented certificate and the verdict.
#[derive(Debug)]
struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    /// The end-entity certificate (DER) and the verifier's verdict.
    seen: Mutex<Option<(Vec<u8>, Option<rustls::Error>)>>,
}

impl Recorder {
    fn new(inner: Arc<WebPkiServerVerifier>) -> Recorder {
        Recorder {
            inner,
            seen: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if let Ok(mut g) = self.seen.lock() {
            *g = Some((end_entity.to_vec(), r.as_ref().err().cloned()));
        }
        r
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's certificate as a recorded [`handshake`] saw it: what both
/// stores' errors and `weftd doctor`'s TLS lines name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenCert {
    pub(crate) subject: String,
    /// Its DNS and IP SANs.
    pub(crate) names: Vec<String>,
    pub(crate) issuer: String,
    /// Why the verifier refused it, and its words; `None`: trusted, valid
    /// now and for the name dialled.
    pub(crate) refused: Option<(CertProblem, String)>,
}

impl SeenCert {
    /// The certificate the handshake recorded, if the server presented one.
    pub(super) fn of(hs: &Handshake) -> Option<SeenCert> {
        let (der, verdict) = hs.presented.as_ref()?;
        let (subject, names, issuer) = describe_cert(der);
        Some(SeenCert {
            subject,
            names,
            issuer,
            refused: verdict.as_ref().map(|e| (cert_problem(e), e.to_string())),
        })
    }

    /// Whether `host` (a DNS name or an IP address) is among its names.
    pub(super) fn names_host(&self, host: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }
}

/// The subject, the names (DNS and IP SANs) and the issuer of a DER certificate.
pub(super) fn describe_cert(der: &[u8]) -> (String, Vec<String>, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let mut names = vec![];
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for n in &san.value.general_names {
                    match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            names.push(d.to_string())
                        }
                        x509_parser::extensions::GeneralName::IPAddress(b) => {
                            if let Ok(a) = <[u8; 4]>::try_from(*b) {
                                names.push(std::net::Ipv4Addr::from(a).to_string());
                            } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                                names.push(std::net::Ipv6Addr::from(a).to_string());
                            }
                        }
                        _ => {}
                    }
                }
            }
            (cert.subject().to_string(), names, cert.issuer().to_string())
        }
        Err(e) => (
            format!("(unparsable certificate: {e})"),
            vec![],
            String::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_failures_are_listed() {
        let e = connect_first("etcd.example", &[], Duration::from_millis(100)).unwrap_err();
        assert_eq!(e, "etcd.example resolves to no address");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = connect_first("x", &[closed, closed], Duration::from_millis(500)).unwrap_err();
        assert!(
            e.starts_with(&format!("TCP connect to {closed}: ")) && e.contains("; "),
            "{e}"
        );
    }

    #[test]
    fn verdicts_are_classified() {
        use rustls::CertificateError as C;
        let bad = |c| rustls::Error::InvalidCertificate(c);
        assert_eq!(cert_problem(&bad(C::UnknownIssuer)), CertProblem::Untrusted);
        assert_eq!(
            cert_problem(&bad(C::NotValidForName)),
            CertProblem::WrongName
        );
        assert_eq!(cert_problem(&bad(C::Expired)), CertProblem::Expired);
        assert_eq!(cert_problem(&bad(C::Revoked)), CertProblem::Other);
    }

    #[test]
    fn certificate_names_are_read() {
        // No certificate at hand without I/O: garbage is described, not a panic.
        let (subject, names, _) = describe_cert(b"not a certificate");
        assert!(subject.contains("unparsable") && names.is_empty());
    }
}
