//! The etcd options of `weftd`: flags, weft's and flannel's env vars and the
//! defaults, resolved into [`EtcdSettings`]; the client's TLS options and the
//! `etcdctl` command line that match the settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::EtcdError;

/// flannel's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// flannel's default etcd endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The etcd options of `weftd`, meant to be `#[command(flatten)]`ed into its CLI.
///
/// Each option reads, in order: the flag, weft's env var (`WEFT_ETCD_…`, through
/// clap), flannel's env var (`FLANNELD_ETCD_…`, through [`EtcdOptions::resolve`]),
/// the default. clap's `env` takes one name, so flannel's is looked up by hand.
// Flattened, a struct's doc comment would become weftd's own description in
// `--help`; the `about = None` keeps it out.
#[derive(Clone, Default, clap::Args)]
#[command(about = None, long_about = None)]
pub struct EtcdOptions {
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379; env FLANNELD_ETCD_ENDPOINTS too]
    #[arg(
        long = "etcd-endpoints",
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Option<Vec<String>>,
    /// etcd key prefix of the network [default: /coreos.com/network; env FLANNELD_ETCD_PREFIX too]
    #[arg(long = "etcd-prefix", env = "WEFT_ETCD_PREFIX")]
    pub prefix: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate [env FLANNELD_ETCD_CAFILE too]
    #[arg(long = "etcd-cafile", env = "WEFT_ETCD_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-cert auth [env FLANNELD_ETCD_CERTFILE too]
    #[arg(long = "etcd-certfile", env = "WEFT_ETCD_CERTFILE")]
    pub certfile: Option<PathBuf>,
    /// Client key (PEM) of --etcd-certfile [env FLANNELD_ETCD_KEYFILE too]
    #[arg(long = "etcd-keyfile", env = "WEFT_ETCD_KEYFILE")]
    pub keyfile: Option<PathBuf>,
    /// etcd user name [env FLANNELD_ETCD_USERNAME too]
    #[arg(long = "etcd-username", env = "WEFT_ETCD_USERNAME")]
    pub username: Option<String>,
    /// etcd password [env FLANNELD_ETCD_PASSWORD too]
    #[arg(
        long = "etcd-password",
        env = "WEFT_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Full re-list of the leases this often, a safety net beside the watch
    #[arg(long = "etcd-relist-interval", env = "WEFT_ETCD_RELIST_INTERVAL", value_parser = humantime::parse_duration, default_value = "10m")]
    pub relist_interval: Duration,
    /// Time limit of one etcd request
    #[arg(long = "etcd-request-timeout", env = "WEFT_ETCD_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub request_timeout: Duration,
}

/// [`EtcdOptions`] with every fallback applied.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Without a trailing slash.
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub relist_interval: Duration,
    pub request_timeout: Duration,
}

