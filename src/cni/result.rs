//! What the plugin answers, in the version the runtime asked for: the ADD
//! result (one model, read from any supported version's JSON: a delegate's
//! answer, a CHECK's `prevResult`) or the error object of a [`CniError`].

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use super::error::{CniError, code};
use super::version::Version;

/// One interface of the result; `sandbox` is the netns path for pod interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
}

/// One address; `interface` indexes [`CniResult::interfaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The result of an ADD.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// Passed through untouched (weft sets no DNS itself).
    pub dns: Value,
}

fn bad(field: &str, what: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::DECODE,
        format!("result field {field} is malformed: {what}"),
    )
}

impl CniError {
    /// The error object the spec describes, in `version`'s format.
    pub fn to_json(&self, version: Version) -> String {
        let mut v = json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| String::from("{}"))
    }
}

impl CniResult {
    /// The result as JSON in `version`'s format.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_have_version() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), Value::Array(routes));
        out.insert(
            "dns".into(),
            if self.dns.is_object() {
                self.dns.clone()
            } else {
                json!({})
            },
        );
        Value::Object(out)
    }

    /// Reads a result in any supported version's format (0.3.0 to 1.1.0).
    ///
    /// # Errors
    /// Code 6 naming the malformed field.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("(top level)", "not a JSON object"))?;
        let arr = |k: &str| -> Result<Vec<Value>, CniError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(bad(k, "not an array")),
            }
        };
        let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let mut r = CniResult {
            dns: obj.get("dns").cloned().unwrap_or(json!({})),
            ..CniResult::default()
        };
        for i in arr("interfaces")? {
            r.interfaces.push(Interface {
                name: s(&i, "name").ok_or_else(|| bad("interfaces[].name", "missing"))?,
                mac: s(&i, "mac").filter(|m| !m.is_empty()),
                mtu: match i.get("mtu").and_then(Value::as_u64) {
                    None => None,
                    Some(m) => Some(
                        u32::try_from(m)
                            .map_err(|_| bad("interfaces[].mtu", "is larger than any MTU"))?,
                    ),
                },
                sandbox: s(&i, "sandbox").filter(|m| !m.is_empty()),
            });
        }
        for ip in arr("ips")? {
            let address = s(&ip, "address")
                .ok_or_else(|| bad("ips[].address", "missing"))?
                .parse::<IpNet>()
                .map_err(|e| bad("ips[].address", e))?;
            let gateway = match s(&ip, "gateway") {
                Some(g) if !g.is_empty() => {
                    Some(g.parse::<IpAddr>().map_err(|e| bad("ips[].gateway", e))?)
                }
                _ => None,
            };
            let interface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            r.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for rt in arr("routes")? {
            let dst = s(&rt, "dst")
                .ok_or_else(|| bad("routes[].dst", "missing"))?
                .parse::<IpNet>()
                .map_err(|e| bad("routes[].dst", e))?;
            let gw = match s(&rt, "gw") {
                Some(g) if !g.is_empty() => {
                    Some(g.parse::<IpAddr>().map_err(|e| bad("routes[].gw", e))?)
                }
                _ => None,
            };
            r.routes.push(Route { dst, gw });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.1.17.2/24".parse().unwrap(),
                gateway: Some("10.1.17.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "10.1.0.0/16".parse().unwrap(),
                gw: Some("10.1.17.1".parse().unwrap()),
            }],
            dns: json!({}),
        }
    }

    #[test]
    fn an_mtu_past_u32_is_refused_not_narrowed() {
        let v = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": 4_294_968_746u64}]});
        let e = CniResult::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("interfaces[].mtu"), "{e}");
        let v = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": 1450}]});
        assert_eq!(
            CniResult::from_json(&v).unwrap().interfaces[0].mtu,
            Some(1450)
        );
    }

    #[test]
    fn per_version_shape_and_round_trip() {
        let r = sample();
        for v in Version::ALL {
            let j = r.to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["address"], "10.1.17.2/24");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert_eq!(j["ips"][0].get("version").is_some(), v < Version::V1_0_0);
            assert_eq!(
                j["interfaces"][1].get("mtu").is_some(),
                v >= Version::V1_1_0
            );
            let back = CniResult::from_json(&j).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
        }
    }

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::new(code::INVALID_ENV, "CNI_NETNS is not set").with_details("ADD");
        let v: serde_json::Value = serde_json::from_str(&e.to_json(Version::V1_0_0)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_NETNS is not set");
        assert_eq!(v["details"], "ADD");
    }

    #[test]
    fn malformed_fields_are_named() {
        let e = CniResult::from_json(&json!({"ips": [{"address": "nope"}]})).unwrap_err();
        assert!(e.msg.contains("ips[].address"), "{}", e.msg);
        assert!(CniResult::from_json(&json!([])).is_err());
    }
}
