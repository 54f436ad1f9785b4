//! flanneld's command line, translated to weftd's before clap parses it: Go's
//! flag syntax (`-flag=v`, `-flag v`, `-bool`, `-bool=false`), `FLANNELD_<NAME>`
//! for every flag, klog's `-v=N`, and the flanneld flags weft has no use for
//! (accepted with a note, never a parse error that crash-loops a DaemonSet).
//! No I/O: the environment comes in as a function.

use std::ffi::OsString;

/// flanneld's flags that weft accepts but does not act on, and why.
const IGNORED: [(&str, bool, &str); 3] = [
    (
        "ip-blackhole-route",
        true,
        "weft's TUN route already keeps traffic for unleased subnets off the default route",
    ),
    ("vmodule", false, "weft's log filter is --log-level"),
    ("log_backtrace_at", false, "weft logs no backtraces"),
];

/// Flags of weftd (and flanneld) that are Go booleans: `-flag` alone means
/// true, and a value only ever comes after `=`.
const BOOLS: [&str; 11] = [
    "set-node-network-unavailable",
    "replace-kernel-vxlan",
    "ip-masq",
    "ip-masq-fully-random-disable",
    "kube-subnet-mgr",
    "iptables-forward-rules",
    "accept-unknown-peers",
    "accept-foreign-sources",
    "offload",
    "once",
    "version",
];

/// flanneld's flags that weftd implements under the same name; each also
/// reads `FLANNELD_<NAME>`. The etcd ones are read by the etcd options.
const FLANNEL: [&str; 20] = [
    "iface",
    "iface-regex",
    "iface-can-reach",
    "subnet-file",
    "public-ip",
    "subnet-lease-renew-margin",
    "ip-masq",
    "ip-masq-fully-random-disable",
    "kube-subnet-mgr",
    "kube-api-url",
    "kube-annotation-prefix",
    "kubeconfig-file",
    "healthz-ip",
    "healthz-port",
    "iptables-resync",
    "iptables-forward-rules",
    "net-config-path",
    "public-ipv6",
    "ip-blackhole-route",
    "set-node-network-unavailable",
];

/// weftd's command line, and notes to log once logging is up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translated {
    pub args: Vec<OsString>,
    pub notes: Vec<String>,
}

/// What can be wrong with a flanneld-style command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoFlagsError {
    #[error("{from}: {value:?} is not a boolean (true, false, 1, 0, t, f)")]
    NotBool { from: String, value: String },
    #[error("{from}: {value:?} is not a klog verbosity (a number, 0 to 10)")]
    NotVerbosity { from: String, value: String },
    #[error("{from} needs a value")]
    NoValue { from: String },
}

/// The environment variable flanneld reads for `flag` (`FLANNELD_IP_MASQ`).
pub fn env_name(prefix: &str, flag: &str) -> String {
    format!("{prefix}_{}", flag.replace('-', "_").to_uppercase())
}

/// Go's `strconv.ParseBool`.
fn go_bool(from: &str, v: &str) -> Result<bool, GoFlagsError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(GoFlagsError::NotBool {
            from: from.into(),
            value: v.into(),
        }),
    }
}

/// klog's verbosity as a log level: 0–1 info, 2–4 debug, 5 and up trace.
fn verbosity(from: &str, v: &str) -> Result<&'static str, GoFlagsError> {
    match v.parse::<u8>() {
        Ok(0..=1) => Ok("info"),
        Ok(2..=4) => Ok("debug"),
        Ok(5..=10) => Ok("trace"),
        _ => Err(GoFlagsError::NotVerbosity {
            from: from.into(),
            value: v.into(),
        }),
    }
}