/// The password never reaches a log.
fn redact(p: &Option<String>) -> Option<&'static str> {
    p.as_ref().map(|_| "(redacted)")
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("relist_interval", &self.relist_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("relist_interval", &self.relist_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdSettings {
    /// Settings for `endpoints` with every other option at its default.
    pub fn new(endpoints: Vec<String>) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: DEFAULT_PREFIX.into(),
            cafile: None,
            certfile: None,
            keyfile: None,
            username: None,
            password: None,
            relist_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdOptions {
    /// Applies flannel's `FLANNELD_ETCD_*` env vars and the defaults.
    ///
    /// # Errors
    /// [`EtcdError::Options`] for an empty endpoint list or a prefix that is not absolute.
    pub fn resolve(&self) -> Result<EtcdSettings, EtcdError> {
        self.resolve_with(|k| std::env::var(k).ok())
    }

    /// [`EtcdOptions::resolve`] with `env` as the environment (for tests).
    ///
    /// # Errors
    /// As [`EtcdOptions::resolve`].
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EtcdSettings, EtcdError> {
        let flannel = |name: &str| env(&format!("FLANNELD_ETCD_{name}")).filter(|v| !v.is_empty());
        let endpoints: Vec<String> = match &self.endpoints {
            Some(v) => v.clone(),
            None => match flannel("ENDPOINTS") {
                Some(v) => v.split(',').map(str::to_string).collect(),
                None => vec![DEFAULT_ENDPOINT.to_string()],
            },
        };
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::Options {
                problem: "--etcd-endpoints is empty; give at least one, e.g. http://127.0.0.1:2379"
                    .into(),
            });
        }
        let prefix = self
            .prefix
            .clone()
            .or_else(|| flannel("PREFIX"))
            .unwrap_or_else(|| DEFAULT_PREFIX.into());
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(EtcdError::Options {
                problem: format!(
                    "--etcd-prefix {prefix:?} must start with '/', e.g. {DEFAULT_PREFIX}"
                ),
            });
        }
        let path = |v: &Option<PathBuf>, name: &str| {
            v.clone().or_else(|| flannel(name).map(PathBuf::from))
        };
        Ok(EtcdSettings {
            endpoints,
            prefix,
            cafile: path(&self.cafile, "CAFILE"),
            certfile: path(&self.certfile, "CERTFILE"),
            keyfile: path(&self.keyfile, "KEYFILE"),
            username: self.username.clone().or_else(|| flannel("USERNAME")),
            password: self.password.clone().or_else(|| flannel("PASSWORD")),
            relist_interval: self.relist_interval,
            request_timeout: self.request_timeout,
        })
    }
}

/// The `etcdctl put` that creates `<prefix>/config` with a sample net-conf.json.
pub(super) fn render_put_config(s: &EtcdSettings) -> String {
    let mut cmd = format!(
        "ETCDCTL_API=3 etcdctl --endpoints={}",
        s.endpoints.join(",")
    );
    for (flag, file) in [
        ("--cacert", &s.cafile),
        ("--cert", &s.certfile),
        ("--key", &s.keyfile),
    ] {
        if let Some(f) = file {
            cmd.push_str(&format!(" {flag}={}", f.display()));
        }
    }
    cmd.push_str(&format!(
        " put {}/config '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'",
        s.prefix
    ));
    cmd
}

fn read_file(what: &str, flag: &str, p: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(p).map_err(|e| EtcdError::Options {
        problem: format!("cannot read the {what} {} ({flag}): {e}", p.display()),
    })
}

/// Refuses a PEM file without a parsable X.509 certificate, naming the file
/// (the TLS stack would only say "transport error" on connecting).
fn check_certs(what: &str, flag: &str, p: &Path, pem: &[u8]) -> Result<(), EtcdError> {
    let problem = |why: String| EtcdError::Options {
        problem: format!("the {what} {} ({flag}) {why}", p.display()),
    };
    let mut found = 0;
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|_| problem("is not valid PEM".into()))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| problem(format!("holds a certificate that does not parse: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(problem("holds no PEM certificate".into()));
    }
    Ok(())
}

/// Refuses a client key file that holds no usable private key, naming the
/// file and never showing its contents.
fn check_key(p: &Path, pem: &[u8]) -> Result<(), EtcdError> {
    let problem = |why: &str| EtcdError::Options {
        problem: format!(
            "the client key {} (--etcd-keyfile) {why}; give the PEM key (PKCS#8, PKCS#1 or SEC1) that belongs to --etcd-certfile",
            p.display()
        ),
    };
    let key =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| problem("holds no PEM private key"))?;
    rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| problem("holds a private key that is corrupt or of an unsupported type"))?;
    Ok(())
}

