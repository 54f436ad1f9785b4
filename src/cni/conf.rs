//! The network configuration weft-cni reads on stdin, and the bridge +
//! host-local configuration it hands to a delegate in flannel's way.
//!
//! The keys are flannel's (`subnetFile`, `dataDir`, `delegate`, `ipam`,
//! `runtimeConfig`), so a flannel conflist with `"type": "weft"` works
//! unchanged; weft adds `mode` (`auto`, `delegate`, `builtin`) and
//! `flannelDataDir` (where flannel saved the pods it added).

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::error::{CniError, code};
use super::version::Version;
use crate::subnet_env::{self, SubnetEnv};

/// Where delegate configurations and built-in IPAM state live by default.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";
/// Where flannel's plugin saved its delegate configurations by default
/// (`<dir>/<containerID>`): pods added under flannel are deleted from there.
pub const FLANNEL_DATA_DIR: &str = "/var/lib/cni/flannel";
/// The bridge built-in mode creates (the bridge plugin's default, as flannel uses).
pub const DEFAULT_BRIDGE: &str = "cni0";

/// How a call is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Delegate when the delegate and its IPAM plugin are in `CNI_PATH`,
    /// built-in otherwise.
    Auto,
    Delegate,
    Builtin,
}

/// The parsed network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    /// flannel's data directory (`flannelDataDir`, default
    /// [`FLANNEL_DATA_DIR`]): read, never written, for pods flannel added.
    pub flannel_data_dir: PathBuf,
    pub mode: Mode,
    /// The user's overrides of the delegate configuration.
    pub delegate: Map<String, Value>,
    /// The user's IPAM section (merged into the delegate's, as flannel does).
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Parses stdin as a JSON object.
///
/// # Errors
/// Code 6 saying where the JSON breaks.
pub fn parse_json(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CniError::new(
            code::DECODE,
            "the network configuration on stdin is not a JSON object",
        )),
        Err(e) => Err(CniError::new(
            code::DECODE,
            format!("the network configuration on stdin is not valid JSON: {e}"),
        )),
    }
}

/// The `cniVersion` of a configuration.
///
/// # Errors
/// Code 7 when missing, 1 when unsupported.
pub fn version_of(m: &Map<String, Value>) -> Result<Version, CniError> {
    match m.get("cniVersion") {
        None | Some(Value::Null) => Err(invalid(format!(
            "cniVersion is missing from the network configuration; set one of {}",
            Version::supported().join(", ")
        ))),
        Some(Value::String(s)) => Version::parse(s),
        Some(other) => Err(invalid(format!("cniVersion must be a string, got {other}"))),
    }
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>, CniError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("{k} must be a string, got {other}"))),
    }
}

fn opt_obj(m: &Map<String, Value>, k: &str) -> Result<Option<Map<String, Value>>, CniError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o.clone())),
        Some(other) => Err(invalid(format!("{k} must be a JSON object, got {other}"))),
    }
}

