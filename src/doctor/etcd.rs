//! The etcd TLS line of `weftd doctor`, one per https endpoint: the server's
//! certificate against `--etcd-cafile` and the name dialled, and etcd's
//! verdict on this node's client certificate. The handshake is weftd's own
//! diagnosis (`store::etcd::diagnose`); what it means, and the fix,
//! are decided here without I/O.

use super::report::{Check, Report, Status};
use crate::store::etcd::EtcdSettings;
use crate::store::etcd::diagnose::{
    self, CertProblem, EndpointTls, SeenCert, TlsOutcome, ca_name, client_name,
};

/// A TLS line for every https endpoint that answers TCP; `false` when every
/// one of them failed (the store cannot be reached, and its line would say
/// the same again).
pub async fn tls(s: &EtcdSettings, r: &mut Report) -> bool {
    let seen = diagnose::tls(s).await;
    let checks: Vec<Check> = seen.iter().map(|e| tls_check(e, s)).collect();
    let usable = checks.is_empty() || checks.iter().any(|c| c.status != Status::Fail);
    for c in checks {
        r.push(c);
    }
    usable
}

/// What one endpoint's handshake means.
pub(crate) fn tls_check(e: &EndpointTls, s: &EtcdSettings) -> Check {
    let what = format!("etcd TLS {}", e.endpoint);
    let (ca, host) = (ca_name(s), &e.host);
    let describe = |c: &SeenCert| {
        format!(
            "subject {}, issuer {}, names [{}]",
            c.subject,
            c.issuer,
            c.names.join(", ")
        )
    };
    match &e.outcome {
        TlsOutcome::Files(why) => Check::fail(
            what,
            format!("with --etcd-cafile {ca}: {why}"),
            "give --etcd-cafile, --etcd-certfile and --etcd-keyfile readable PEM files (the ones etcdctl's --cacert, --cert and --key use)",
        ),
        TlsOutcome::Server(c) => match &c.refused {
            None => Check::pass(
                what,
                format!(
                    "the server's certificate ({}) is signed by --etcd-cafile {ca} and valid for {host}{}",
                    describe(c),
                    if s.certfile.is_some() {
                        format!("; etcd accepts the client certificate {}", client_name(s))
                    } else {
                        String::new()
                    }
                ),
            ),
            Some((CertProblem::Untrusted, _)) => Check::fail(
                what,
                format!(
                    "the server's certificate ({}) is not signed by --etcd-cafile {ca}",
                    describe(c)
                ),
                "give --etcd-cafile the CA that signed etcd's --cert-file (etcdctl's --cacert; kubeadm's etcd: /etc/kubernetes/pki/etcd/ca.crt)",
            ),
            Some((CertProblem::WrongName, _)) => Check::fail(
                what,
                format!(
                    "the server's certificate ({}) does not name {host}, the host dialled",
                    describe(c)
                ),
                format!(
                    "name etcd in --etcd-endpoints by one of the certificate's names, or reissue etcd's certificate with {host} in its SANs"
                ),
            ),
            Some((CertProblem::Expired, _)) => Check::fail(
                what,
                format!("the server's certificate ({}) has expired", describe(c)),
                "renew etcd's certificate and restart etcd",
            ),
            Some((CertProblem::Other, err)) => Check::fail(
                what,
                format!(
                    "the server's certificate ({}) does not verify: {err}",
                    describe(c)
                ),
                "",
            ),
        },
        TlsOutcome::ClientRefused { cert, error } => Check::fail(
            what,
            format!(
                "the server's certificate ({}) is fine, but etcd refused this node's client certificate {}: {error}",
                describe(cert),
                client_name(s)
            ),
            "give --etcd-certfile and --etcd-keyfile a client certificate signed by etcd's --trusted-ca-file",
        ),
        TlsOutcome::NoCertificate(why) => Check::fail(
            what,
            format!("the handshake ended before the server presented a certificate: {why}"),
            "check that etcd serves TLS there (etcd's --cert-file and an https:// --listen-client-urls), or use http://",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EtcdSettings {
        let mut s = EtcdSettings::new(vec!["https://127.0.0.1:2379".into()]);
        s.cafile = Some("/etc/etcd/ca.pem".into());
        s
    }

    fn endpoint(outcome: TlsOutcome) -> EndpointTls {
        EndpointTls {
            endpoint: "https://127.0.0.1:2379".into(),
            host: "127.0.0.1".into(),
            outcome,
        }
    }

    fn cert(refused: Option<CertProblem>) -> SeenCert {
        SeenCert {
            subject: "CN=etcd-server".into(),
            names: vec!["localhost".into()],
            issuer: "CN=ca".into(),
            refused: refused.map(|p| (p, "invalid peer certificate".into())),
        }
    }

    #[test]
    fn each_certificate_problem_names_the_endpoint_and_the_names() {
        let s = settings();
        let c = tls_check(
            &endpoint(TlsOutcome::Server(cert(Some(CertProblem::WrongName)))),
            &s,
        );
        assert_eq!(c.what, "etcd TLS https://127.0.0.1:2379");
        assert_eq!(
            c.detail,
            "the server's certificate (subject CN=etcd-server, issuer CN=ca, names [localhost]) does not name 127.0.0.1, the host dialled"
        );
        assert!(c.fix.unwrap().contains("with 127.0.0.1 in its SANs"));
        let c = tls_check(
            &endpoint(TlsOutcome::Server(cert(Some(CertProblem::Untrusted)))),
            &s,
        );
        assert!(
            c.detail
                .ends_with("is not signed by --etcd-cafile /etc/etcd/ca.pem"),
            "{}",
            c.detail
        );
        let c = tls_check(&endpoint(TlsOutcome::Server(cert(None))), &s);
        assert_eq!(c.status, Status::Pass);
        let c = tls_check(
            &endpoint(TlsOutcome::ClientRefused {
                cert: cert(None),
                error: "bad certificate".into(),
            }),
            &s,
        );
        assert!(
            c.detail
                .contains("refused this node's client certificate none"),
            "{}",
            c.detail
        );
        let c = tls_check(&endpoint(TlsOutcome::NoCertificate("eof".into())), &s);
        assert_eq!(c.status, Status::Fail);
    }
}