/// The client's TLS options from the settings; `None` without any TLS file.
pub(super) fn tls_options(s: &EtcdSettings) -> Result<Option<TlsOptions>, EtcdError> {
    let https = s.endpoints.iter().any(|e| e.starts_with("https://"));
    if s.cafile.is_none() && s.certfile.is_none() && s.keyfile.is_none() {
        if https {
            return Err(EtcdError::Options {
                problem: format!(
                    "etcd {}: https endpoints need --etcd-cafile (the CA that signed etcd's server certificate)",
                    s.endpoints.join(",")
                ),
            });
        }
        return Ok(None);
    }
    if let Some(plain) = s.endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(EtcdError::Options {
            problem: format!(
                "etcd endpoint {plain} is plain http but TLS files are given; use https://"
            ),
        });
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &s.cafile {
        let pem = read_file("CA file", "--etcd-cafile", ca)?;
        check_certs("CA file", "--etcd-cafile", ca, &pem)?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    match (&s.certfile, &s.keyfile) {
        (Some(c), Some(k)) => {
            let cert = read_file("client certificate", "--etcd-certfile", c)?;
            check_certs("client certificate", "--etcd-certfile", c, &cert)?;
            let key = read_file("client key", "--etcd-keyfile", k)?;
            check_key(k, &key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(EtcdError::Options {
                problem: "--etcd-certfile and --etcd-keyfile go together; give both or neither"
                    .into(),
            });
        }
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdOptions,
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let mut s = EtcdSettings::new(vec![DEFAULT_ENDPOINT.into()]);
        s.password = Some("hunter2".into());
        let o = EtcdOptions {
            password: Some("hunter2".into()),
            ..EtcdOptions::default()
        };
        for d in [format!("{s:?}"), format!("{o:?}")] {
            assert!(!d.contains("hunter2") && d.contains("redacted"), "{d}");
        }
    }

    #[test]
    fn defaults_are_flannels() {
        let o = Cli::try_parse_from(["weftd"]).unwrap().etcd;
        let s = o.resolve_with(env(&[])).unwrap();
        assert_eq!(s.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(s.prefix, "/coreos.com/network");
        assert_eq!(s.cafile, None);
    }

    #[test]
    fn flag_beats_flannel_env_which_beats_default() {
        let flannel = env(&[
            (
                "FLANNELD_ETCD_ENDPOINTS",
                "https://10.0.0.5:2379,https://10.0.0.6:2379",
            ),
            ("FLANNELD_ETCD_PREFIX", "/kubernetes/network/"),
            ("FLANNELD_ETCD_CAFILE", "/etc/etcd/ca.pem"),
            ("FLANNELD_ETCD_CERTFILE", "/etc/flannel/flanneld.pem"),
            ("FLANNELD_ETCD_KEYFILE", "/etc/flannel/flanneld-key.pem"),
            ("FLANNELD_ETCD_USERNAME", "flannel"),
            ("FLANNELD_ETCD_PASSWORD", "secret"),
        ]);
        let o = Cli::try_parse_from(["weftd"]).unwrap().etcd;
        let s = o.resolve_with(&flannel).unwrap();
        assert_eq!(
            s.endpoints,
            vec!["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
        );
        assert_eq!(s.prefix, "/kubernetes/network");
        assert_eq!(s.cafile, Some(PathBuf::from("/etc/etcd/ca.pem")));
        assert_eq!(s.certfile, Some(PathBuf::from("/etc/flannel/flanneld.pem")));
        assert_eq!(
            s.keyfile,
            Some(PathBuf::from("/etc/flannel/flanneld-key.pem"))
        );
        assert_eq!(s.username.as_deref(), Some("flannel"));
        assert_eq!(s.password.as_deref(), Some("secret"));

        let o = Cli::try_parse_from([
            "weftd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379,http://127.0.0.2:2379",
            "--etcd-prefix",
            "/weft",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-relist-interval",
            "30s",
        ])
        .unwrap()
        .etcd;
        let s = o.resolve_with(&flannel).unwrap();
        assert_eq!(
            s.endpoints,
            vec!["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(s.prefix, "/weft");
        assert_eq!(s.cafile, Some(PathBuf::from("/ca.pem")));
        // Not given as flags: still flannel's env.
        assert_eq!(s.certfile, Some(PathBuf::from("/etc/flannel/flanneld.pem")));
        assert_eq!(s.relist_interval, Duration::from_secs(30));
    }

    #[test]
    fn every_option_has_a_weft_env_var() {
        let cmd = Cli::command();
        let mut seen = 0;
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            let want = format!("WEFT_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(
                a.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "--{long}"
            );
            seen += 1;
        }
        assert_eq!(seen, 9);
    }

    #[test]
    fn bad_options_are_explained() {
        let o = EtcdOptions {
            prefix: Some("coreos.com/network".into()),
            ..Cli::try_parse_from(["weftd"]).unwrap().etcd
        };
        let e = o.resolve_with(env(&[])).unwrap_err().to_string();
        assert!(e.contains("must start with '/'"), "{e}");
        let o = EtcdOptions {
            endpoints: Some(vec![" ".into()]),
            ..Cli::try_parse_from(["weftd"]).unwrap().etcd
        };
        assert!(o.resolve_with(env(&[])).is_err());
        let mut s = EtcdSettings::new(vec!["http://127.0.0.1:2379".into()]);
        s.cafile = Some("/nonexistent/ca.pem".into());
        let e = tls_options(&s).unwrap_err().to_string();
        assert!(e.contains("plain http"), "{e}");
        s.endpoints = vec!["https://127.0.0.1:2379".into()];
        let e = tls_options(&s).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("--etcd-cafile"),
            "{e}"
        );
    }

    /// Runs in a child process with real env vars (set by the parent below):
    /// setting env vars in-process would need `unsafe`.
    #[test]
    fn env_child() {
        if std::env::var("WEFT_TEST_ENV_CHILD").is_err() {
            return;
        }
        let s = Cli::try_parse_from(["weftd"])
            .unwrap()
            .etcd
            .resolve()
            .unwrap();
        // WEFT_ beats FLANNELD_; FLANNELD_ fills what WEFT_ leaves.
        assert_eq!(
            s.endpoints,
            vec!["http://192.0.2.1:2379", "http://192.0.2.2:2379"]
        );
        assert_eq!(s.prefix, "/flannel/prefix");
        assert_eq!(s.keyfile, Some(PathBuf::from("/weft/key.pem")));
        println!("env child ok");
    }

    #[test]
    fn weft_and_flannel_env_vars_are_read() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "store::etcd::options::tests::env_child",
                "--nocapture",
            ])
            .env("WEFT_TEST_ENV_CHILD", "1")
            .env(
                "WEFT_ETCD_ENDPOINTS",
                "http://192.0.2.1:2379,http://192.0.2.2:2379",
            )
            .env("FLANNELD_ETCD_ENDPOINTS", "http://198.51.100.1:2379")
            .env("FLANNELD_ETCD_PREFIX", "/flannel/prefix")
            .env("WEFT_ETCD_KEYFILE", "/weft/key.pem")
            .env("FLANNELD_ETCD_KEYFILE", "/flannel/key.pem")
            .env_remove("WEFT_ETCD_PREFIX")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("env child ok"),
            "{text}"
        );
    }

    #[test]
    fn etcdctl_command_in_the_missing_config_error() {
        let mut s = EtcdSettings::new(vec!["https://10.0.0.5:2379".into()]);
        s.prefix = "/kubernetes/network".into();
        s.cafile = Some("/etc/etcd/ca.pem".into());
        // The command only: no client is needed to render it.
        let cmd = render_put_config(&s);
        assert_eq!(
            cmd,
            r#"ETCDCTL_API=3 etcdctl --endpoints=https://10.0.0.5:2379 --cacert=/etc/etcd/ca.pem put /kubernetes/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'"#
        );
    }

    /// A TLS file that is not what it claims is refused at start, naming the
    /// file; key material never appears in the message.
    #[test]
    fn unusable_tls_files_are_named_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        let material = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secret";
        std::fs::write(
            &key,
            format!("-----BEGIN PRIVATE KEY-----\n{material}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let e = check_key(&key, &std::fs::read(&key).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&key.display().to_string()) && e.contains("corrupt"),
            "{e}"
        );
        assert!(!e.contains(material), "{e}");
        let e = check_key(&key, b"not pem at all").unwrap_err().to_string();
        assert!(e.contains("holds no PEM private key"), "{e}");
        let crt = dir.path().join("ca.crt");
        let e = check_certs("CA file", "--etcd-cafile", &crt, b"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ca.crt (--etcd-cafile) holds no PEM certificate"),
            "{e}"
        );
        let bad = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let e = check_certs("CA file", "--etcd-cafile", &crt, bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
