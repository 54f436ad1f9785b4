//! `weft-cni`, the CNI plugin: reads the `CNI_*` environment and the network
//! configuration, serves ADD, DEL, CHECK, VERSION, STATUS and GC for CNI
//! 0.3.0 to 1.1.0, and answers with one result or one CNI error object.
//!
//! Contract: [`run`] never panics on its input and prints nothing itself;
//! the binary prints [`Outcome::stdout`] and exits with [`Outcome::exit`].
//! Diagnostics go to stderr ([`log`]). Everything is synchronous.
//!
//! - [`env`], [`conf`], [`version`], [`result`], [`error`]: the protocol;
//! - [`delegate`]: flannel-compatible bridge + host-local delegation;
//! - [`builtin`], [`ipam`]: the plugin's own veth, bridge and IPAM, both families (over [`crate::netlink`]);
//! - [`install`]: what a DaemonSet init container runs.

pub mod builtin;
pub mod conf;
pub mod delegate;
pub mod env;
pub mod error;
pub mod install;
pub mod ipam;
pub mod result;
pub mod version;

use std::io::Read;

use serde_json::json;

use conf::{Mode, NetConf};
use env::{CniEnv, Command};
use error::{CniError, code};
use version::Version;

use crate::subnet_env::{SubnetEnv, SubnetEnvError};

/// What the binary prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit: u8,
}

/// One diagnostic line on stderr (the runtime logs it; stdout is the result's).
pub fn log(msg: &str) {
    eprintln!("weft-cni: {msg}");
}

/// Serves one CNI call: `get` reads the environment, `stdin` the configuration.
/// stdin is read only once `CNI_COMMAND` is known to be valid.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut version = Version::LATEST;
    match serve(get, stdin, &mut version) {
        Ok(stdout) => Outcome { stdout, exit: 0 },
        Err(e) => {
            log(&e.to_string());
            Outcome {
                stdout: e.to_json(version),
                exit: 1,
            }
        }
    }
}

fn serve(
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version: &mut Version,
) -> Result<String, CniError> {
    let command = Command::from_env(get)?;
    let mut buf = Vec::new();
    stdin.read_to_end(&mut buf).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("cannot read the network configuration from stdin: {e}"),
        )
    })?;
    let serve_call: fn(&Call, Version) -> Result<String, CniError> = match command {
        Command::Version => return Ok(version_info(&buf)),
        Command::Add => add,
        Command::Del => del,
        Command::Check => check,
        Command::Status => status,
        Command::Gc => gc,
    };
    let call = prepare(get, command, &buf, version)?;
    serve_call(&call, *version)
}

/// A call other than VERSION, its configuration read and checked.
struct Call {
    map: serde_json::Map<String, serde_json::Value>,
    conf: NetConf,
    env: CniEnv,
}

/// Reads and checks the configuration of a call other than VERSION, and sets
/// `version` to its `cniVersion` (the version errors are written in).
fn prepare(
    get: &dyn Fn(&str) -> Option<String>,
    command: Command,
    buf: &[u8],
    version: &mut Version,
) -> Result<Call, CniError> {
    let map = conf::parse_json(buf)?;
    *version = conf::version_of(&map)?;
    let min = match command {
        Command::Check => Version::V0_4_0,
        Command::Status | Command::Gc => Version::V1_1_0,
        _ => Version::V0_3_0,
    };
    if *version < min {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version} does not allow {}; it needs cniVersion {min} or newer",
                command.as_str()
            ),
        ));
    }
    let conf = NetConf::from_map(&map, *version)?;
    if !env::valid_container_id(&conf.name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "name {:?} may hold only letters, digits, _ . - (it names a directory under dataDir)",
                conf.name
            ),
        ));
    }
    let env = CniEnv::from_env(get, command)?;
    Ok(Call { map, conf, env })
}

