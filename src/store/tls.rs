//! TLS diagnosis shared by the etcd and Kubernetes stores: a certificate
//! verifier that records what the server presented, and a description of that
//! certificate (subject, DNS and IP names, issuer) for error messages.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Verifies like webpki, and keeps the presented certificate and the verdict.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Arc<WebPkiServerVerifier>,
    /// The end-entity certificate (DER) and the verifier's verdict.
    pub(crate) seen: Mutex<Option<(Vec<u8>, Option<rustls::Error>)>>,
}

impl Recorder {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>) -> Recorder {
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

/// The subject and the names (DNS and IP SANs) of a DER certificate.
pub(crate) fn describe_cert(der: &[u8]) -> (String, Vec<String>, String) {
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
    fn certificate_names_are_read() {
        // No certificate at hand without I/O: garbage is described, not a panic.
        let (subject, names, _) = describe_cert(b"not a certificate");
        assert!(subject.contains("unparsable") && names.is_empty());
    }
}
