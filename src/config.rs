//! flannel's network configuration (net-conf.json): parsing, defaults and checks.
//!
//! Keys match case-insensitively, as Go's `encoding/json` does for flannel.
//! Defaults follow flannel's `CheckNetworkConfig`: SubnetLen 24 for networks up
//! to /22, else prefix + 2; SubnetMin = the second subnet; SubnetMax = the last;
//! VXLAN VNI 1 on UDP port 8472. With `EnableIPv6`, the IPv6 keys alike:
//! IPv6SubnetLen 64 for networks up to /62, else prefix + 2, and the same
//! SubnetMin/SubnetMax rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

use crate::backend::Backend;
use crate::gojson::get;
use crate::types::Family;

/// The configuration weft starts with when it is given none (the embedded default).
pub const DEFAULT_NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// A checked network configuration with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// `EnableIPv4` (the default) with `Network` and its `Subnet*` keys: the
    /// network's IPv4 half; `None` in an IPv6-only network.
    pub ipv4: Option<Ipv4Config>,
    /// `Backend`: the backend type and its keys ([`crate::backend`]).
    pub backend: Backend,
    /// `EnableNFTables`: weft's rules in nftables (true) or iptables (false);
    /// unset, weft takes nftables where `nft` works.
    pub enable_nftables: Option<bool>,
    /// `EnableIPv6` with its `IPv6*` keys: the network's IPv6 half.
    pub ipv6: Option<Ipv6Config>,
}

/// The IPv4 half of a network (`Network`, `SubnetLen`, `SubnetMin`,
/// `SubnetMax`), defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Config {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 half of a dual-stack or IPv6-only network (`EnableIPv6`, `IPv6Network`,
/// `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`), defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// A configuration that cannot be used, with where it came from and the rule broken.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read network config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network config {origin} is not valid JSON: {source}")]
    Json {
        origin: String,
        source: serde_json::Error,
    },
    #[error("network config {origin}: field {field}: {rule}")]
    Field {
        origin: String,
        field: &'static str,
        rule: String,
    },
}

impl NetConfig {
    /// Reads and checks the net-conf.json file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, the field and the rule broken.
    pub fn from_file(path: &Path) -> Result<NetConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        NetConfig::parse(&text, &path.display().to_string())
    }

    /// Parses and checks net-conf.json text; `origin` (a file or key) is named in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming `origin`, the field and the rule broken.
    pub fn parse(text: &str, origin: &str) -> Result<NetConfig, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            origin: origin.to_string(),
            source,
        })?;
        let bad = |field: &'static str, rule: String| ConfigError::Field {
            origin: origin.to_string(),
            field,
            rule,
        };
        let top = v
            .as_object()
            .ok_or_else(|| bad("(top level)", "must be a JSON object".into()))?;

        let enable_ipv6 = flag(top, "EnableIPv6", false, &bad)?;
        let enable_ipv4 = flag(top, "EnableIPv4", true, &bad)?;
        if !enable_ipv4 && !enable_ipv6 {
            return Err(bad(
                "EnableIPv4",
                "false with EnableIPv6 false leaves no family to carry; set EnableIPv4 true (with Network) or EnableIPv6 true (with IPv6Network)".into(),
            ));
        }
        let ipv6 = if enable_ipv6 {
            Some(parse_ipv6(top, &bad)?)
        } else {
            None
        };
        let ipv4 = if enable_ipv4 {
            Some(parse_ipv4(top, &bad)?)
        } else {
            None
        };

        let backend = match get(top, "Backend") {
            None | Some(Value::Null) => {
                return Err(bad(
                    "Backend",
                    "is missing; flannel would default to the \"udp\" backend, which weft does not speak. Add \"Backend\": {\"Type\": \"vxlan\"}".into(),
                ));
            }
            Some(Value::Object(b)) => Backend::parse(b, &bad)?,
            Some(other) => {
                return Err(bad(
                    "Backend",
                    format!("{other} must be an object such as {{\"Type\": \"vxlan\"}}"),
                ));
            }
        };

        let enable_nftables = match get(top, "EnableNFTables") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(bad(
                    "EnableNFTables",
                    format!("{other} must be true or false"),
                ));
            }
        };

        Ok(NetConfig {
            ipv4,
            backend,
            enable_nftables,
            ipv6,
        })
    }

    /// The IPv4 Network, if the network carries IPv4.
    pub fn network(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|c| c.network)
    }

    /// The IPv6Network, if the network carries IPv6.
    pub fn network6(&self) -> Option<Ipv6Net> {
        self.ipv6.map(|c| c.network)
    }

    /// The MTU of the pod network given the underlay interface's MTU:
    /// Backend.MTU (when set) or `underlay_mtu`, minus the backend's
    /// overhead — that over an IPv6 underlay when the network carries IPv6,
    /// since one device carries both families and IPv6 pod traffic goes
    /// over IPv6.
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        self.backend
            .mtu()
            .unwrap_or(underlay_mtu)
            .saturating_sub(self.backend.overhead(self.ipv6.is_some()))
    }
}