impl NetConf {
    /// Validates a parsed configuration of version `version`.
    ///
    /// # Errors
    /// Code 7 naming the field.
    pub fn from_map(m: &Map<String, Value>, version: Version) -> Result<NetConf, CniError> {
        let plugin_type = opt_str(m, "type")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid("type is missing from the network configuration (it names the plugin: \"weft\")")
            })?;
        let name = opt_str(m, "name")?.filter(|s| !s.is_empty()).ok_or_else(|| {
            invalid("name is missing from the network configuration (the runtime copies it from the conflist)")
        })?;
        let mode = match opt_str(m, "mode")?.as_deref() {
            None | Some("auto") => Mode::Auto,
            Some("delegate") => Mode::Delegate,
            Some("builtin") => Mode::Builtin,
            Some(other) => {
                return Err(invalid(format!(
                    "mode {other:?} is not known; use \"auto\", \"delegate\" or \"builtin\""
                )));
            }
        };
        let delegate = opt_obj(m, "delegate")?.unwrap_or_default();
        if let Some(t) = delegate.get("type")
            && !t.is_string()
        {
            return Err(invalid("delegate.type must be a string"));
        }
        for k in ["name", "ipam"] {
            if delegate.contains_key(k) {
                return Err(invalid(format!(
                    "delegate.{k} must not be set: weft sets it (put IPAM settings in the top-level ipam)"
                )));
            }
        }
        Ok(NetConf {
            version,
            name,
            plugin_type,
            subnet_file: opt_str(m, "subnetFile")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| subnet_env::DEFAULT_PATH.to_string())
                .into(),
            data_dir: opt_str(m, "dataDir")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())
                .into(),
            flannel_data_dir: opt_str(m, "flannelDataDir")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| FLANNEL_DATA_DIR.to_string())
                .into(),
            mode,
            delegate,
            ipam: opt_obj(m, "ipam")?,
            runtime_config: m.get("runtimeConfig").cloned().filter(|v| !v.is_null()),
            prev_result: m.get("prevResult").cloned().filter(|v| !v.is_null()),
        })
    }

    /// The delegate's plugin type (`bridge` unless overridden).
    pub fn delegate_type(&self) -> String {
        self.delegate
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("bridge")
            .to_string()
    }

    /// The IPAM plugin type the delegate will call (`host-local` unless set).
    pub fn ipam_type(&self) -> String {
        self.ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("host-local")
            .to_string()
    }

    /// The delegate configuration, built as flannel's CNI plugin builds it:
    /// the user's `delegate` keys win; `name`, `cniVersion` and `ipam` are
    /// weft's; IPAM's range is the node subnet and it routes the network.
    /// On a dual-stack node (`FLANNEL_IPV6_SUBNET`), as flannel's: a second
    /// range set with the IPv6 subnet after the IPv4 one, and a route to
    /// the IPv6 network after the IPv4 network's (the user's routes first).
    ///
    /// # Errors
    /// Code 7 when `ipam.routes` is not an array.
    pub fn delegate_config(&self, env: &SubnetEnv, version: Version) -> Result<Value, CniError> {
        let mut d = self.delegate.clone();
        d.insert("name".into(), json!(self.name));
        d.insert("cniVersion".into(), json!(version.as_str()));
        d.entry("type").or_insert_with(|| json!("bridge"));
        d.entry("ipMasq").or_insert_with(|| json!(!env.ipmasq));
        d.entry("mtu").or_insert_with(|| json!(env.mtu));
        if d.get("type").and_then(Value::as_str) == Some("bridge") {
            d.entry("isGateway").or_insert_with(|| json!(true));
            // A pod reaching itself through a Service needs its bridge port
            // in hairpin mode; flannel's documented conflist sets it.
            d.entry("hairpinMode").or_insert_with(|| json!(true));
        }
        if let Some(rc) = &self.runtime_config {
            d.insert("runtimeConfig".into(), rc.clone());
        }
        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.entry("type").or_insert_with(|| json!("host-local"));
        // One host-local range per family, as flannel's CNI plugin writes
        // them; an IPv6-only network has only the IPv6 one.
        let mut ranges = vec![];
        if let Some(v4) = &env.ipv4 {
            ranges.push(json!([{ "subnet": v4.subnet.trunc().to_string() }]));
        }
        if let Some(v6) = &env.ipv6 {
            ranges.push(json!([{ "subnet": v6.subnet.trunc().to_string() }]));
        }
        ipam.insert("ranges".into(), Value::Array(ranges));
        let mut routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                return Err(invalid(format!(
                    "ipam.routes must be an array, got {other}"
                )));
            }
        };
        if let Some(v4) = &env.ipv4 {
            routes.push(json!({ "dst": v4.network.to_string() }));
        }
        if let Some(v6) = &env.ipv6 {
            routes.push(json!({ "dst": v6.network.to_string() }));
        }
        ipam.insert("routes".into(), Value::Array(routes));
        d.insert("ipam".into(), Value::Object(ipam));
        Ok(Value::Object(d))
    }

    /// Built-in mode's bridge name (`delegate.bridge`, default `cni0`).
    ///
    /// # Errors
    /// Code 7 when it is not a valid interface name.
    pub fn bridge_name(&self) -> Result<String, CniError> {
        let b = opt_str(&self.delegate, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if super::env::valid_ifname(&b) {
            Ok(b)
        } else {
            Err(invalid(format!(
                "delegate.bridge {b:?} is not a valid interface name"
            )))
        }
    }

    /// Built-in mode's MTU: `delegate.mtu`, else subnet.env's.
    ///
    /// # Errors
    /// Code 7 when `delegate.mtu` is not a number in 68..=65535.
    pub fn mtu(&self, env: &SubnetEnv) -> Result<u32, CniError> {
        match self.delegate.get("mtu") {
            None | Some(Value::Null) => Ok(env.mtu),
            Some(v) => v
                .as_u64()
                .filter(|m| (68..=65535).contains(m))
                .map(|m| m as u32)
                .ok_or_else(|| invalid(format!("delegate.mtu must be a number 68-65535, got {v}"))),
        }
    }

    /// Whether built-in mode gives the pod a default route (`delegate.isDefaultGateway`).
    ///
    /// # Errors
    /// Code 7 when it is not a boolean.
    pub fn default_route(&self) -> Result<bool, CniError> {
        self.delegate_bool("isDefaultGateway", false)
    }

    /// Built-in mode: `delegate.hairpinMode` (default true, so a pod reaches
    /// itself through a Service).
    ///
    /// # Errors
    /// Code 7 when it is not a boolean.
    pub fn hairpin(&self) -> Result<bool, CniError> {
        self.delegate_bool("hairpinMode", true)
    }

    fn delegate_bool(&self, key: &str, default: bool) -> Result<bool, CniError> {
        match self.delegate.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(invalid(format!(
                "delegate.{key} must be true or false, got {v}"
            ))),
        }
    }
}