/// Translates `args` (with the program name first) and the `FLANNELD_*`
/// variables `env` holds into weftd's own command line. Precedence: the
/// command line, then `WEFT_<NAME>`, then `FLANNELD_<NAME>`.
///
/// # Errors
/// A boolean or verbosity that does not parse, or `-v` without a value.
pub fn translate(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Translated, GoFlagsError> {
    let mut it = args.into_iter();
    let mut out = Translated::default();
    out.args.extend(it.next());
    let mut front: Vec<OsString> = vec![];
    let mut seen: Vec<String> = vec![];
    let mut rest = vec![];
    let mut takes_value = false;
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str().map(str::to_string) else {
            rest.push(arg);
            takes_value = false;
            continue;
        };
        if s == "--" {
            rest.push(arg);
            rest.extend(it.by_ref());
            break;
        }
        // A value of the flag before it, or a positional or short flag (`-h`).
        let body = if takes_value {
            None
        } else if let Some(b) = s.strip_prefix("--") {
            Some(b)
        } else {
            s.strip_prefix('-').filter(|b| b.len() > 1 || *b == "v")
        };
        takes_value = false;
        let Some(body) = body else {
            rest.push(arg);
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        let from = format!("-{name}");
        seen.push(name.clone());
        if name == "v" {
            let v = match value {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or(GoFlagsError::NoValue { from: from.clone() })?,
            };
            front.push(format!("--log-level={}", verbosity(&from, &v)?).into());
            continue;
        }
        if let Some((_, is_bool, why)) = IGNORED.iter().find(|(n, ..)| *n == name) {
            if !is_bool && value.is_none() {
                it.next();
            }
            out.notes
                .push(format!("flanneld's {from} has no effect in weft: {why}"));
            continue;
        }
        if BOOLS.contains(&name.as_str()) {
            match value {
                Some(v) if name == "version" => {
                    if go_bool(&from, &v)? {
                        rest.push("--version".into());
                    }
                }
                Some(v) => rest.push(format!("--{name}={}", go_bool(&from, &v)?).into()),
                None => rest.push(format!("--{name}").into()),
            }
            continue;
        }
        takes_value = value.is_none() && name != "help";
        rest.push(
            match value {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            }
            .into(),
        );
    }
    for flag in FLANNEL.iter().copied().chain(["v", "vmodule"]) {
        let Some(v) = env(&env_name("FLANNELD", flag)) else {
            continue;
        };
        if seen.iter().any(|s| s == flag) || env(&env_name("WEFT", flag)).is_some() {
            continue;
        }
        let from = env_name("FLANNELD", flag);
        if flag == "v" {
            front.push(format!("--log-level={}", verbosity(&from, &v)?).into());
        } else if let Some((.., why)) = IGNORED.iter().find(|(n, ..)| *n == flag) {
            out.notes
                .push(format!("flanneld's {from} has no effect in weft: {why}"));
        } else if BOOLS.contains(&flag) {
            front.push(format!("--{flag}={}", go_bool(&from, &v)?).into());
        } else {
            front.push(format!("--{flag}={v}").into());
        }
    }
    out.args.extend(front);
    out.args.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Translated, GoFlagsError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        translate(
            std::iter::once("weftd")
                .chain(args.iter().copied())
                .map(OsString::from),
            &move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        )
    }

    fn args(t: &Translated) -> Vec<String> {
        t.args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Seed 001's unit: `flanneld -etcd-cafile=… -etcd-endpoints=… -etcd-prefix=…`.
    #[test]
    fn single_dash_go_flags_become_weftd_flags() {
        let t = run(
            &[
                "-etcd-cafile=/etc/kubernetes/ssl/ca.pem",
                "-etcd-endpoints=https://10.0.0.1:2379",
                "-etcd-prefix",
                "/kubernetes/network",
                "-iface",
                "eth1",
                "-ip-masq",
                "--kube-subnet-mgr=true",
                "-iptables-forward-rules=f",
                "-h",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            args(&t),
            [
                "--etcd-cafile=/etc/kubernetes/ssl/ca.pem",
                "--etcd-endpoints=https://10.0.0.1:2379",
                "--etcd-prefix",
                "/kubernetes/network",
                "--iface",
                "eth1",
                "--ip-masq",
                "--kube-subnet-mgr=true",
                "--iptables-forward-rules=false",
                "-h",
            ]
        );
        assert!(t.notes.is_empty());
    }

    /// A value that starts with a dash belongs to the flag before it.
    #[test]
    fn a_flags_value_is_never_taken_for_a_flag() {
        let t = run(&["-iface-regex", "-eth[0-9]", "lab", "-nodes", "2"], &[]).unwrap();
        assert_eq!(
            args(&t),
            ["--iface-regex", "-eth[0-9]", "lab", "--nodes", "2"]
        );
    }

    #[test]
    fn klog_verbosity_maps_onto_the_log_level_and_an_explicit_level_wins() {
        let t = run(&["-v=2", "--ip-masq"], &[]).unwrap();
        assert_eq!(args(&t), ["--log-level=debug", "--ip-masq"]);
        let t = run(&["--v", "6", "--log-level", "warn"], &[]).unwrap();
        assert_eq!(args(&t), ["--log-level=trace", "--log-level", "warn"]);
        assert_eq!(
            run(&["-v=loud"], &[]).unwrap_err().to_string(),
            "-v: \"loud\" is not a klog verbosity (a number, 0 to 10)"
        );
        assert!(matches!(
            run(&["-v"], &[]),
            Err(GoFlagsError::NoValue { .. })
        ));
    }

    #[test]
    fn flannel_flags_weft_has_no_use_for_are_accepted_with_a_note() {
        let t = run(
            &[
                "-public-ipv6",
                "2001:db8::1",
                "--ip-blackhole-route",
                "-vmodule=foo=3",
                "--ip-masq",
            ],
            &[],
        )
        .unwrap();
        // -public-ipv6 is weftd's --public-ipv6 (dual-stack).
        assert_eq!(args(&t), ["--public-ipv6", "2001:db8::1", "--ip-masq"]);
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
        assert!(t.notes[0].starts_with("flanneld's -ip-blackhole-route has no effect in weft"));
    }

    #[test]
    fn flanneld_variables_fill_what_the_command_line_and_weft_variables_leave() {
        let t = run(
            &["--iface", "eth0"],
            &[
                ("FLANNELD_IFACE", "eth9"),
                ("FLANNELD_PUBLIC_IP", "192.0.2.7"),
                ("FLANNELD_IP_MASQ", "1"),
                ("FLANNELD_HEALTHZ_PORT", "8471"),
                ("WEFT_HEALTHZ_PORT", "9000"),
                ("FLANNELD_V", "3"),
                ("FLANNELD_PUBLIC_IPV6", "2001:db8::1"),
                // Read by the etcd options themselves.
                ("FLANNELD_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
            ],
        )
        .unwrap();
        assert_eq!(
            args(&t),
            [
                "--public-ip=192.0.2.7",
                "--ip-masq=true",
                "--public-ipv6=2001:db8::1",
                "--log-level=debug",
                "--iface",
                "eth0"
            ]
        );
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        assert_eq!(
            run(&[], &[("FLANNELD_KUBE_SUBNET_MGR", "yes")])
                .unwrap_err()
                .to_string(),
            "FLANNELD_KUBE_SUBNET_MGR: \"yes\" is not a boolean (true, false, 1, 0, t, f)"
        );
    }

    #[test]
    fn everything_after_a_double_dash_and_non_utf8_arguments_pass_through() {
        use std::os::unix::ffi::OsStringExt;
        let raw = OsString::from_vec(vec![b'-', b'x', 0xff]);
        let t = translate(
            [
                OsString::from("weftd"),
                raw.clone(),
                "--".into(),
                "-ip-masq".into(),
            ],
            &|_| None,
        )
        .unwrap();
        assert_eq!(t.args[1..], [raw, "--".into(), "-ip-masq".into()]);
    }
}