impl Ipv4Config {
    /// The number of subnets between SubnetMin and SubnetMax, inclusive.
    pub fn subnet_count(&self) -> u32 {
        let shift = 32 - u32::from(self.subnet_len);
        ((u32::from(self.subnet_max) - u32::from(self.subnet_min)) >> shift) + 1
    }

    /// The `i`-th subnet from SubnetMin (no bounds check beyond SubnetMax).
    pub fn nth_subnet(&self, i: u32) -> Option<Ipv4Net> {
        if i >= self.subnet_count() {
            return None;
        }
        let shift = 32 - u32::from(self.subnet_len);
        let a = u32::from(self.subnet_min) + (i << shift);
        Ipv4Net::new(Ipv4Addr::from(a), self.subnet_len).ok()
    }

    /// Whether `s` is a subnet this configuration can lease: the right length,
    /// aligned, inside [SubnetMin, SubnetMax].
    pub fn is_leasable(&self, s: &Ipv4Net) -> bool {
        s.prefix_len() == self.subnet_len
            && s.addr() == s.network()
            && u32::from(s.addr()) >= u32::from(self.subnet_min)
            && u32::from(s.addr()) <= u32::from(self.subnet_max)
    }
}

impl Ipv6Config {
    fn shift(&self) -> u32 {
        128 - u32::from(self.subnet_len)
    }

    /// The number of subnets between IPv6SubnetMin and IPv6SubnetMax, inclusive.
    pub fn subnet_count(&self) -> u128 {
        let span = u128::from(self.subnet_max) - u128::from(self.subnet_min);
        (span >> self.shift()).saturating_add(1)
    }

    /// The `i`-th IPv6 subnet from IPv6SubnetMin, if within IPv6SubnetMax.
    pub fn nth_subnet(&self, i: u128) -> Option<Ipv6Net> {
        if i >= self.subnet_count() {
            return None;
        }
        let a = u128::from(self.subnet_min).checked_add(i.checked_shl(self.shift())?)?;
        Ipv6Net::new(Ipv6Addr::from(a), self.subnet_len).ok()
    }

    /// Whether `s` is an IPv6 subnet this configuration can lease.
    pub fn is_leasable(&self, s: &Ipv6Net) -> bool {
        s.prefix_len() == self.subnet_len
            && s.addr() == s.network()
            && u128::from(s.addr()) >= u128::from(self.subnet_min)
            && u128::from(s.addr()) <= u128::from(self.subnet_max)
    }
}

/// A boolean key with its default; anything but a boolean (or null) is refused.
fn flag(
    top: &Map<String, Value>,
    field: &'static str,
    default: bool,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<bool, ConfigError> {
    match get(top, field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(field, format!("{other} must be true or false"))),
    }
}

/// One half's keys in net-conf.json and the words its refusals use, so
/// that one parser reads both halves.
struct Keys {
    family: Family,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    /// What a missing network key says.
    required: &'static str,
    /// The network the refusals suggest, and the kind of range it is.
    example: &'static str,
    range: &'static str,
    /// The network as "too small" names it.
    noun: &'static str,
    /// The subnet length when none is set, for networks up to two bits shorter.
    default_len: u8,
    /// Whether a `null` network counts as missing (the IPv6 keys) or as not
    /// a CIDR (`Network`).
    null_is_missing: bool,
}

/// The IPv4 keys: `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`.
const IPV4_KEYS: Keys = Keys {
    family: Family::V4,
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    required: "is required, e.g. \"Network\": \"10.244.0.0/16\"",
    example: "10.244.0.0/16",
    range: "a private range",
    noun: "network",
    default_len: 24,
    null_is_missing: false,
};

/// The IPv6 keys of `EnableIPv6`: `IPv6Network`, `IPv6SubnetLen`, ….
const IPV6_KEYS: Keys = Keys {
    family: Family::V6,
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    required: "is required with EnableIPv6, e.g. \"IPv6Network\": \"fc00::/48\"",
    example: "fc00::/48",
    range: "a unique local range",
    noun: "IPv6 network",
    default_len: 64,
    null_is_missing: true,
};