/// The `(containerID, ifname)` pairs of a GC request
/// (`cni.dev/valid-attachments`, or the older `cni.dev/attachments`).
///
/// # Errors
/// Code 7 when the list is missing or malformed.
pub fn valid_attachments(m: &Map<String, Value>) -> Result<Vec<(String, String)>, CniError> {
    let list = m
        .get("cni.dev/valid-attachments")
        .or_else(|| m.get("cni.dev/attachments"))
        .ok_or_else(|| {
            invalid(
                "GC needs cni.dev/valid-attachments in the configuration (the attachments to keep)",
            )
        })?;
    let arr = list
        .as_array()
        .ok_or_else(|| invalid("cni.dev/valid-attachments must be an array"))?;
    arr.iter()
        .map(|a| {
            let c = a.get("containerID").and_then(Value::as_str);
            let i = a.get("ifname").and_then(Value::as_str);
            match (c, i) {
                (Some(c), Some(i)) => Ok((c.to_string(), i.to_string())),
                _ => Err(invalid(format!(
                    "cni.dev/valid-attachments entry {a} needs containerID and ifname"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
            std::path::Path::new("/x"),
        )
        .unwrap()
    }

    fn conf(s: &str) -> NetConf {
        let m = parse_json(s.as_bytes()).unwrap();
        NetConf::from_map(&m, version_of(&m).unwrap()).unwrap()
    }

    #[test]
    fn delegate_config_as_flannel_builds_it() {
        let c = conf(
            r#"{"cniVersion":"0.3.1","name":"cbr0","type":"weft",
                "delegate":{"hairpinMode":true,"isDefaultGateway":true},
                "ipam":{"routes":[{"dst":"192.168.0.0/24"}]}}"#,
        );
        let d = c.delegate_config(&env(), Version::V0_3_1).unwrap();
        assert_eq!(d["type"], "bridge");
        assert_eq!(d["name"], "cbr0");
        assert_eq!(d["cniVersion"], "0.3.1");
        assert_eq!(d["isGateway"], true);
        assert_eq!(d["ipMasq"], false);
        assert_eq!(d["mtu"], 1472);
        assert_eq!(d["hairpinMode"], true);
        assert_eq!(d["ipam"]["type"], "host-local");
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet":"10.1.17.0/24"}]]));
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst":"192.168.0.0/24"},{"dst":"10.1.0.0/16"}])
        );
    }

    /// flannel's dual-stack subnet.env (its plugin's own test data).
    fn dual_env() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
            std::path::Path::new("/x"),
        )
        .unwrap()
    }

    /// What flannel's plugin hands the bridge plugin for the dual-stack
    /// subnet.env and a bare configuration (its test's expected JSON), plus
    /// the two keys weft adds on purpose: `cniVersion` (flannel copies it
    /// when the configuration has one) and `hairpinMode` (docs/cni.md).
    #[test]
    fn dual_stack_delegate_config_as_flannel_builds_it() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"cni-flannel","type":"flannel"}"#);
        let d = c.delegate_config(&dual_env(), Version::V1_0_0).unwrap();
        let flannel = json!({
            "ipMasq": false,
            "ipam": {
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
                "type": "host-local"
            },
            "isGateway": true,
            "mtu": 1472,
            "name": "cni-flannel",
            "type": "bridge",
            "cniVersion": "1.0.0",
            "hairpinMode": true
        });
        assert_eq!(d, flannel);
        // flannel's getDelegateIPAM with the user's IPAM section: its keys
        // and routes kept, the user's routes first, then each network's.
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"cni-flannel","type":"flannel",
                "ipam":{"type":"my-ipam","unknown-param":"unknown-value",
                        "routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"}]}}"#,
        );
        let d = c.delegate_config(&dual_env(), Version::V1_0_0).unwrap();
        assert_eq!(
            d["ipam"],
            json!({
                "type": "my-ipam",
                "unknown-param": "unknown-value",
                "routes": [
                    {"dst": "10.96.0.0/12"},
                    {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
                    {"dst": "10.1.0.0/16"},
                    {"dst": "fc00::/48"}
                ],
                "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
            })
        );
        // The IPv6 subnet as written (its first host address) is a range
        // of the subnet itself.
        let mut e = dual_env();
        e.ipv6.as_mut().unwrap().subnet = "fc00:0:0:3::1/64".parse().unwrap();
        let d = c.delegate_config(&e, Version::V1_0_0).unwrap();
        assert_eq!(
            d["ipam"]["ranges"][1],
            json!([{"subnet": "fc00:0:0:3::/64"}])
        );
    }

    /// IPv4-only: the delegate configuration is byte for byte what it was
    /// before dual-stack support (one range set, one network route).
    #[test]
    fn ipv4_only_delegate_config_bytes_unchanged() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"cbr0","type":"weft",
                "delegate":{"hairpinMode":true,"isDefaultGateway":true},
                "ipam":{"dataDir":"/d"}}"#,
        );
        let d = c.delegate_config(&env(), Version::V1_0_0).unwrap();
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"/d","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1472,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn user_overrides_win_and_bad_fields_are_named() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"weft","delegate":{"mtu":1400,"ipMasq":true,"isGateway":false}}"#,
        );
        let d = c.delegate_config(&env(), Version::V1_0_0).unwrap();
        assert_eq!(
            (
                d["mtu"].clone(),
                d["ipMasq"].clone(),
                d["isGateway"].clone()
            ),
            (json!(1400), json!(true), json!(false))
        );
        assert_eq!(d["hairpinMode"], true, "on unless the user says otherwise");
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"weft","delegate":{"hairpinMode":false}}"#,
        );
        let d = c.delegate_config(&env(), Version::V1_0_0).unwrap();
        assert_eq!(d["hairpinMode"], false);
        assert!(!c.hairpin().unwrap());
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#);
        assert!(c.hairpin().unwrap(), "built-in mode: on by default");
        for (bad, field) in [
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "type is missing"),
            (r#"{"cniVersion":"1.0.0","type":"weft"}"#, "name is missing"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","delegate":{"name":"x"}}"#,
                "delegate.name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mode":"fast"}"#,
                "mode",
            ),
        ] {
            let m = parse_json(bad.as_bytes()).unwrap();
            let e = NetConf::from_map(&m, Version::V1_0_0).unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains(field), "{}", e.msg);
        }
        assert_eq!(parse_json(b"{nope").unwrap_err().code, 6);
        let m = parse_json(br#"{"cniVersion":"9.9.9"}"#).unwrap();
        assert_eq!(version_of(&m).unwrap_err().code, 1);
    }

    #[test]
    fn attachments_new_and_old_keys() {
        let m = parse_json(br#"{"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
            .unwrap();
        assert_eq!(
            valid_attachments(&m).unwrap(),
            vec![("a".to_string(), "eth0".to_string())]
        );
        let m = parse_json(br#"{"cni.dev/valid-attachments":[{"containerID":"a"}]}"#).unwrap();
        assert!(valid_attachments(&m).is_err());
    }
}
