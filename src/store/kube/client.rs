//! The store's client: its config from the settings (a kubeconfig file, the
//! in-cluster ServiceAccount, or `--kube-api-url`) and where its address and
//! CA came from; an API error mapped to a [`KubeError`] that names what was
//! refused; and, when the server does not answer, the dial that says why
//! (TCP, with the CNI-before-kube-proxy deadlock for the in-cluster address,
//! then TLS, naming the certificate's names).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Config;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use super::{Inner, KubeError, KubeSettings};
use crate::store::dial::{self, CertProblem, SeenCert, error_chain};

/// Where the server address came from: decides which diagnosis an
/// unreachable server gets.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The server of `--kubeconfig-file`.
    Kubeconfig(PathBuf),
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`: in a pod, the
    /// `kubernetes` Service's ClusterIP unless the DaemonSet sets them.
    InCluster { host: String, port: String },
    /// `--kube-api-url`, which overrides the address of either config.
    ApiUrl,
}

impl Source {
    /// Where the address came from, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Kubeconfig(p) => format!("the server of --kubeconfig-file {}", p.display()),
            Source::InCluster { host, port } => format!(
                "in-cluster config: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}"
            ),
            Source::ApiUrl => "--kube-api-url".into(),
        }
    }
}

/// Reads a PEM file into DER certificates.
fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let certs: Vec<Vec<u8>> = dial::pem_certs(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// `--kube-api-url` parsed.
fn api_url(url: &str) -> Result<http::Uri, KubeError> {
    url.parse().map_err(|e| KubeError::Config {
        from: format!("--kube-api-url {url}"),
        problem: format!("not a URL: {e}"),
    })
}

/// The client config: kubeconfig file, else in-cluster, else `--kube-api-url`
/// alone; `--kube-api-url` overrides the server address in every case (and
/// is then where the address came from). Also says where the CA weft
/// trusts comes from, for messages (`None`: none given, the system's CAs).
pub(super) async fn client_config(
    s: &KubeSettings,
) -> Result<(Config, Source, Option<String>), KubeError> {
    let (mut config, mut source) = if let Some(path) = &s.kubeconfig {
        let bad = |problem: String| KubeError::Config {
            from: format!("--kubeconfig-file {}", path.display()),
            problem,
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let c = Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
        (c, Source::Kubeconfig(path.clone()))
    } else if let Some(host) = &s.service_host {
        let port = s.service_port.clone().unwrap_or_else(|| "443".into());
        let from = format!(
            "in-cluster: KUBERNETES_SERVICE_HOST={host}, KUBERNETES_SERVICE_PORT={port}, {}",
            s.service_account_dir.display()
        );
        let h = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let url: http::Uri =
            format!("https://{h}:{port}")
                .parse()
                .map_err(|e| KubeError::Config {
                    from: from.clone(),
                    problem: format!("not a valid server address: {e}"),
                })?;
        let mut c = Config::new(url);
        let ca = s.service_account_dir.join("ca.crt");
        c.root_cert = Some(read_pem_certs(&ca).map_err(|problem| KubeError::Config {
            from: from.clone(),
            problem: format!(
                "{problem}; is automountServiceAccountToken off for weft's pod? Or pass --kubeconfig-file"
            ),
        })?);
        let token = s.service_account_dir.join("token");
        if token.exists() {
            c.auth_info.token_file = Some(token.display().to_string());
        }
        if let Ok(ns) = std::fs::read_to_string(s.service_account_dir.join("namespace")) {
            c.default_namespace = ns.trim().to_string();
        }
        (
            c,
            Source::InCluster {
                host: host.clone(),
                port,
            },
        )
    } else if let Some(url) = &s.api_url {
        (Config::new(api_url(url)?), Source::ApiUrl)
    } else {
        return Err(KubeError::Config {
            from: "no --kubeconfig-file, no --kube-api-url, no KUBERNETES_SERVICE_HOST".into(),
            problem: "weft does not know where the API server is: pass --kubeconfig-file (recommended: it works before the pod network exists) or --kube-api-url, or run weft in a pod".into(),
        });
    };
    let ca_from = match (&source, &config.root_cert) {
        (_, None) => None,
        (Source::Kubeconfig(p), Some(_)) => Some(format!(
            "the certificate-authority of --kubeconfig-file {}",
            p.display()
        )),
        (_, Some(_)) => Some(s.service_account_dir.join("ca.crt").display().to_string()),
    };
    if let Some(url) = &s.api_url {
        config.cluster_url = api_url(url)?;
        // The address dialled is this one: an unreachable server is not the
        // in-cluster ClusterIP's deadlock, nor the kubeconfig's server.
        source = Source::ApiUrl;
    }
    config.connect_timeout = Some(s.connect_timeout);
    Ok((config, source, ca_from))
}

impl Inner {
    pub(super) fn diagnose_input(&self) -> DiagnoseInput {
        DiagnoseInput {
            api: self.api.clone(),
            source: self.source.clone(),
            root_certs: self.root_certs.clone(),
            timeout: self.connect_timeout,
        }
    }

    /// Maps a client error to a [`KubeError`] that names what was refused or
    /// why the server cannot be reached.
    pub(super) async fn api_error(
        &self,
        verb: &str,
        resource: &str,
        name: &str,
        e: kube::Error,
    ) -> KubeError {
        let op = if name.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource} {name}")
        };
        match e {
            kube::Error::Api(r) if r.code == 403 => KubeError::Forbidden {
                api: self.api.clone(),
                verb: verb.into(),
                resource: resource.into(),
                detail: r.message,
            },
            kube::Error::Api(r) if r.code == 401 => KubeError::Request {
                api: self.api.clone(),
                op,
                detail: format!(
                    "unauthorized ({}): the credentials were rejected; check the token or client certificate of the kubeconfig / ServiceAccount",
                    r.message
                ),
            },
            kube::Error::Api(r) => KubeError::Request {
                api: self.api.clone(),
                op,
                detail: format!("{} ({} {})", r.message, r.code, r.reason),
            },
            other => {
                let detail = error_chain(&other);
                let this = self.diagnose_input();
                match tokio::task::spawn_blocking(move || diagnose(&this, &detail)).await {
                    Ok(e) => e,
                    Err(j) => KubeError::Request {
                        api: self.api.clone(),
                        op,
                        detail: j.to_string(),
                    },
                }
            }
        }
    }
}

pub(super) struct DiagnoseInput {
    api: String,
    source: Source,
    root_certs: Option<Vec<Vec<u8>>>,
    timeout: Duration,
}

/// What dialling the API server found, short of an HTTP request: what
/// [`diagnose`] words as weftd's errors and `weftd doctor` as its lines.
#[derive(Debug)]
pub(crate) enum Dial {
    /// No TCP connection: [`KubeError::Deadlock`] for the in-cluster
    /// address, [`KubeError::Unreachable`] otherwise.
    Unreachable(KubeError),
    /// Connected to `addr`, dialled as `host`.
    Connected {
        addr: SocketAddr,
        host: String,
        /// `None` for `http://`; the certificate the handshake presented, or
        /// why it ended before one.
        tls: Option<Result<SeenCert, String>>,
    },
}