/// ADD: delegate or built-in, as [`resolve_mode`] says; the result in `version`'s format.
fn add(call: &Call, version: Version) -> Result<String, CniError> {
    let (conf, env) = (&call.conf, &call.env);
    let senv = read_subnet_env(conf, code::TRY_AGAIN_LATER)?;
    let result = match resolve_mode(conf, env) {
        Mode::Delegate => delegate::add(conf, env, &senv)?,
        _ => builtin::add(conf, env, &senv)?,
    };
    serde_json::to_string_pretty(&result.to_json(version))
        .map_err(|e| CniError::new(code::DECODE, e.to_string()))
}

/// DEL: whichever mode set the attachment up undoes it.
fn del(call: &Call, _: Version) -> Result<String, CniError> {
    let (conf, env) = (&call.conf, &call.env);
    if delegate::has_saved(conf, env) {
        delegate::del(conf, env)?;
    } else {
        builtin::del(conf, env)?;
    }
    Ok(String::new())
}

/// CHECK: whichever mode set the attachment up checks it.
fn check(call: &Call, _: Version) -> Result<String, CniError> {
    let (conf, env) = (&call.conf, &call.env);
    if delegate::has_saved(conf, env) {
        delegate::check(conf, env)?;
    } else {
        let senv = read_subnet_env(conf, code::TRY_AGAIN_LATER).ok();
        builtin::check(conf, env, senv.as_ref())?;
    }
    Ok(String::new())
}

/// STATUS: ready when subnet.env is there (and, in delegate mode, the delegate plugin).
fn status(call: &Call, _: Version) -> Result<String, CniError> {
    let (conf, env) = (&call.conf, &call.env);
    read_subnet_env(conf, code::NOT_AVAILABLE)?;
    if conf.mode == Mode::Delegate {
        let t = conf.delegate_type();
        if delegate::find_plugin(&env.path, &t).is_none() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("mode is delegate but plugin {t:?} is not in CNI_PATH"),
            ));
        }
    }
    Ok(String::new())
}

/// GC: both modes release the attachments the runtime no longer lists as valid.
fn gc(call: &Call, _: Version) -> Result<String, CniError> {
    let valid = conf::valid_attachments(&call.map)?;
    let d = delegate::gc(&call.conf, &call.env, &valid);
    builtin::gc(&call.conf, &valid)?;
    d?;
    Ok(String::new())
}

/// VERSION's answer: the versions weft-cni speaks, labelled with the
/// request's `cniVersion` when it names one.
fn version_info(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| Version::LATEST.as_str().to_string());
    json!({ "cniVersion": asked, "supportedVersions": Version::supported() }).to_string()
}

/// Delegate when asked, or (auto) when the delegate and its IPAM plugin are
/// both in `CNI_PATH`; built-in otherwise.
fn resolve_mode(conf: &NetConf, env: &CniEnv) -> Mode {
    match conf.mode {
        Mode::Auto => {
            let found = |t: &str| delegate::find_plugin(&env.path, t).is_some();
            if found(&conf.delegate_type()) && found(&conf.ipam_type()) {
                Mode::Delegate
            } else {
                Mode::Builtin
            }
        }
        m => m,
    }
}