/// One half as read: network, subnet length, first and last subnet.
type Half = (IpNet, u8, IpAddr, IpAddr);

/// The IPv4 half.
fn parse_ipv4(
    top: &Map<String, Value>,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Ipv4Config, ConfigError> {
    match parse_half(top, &IPV4_KEYS, bad)? {
        (IpNet::V4(network), subnet_len, IpAddr::V4(subnet_min), IpAddr::V4(subnet_max)) => {
            Ok(Ipv4Config {
                network,
                subnet_len,
                subnet_min,
                subnet_max,
            })
        }
        _ => unreachable!("parse_half keeps to the family of its keys"),
    }
}

/// The IPv6 half.
fn parse_ipv6(
    top: &Map<String, Value>,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Ipv6Config, ConfigError> {
    match parse_half(top, &IPV6_KEYS, bad)? {
        (IpNet::V6(network), subnet_len, IpAddr::V6(subnet_min), IpAddr::V6(subnet_max)) => {
            Ok(Ipv6Config {
                network,
                subnet_len,
                subnet_min,
                subnet_max,
            })
        }
        _ => unreachable!("parse_half keeps to the family of its keys"),
    }
}

/// The keys of one half, checked as flannel's `CheckNetworkConfig` checks
/// them: SubnetLen `default_len` for networks up to two bits shorter, else
/// prefix + 2; SubnetMin the second subnet, SubnetMax the last.
fn parse_half(
    top: &Map<String, Value>,
    keys: &Keys,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Half, ConfigError> {
    let (family, example) = (keys.family.name(), keys.example);
    let given = get(top, keys.network).filter(|x| !(keys.null_is_missing && x.is_null()));
    let network: IpNet = match given {
        None => return Err(bad(keys.network, keys.required.into())),
        Some(n) => n
            .as_str()
            .and_then(|s| s.parse::<IpNet>().ok())
            .filter(|n| Family::of(n.addr()) == keys.family)
            .ok_or_else(|| {
                bad(
                    keys.network,
                    format!("{n} is not an {family} CIDR such as \"{example}\""),
                )
            })?,
    };
    if network.prefix_len() == 0 {
        return Err(bad(
            keys.network,
            format!(
                "{network} would take every address, the underlay's included; use {} such as \"{example}\"",
                keys.range
            ),
        ));
    }
    if network.network() != network.addr() {
        return Err(bad(
            keys.network,
            format!(
                "{network} has host bits set; did you mean {}?",
                network.trunc()
            ),
        ));
    }
    let (plen, bits) = (network.prefix_len(), network.max_prefix_len());
    let subnet_len = match get(top, keys.subnet_len) {
        Some(x) if !x.is_null() && x.as_u64() != Some(0) => {
            let l = x
                .as_u64()
                .filter(|l| *l <= u64::from(bits))
                .ok_or_else(|| {
                    bad(
                        keys.subnet_len,
                        format!("{x} is not a prefix length 0..={bits}"),
                    )
                })? as u8;
            if l > bits - 2 {
                return Err(bad(
                    keys.subnet_len,
                    format!(
                        "/{l} must be /{} or shorter (a node needs room for its addresses)",
                        bits - 2
                    ),
                ));
            }
            if l < plen + 2 {
                return Err(bad(
                    keys.subnet_len,
                    format!(
                        "/{l} does not fit: {} {network} must hold at least four subnets, so {} must be at least /{}",
                        keys.network,
                        keys.subnet_len,
                        plen + 2
                    ),
                ));
            }
            l
        }
        _ => {
            if plen > bits - 4 {
                return Err(bad(
                    keys.network,
                    format!(
                        "{network} is too small; the smallest useful {} is a /{}",
                        keys.noun,
                        bits - 4
                    ),
                ));
            } else if plen <= keys.default_len - 2 {
                keys.default_len
            } else {
                plen + 2
            }
        }
    };
    // SubnetMin is the second subnet unless set (flannel leaves the first
    // out), SubnetMax the last.
    let second = network
        .subnets(subnet_len)
        .ok()
        .and_then(|mut s| s.nth(1))
        .map(|s| s.network())
        .expect("a network of four subnets or more has a second");
    let last = subnet_of(network.broadcast(), subnet_len);
    let subnet_min = bound(top, keys.subnet_min, second, network, subnet_len, keys, bad)?;
    let subnet_max = bound(top, keys.subnet_max, last, network, subnet_len, keys, bad)?;
    if subnet_min > subnet_max {
        return Err(bad(
            keys.subnet_min,
            format!("{subnet_min} is above {} {subnet_max}", keys.subnet_max),
        ));
    }
    Ok((network, subnet_len, subnet_min, subnet_max))
}

/// The first address of the `len` subnet holding `a`.
fn subnet_of(a: IpAddr, len: u8) -> IpAddr {
    IpNet::new(a, len).map_or(a, |n| n.network())
}

/// SubnetMin or SubnetMax (`field`), `default` when unset: an address of
/// the half's family inside `network`, on a subnet boundary.
fn bound(
    top: &Map<String, Value>,
    field: &'static str,
    default: IpAddr,
    network: IpNet,
    subnet_len: u8,
    keys: &Keys,
    bad: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<IpAddr, ConfigError> {
    let Some(x) = get(top, field).filter(|x| !x.is_null()) else {
        return Ok(default);
    };
    let a: IpAddr = x
        .as_str()
        .and_then(|s| s.parse().ok())
        .filter(|a| Family::of(*a) == keys.family)
        .ok_or_else(|| {
            bad(
                field,
                format!("{x} is not an {} address", keys.family.name()),
            )
        })?;
    if !network.contains(&a) {
        return Err(bad(
            field,
            format!("{a} is not inside {} {network}", keys.network),
        ));
    }
    let start = subnet_of(a, subnet_len);
    if start != a {
        // "an IPv6SubnetLen", "a SubnetLen".
        let article = match keys.family {
            Family::V4 => "a",
            Family::V6 => "an",
        };
        return Err(bad(
            field,
            format!(
                "{a} is not on {article} {} boundary; use {start}",
                keys.subnet_len
            ),
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        NetConfig::parse(s, "/etc/kube-flannel/net-conf.json")
    }

    #[test]
    fn flannel_defaults() {
        let c = parse(DEFAULT_NET_CONF).unwrap();
        assert_eq!(c.ipv4.unwrap().network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        assert_eq!(c.ipv4.unwrap().subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.ipv4.unwrap().subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(
            c.backend,
            Backend::Vxlan(crate::backend::Vxlan::flannel_default())
        );
        assert_eq!(c.ipv4.unwrap().subnet_count(), 255);
        assert_eq!(c.overlay_mtu(1500), 1450);
        // /23 and smaller networks: prefix + 2.
        let c = parse(r#"{"Network":"10.1.0.0/23","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 25);
    }

    #[test]
    fn keys_match_case_insensitively() {
        let c = parse(r#"{"network":"172.30.0.0/16","subnetlen":26,"backend":{"type":"VXLAN","vni":4096,"port":4789,"mtu":9000}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_len, 26);
        let want = crate::backend::Vxlan {
            vni: crate::types::Vni::new(4096).unwrap(),
            port: 4789,
            mtu: Some(9000),
        };
        assert_eq!(c.backend, Backend::Vxlan(want));
        assert_eq!(c.overlay_mtu(1500), 8950);
    }

    #[test]
    fn a_slash_zero_network_is_refused() {
        let e = parse(r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field Network") && e.contains("every address"),
            "{e}"
        );
    }

    #[test]
    fn enable_nftables_as_flannel_reads_it() {
        assert_eq!(parse(DEFAULT_NET_CONF).unwrap().enable_nftables, None);
        let c = parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.unwrap().enable_nftables, Some(true));
        let c = parse(
            r#"{"Network":"10.244.0.0/16","enablenftables":false,"Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(c.unwrap().enable_nftables, Some(false));
        let e = parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":"yes","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("EnableNFTables") && e.contains("true or false"),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_the_file_field_and_rule() {
        let e = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/kube-flannel/net-conf.json")
                && e.contains("Backend.Type")
                && e.contains("host-gw"),
            "{e}"
        );
        let e = parse(r#"{"Network":"10.244.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SubnetLen") && e.contains("at least /18"), "{e}");
        let e = parse(r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SubnetLen") && e.contains("/30"), "{e}");
        let e = parse(r#"{"Network":"10.244.0.0/16"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Backend") && e.contains("udp"), "{e}");
        let e = parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("SubnetMin") && e.contains("not inside"), "{e}");
        let e = parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("boundary") && e.contains("10.244.1.0"), "{e}");
        let e = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Backend.VNI"), "{e}");
        let e = parse(r#"{"Network":"10.244.0.1/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host bits"), "{e}");
        let e = parse(r#"{"Network":"10.244.0.0/16","#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse(r#"{"Network":"10.0.0.0/29","Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/28"), "{e}");
        let e = parse(r#"[1,2]"#).unwrap_err().to_string();
        assert!(e.contains("object"), "{e}");
    }

    #[test]
    fn dual_stack_as_flannel_reads_it() {
        let c = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.network, "fc00::/48".parse().unwrap());
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, "fc00:0:0:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            v6.subnet_max,
            "fc00:0:0:ffff::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.subnet_count(), 65535);
        assert_eq!(
            v6.nth_subnet(2).unwrap(),
            "fc00:0:0:3::/64".parse().unwrap()
        );
        assert!(v6.nth_subnet(65535).is_none());
        assert!(v6.is_leasable(&"fc00:0:0:7::/64".parse().unwrap()));
        assert!(!v6.is_leasable(&"fc00:0:0:7::/80".parse().unwrap()));
        assert!(!v6.is_leasable(&"fc00:1::/64".parse().unwrap()));
        // One TUN carries both families, so its MTU leaves room for an IPv6 outer header.
        assert_eq!(c.overlay_mtu(1500), 1430);
        // Small networks: prefix + 2; explicit keys case-insensitively.
        let c = parse(r#"{"Network":"10.244.0.0/16","enableipv6":true,"ipv6network":"fd00:10::/120","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().subnet_len, 122);
        let c = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fc00:0:0:100::","IPv6SubnetMax":"fc00:0:0:300::","Backend":{"Type":"vxlan"}}"#).unwrap();
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_count(), 3);
        // EnableIPv6 false, or absent: IPv4 only, whatever IPv6 keys remain.
        let c = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":false,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv6, None);
        assert_eq!(c.overlay_mtu(1500), 1450);
    }

    #[test]
    fn ipv6_only_as_flannel_reads_it() {
        // EnableIPv4 false: no IPv4 half, and flannel ignores Network then.
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4, None);
        assert_eq!(c.network(), None);
        assert_eq!(c.network6(), Some("fc00::/48".parse().unwrap()));
        assert_eq!(c.overlay_mtu(1500), 1430);
        let c = parse(r#"{"Network":"not a network","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4, None);
        // IPv6-only still needs its IPv6Network.
        let e = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IPv6Network"), "{e}");
    }

    #[test]
    fn ipv6_refusals_name_the_field_and_rule() {
        let cases = [
            (r#""EnableIPv6":true"#, "IPv6Network", "is required"),
            (
                r#""EnableIPv6":"yes","IPv6Network":"fc00::/48""#,
                "EnableIPv6",
                "true or false",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"10.0.0.0/8""#,
                "IPv6Network",
                "not an IPv6 CIDR",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"::/0""#,
                "IPv6Network",
                "every address",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::1/48""#,
                "IPv6Network",
                "host bits",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/125""#,
                "IPv6Network",
                "/124",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127"#,
                "IPv6SubnetLen",
                "/126",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49"#,
                "IPv6SubnetLen",
                "at least /50",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::""#,
                "IPv6SubnetMin",
                "not inside",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::5""#,
                "IPv6SubnetMin",
                "fc00:0:0:1::",
            ),
            (
                r#""EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:2::""#,
                "IPv6SubnetMin",
                "above",
            ),
            (
                r#""EnableIPv4":false,"EnableIPv6":false"#,
                "EnableIPv4",
                "leaves no family",
            ),
        ];
        for (keys, field, rule) in cases {
            let text =
                format!(r#"{{"Network":"10.244.0.0/16",{keys},"Backend":{{"Type":"vxlan"}}}}"#);
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("field {field}")) && e.contains(rule),
                "{keys}: {e}"
            );
        }
    }

    #[test]
    fn subnet_range() {
        let c = parse(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.ipv4.unwrap().subnet_count(), 3);
        assert_eq!(
            c.ipv4.unwrap().nth_subnet(2).unwrap(),
            "10.244.12.0/24".parse().unwrap()
        );
        assert!(c.ipv4.unwrap().nth_subnet(3).is_none());
        assert!(
            c.ipv4
                .unwrap()
                .is_leasable(&"10.244.11.0/24".parse().unwrap())
        );
        assert!(
            !c.ipv4
                .unwrap()
                .is_leasable(&"10.244.13.0/24".parse().unwrap())
        );
        assert!(
            !c.ipv4
                .unwrap()
                .is_leasable(&"10.244.11.0/25".parse().unwrap())
        );
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "null",
            "{}",
            "{\"Network\":5}",
            "{\"Network\":\"x\"}",
            "{\"Network\":\"10.0.0.0/8\",\"SubnetLen\":\"a\",\"Backend\":{}}",
            "{\"Network\":\"10.0.0.0/8\",\"Backend\":{\"Type\":\"vxlan\",\"Port\":-1}}",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