/// The server address as a URI's host (brackets off) and port.
fn host_port(uri: &http::Uri) -> (bool, String, u16) {
    let https = uri.scheme_str() != Some("http");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    (https, host, port)
}

/// TCP to the API server (the in-cluster ClusterIP's silence is the
/// deadlock), then for https a TLS handshake that records the certificate.
pub(super) fn dial(d: &DiagnoseInput) -> Dial {
    let uri: http::Uri = match d.api.parse() {
        Ok(u) => u,
        Err(e) => {
            return Dial::Unreachable(KubeError::Unreachable {
                api: d.api.clone(),
                detail: format!("not a URL: {e}"),
            });
        }
    };
    let (https, host, port) = host_port(&uri);
    let unreachable = |why: String| match &d.source {
        Source::InCluster { host: h, port: p } => KubeError::Deadlock {
            api: d.api.clone(),
            host: h.clone(),
            port: p.clone(),
            detail: why,
        },
        Source::Kubeconfig(p) => KubeError::Unreachable {
            api: d.api.clone(),
            detail: format!(
                "{why} (the address is the server of --kubeconfig-file {})",
                p.display()
            ),
        },
        Source::ApiUrl => KubeError::Unreachable {
            api: d.api.clone(),
            detail: why,
        },
    };
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Dial::Unreachable(unreachable(format!("cannot resolve {host}: {e}"))),
    };
    let (tcp, addr) = match dial::connect_first(&host, &addrs, d.timeout) {
        Ok(c) => c,
        Err(why) => return Dial::Unreachable(unreachable(why)),
    };
    let tls = https.then(|| tls_probe(d, &host, tcp));
    Dial::Connected { addr, host, tls }
}