fn read_subnet_env(conf: &NetConf, missing_code: u32) -> Result<SubnetEnv, CniError> {
    SubnetEnv::read(&conf.subnet_file).map_err(|e| match &e {
        SubnetEnvError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CniError::new(
                missing_code,
                format!(
                    "{e}: weftd has not written the node's lease yet (is weftd running? subnetFile in the conflist must match its --subnet-file)"
                ),
            )
        }
        _ => CniError::new(code::SUBNET_ENV, e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, u8) {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let out = run(&get, &mut stdin.as_bytes());
        let v = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
        (v, out.exit)
    }

    #[test]
    fn version_answers_for_every_version() {
        for v in Version::ALL {
            let (j, exit) = call(
                &[("CNI_COMMAND", "VERSION")],
                &format!(r#"{{"cniVersion":"{v}"}}"#),
            );
            assert_eq!(exit, 0);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["supportedVersions"].as_array().unwrap().len(), 5);
        }
        let (j, _) = call(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(j["cniVersion"], "1.1.0");
    }

    /// A subnet.env whose subnet has no room (255.255.255.255/32 once made
    /// ADD overflow): a CNI error object, never a panic.
    #[test]
    fn a_subnet_without_room_is_a_cni_error() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("subnet.env");
        std::fs::write(
            &env,
            "FLANNEL_NETWORK=0.0.0.0/1\nFLANNEL_SUBNET=255.255.255.255/32\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "n", "type": "weft", "mode": "builtin",
            "subnetFile": env, "dataDir": dir.path().join("data"),
        });
        let (j, exit) = call(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/run/netns/none"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/nonexistent"),
            ],
            &conf.to_string(),
        );
        assert_eq!(exit, 1, "{j}");
        assert_eq!(j["code"], code::SUBNET_ENV, "{j}");
        assert!(
            j["msg"]
                .as_str()
                .unwrap()
                .contains("FLANNEL_SUBNET=255.255.255.255/32"),
            "{j}"
        );
    }

    /// Inconsistent dual-stack subnet.env (an IPv6 subnet outside the IPv6
    /// network, one variable without the other): code 100 naming the
    /// variable, before anything is set up.
    #[test]
    fn inconsistent_ipv6_subnet_env_is_refused_naming_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("subnet.env");
        let base = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.3.1/24\nFLANNEL_MTU=1450\n";
        for (extra, needle) in [
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc01:0:0:3::1/64\n",
                "FLANNEL_IPV6_NETWORK=fc00::/48",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\n",
                "FLANNEL_IPV6_SUBNET is missing",
            ),
        ] {
            std::fs::write(&env, format!("{base}{extra}")).unwrap();
            let conf = serde_json::json!({
                "cniVersion": "1.0.0", "name": "n", "type": "weft", "mode": "builtin",
                "subnetFile": env, "dataDir": dir.path().join("data"),
            });
            let (j, exit) = call(
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/run/netns/none"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_PATH", "/nonexistent"),
                ],
                &conf.to_string(),
            );
            assert_eq!((exit, j["code"].as_u64()), (1, Some(100)), "{j}");
            let msg = j["msg"].as_str().unwrap();
            assert!(msg.contains(needle) && msg.contains("subnet.env"), "{msg}");
            assert!(!dir.path().join("data").exists());
        }
    }

    #[test]
    fn bad_input_gives_spec_codes() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let cases: [(&str, u64, &str); 5] = [
            ("not json", 6, "not valid JSON"),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7, "type"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","type":"weft"}"#,
                1,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#,
                4,
                "CNI_NETNS",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","delegate":[]}"#,
                7,
                "delegate",
            ),
        ];
        for (stdin, want, needle) in cases {
            let (j, exit) = call(&add, stdin);
            assert_eq!(exit, 1, "{stdin}");
            assert_eq!(j["code"], want, "{stdin}: {j}");
            assert!(j["msg"].as_str().unwrap().contains(needle), "{stdin}: {j}");
        }
        let (j, _) = call(
            &[("CNI_COMMAND", "CHECK")],
            r#"{"cniVersion":"0.3.1","name":"n","type":"weft"}"#,
        );
        assert_eq!(j["code"], 1);
        let (j, _) = call(&[], "");
        assert_eq!(j["code"], 4);
    }

    #[test]
    fn status_without_subnet_env_is_50() {
        let d = tempfile::tempdir().unwrap();
        let stdin = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"weft","subnetFile":"{}"}}"#,
            d.path().join("none.env").display()
        );
        let (j, exit) = call(&[("CNI_COMMAND", "STATUS")], &stdin);
        assert_eq!((j["code"].as_u64(), exit), (Some(50), 1), "{j}");
        assert!(j["msg"].as_str().unwrap().contains("none.env"));
    }
}