/// Why the API server did not answer: TCP (with the deadlock explained for the
/// in-cluster ClusterIP), then TLS (naming the certificate's SANs).
fn diagnose(d: &DiagnoseInput, detail: &str) -> KubeError {
    match dial(d) {
        Dial::Unreachable(e) => e,
        Dial::Connected {
            addr,
            host,
            tls: Some(Ok(cert)),
        } if cert.refused.is_some() => tls_error(&d.api, &host, addr, &cert),
        Dial::Connected { .. } => KubeError::Unreachable {
            api: d.api.clone(),
            detail: detail.to_string(),
        },
    }
}

/// A TLS handshake over `tcp` that records the certificate the server
/// presents and the verdict on it, with the CA weft trusts.
fn tls_probe(d: &DiagnoseInput, host: &str, tcp: TcpStream) -> Result<SeenCert, String> {
    let mut roots = RootCertStore::empty();
    for c in d.root_certs.iter().flatten() {
        let _ = roots.add(CertificateDer::from(c.clone()));
    }
    let verifier = dial::verifier(roots).map_err(|e| format!("no usable CA: {e}"))?;
    let hs = dial::handshake(tcp, d.timeout, host, verifier, None, false)
        .map_err(|e| format!("the handshake could not start: {e:?}"))?;
    match SeenCert::of(&hs) {
        Some(c) => Ok(c),
        None => Err(match hs.result {
            Err(e) => format!("the handshake ended before the server presented a certificate: {e}"),
            Ok(()) => "the server presented no certificate".into(),
        }),
    }
}

/// weftd's error for a certificate the verifier refused: what failed, the
/// certificate's names and, when the host is not among them, the fix.
fn tls_error(api: &str, host: &str, addr: SocketAddr, cert: &SeenCert) -> KubeError {
    let SeenCert {
        subject,
        names,
        issuer,
        refused,
    } = cert;
    let problem = match refused {
        Some((CertProblem::Untrusted, _)) => format!(
            "the server certificate (issuer {issuer}) is not signed by the CA weft trusts (the kubeconfig's certificate-authority-data, or the ServiceAccount's ca.crt)"
        ),
        Some((CertProblem::WrongName, _)) => format!("x509: certificate is not valid for {host}"),
        Some((CertProblem::Expired, _)) => {
            "the server certificate has expired (kubeadm certs renew all renews a kubeadm cluster's)".to_string()
        }
        Some((CertProblem::Other, e)) => e.clone(),
        None => "the server certificate was accepted".to_string(),
    };
    let hint = if cert.names_host(host) {
        String::new()
    } else {
        format!(
            ", not {host}: dial the API server by one of those names (in --kube-api-url, the kubeconfig's server, or KUBERNETES_SERVICE_HOST), or reissue its certificate with {host} in its SANs (kubeadm: apiServer.certSANs)"
        )
    };
    KubeError::Tls {
        api: api.to_string(),
        addr: addr.to_string(),
        detail: format!(
            "{problem}. The server's certificate (subject {subject}) carries the names [{}]{hint}",
            names.join(", ")
        ),
    }
}
